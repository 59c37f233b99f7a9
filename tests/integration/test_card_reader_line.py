"""Two card readers on one RS-485 line (OSDP multi-drop): the appliance's one control panel polls
libosdp's real peripheral devices at addresses 0 and 1 on one ``socat`` pty pair, each with a Secure
Channel key of its own (nothing doubled).

Each reader's cards and PINs arrive as its own, each reader's LED answers the decisions at its own
camera only, one reader lost leaves the other working and comes back by itself, a port error takes
both down, and ``close()`` keeps its deadline.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from appliance.osdp import create_card_readers
from appliance.osdp.card_reader import CardReader
from appliance.osdp.card_reader_settings import CredentialReaderConfig
from tests.card_reader_support import ReaderBus
from tests.integration.test_card_reader import CARD, Presented, passage
from tests.mqtt_broker import wait_until
from tests.osdp_support import KEY, OTHER_KEY, DoorEvents, osdp_module, osdp_threads, pty_pair, write_key

ENTRY, EXIT = "entry-reader", "exit-reader"


class TwoReaders:
    """The appliance's side of one line: two credential readers (``entry-reader`` at address 0 by the
    ``entry`` camera, ``exit-reader`` at address 1 by ``exit``), their door events and what they offered."""

    def __init__(self, folder: Path, port: str) -> None:
        self.events = DoorEvents()
        self.presented = Presented()
        configs = [
            CredentialReaderConfig.model_validate(
                {
                    "enabled": True,
                    "id": reader_id,
                    "port": port,
                    "address": address,
                    "scbk_file": str(write_key(folder / f"{reader_id}_scbk", key)),
                    "cameras": [camera],
                }
            )
            for reader_id, address, key, camera in ((ENTRY, 0, KEY, "entry"), (EXIT, 1, OTHER_KEY, "exit"))
        ]
        entry, exit_ = create_card_readers(configs, self.presented.inbox.offer)
        assert isinstance(entry, CardReader) and isinstance(exit_, CardReader)
        self.entry, self.exit = entry, exit_

    def start(self) -> None:
        self.entry.start(self.events)
        self.exit.start(self.events)

    def offline(self, reader_id: str) -> List[str]:
        """The reasons of ``reader_id``'s ``reader_offline`` events so far."""
        return [e["reason"] for e in self.events.of("reader_offline") if e["reader_id"] == reader_id]

    def close(self) -> None:
        self.entry.close(5.0)
        self.exit.close(5.0)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Tuple[TwoReaders, ReaderBus]]:
    osdp_module()
    with pty_pair(tmp_path) as (appliance_end, readers_end):
        readers = TwoReaders(tmp_path, appliance_end)
        try:
            readers.start()
            with ReaderBus(readers_end) as bus:
                yield readers, bus
        finally:
            readers.close()


def card_reader_threads() -> List[str]:
    return [t.name for t in threading.enumerate() if t.name == "osdp-card-reader" and t.is_alive()]


def test_each_reader_on_the_line_presents_its_own_and_lights_for_its_own_camera(
    line: Tuple[TwoReaders, ReaderBus],
) -> None:
    readers, bus = line
    osdp = osdp_module()
    entry_device, exit_device = bus.reader(0, KEY), bus.reader(1, OTHER_KEY)
    online = readers.events.wait_for("reader_online", count=2)
    assert sorted(online, key=lambda e: e["address"]) == [
        {"reader_id": ENTRY, "secure_channel": True, "address": 0},
        {"reader_id": EXIT, "secure_channel": True, "address": 1},
    ]
    assert entry_device.secure() and exit_device.secure()
    # One control panel, one thread, one port for the two.
    assert readers.entry.line is readers.exit.line and len(card_reader_threads()) == 1
    for reader in (readers.entry, readers.exit):
        state = reader.state()
        assert (state["link"], state["running"], state["port"]) == ("secure", True, readers.entry.config.port)
    assert (readers.entry.state()["id"], readers.exit.state()["address"]) == (ENTRY, 1)

    exit_device.card(CARD, 26)
    (card,) = readers.presented.wait(1)
    assert (card.kind, card.value, card.reader) == ("card", "w26:7:12345", EXIT)
    entry_device.keys("2468#")
    pin = readers.presented.wait(2)[1]
    assert (pin.kind, pin.value, pin.reader) == ("pin", "2468", ENTRY)
    exit_device.keys("13")  # a partial PIN at one reader never joins the other's keys
    entry_device.keys("57#")
    exit_device.keys("579#")
    taken = readers.presented.wait(3)[2:]
    assert [(c.kind, c.value, c.reader) for c in taken] == [("pin", "13579", EXIT)]
    assert readers.entry.state()["bad_pins"] == 1  # "57#": too short, at the entry reader
    assert (readers.entry.state()["cards"], readers.entry.state()["pins"]) == (0, 1)
    assert (readers.exit.state()["cards"], readers.exit.state()["pins"]) == (1, 1)

    # The hub tells every reader of every decision; each answers those at its own camera only.
    for reader in (readers.entry, readers.exit):
        reader.on_passage(passage("granted", camera_id="exit"))
    green = exit_device.next_led(0)
    assert green["on_color"] == osdp.CommandLEDColor.Green
    for reader in (readers.entry, readers.exit):
        reader.on_passage(passage("denied", reason="second_factor", camera_id="entry"))
    amber = entry_device.next_led(0)
    assert amber["on_color"] == osdp.CommandLEDColor.Amber
    assert len(entry_device.of(osdp.Command.LED)) == 1 and len(exit_device.of(osdp.Command.LED)) == 1
    assert readers.entry.state()["feedback"]["shown"] == 1 and readers.exit.state()["feedback"]["shown"] == 1
    assert readers.events.kinds() == ["reader_online", "reader_online"]


def test_one_reader_lost_leaves_the_other_working_and_comes_back(line: Tuple[TwoReaders, ReaderBus]) -> None:
    readers, bus = line
    osdp = osdp_module()
    entry_device, exit_device = bus.reader(0, KEY), bus.reader(1, OTHER_KEY)
    readers.events.wait_for("reader_online", count=2)
    wait_until(lambda: readers.entry.state()["link"] == "secure", 15.0, "the entry reader's Secure Channel")
    entry_since = readers.entry.state()["link_since"]

    exit_device.close()  # the exit reader is gone (unplugged, power cut)
    wait_until(lambda: readers.offline(EXIT) == ["no_reply"], 30.0, "the exit reader reported offline")
    assert readers.exit.state()["link"] == "offline" and readers.entry.state()["link"] == "secure"
    entry_device.card(CARD, 26)  # the entry reader goes on meanwhile
    (card,) = readers.presented.wait(1)
    assert card.reader == ENTRY
    readers.entry.on_passage(passage("granted", camera_id="entry"))
    assert entry_device.next_led(0)["on_color"] == osdp.CommandLEDColor.Green

    exit_device = bus.reader(1, OTHER_KEY)  # back: polled again within seconds, not libosdp's minutes
    assert readers.events.wait_for("reader_online", count=3, timeout=30.0)[2]["reader_id"] == EXIT
    exit_device.keys("1234#")
    assert readers.presented.wait(2)[1].reader == EXIT
    assert readers.offline(ENTRY) == [] and readers.entry.state()["link_since"] == entry_since  # undisturbed

    started = time.monotonic()
    readers.entry.close(2.0)  # the exit reader still runs: only the entry reader is retired
    assert time.monotonic() - started < 2.0
    wait_until(lambda: readers.offline(ENTRY) == ["closed"], 5.0, "the entry reader closed")
    assert readers.entry.state()["running"] is False
    assert readers.exit.state()["running"] is True
    exit_device.card(CARD, 26)
    assert readers.presented.wait(3)[2].reader == EXIT
    started = time.monotonic()
    readers.exit.close(2.0)  # the last: the line's thread and port close
    assert time.monotonic() - started < 2.0
    wait_until(lambda: readers.offline(EXIT) == ["no_reply", "closed"], 5.0, "the exit reader closed")
    assert not osdp_threads()
    readers.exit.close(2.0)  # idempotent


def test_a_port_error_takes_every_reader_on_the_line_down(tmp_path: Path) -> None:
    osdp_module()
    readers: Optional[TwoReaders] = None
    bus: Optional[ReaderBus] = None
    try:
        with pty_pair(tmp_path) as (appliance_end, readers_end):
            readers = TwoReaders(tmp_path, appliance_end)
            readers.start()
            bus = ReaderBus(readers_end)
            bus.reader(0, KEY)
            bus.reader(1, OTHER_KEY)
            readers.events.wait_for("reader_online", count=2)
        # socat is gone: the appliance's end of the line hangs up, for both readers at once.
        both = readers
        wait_until(
            lambda: both.offline(ENTRY) == ["port_error"] and both.offline(EXIT) == ["port_error"],
            15.0,
            "both readers offline with a port error",
        )
        for reader in (readers.entry, readers.exit):
            assert reader.state()["serial"]["error"] is not None and reader.state()["link"] == "offline"
    finally:
        if bus is not None:
            bus.close()
        if readers is not None:
            readers.close()
    assert not osdp_threads()
