"""Anti-passback across an area: the other doors' access events checked and applied (the daemon's
part over a real broker: tests/integration/test_access_control.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from appliance.access.area import MAX_EVENT_BYTES, MAX_QUEUED, AreaFeed, AreaPassage, parse_passage
from appliance.access.presence import PRESENCE_FILE, Presence, PresenceStore
from appliance.config_load import validate_config
from appliance.decisions import Decision
from appliance.event_mac import EventKey
from appliance.events import access_event, encode

TOPIC = "face-appliance/door-b/events"
#: The site's event key, from a fleet key (every door of the area holds the same).
KEY = EventKey(bytes(range(32)))


def _event(decision: str = "granted", direction: Any = "in", **changes: Any) -> Dict[str, Any]:
    """An access event as door B's own code writes it."""
    made = Decision(
        3, decision, "ada", "Ada", 0.8, 0.5, 9, None, np.zeros(4, np.float32), 0.9, 0.0, 1.0, "", None, None
    )
    event = access_event(made, "door-b", "lobby", {}, 5.0, direction=direction)
    event.update(changes)
    return event


def _signed(event: Dict[str, Any], key: EventKey = KEY) -> bytes:
    """The event as door B publishes it with the site's fleet key."""
    key.sign(event)
    return encode(event)


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
        (b"[1, 2]", "schema-1 or schema-2"),
        (encode(_event(schema=3)), "schema-1 or schema-2"),
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
    feed = AreaFeed("face-appliance", ["door-b"], KEY, clock=lambda: 1796637600.0)
    assert feed.topics == {TOPIC: "door-b"}
    store.record(Presence("ada", "out", "exit", 1796637000.0))
    feed.offer(TOPIC, _signed(_event(ts="2026-12-07T10:00:00Z")), False)  # newer: ada is in
    feed.offer(TOPIC, _signed(_event(direction="out", ts="2026-12-07T09:00:00Z")), False)  # older
    feed.offer(TOPIC, _signed(_event(identity={"id": "bob"}, ts="2026-12-07T10:00:00Z")), False)
    feed.offer(TOPIC, _signed(_event(ts="2026-12-07T11:00:00Z")), True)  # retained: not an event
    feed.offer("face-appliance/door-z/events", _signed(_event()), False)  # not followed
    feed.offer(TOPIC, b"garbage", False)
    assert feed.apply(store, {"ada"}.__contains__) == 3
    assert store.last("ada") == Presence("ada", "in", "door-b/lobby", 1796637600.0)
    assert store.last("bob") is None
    assert feed.state() == {
        "doors": ["door-b"],
        "signed": True,
        "received": 4,
        "applied": 1,
        "older": 1,
        "unknown_identity": 1,
        "refused": 1,
        "unauthenticated": 0,
        "dropped": 0,
        "session": None,
    }
    assert feed.apply(store, {"ada"}.__contains__) == 0


def test_a_passage_from_the_future_is_refused(store: PresenceStore) -> None:
    now = 1796637600.0  # 2026-12-07T10:00:00Z
    feed = AreaFeed("face-appliance", ["door-b"], KEY, clock=lambda: now)
    feed.offer(TOPIC, _signed(_event(ts="2026-12-07T10:05:00Z")), False)  # 300 s ahead: a clock off a bit
    feed.offer(TOPIC, _signed(_event(direction="out", ts="2026-12-07T10:05:01Z")), False)
    assert feed.apply(store, lambda _: True) == 1 and feed.counts["refused"] == 1
    assert store.last("ada").direction == "in"


def test_the_queue_is_bounded_and_off_drops_what_came(store: PresenceStore) -> None:
    feed = AreaFeed("p", ["door-b"], None, clock=lambda: 1796637600.0)  # unsigned
    for second in range(MAX_QUEUED + 5):
        feed.offer("p/door-b/events", encode(_event(ts=f"2026-12-07T10:00:{second % 60:02d}Z")), False)
    assert feed.counts["dropped"] == 5
    assert feed.apply(None, lambda _: True) == MAX_QUEUED and store.entries() == []


def test_only_events_signed_with_the_site_key_count(store: PresenceStore) -> None:
    """A client that may publish on door B's topic, but holds no fleet key, makes nobody in or out."""
    feed = AreaFeed("face-appliance", ["door-b"], KEY, clock=lambda: 1796637600.0)
    at = {"ts": "2026-12-07T10:00:00Z"}
    tampered = json.loads(_signed(_event(**at)))
    tampered["identity"]["id"] = "bob"
    forged = _event(**at)
    forged["mac"] = {"alg": "HMAC-SHA256", "key_id": KEY.key_id, "value": "0" * 64}
    for payload in (
        encode(_event(**at)),  # unsigned
        _signed(_event(**at), EventKey(bytes(32))),  # another site's key
        encode(tampered),
        encode(forged),
    ):
        feed.offer(TOPIC, payload, False)
    feed.offer(TOPIC, encode(_event("denied", reason="expired")), False)  # no passage: not even checked
    assert feed.apply(store, lambda _: True) == 0 and store.entries() == []
    assert (feed.counts["unauthenticated"], feed.counts["refused"], feed.counts["received"]) == (4, 0, 5)
    feed.offer(TOPIC, _signed(_event(**at)), False)
    assert feed.apply(store, lambda _: True) == 1 and store.last("ada").direction == "in"


def test_each_message_is_acknowledged_in_order_once_applied(store: PresenceStore) -> None:
    """The broker sends again what was not acknowledged; so an ack comes only after the pipeline thread
    applied (or refused) the message, in the order they came (MQTT 3.1.1 §4.6)."""
    feed = AreaFeed("face-appliance", ["door-b"], KEY, clock=lambda: 1796637600.0)
    acked: List[str] = []
    feed.offer(TOPIC, _signed(_event(ts="2026-12-07T10:00:00Z")), False, lambda: acked.append("passage"))
    feed.offer(TOPIC, b"garbage", False, lambda: acked.append("refused"))
    feed.offer(TOPIC, encode(_event("unknown")), False, lambda: acked.append("not a passage"))
    assert acked == [] and store.last("ada") is None
    assert feed.apply(store, lambda _: True) == 3
    assert acked == ["passage", "refused", "not a passage"] and store.last("ada") is not None
    feed.offer(TOPIC, _signed(_event(ts="2026-12-07T10:00:01Z")), False, lambda: acked.append("off"))
    feed.apply(None, lambda _: True)  # anti-passback turned off meanwhile: dropped, still acknowledged
    assert acked[-1] == "off"


def test_a_message_that_finds_no_room_is_left_to_the_broker() -> None:
    feed = AreaFeed("p", ["door-b"], None, clock=lambda: 1796637600.0)
    acked: List[int] = []
    for n in range(MAX_QUEUED + 1):
        feed.offer("p/door-b/events", b"garbage", False, lambda n=n: acked.append(n), wait_s=0.01)
    assert feed.counts["dropped"] == 1
    assert feed.apply(None, lambda _: True) == MAX_QUEUED and acked == list(range(MAX_QUEUED))


def test_an_unsigned_area_takes_well_formed_events() -> None:
    feed = AreaFeed("face-appliance", ["door-b"], None, clock=lambda: 1796637600.0)
    feed.offer(TOPIC, encode(_event(ts="2026-12-07T10:00:00Z")), False)
    assert feed.state()["signed"] is False and feed.counts["unauthenticated"] == 0
    assert feed.apply(None, lambda _: True) == 1


def test_area_doors_in_the_configuration(tmp_path: Path) -> None:
    one_way = [{"id": "entry", "source": "a.avi", "direction": "in"}]
    key_file = str(tmp_path / "fleet.key")
    config = validate_config(
        {
            "access": {"anti_passback": {"mode": "hard", "area_doors": ["door-b"]}},
            "cameras": one_way,
            "fleet": {"fleet_key_file": key_file},
        }
    )
    assert config.access.anti_passback.area_doors == ["door-b"]
    assert config.access.anti_passback.area_events == "signed"
    with pytest.raises(Exception, match=r"fleet.fleet_key_file is not set.*area_events = 'unsigned'"):
        validate_config(
            {"access": {"anti_passback": {"mode": "hard", "area_doors": ["door-b"]}}, "cameras": one_way}
        )
    unsigned = {"mode": "hard", "area_doors": ["door-b"], "area_events": "unsigned"}
    assert (
        validate_config({"access": {"anti_passback": unsigned}, "cameras": one_way}).fleet.fleet_key_file
        is None
    )
    for section, match in (
        ({"area_doors": ["door-b"]}, "do not see both ways"),  # no camera with a direction at all
        ({"area_doors": ["here"]}, "names this appliance"),
        ({"area_doors": ["door b"]}, "not a device id"),
        ({"area_doors": ["b", "b"]}, "listed twice"),
        ({"area_events": "maybe"}, "signed"),
    ):
        with pytest.raises(Exception, match=match):
            validate_config(
                {
                    "device": {"id": "here"},
                    "access": {"anti_passback": {"mode": "soft", **section}},
                    "camera": {"direction": "none"},
                    "fleet": {"fleet_key_file": key_file},
                }
            )
    json.dumps(config.access.anti_passback.model_dump())


def test_an_unreadable_fleet_key_leaves_events_unsigned_and_the_area_unfollowed(tmp_path: Path) -> None:
    """Never an area followed unchecked: without its key the daemon follows none of it, and says so."""
    from appliance.daemon import Appliance

    settings = {
        "storage": {"dir": str(tmp_path / "state")},
        "access": {"anti_passback": {"mode": "hard", "area_doors": ["door-b"]}},
        "cameras": [{"id": "entry", "source": "a.avi", "direction": "in"}],
        "fleet": {"fleet_key_file": str(tmp_path / "missing.key")},
    }
    appliance = Appliance(validate_config(settings))
    with PresenceStore.open(tmp_path / PRESENCE_FILE) as appliance.presence:
        key = appliance._event_key()
        appliance._open_area(key)
        assert key is None and appliance.area is None
        assert [d.split(":")[0] for d in appliance.degraded] == ["event signing", "area"], appliance.degraded
        settings["access"]["anti_passback"]["area_events"] = "unsigned"  # type: ignore[index]
        unsigned = Appliance(validate_config(settings))
        unsigned.presence = appliance.presence
        unsigned._open_area(unsigned._event_key())
        assert unsigned.area is not None and unsigned.area.state()["signed"] is False


def test_an_operators_reset_is_not_undone_by_an_older_event(store: PresenceStore) -> None:
    """Security forgets Ada; door B's signed ``in`` from before that (delivered late, or published again
    by someone who recorded it) does not make her *in* again. A newer one does."""
    feed = AreaFeed("face-appliance", ["door-b"], KEY, clock=lambda: 1796637600.0)
    entered = _signed(_event(ts="2026-12-07T09:00:00Z"))
    feed.offer(TOPIC, entered, False)
    feed.apply(store, lambda _: True)
    assert store.last("ada") is not None
    assert store.reset(["ada"], forgotten_at=1796634000.0 + 60) == 1  # 09:01
    feed.offer(TOPIC, entered, False)  # the same event again
    feed.apply(store, lambda _: True)
    assert store.last("ada") is None and feed.counts["older"] == 1
    feed.offer(TOPIC, _signed(_event(ts="2026-12-07T09:30:00Z")), False)
    feed.apply(store, lambda _: True)
    assert store.last("ada") is not None and store.last("ada").at == 1796634000.0 + 1800


def test_the_resets_kept_and_when_they_go(store: PresenceStore) -> None:
    from appliance.access.passback import forget_removed

    store.record(Presence("bob", "in", "entry", 50.0))
    assert store.reset(["ada"], forgotten_at=100.0) == 0 and store.forgotten_since("ada") == 100.0
    assert store.forgotten_since("bob") is None and sorted(store.identity_ids()) == ["ada", "bob"]
    assert store.reset(None, forgotten_at=200.0) == 1  # everyone: bob's passage, and a reset of all
    assert (store.forgotten_since("ada"), store.forgotten_since("carol")) == (200.0, 200.0)
    assert (
        store.reset([], forgotten_at=300.0) == 0 and store.forgotten_since("carol") == 200.0
    )  # nobody named
    store.reset(["ada", "ada"], forgotten_at=250.0)  # named twice: one reset
    assert forget_removed(store, lambda identity_id: identity_id != "ada") == 0  # no passage, but her reset
    assert store.identity_ids() == [] and store.forgotten_since("ada") == 200.0  # only everyone's is left
    store.reset(before=201.0)  # a daily reset supersedes the operators' resets before it
    assert store.forgotten_since("ada") is None
    store.reset(["dan"], forgotten_at=400.0)
    store.reset()  # anti-passback off: nothing kept about anyone
    assert store.forgotten_since("dan") is None
