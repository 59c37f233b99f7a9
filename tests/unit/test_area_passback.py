"""Anti-passback across an area: the other doors' access events checked and applied (the daemon's
part over a real broker: tests/integration/test_access_control.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import pytest

from appliance.access.area import MAX_EVENT_BYTES, MAX_QUEUED, AreaFeed, AreaPassage, parse_passage
from appliance.access.presence import PRESENCE_FILE, Presence, PresenceStore
from appliance.config_load import validate_config
from appliance.decisions import Decision
from appliance.events import access_event, encode

TOPIC = "face-appliance/door-b/events"


def _event(decision: str = "granted", direction: Any = "in", **changes: Any) -> Dict[str, Any]:
    """An access event as door B's own code writes it."""
    made = Decision(
        3, decision, "ada", "Ada", 0.8, 0.5, 9, None, np.zeros(4, np.float32), 0.9, 0.0, 1.0, "", None, None
    )
    event = access_event(made, "door-b", "lobby", {}, 5.0, direction=direction)
    event.update(changes)
    return event


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PresenceStore]:
    with PresenceStore.open(tmp_path / PRESENCE_FILE) as opened:
        yield opened


def test_a_granted_event_with_a_direction_is_a_passage() -> None:
    event = _event(ts="2026-12-07T10:00:00.250Z")
    passage = parse_passage("door-b", encode(event))
    assert passage == AreaPassage("door-b", "ada", "in", "lobby", 1796637600.25)
    assert parse_passage("door-b", encode(_event("unknown"))) is None
    assert parse_passage("door-b", encode(_event(direction=None))) is None
    assert parse_passage("door-b", encode(_event("denied", reason="expired"))) is None


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"{" + b" " * MAX_EVENT_BYTES + b"}", "more than"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "schema-1"),
        (encode(_event(schema=2)), "schema-1"),
        (encode(_event(device_id="door-c")), "not the door it came from"),
        (encode(_event(direction="up")), "in or out"),
        (encode(_event(identity=None)), "without an identity"),
        (encode(_event(identity={"id": "a" * 65})), "printable"),
        (encode(_event(identity={"id": "bad\nid"})), "printable"),
        (encode(_event(camera_id="../x")), "camera id"),
        (encode(_event(ts="yesterday")), "ISO 8601"),
        (encode(_event(ts="2026-12-07T10:00:00")), "no offset"),
    ],
)
def test_a_wrong_event_is_refused(payload: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_passage("door-b", payload)


def test_the_feed_applies_newer_passages_of_known_people(store: PresenceStore) -> None:
    feed = AreaFeed("face-appliance", ["door-b"], clock=lambda: 1796637600.0)
    assert feed.topics == {TOPIC: "door-b"}
    store.record(Presence("ada", "out", "exit", 1796637000.0))
    feed.offer(TOPIC, encode(_event(ts="2026-12-07T10:00:00Z")), False)  # newer: ada is in
    feed.offer(TOPIC, encode(_event(direction="out", ts="2026-12-07T09:00:00Z")), False)  # older
    feed.offer(TOPIC, encode(_event(identity={"id": "bob"}, ts="2026-12-07T10:00:00Z")), False)
    feed.offer(TOPIC, encode(_event(ts="2026-12-07T11:00:00Z")), True)  # retained: not an event
    feed.offer("face-appliance/door-z/events", encode(_event()), False)  # not followed
    feed.offer(TOPIC, b"garbage", False)
    assert feed.apply(store, {"ada"}.__contains__) == 3
    assert store.last("ada") == Presence("ada", "in", "door-b/lobby", 1796637600.0)
    assert store.last("bob") is None
    assert feed.state() == {
        "doors": ["door-b"],
        "received": 4,
        "applied": 1,
        "older": 1,
        "unknown_identity": 1,
        "refused": 1,
        "dropped": 0,
    }
    assert feed.apply(store, {"ada"}.__contains__) == 0


def test_a_passage_from_the_future_is_refused(store: PresenceStore) -> None:
    now = 1796637600.0  # 2026-12-07T10:00:00Z
    feed = AreaFeed("face-appliance", ["door-b"], clock=lambda: now)
    feed.offer(TOPIC, encode(_event(ts="2026-12-07T10:05:00Z")), False)  # 300 s ahead: a clock off a bit
    feed.offer(TOPIC, encode(_event(direction="out", ts="2026-12-07T10:05:01Z")), False)
    assert feed.apply(store, lambda _: True) == 1 and feed.counts["refused"] == 1
    assert store.last("ada").direction == "in"


def test_the_queue_is_bounded_and_off_drops_what_came(store: PresenceStore) -> None:
    feed = AreaFeed("p", ["door-b"], clock=lambda: 1796637600.0)
    for second in range(MAX_QUEUED + 5):
        feed.offer("p/door-b/events", encode(_event(ts=f"2026-12-07T10:00:{second % 60:02d}Z")), False)
    assert feed.counts["dropped"] == 5
    assert feed.apply(None, lambda _: True) == MAX_QUEUED and store.entries() == []


def test_area_doors_in_the_configuration() -> None:
    one_way = [{"id": "entry", "source": "a.avi", "direction": "in"}]
    config = validate_config(
        {"access": {"anti_passback": {"mode": "hard", "area_doors": ["door-b"]}}, "cameras": one_way}
    )
    assert config.access.anti_passback.area_doors == ["door-b"]
    for section, match in (
        ({"area_doors": ["door-b"]}, "do not see both ways"),  # no camera with a direction at all
        ({"area_doors": ["here"]}, "names this appliance"),
        ({"area_doors": ["door b"]}, "not a device id"),
        ({"area_doors": ["b", "b"]}, "listed twice"),
    ):
        with pytest.raises(Exception, match=match):
            validate_config(
                {
                    "device": {"id": "here"},
                    "access": {"anti_passback": {"mode": "soft", **section}},
                    "camera": {"direction": "none"},
                }
            )
    json.dumps(config.access.anti_passback.model_dump())
