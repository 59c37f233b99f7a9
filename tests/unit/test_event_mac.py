"""Access events signed with a key derived from the site's fleet key (appliance/event_mac.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from appliance.decisions import Decision
from appliance.event_mac import EventKey, EventMacError
from appliance.events import access_event, encode

FLEET_KEY = bytes(range(32))


def _event() -> Dict[str, Any]:
    """A granted event with a crop, a non-ASCII name and a direction, as a door writes it."""
    made = Decision(
        3,
        "granted",
        "zoë",
        "Zoë Ørsted",
        0.8123,
        0.5,
        9,
        None,
        np.zeros(4, np.float32),
        0.9,
        0.0,
        1.0,
        "",
        None,
        None,
    )
    crop = np.random.default_rng(1).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    return access_event(
        made, "door-b", "lobby", {"embedder": "mobilefacenet@1"}, 12.345678, crop, direction="in"
    )


def _received(event: Dict[str, Any]) -> Dict[str, Any]:
    """The event as another door reads it off the broker."""
    return json.loads(encode(event))


def test_a_signed_event_verifies_after_the_broker() -> None:
    key = EventKey(FLEET_KEY)
    event = _event()
    key.sign(event)
    assert set(event["mac"]) == {"alg", "key_id", "value"} and event["mac"]["key_id"] == key.key_id
    received = _received(event)
    EventKey(FLEET_KEY).verify(received)  # another door, the same site key
    reordered = dict(reversed(list(received.items())))  # the order of keys is not signed
    key.verify(reordered)


def test_the_key_is_derived_not_the_fleet_key_itself() -> None:
    key = EventKey(FLEET_KEY)
    assert key._key != FLEET_KEY and len(key._key) == 32
    assert EventKey(bytes(32)).key_id != key.key_id
    with pytest.raises(ValueError, match="32 bytes"):
        EventKey(b"short")


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.update(decision="denied"),
        lambda e: e.update(direction="out"),
        lambda e: e.update(device_id="door-c"),
        lambda e: e.update(ts="2026-12-07T10:00:00Z"),
        lambda e: e["identity"].update(id="mallory"),
        lambda e: e.update(score=0.8124),
        lambda e: e.update(extra=1),
        lambda e: e.pop("camera_id"),
        lambda e: e.update(crop=e["crop"][:-4] + "AAAA"),
    ],
)
def test_any_change_is_refused(change: Any) -> None:
    key = EventKey(FLEET_KEY)
    event = _event()
    key.sign(event)
    received = _received(event)
    change(received)
    with pytest.raises(EventMacError, match="does not match"):
        key.verify(received)


@pytest.mark.parametrize(
    "mac, match",
    [
        (None, "carries no mac"),
        ("deadbeef", "malformed mac"),
        ({"alg": "HMAC-SHA1", "key_id": "0" * 16, "value": "0" * 64}, "malformed mac"),
        ({"alg": "HMAC-SHA256", "key_id": "0" * 16}, "malformed mac"),
        ({"alg": "HMAC-SHA256", "key_id": "XYZ", "value": "0" * 64}, "malformed mac key_id"),
        ({"alg": "HMAC-SHA256", "key_id": "0" * 16, "value": "0" * 64}, "not this site's"),
    ],
)
def test_a_missing_or_malformed_mac_is_refused(mac: Any, match: str) -> None:
    event = _event()
    if mac is not None:
        event["mac"] = mac
    with pytest.raises(EventMacError, match=match):
        EventKey(FLEET_KEY).verify(_received(event))


def test_a_wrong_value_and_not_json_are_refused() -> None:
    key = EventKey(FLEET_KEY)
    event = _event()
    key.sign(event)
    event["mac"]["value"] = event["mac"]["value"].upper()
    with pytest.raises(EventMacError, match="does not match"):
        key.verify(_received(event))
    key.sign(event)
    received = json.loads(encode(event).replace(b'"score":0.8123', b'"score":NaN'))
    with pytest.raises(EventMacError, match="not canonical JSON"):
        key.verify(received)


def test_doctor_checks_a_fleet_key_that_only_signs_events(tmp_path: Path) -> None:
    from appliance.config_load import validate_config
    from appliance.doctor import FAIL, OK, check_fleet
    from appliance.fleet.records import create_fleet_key

    key_file = tmp_path / "fleet.key"
    config = validate_config({"fleet": {"fleet_key_file": str(key_file)}})
    (missing, off) = check_fleet(config)
    assert (missing.status, missing.subject, off.status, off.subject) == (FAIL, "fleet key", OK, "fleet")
    create_fleet_key(key_file)
    (found, _) = check_fleet(config)
    assert found.status == OK and "signs the access events" in found.detail
