"""The credential reader (the appliance as OSDP control panel) against libosdp's real peripheral device
over a ``socat`` pty pair, with Secure Channel (nothing doubled).

Card reads become ``card`` credentials (a misread is counted, never offered), key presses become PINs,
each decision lights the reader's LED (and beeps), the link's loss and return are door events, a
start-up failure names the key to fix, and ``close()`` keeps its deadline.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from appliance.access.credentials import CredentialInbox, PresentedCredential
from appliance.osdp import OsdpError, create_card_reader
from appliance.osdp.card_reader import CP_CONSTANTS, CP_METHODS, CardReader, load_library
from appliance.osdp.card_reader_settings import CredentialReaderConfig
from appliance.osdp.doctor import card_reader_checks
from appliance.peripherals import Passage
from tests.card_reader_support import KeypadReader
from tests.mqtt_broker import wait_until
from tests.osdp_support import KEY, DoorEvents, osdp_module, osdp_threads, pty_pair, write_key

ADDRESS = 3
#: Facility 7, card 12345 as a 26-bit Wiegand read (HID H10301), packed from the first byte's top bit.
CARD = bytes.fromhex("83981cc0")
#: The same read with its last (odd parity) bit flipped: a misread.
MISREAD = bytes.fromhex("83981c80")


def passage(decision: str, reason: Optional[str] = None, camera_id: Optional[str] = "entry") -> Passage:
    identity = None if decision == "unknown" else "person"
    return Passage(str(uuid.uuid4()), decision, reason, identity, None, camera_id=camera_id)


class Presented:
    """The pipeline's side: a real :class:`CredentialInbox`, drained into a list as the pipeline does."""

    def __init__(self, capacity: int = 16) -> None:
        self.inbox = CredentialInbox(capacity)
        self.taken: List[PresentedCredential] = []

    def wait(self, count: int, timeout: float = 15.0) -> List[PresentedCredential]:
        deadline = time.monotonic() + timeout
        while True:
            self.taken.extend(self.inbox.drain())
            if len(self.taken) >= count:
                return self.taken
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} credentials not offered within {timeout} s: {self.taken}")
            time.sleep(0.02)


class Line:
    """A pty pair, the credential readers started on it (closed at the end), their door events and
    what they offered."""

    def __init__(self, folder: Path, appliance_end: str, reader_end: str) -> None:
        self.folder = folder
        self.appliance_end = appliance_end
        self.reader_end = reader_end
        self.key_file = write_key(folder / "reader_scbk", KEY)
        self.readers: List[CardReader] = []
        self.events = DoorEvents()
        self.presented = Presented()

    def config(self, **settings: Any) -> CredentialReaderConfig:
        document = {
            "enabled": True,
            "id": "entry-reader",
            "port": self.appliance_end,
            "address": ADDRESS,
            "scbk_file": str(self.key_file),
            "cameras": ["entry"],
            **settings,
        }
        return CredentialReaderConfig.model_validate(document)

    def card_reader(self, **settings: Any) -> CardReader:
        reader = create_card_reader(self.config(**settings), self.presented.inbox.offer)
        assert isinstance(reader, CardReader)
        self.readers.append(reader)
        reader.start(self.events)
        return reader

    def device(self, key: Optional[bytes] = KEY) -> KeypadReader:
        return KeypadReader(self.reader_end, ADDRESS, key)


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    osdp_module()
    with pty_pair(tmp_path) as (appliance_end, reader_end):
        created = Line(tmp_path, appliance_end, reader_end)
        try:
            yield created
        finally:
            for reader in created.readers:
                reader.close(5.0)


def test_every_libosdp_name_the_credential_reader_uses_exists() -> None:
    lib = load_library()
    for name in CP_CONSTANTS:
        assert isinstance(getattr(lib, name), int), name
    for method in CP_METHODS:
        assert callable(getattr(lib.ControlPanel, method)), method


def test_cards_and_pins_over_secure_channel(line: Line, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance.osdp")
    reader = line.card_reader()
    assert (reader.name, reader.source) == ("entry-reader", "credential_reader")
    with line.device() as device:
        assert line.events.wait_for("reader_online") == [
            {"reader_id": "entry-reader", "secure_channel": True, "address": ADDRESS}
        ]
        assert device.secure() and reader.state()["link"] == "secure"

        device.card(MISREAD, 26)  # a wrong parity bit: counted, never offered
        device.card(CARD, 26)
        (card,) = line.presented.wait(1)
        assert (card.kind, card.value, card.reader) == ("card", "w26:7:12345", "entry-reader")
        assert abs(card.at - time.time()) < 60
        assert reader.state()["misreads"] == 1

        device.keys("1234#")
        for key in "12*5678#":  # one osdp_KEYPAD reply per key, as most keypads send them
            device.keys(key)
        device.keys("12#")  # too short: refused
        device.keys("90817263#")
        taken = line.presented.wait(4)
    assert [(c.kind, c.value) for c in taken[1:]] == [("pin", "1234"), ("pin", "5678"), ("pin", "90817263")]
    assert all(c.reader == "entry-reader" for c in taken)

    state = reader.state()
    assert (state["cards"], state["pins"], state["misreads"], state["bad_pins"], state["dropped"]) == (
        1,
        3,
        1,
        1,
        0,
    )
    assert state["last_read_at"] is not None
    # No card number, no PIN in …/state; a card number at DEBUG only, a PIN in no log line at all.
    assert "12345" not in str(state) and "5678" not in str(state) and "90817263" not in str(state)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert not any("90817263" in text or "5678" in text for _, text in messages)
    assert not any("12345" in text for level, text in messages if level > logging.DEBUG)
    assert any("parity" in text for level, text in messages if level == logging.WARNING)


def test_a_full_inbox_drops_and_counts(line: Line) -> None:
    line.presented = Presented(capacity=1)
    reader = line.card_reader()
    with line.device() as device:
        line.events.wait_for("reader_online")
        device.card(CARD, 26)
        device.card(CARD, 26)
        wait_until(lambda: reader.state()["cards"] == 2, 15.0, "two card reads")
    assert reader.state()["dropped"] == 1
    assert len(line.presented.inbox.drain()) == 1


def test_each_decision_lights_the_reader(line: Line) -> None:
    osdp = osdp_module()
    reader = line.card_reader()
    with line.device() as device:
        line.events.wait_for("reader_online")
        reader.on_passage(passage("granted", camera_id="exit"))  # another camera's: not this reader's
        reader.on_passage(passage("granted"))
        green = device.next_led(0)
        assert green["on_color"] == osdp.CommandLEDColor.Green and green["temporary"] is True
        assert green["off_count"] == 0 and green["timer_count"] == 20  # steady, 2 s
        device.wait_for(lambda: len(device.of(osdp.Command.Buzzer)) == 1, "the grant's beep")
        assert device.of(osdp.Command.Buzzer)[0]["rep_count"] == 1

        reader.on_passage(passage("denied", reason="second_factor"))
        amber = device.next_led(1)
        assert amber["on_color"] == osdp.CommandLEDColor.Amber and amber["off_count"] > 0  # blinking
        assert amber["timer_count"] == 100  # 10 s: present your card or enter your PIN

        reader.on_passage(passage("unknown"))
        red = device.next_led(2)
        assert red["on_color"] == osdp.CommandLEDColor.Red and red["timer_count"] == 10
        device.wait_for(lambda: len(device.of(osdp.Command.Buzzer)) == 2, "the denial's beeps")
        assert device.of(osdp.Command.Buzzer)[1]["rep_count"] == 2
        assert len(device.of(osdp.Command.Buzzer)) == 2  # the amber blink does not beep
    assert reader.state()["feedback"] == {"enabled": True, "shown": 3, "replaced": 0, "dropped": 0}


def test_the_link_goes_down_and_comes_back(line: Line) -> None:
    osdp = osdp_module()
    reader = line.card_reader()
    with line.device():
        line.events.wait_for("reader_online")
    # The reader is gone (unplugged, power cut): libosdp gives up on it after its retries.
    assert line.events.wait_for("reader_offline", timeout=30.0) == [
        {"reader_id": "entry-reader", "reason": "no_reply"}
    ]
    assert reader.state()["link"] == "offline"
    reader.on_passage(passage("granted"))  # nothing to show it on: dropped, never shown late
    wait_until(lambda: reader.state()["feedback"]["dropped"] == 1, 15.0, "the dropped feedback")
    with line.device() as device:  # back: the appliance polls it again without waiting minutes
        line.events.wait_for("reader_online", count=2, timeout=30.0)
        reader.on_passage(passage("denied", reason="expired"))
        assert device.next_led(0)["on_color"] == osdp.CommandLEDColor.Red  # not the stale grant's green
        device.card(CARD, 26)
        assert line.presented.wait(1)[0].value == "w26:7:12345"
    assert line.events.kinds() == ["reader_online", "reader_offline", "reader_online"]

    started = time.monotonic()
    reader.close(2.0)
    assert time.monotonic() - started < 2.0
    assert not osdp_threads()
    assert line.events.kinds()[-1] == "reader_offline" and line.events.of("reader_offline")[-1] == {
        "reader_id": "entry-reader",
        "reason": "closed",
    }
    reader.close(2.0)  # idempotent


def test_start_names_the_key_to_fix(line: Line, tmp_path: Path) -> None:
    missing = line.config(port=str(tmp_path / "no-such-tty"))
    with pytest.raises(OsdpError, match=r"credential_reader\.port: .*no-such-tty does not exist"):
        create_card_reader(missing, line.presented.inbox.offer).start(DoorEvents())

    bad_key = tmp_path / "bad_scbk"
    bad_key.write_text("secret-but-not-hex-0123456789abcd\n")
    with pytest.raises(OsdpError, match=r"credential_reader\.scbk_file: .*32 hex digits") as raised:
        create_card_reader(line.config(scbk_file=str(bad_key)), line.presented.inbox.offer).start(
            DoorEvents()
        )
    assert "secret" not in str(raised.value)

    line.card_reader()  # holds the port (TIOCEXCL)
    with pytest.raises(OsdpError, match=r"credential_reader\.port: .* in use by another program"):
        create_card_reader(line.config(), line.presented.inbox.offer).start(DoorEvents())


def test_doctor_checks(line: Line, tmp_path: Path) -> None:
    def statuses(**settings: Any) -> dict:
        return {
            subject: (status, detail)
            for status, subject, detail, _ in card_reader_checks(line.config(**settings))
        }

    found = statuses()
    assert found["credential reader library"][0] == "ok"
    assert found["credential reader port"][0] == "ok"
    assert found["credential reader secure channel"][0] == "ok"
    assert statuses(port=str(tmp_path / "nothing"))["credential reader port"][0] == "fail"
    assert statuses(secure_channel=False)["credential reader secure channel"][0] == "warn"
    line.key_file.write_text("short\n")
    failed = statuses()["credential reader secure channel"]
    assert failed[0] == "fail" and "short" not in failed[1] and "credential_reader.scbk_file" in failed[1]
    assert card_reader_checks(CredentialReaderConfig()) == []
