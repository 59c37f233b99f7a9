"""The OSDP reader against libosdp's real control panel over a ``socat`` pty pair (nothing doubled).

Secure Channel on with the same key on both ends, one card read per granted passage with the right
Wiegand bits, nothing for denied or unknown, the panel's LED answer as ``panel_granted`` /
``panel_denied``, a wrong key (no Secure Channel, no card data), install-mode commissioning, a stale
card read withdrawn, a lost serial port reopened, and ``close()`` within its deadline.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest

from appliance.osdp import OsdpError, create_reader
from appliance.osdp.doctor import doctor_checks
from appliance.osdp.reader import OsdpReader
from appliance.osdp.settings import OsdpConfig
from appliance.peripherals import Passage
from tests.mqtt_broker import wait_until
from tests.osdp_support import (
    KEY,
    OTHER_KEY,
    DoorEvents,
    Panel,
    osdp_module,
    osdp_threads,
    pty_pair,
    write_key,
)

ADDRESS = 5


def passage(decision: str, credential: Optional[str], reason: Optional[str] = None) -> Passage:
    identity = None if decision == "unknown" or reason == "liveness" else "person"
    return Passage(str(uuid.uuid4()), decision, reason, identity, credential)


def w26(facility: int, card: int) -> str:
    """The 26 bits of HID H10301 written out independently of the code under test."""
    data = format(facility, "08b") + format(card, "016b")
    even = str(data[:12].count("1") % 2)
    odd = str(1 - data[12:].count("1") % 2)
    return even + data + odd


def bits_of(read: dict) -> str:
    return "".join(format(byte, "08b") for byte in read["data"])[: read["length"]]


class Bus:
    """A pty pair, the readers started on it (closed at the end), and their door events."""

    def __init__(self, folder: Path, reader_end: str, panel_end: str) -> None:
        self.folder = folder
        self.reader_end = reader_end
        self.panel_end = panel_end
        self.key_file = write_key(folder / "osdp_scbk", KEY)
        self.readers: List[OsdpReader] = []
        self.events = DoorEvents()

    def reader(self, **settings: Any) -> OsdpReader:
        document = {
            "enabled": True,
            "port": self.reader_end,
            "address": ADDRESS,
            "scbk_file": str(self.key_file),
            "credential": {"facility_code": 7},
            **settings,
        }
        reader = create_reader(OsdpConfig.model_validate(document))
        assert isinstance(reader, OsdpReader)
        self.readers.append(reader)
        reader.start(self.events)
        return reader

    def panel(self, key: Optional[bytes] = KEY) -> Panel:
        return Panel(self.panel_end, ADDRESS, key)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    osdp_module()
    with pty_pair(tmp_path) as (reader_end, panel_end):
        created = Bus(tmp_path, reader_end, panel_end)
        try:
            yield created
        finally:
            for reader in created.readers:
                reader.close(5.0)


def test_secure_channel_one_card_read_per_grant_and_the_panels_answer(bus: Bus) -> None:
    osdp = osdp_module()
    reader = bus.reader()
    with bus.panel() as panel:
        assert panel.wait(panel.secure), "no Secure Channel between the panel and the reader"
        assert bus.events.wait_for("osdp_online") == [{"secure_channel": True, "address": ADDRESS}]
        assert reader.state()["link"] == "secure" and reader.state()["usable"]

        granted = passage("granted", "12345")
        reader.on_passage(granted)
        reader.on_passage(passage("denied", "12345", reason="expired"))
        reader.on_passage(passage("denied", None, reason="liveness"))
        reader.on_passage(passage("unknown", None))
        reads = panel.card_reads(wait_s=1.5)
        assert len(reads) == 1, reads
        (read,) = reads
        assert read["format"] == osdp.CardFormat.Wiegand and read["length"] == 26
        assert bits_of(read) == w26(7, 12345)
        assert read["data"] == bytes.fromhex("83981cc0")

        # The panel answers with its LED: green after our card read is its grant.
        panel.led(osdp.CommandLEDColor.Green)
        (answer,) = bus.events.wait_for("panel_granted")
        assert answer["access_event_id"] == granted.event_id
        assert answer["led"]["on_color"] == "green" and answer["led"]["temporary"] is True
        assert 0 <= answer["after_ms"] < 5000

        # A second passage; the panel refuses it (red).
        second = passage("granted", "12345")
        reader.on_passage(second)
        assert len(panel.card_reads(wait_s=1.0)) == 1
        panel.led(osdp.CommandLEDColor.Red)
        (refusal,) = bus.events.wait_for("panel_denied")
        assert refusal["access_event_id"] == second.event_id and refusal["led"]["on_color"] == "red"

        # An LED command with no card read before it is no decision; buzzer and text are kept.
        panel.led(osdp.CommandLEDColor.Green, temporary=False)
        panel.buzzer()
        panel.text("Welcome")
        wait_until(lambda: reader.state()["commands"].get("text") == 1, 15.0, "the reader's state")
        state = reader.state()
        assert state["card_reads"] == {"sent": 2, "delivered": 2, "withdrawn": 0, "refused": {}}
        assert state["panel"]["granted"] == 1 and state["panel"]["denied"] == 1
        assert state["panel"]["last"]["access_event_id"] == second.event_id
        assert state["commands"] == {"led": 3, "buzzer": 1, "text": 1}
        last = state["last_commands"]
        assert last["text"]["text"] == "Welcome" and last["buzzer"]["rep_count"] == 1
        assert last["led"]["on_color"] == "green" and last["led"]["temporary"] is False
        assert len(bus.events.of("panel_granted")) == 1

    started = time.monotonic()
    reader.close(2.0)
    assert time.monotonic() - started < 2.0
    assert not osdp_threads()
    assert bus.events.kinds()[-1] == "osdp_offline" and bus.events.of("osdp_offline")[-1] == {
        "reason": "closed"
    }
    assert not bus.events.of("osdp_report_refused")
    reader.close(2.0)  # idempotent


def test_a_wrong_key_gives_no_secure_channel_and_no_card_data(bus: Bus) -> None:
    reader = bus.reader()
    with bus.panel(OTHER_KEY) as panel:
        wait_until(
            lambda: reader.state()["link"] == "online", 15.0, "the reader's state"
        )  # the panel talks to the reader …
        time.sleep(2.0)
        assert not panel.secure() and reader.state()["link"] == "online"  # … but never securely
        granted = passage("granted", "12345")
        reader.on_passage(granted)
        assert panel.card_reads(wait_s=2.0) == []
        state = reader.state()
        assert state["usable"] is False and state["card_reads"]["sent"] == 0
        assert state["card_reads"]["refused"] == {"not_secure": 1}
    assert bus.events.of("osdp_report_refused") == [
        {"access_event_id": granted.event_id, "reason": "not_secure"}
    ]
    assert "osdp_online" not in bus.events.kinds()


def test_install_mode_takes_the_panels_key_and_other_keysets_are_refused(bus: Bus) -> None:
    key_file = bus.folder / "commissioned_scbk"
    reader = bus.reader(scbk_file=str(key_file), install_mode=True)
    with bus.panel(OTHER_KEY) as panel:  # the panel falls back to SCBK-D, then sends OTHER_KEY
        assert panel.wait(panel.secure)
    assert key_file.read_text() == OTHER_KEY.hex() + "\n"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert reader.state()["keyset"]["stored"] is True
    with bus.panel(OTHER_KEY) as panel:  # the reader now holds the panel's key
        assert panel.wait(panel.secure)
    reader.close(2.0)

    # Out of install mode, a KEYSET is refused and the key file stays.
    reader = bus.reader(scbk_file=str(key_file))
    with bus.panel(OTHER_KEY) as panel:
        assert panel.wait(panel.secure)
        panel.set_key(KEY)
        wait_until(lambda: reader.state()["keyset"] is not None, 15.0, "the reader's state")
    assert reader.state()["keyset"]["stored"] is False
    assert reader.state()["last_commands"]["keyset"]["accepted"] is False
    assert key_file.read_text() == OTHER_KEY.hex() + "\n"
    assert KEY.hex() not in str(reader.state()) and OTHER_KEY.hex() not in str(reader.state())


def test_credentials_that_do_not_fit_are_refused_never_truncated(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance.osdp")
    reader = bus.reader()
    with bus.panel() as panel:
        assert panel.wait(panel.secure)
        reader.on_passage(passage("granted", "70000"))  # above the 16-bit card number of wiegand26
        reader.on_passage(passage("granted", "12a45"))
        reader.on_passage(passage("granted", None))
        assert panel.card_reads(wait_s=1.5) == []
    refused = reader.state()["card_reads"]["refused"]
    assert refused == {"credential_unfit": 2, "no_credential": 1}
    assert [e["reason"] for e in bus.events.of("osdp_report_refused")] == [
        "credential_unfit",
        "credential_unfit",
        "no_credential",
    ]
    above_debug = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    assert any("credential_unfit" in line for line in above_debug)
    assert not any("70000" in line or "12a45" in line for line in above_debug)


def test_report_options_raw_cards_denied_and_unknown(bus: Bus) -> None:
    osdp = osdp_module()
    reader = bus.reader(
        report_denied=True,
        unknown_card="0",
        credential={"format": "raw", "bits": 40, "number_base": 16},
    )
    with bus.panel() as panel:
        assert panel.wait(panel.secure)
        reader.on_passage(passage("denied", "04A2B3C4D5", reason="outside_schedule"))
        reader.on_passage(passage("denied", None, reason="liveness"))  # a photo never reaches the panel
        reader.on_passage(passage("denied", "0A0B0C0D0E", reason="lockout"))  # nor a locked camera's face
        for held in (
            "second_factor",
            "wrong_credential",
            "credential_lockout",
        ):  # nor a face held for its card or PIN
            reader.on_passage(passage("denied", "0A0B0C0D0E", reason=held))
        reader.on_passage(passage("unknown", None))
        reads = panel.card_reads(wait_s=1.5)
    assert [(r["format"], r["length"], r["data"]) for r in reads] == [
        (osdp.CardFormat.Unspecified, 40, bytes.fromhex("04a2b3c4d5")),
        (osdp.CardFormat.Unspecified, 40, bytes(5)),
    ]


def test_a_card_read_the_panel_does_not_collect_is_withdrawn_never_sent_late(bus: Bus) -> None:
    reader = bus.reader(card_read_ttl_s=0.5)
    with bus.panel() as panel:
        assert panel.wait(panel.secure)
    # The panel stopped polling; for a few seconds the reader cannot tell it from a slow panel.
    granted = passage("granted", "12345")
    reader.on_passage(granted)
    bus.events.wait_for("osdp_report_refused")
    assert bus.events.of("osdp_report_refused") == [
        {"access_event_id": granted.event_id, "reason": "not_collected"}
    ]
    assert reader.state()["card_reads"]["withdrawn"] == 1
    with bus.panel() as panel:
        assert panel.wait(panel.secure)
        assert panel.card_reads(wait_s=1.5) == []


def test_a_lost_serial_port_is_reopened(tmp_path: Path) -> None:
    osdp_module()
    key_file = write_key(tmp_path / "osdp_scbk", KEY)
    reader: Optional[Any] = None
    try:
        with pty_pair(tmp_path) as (reader_end, panel_end):
            config = {"enabled": True, "port": reader_end, "address": ADDRESS, "scbk_file": str(key_file)}
            reader = create_reader(OsdpConfig.model_validate(config))
            reader.start(DoorEvents())
            with Panel(panel_end, ADDRESS, KEY) as panel:
                assert panel.wait(panel.secure)
        # socat is gone: the reader's end of the line fails (EIO), as with an unplugged USB adapter.
        wait_until(lambda: reader.state()["serial"]["errors"] > 0, 10.0, "the reader's state")
        with pty_pair(tmp_path) as (reader_end, panel_end):  # plugged in again, same device name
            with Panel(panel_end, ADDRESS, KEY) as panel:
                assert panel.wait(panel.secure, timeout=20), reader.state()
                reader.on_passage(passage("granted", "42"))
                assert len(panel.card_reads(wait_s=1.5)) == 1
            assert reader.state()["serial"]["error"] is None
    finally:
        if reader is not None:
            reader.close(5.0)


def test_start_names_the_key_to_fix(bus: Bus, tmp_path: Path) -> None:
    missing = OsdpConfig.model_validate(
        {"enabled": True, "port": str(tmp_path / "no-such-tty"), "scbk_file": str(bus.key_file)}
    )
    with pytest.raises(OsdpError, match=r"osdp\.port: .*no-such-tty does not exist"):
        create_reader(missing).start(DoorEvents())

    bad_key = tmp_path / "bad_scbk"
    bad_key.write_text("secret-but-not-hex-0123456789abcd\n")
    config = OsdpConfig.model_validate({"enabled": True, "port": bus.reader_end, "scbk_file": str(bad_key)})
    with pytest.raises(OsdpError, match=r"osdp\.scbk_file: .*32 hex digits") as raised:
        create_reader(config).start(DoorEvents())
    assert "secret" not in str(raised.value)

    bus.reader()  # holds the port (TIOCEXCL)
    with pytest.raises(OsdpError, match=r"osdp\.port: .* in use by another program"):
        create_reader(
            OsdpConfig.model_validate(
                {"enabled": True, "port": bus.reader_end, "scbk_file": str(bus.key_file)}
            )
        ).start(DoorEvents())


def test_doctor_checks(bus: Bus, tmp_path: Path) -> None:
    def statuses(**settings: Any) -> dict:
        document = {"enabled": True, "port": bus.reader_end, "scbk_file": str(bus.key_file), **settings}
        return {
            subject: (status, detail)
            for status, subject, detail, _ in doctor_checks(OsdpConfig.model_validate(document))
        }

    found = statuses()
    assert found["osdp library"][0] == "ok" and "libosdp" in found["osdp library"][1]
    assert found["osdp port"][0] == "ok" and found["osdp secure channel"][0] == "ok"
    assert statuses(port=str(tmp_path / "nothing"))["osdp port"][0] == "fail"
    assert statuses(secure_channel=False)["osdp secure channel"][0] == "warn"
    bus.key_file.chmod(0o644)
    assert statuses()["osdp secure channel"][0] == "warn"
    bus.key_file.write_text("short\n")
    failed = statuses()["osdp secure channel"]
    assert failed[0] == "fail" and "short" not in failed[1]
    assert doctor_checks(OsdpConfig()) == []


def test_a_doors_tamper_reaches_the_panel_as_a_local_status(bus: Bus) -> None:
    """The door's tamper switch (a door event) becomes an osdp_LSTATR with the tamper bit; cleared, a
    normal one; a tamper while the panel is away is reported when the link is back."""
    osdp = osdp_module()
    reader = bus.reader()
    with bus.panel() as panel:
        assert panel.wait(panel.secure), "no Secure Channel between the panel and the reader"
        reader.on_door_event("exit_request", {"unlocks": True, "door_id": "door"})  # nothing to report
        reader.on_door_event("tamper", {"door_id": "way-in"})
        assert panel.wait(lambda: len(panel.statuses) == 1), panel.statuses
        (report,) = panel.statuses
        assert report["type"] == osdp.StatusReportType.Local and report["report"][:2] == b"\x01\x00", report
        reader.on_door_event("tamper", {"door_id": "way-out"})  # still tampered: nothing new
        reader.on_door_event("tamper_cleared", {"door_id": "way-in", "active_s": 3.0})
        time.sleep(0.5)
        assert len(panel.statuses) == 1  # way-out's housing is still open
        reader.on_door_event("tamper_cleared", {"door_id": "way-out", "active_s": 4.0})
        assert panel.wait(lambda: len(panel.statuses) == 2), panel.statuses
        assert panel.statuses[1]["report"][:2] == b"\x00\x00"
        assert reader.state()["tamper"] == {"active": False, "reported": False, "reports": 2}
    reader.on_door_event("tamper", {"door_id": "way-in"})  # the panel is away
    wait_until(lambda: reader.state()["tamper"]["active"], 15.0, "the reader's state")
    assert reader.state()["tamper"]["reported"] is False
    with bus.panel() as panel:
        assert panel.wait(lambda: len(panel.statuses) == 1, timeout=20.0), "the tamper was not reported"
        assert panel.statuses[0]["report"][:2] == b"\x01\x00"
    assert reader.state()["tamper"]["reported"] is True
