"""Anti-passback: the presence store on disk, the rule, the judge that applies it, its configuration
and its commands (the daemon's part: tests/integration/test_access_control.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import pytest

from appliance.access.judge import GONE, AccessJudge
from appliance.access.passback import (
    PASSBACK,
    VIOLATION,
    last_reset,
    open_presence,
    presence_document,
)
from appliance.access.policy import IdentityPolicy, parse_instant
from appliance.access.presence import PRESENCE_FILE, Presence, PresenceError, PresenceStore
from appliance.access.settings import AccessConfig
from appliance.access.zones import load_zone
from appliance.commands import CommandError, parse
from appliance.config_load import validate_config
from appliance.decisions import Decision
from appliance.events import access_event
from appliance.gallery.store import TemplateStore

VERSION = "mobilefacenet@foamliu-v1.0"
DIRECTIONS = {"entry": "in", "exit": "out", "lobby": "none"}
NOON = parse_instant("2026-12-07T12:00:00Z", "t")
TWO_WAYS = [
    {"id": "entry", "source": "a.avi", "direction": "in"},
    {"id": "exit", "source": "b.avi", "direction": "out"},
]


def _vector(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=(1, 128)).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _access(mode: str = "hard", **passback: Any) -> AccessConfig:
    return AccessConfig.model_validate(
        {"time_zone": "Europe/Berlin", "anti_passback": {"mode": mode, **passback}}
    )


@pytest.fixture
def presence(tmp_path: Path) -> Iterator[PresenceStore]:
    with PresenceStore.open(tmp_path / PRESENCE_FILE) as store:
        yield store


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[TemplateStore]:
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.add("ada", "Ada", VERSION, _vector(0))
        store.add("sam", "Sam", VERSION, _vector(1), policy=IdentityPolicy(groups=("security",)))
        store.add("tom", "Tom", VERSION, _vector(2), policy=IdentityPolicy(suspended=True))
        yield store


def _judge(
    gallery: TemplateStore, presence: PresenceStore, mode: str = "hard", **passback: Any
) -> AccessJudge:
    return AccessJudge.for_door(_access(mode, **passback), gallery, presence, DIRECTIONS)


# -- the store ---------------------------------------------------------------------------------------


def test_the_store_keeps_one_last_passage_per_identity_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / PRESENCE_FILE
    with PresenceStore.open(path) as store:
        store.record(Presence("ada", "in", "entry", 100.0))
        store.record(Presence("bob", "in", "entry", 150.0))
        store.record(Presence("ada", "out", "exit", 200.0))
        with pytest.raises(ValueError, match="direction"):
            store.record(Presence("ada", "sideways", "exit", 300.0))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with PresenceStore.open(path) as store:
        assert store.last("ada") == Presence("ada", "out", "exit", 200.0)
        assert store.last("nobody") is None
        assert [e.identity_id for e in store.entries()] == ["bob", "ada"]  # oldest first
        assert [e.identity_id for e in store.entries("in")] == ["bob"]
        assert [e.identity_id for e in store.entries(since=160.0)] == ["ada"]
        assert store.reset(before=160.0) == 1 and store.last("bob") is None
        store.record(Presence("cy", "in", "entry", 300.0))
        assert store.reset(["ada", "nobody"]) == 1
        assert store.reset() == 1 and store.entries() == []
    with sqlite3.connect(str(path)) as db:  # nothing left of a forgotten passage in the file's rows
        assert db.execute("SELECT COUNT(*) FROM presence").fetchone()[0] == 0


def test_a_damaged_or_newer_store_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / PRESENCE_FILE
    path.write_bytes(b"this is not SQLite " * 100)
    with pytest.raises(PresenceError, match=r"not a usable presence database.*delete it"):
        PresenceStore.open(path)
    path.unlink()
    with sqlite3.connect(str(path)) as db:
        db.execute("PRAGMA user_version = 9")
    with pytest.raises(PresenceError, match="schema version 9, newer than this firmware's 1"):
        PresenceStore.open(path)
    closed = PresenceStore.open(tmp_path / "other.db")
    closed.close()
    closed.close()  # idempotent
    with pytest.raises(PresenceError, match="closed"):
        closed.last("ada")


# -- the rule ----------------------------------------------------------------------------------------


def test_the_last_daily_reset_is_today_s_or_yesterday_s_in_the_door_s_zone() -> None:
    berlin = load_zone("Europe/Berlin")
    assert last_reset(NOON, None, berlin) is None
    assert last_reset(NOON, "03:00", berlin) == parse_instant("2026-12-07T03:00:00+01:00", "t")
    assert last_reset(NOON, "14:00", berlin) == parse_instant("2026-12-06T14:00:00+01:00", "t")
    # 12:00 UTC is 13:00 in Berlin: a 13:00 reset has just happened, a 13:01 one is yesterday's
    assert last_reset(NOON, "13:00", berlin) == NOON
    assert last_reset(NOON, "13:01", berlin) == parse_instant("2026-12-06T13:01:00+01:00", "t")
    summer = parse_instant("2026-07-01T12:00:00Z", "t")  # CEST, UTC+2
    assert last_reset(summer, "03:00", berlin) == parse_instant("2026-07-01T03:00:00+02:00", "t")


def test_in_twice_is_a_passback_in_then_out_is_not(gallery: TemplateStore, presence: PresenceStore) -> None:
    judge = _judge(gallery, presence, same_passage_s=30)
    passback = judge.passback
    assert passback is not None and passback.hard
    assert judge.judge_passage("ada", "entry", NOON).reason is None  # no kept passage: either way
    assert presence.last("ada") == Presence("ada", "in", "entry", NOON.timestamp())
    # the same passage: her track lost and found again at the entry, within same_passage_s
    assert judge.judge_passage("ada", "entry", NOON + timedelta(seconds=30)).reason is None
    later = NOON + timedelta(seconds=61)
    assert judge.judge_passage("ada", "entry", later).reason == PASSBACK
    assert presence.last("ada").at == (NOON + timedelta(seconds=30)).timestamp()  # a refusal records nothing
    assert judge.judge_passage("ada", "exit", later).reason is None
    assert judge.judge_passage("ada", "exit", later + timedelta(minutes=5)).reason == PASSBACK
    assert judge.judge_passage("ada", "entry", later + timedelta(minutes=6)).reason is None
    # a camera without a direction is not held to it, and records nothing
    assert judge.judge_passage("ada", "lobby", later + timedelta(minutes=7)).reason is None
    assert presence.last("ada").direction == "in"
    # asked only (access check --camera): the answer without a record
    assert judge.judge_passage("ada", "exit", later + timedelta(minutes=8), record=False).reason is None
    assert presence.last("ada").direction == "in"


def test_soft_grants_a_passback_and_says_so(gallery: TemplateStore, presence: PresenceStore) -> None:
    judge = _judge(gallery, presence, "soft", same_passage_s=0)
    assert judge.judge_passage("ada", "entry", NOON).anti_passback is None
    verdict = judge.judge_passage("ada", "entry", NOON + timedelta(seconds=1))
    assert verdict.reason is None and verdict.anti_passback == VIOLATION
    assert presence.last("ada").at == NOON.timestamp() + 1  # granted, so recorded


def test_the_policy_comes_first_and_exempt_groups_pass(
    gallery: TemplateStore, presence: PresenceStore
) -> None:
    judge = _judge(gallery, presence, exempt_groups=["security"], same_passage_s=0)
    assert judge.judge_passage("tom", "entry", NOON).reason == "suspended"
    assert presence.last("tom") is None  # a denial records nothing
    assert judge.judge_passage("nobody", "entry", NOON).reason == GONE
    for minute in range(3):
        assert judge.judge_passage("sam", "entry", NOON + timedelta(minutes=minute)).reason is None
    assert presence.last("sam").direction == "in"  # exempt, still on the muster list


def test_the_daily_reset_forgets_everyone_and_deletes_their_rows(
    gallery: TemplateStore, presence: PresenceStore
) -> None:
    judge = _judge(gallery, presence, reset_at="03:00", same_passage_s=0)
    evening = parse_instant("2026-12-06T22:00:00+01:00", "t")
    assert judge.judge_passage("ada", "entry", evening).reason is None
    assert judge.judge_passage("ada", "entry", evening + timedelta(hours=4)).reason == PASSBACK  # 02:00
    morning = evening + timedelta(hours=10)  # 08:00, after the 03:00 reset
    assert judge.judge_passage("ada", "entry", morning).reason is None
    presence.record(Presence("sam", "in", "entry", evening.timestamp()))
    tomorrow = morning + timedelta(days=1)
    assert presence_document(judge.passback, gallery, now=tomorrow)["in"] == 0
    assert presence.entries() == []  # not only ignored: gone from the store


def test_a_clock_set_back_makes_no_same_passage(gallery: TemplateStore, presence: PresenceStore) -> None:
    judge = _judge(gallery, presence, same_passage_s=60)
    presence.record(Presence("ada", "in", "entry", (NOON + timedelta(days=30)).timestamp()))
    assert judge.judge_passage("ada", "entry", NOON).reason == PASSBACK


def test_a_store_that_fails_lets_the_grant_through(gallery: TemplateStore, tmp_path: Path) -> None:
    store = PresenceStore.open(tmp_path / "p.db")
    judge = _judge(gallery, store)
    store.close()
    assert judge.judge_passage("ada", "entry", NOON).reason is None


def test_the_presence_document_lists_newest_first_and_forgets_removed_people(
    gallery: TemplateStore, presence: PresenceStore
) -> None:
    judge = _judge(gallery, presence)
    for offset, (who, camera) in enumerate([("ada", "entry"), ("sam", "entry"), ("tom", "exit")]):
        presence.record(Presence(who, DIRECTIONS[camera], camera, NOON.timestamp() + offset))
    presence.record(Presence("gone", "in", "entry", NOON.timestamp()))
    document = presence_document(judge.passback, gallery, limit=2, now=NOON + timedelta(minutes=1))
    assert document["mode"] == "hard" and document["reset_at"] is None
    assert (document["in"], document["out"], document["truncated"]) == (2, 1, True)
    assert [(p["id"], p["name"], p["direction"]) for p in document["passages"]] == [
        ("tom", "Tom", "out"),
        ("sam", "Sam", "in"),
    ]
    assert document["passages"][0]["since"] == "2026-12-07T12:00:02Z"
    assert presence.last("gone") is None
    inside = presence_document(judge.passback, gallery, "in", now=NOON)
    assert [p["id"] for p in inside["passages"]] == ["sam", "ada"] and inside["out"] == 0
    json.dumps(document)


def test_off_keeps_nothing(tmp_path: Path) -> None:
    def config(mode: str, cameras: Any = TWO_WAYS) -> Any:
        return validate_config(
            {
                "storage": {"dir": str(tmp_path)},
                "access": {"anti_passback": {"mode": mode}},
                "cameras": cameras,
            }
        )

    store = open_presence(config("soft"))
    assert store is not None
    store.record(Presence("ada", "in", "entry", 1.0))
    store.close()
    store = open_presence(config("off"))  # directions still set: open, but emptied
    assert store is not None and store.entries() == []
    store.record(Presence("ada", "in", "entry", 1.0))
    store.close()
    assert open_presence(config("off", [{"id": "cam", "source": "a.avi"}])) is None
    with PresenceStore.open(tmp_path / PRESENCE_FILE) as left:  # a store from before, emptied too
        assert left.entries() == []
    assert AccessJudge.for_door(config("off").access, None, store).passback is None  # type: ignore[arg-type]


# -- configuration, commands, events -------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, cameras, match",
    [
        ({"mode": "hard"}, None, r"\(cam0: none\) do not see both ways"),
        ({"mode": "soft"}, TWO_WAYS[:1], r"entry: in\)"),
        ({"mode": "strict"}, TWO_WAYS, "mode"),
        ({"mode": "hard", "reset_at": "24:00"}, TWO_WAYS, "reset_at"),
        ({"mode": "hard", "same_passage_s": -1}, TWO_WAYS, "same_passage_s"),
        ({"mode": "hard", "exempt_groups": ["a b"]}, TWO_WAYS, "exempt_groups"),
        ({"mode": "hard", "exempt_groups": ["a", "a"]}, TWO_WAYS, "listed twice"),
        ({"mode": "hard", "grace": 1}, TWO_WAYS, "grace"),
    ],
)
def test_a_wrong_anti_passback_section_is_refused(section: Dict[str, Any], cameras: Any, match: str) -> None:
    document: Dict[str, Any] = {"access": {"anti_passback": section}}
    if cameras is not None:
        document["cameras"] = cameras
    with pytest.raises(Exception, match=match):
        validate_config(document)
    with pytest.raises(Exception, match="direction"):
        validate_config({"camera": {"direction": "up"}})


def test_a_two_way_configuration_is_taken() -> None:
    config = validate_config(
        {"access": {"anti_passback": {"mode": "hard", "reset_at": "03:00"}}, "cameras": TWO_WAYS}
    )
    assert config.camera_directions == {"entry": "in", "exit": "out"}
    assert validate_config({}).camera_directions == {}


@pytest.mark.parametrize(
    "payload, match",
    [
        ({}, "give ids"),
        ({"ids": ["a"], "all": True}, "not both"),
        ({"ids": []}, "ids"),
        ({"ids": [""]}, "1 to 64"),
        ({"all": "yes"}, "all"),
    ],
)
def test_a_wrong_presence_reset_is_refused(payload: Dict[str, Any], match: str) -> None:
    with pytest.raises(CommandError, match=match) as refused:
        parse("presence_reset", json.dumps({"request_id": "r", **payload}).encode())
    assert refused.value.code == "invalid"


def test_presence_commands_parse() -> None:
    _, listing = parse("presence", b'{"request_id": "r", "direction": "in", "limit": 5}')
    assert (listing.direction, listing.limit) == ("in", 5)
    for bad in (b'{"request_id": "r", "direction": "up"}', b'{"request_id": "r", "limit": 0}'):
        with pytest.raises(CommandError):
            parse("presence", bad)
    _, reset = parse("presence_reset", b'{"request_id": "r", "all": true}')
    assert reset.all and reset.ids is None


def test_the_event_carries_the_direction_and_a_soft_violation() -> None:
    decision = Decision(
        1, "granted", "ada", "Ada", 0.8, 0.5, 5, None, np.zeros(4, np.float32), 0.9, 0.0, 1.0, "", None, None
    )
    plain = access_event(decision, "door", "cam0", {}, 1.0)
    assert "direction" not in plain and "anti_passback" not in plain
    flagged = access_event(
        Decision(**{**decision.__dict__, "anti_passback": VIOLATION}),
        "door",
        "entry",
        {},
        1.0,
        direction="in",
    )
    assert flagged["direction"] == "in" and flagged["anti_passback"] == "violation"
    assert flagged["decision"] == "granted" and flagged["reason"] is None


def test_doctor_checks_the_store_and_the_groups_named(tmp_path: Path) -> None:
    from appliance.access.policy import AccessGroup
    from appliance.doctor import FAIL, OK, WARN, check_access

    config = validate_config(
        {
            "storage": {"dir": str(tmp_path)},
            "cameras": TWO_WAYS,
            "door": {
                "enabled": True,
                "relay": {"line": 12},
                "unlock": {"schedule": ["daily 08:00-18:00"], "first_person_groups": ["managers"]},
            },
            "access": {
                "anti_passback": {"mode": "hard", "exempt_groups": ["security"]},
                "two_person": {"groups": ["vault"], "companions": ["managers"]},
            },
        }
    )
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.add("ada", "Ada", VERSION, _vector(0), policy=IdentityPolicy(groups=("staff",)))
        store.put_group(AccessGroup.from_parts("managers", ["daily 00:00-24:00"], []))
    found = {(c.status, c.subject, c.detail) for c in check_access(config)}
    assert (
        WARN,
        "access.anti_passback.exempt_groups",
        "names group 'security', which is not defined",
    ) in found
    assert any(
        status == WARN and subject == "door.unlock.first_person_groups" and "nobody (not suspended)" in detail
        for status, subject, detail in found
    ), found
    assert (WARN, "access.two_person.groups", "names group 'vault', which is not defined") in found
    assert any(s == WARN and subject == "access.two_person.companions" for s, subject, _ in found), found
    assert (OK, "anti-passback", "hard; entry in, exit out; no passage kept yet") in found
    with PresenceStore.open(tmp_path / PRESENCE_FILE) as presence:
        presence.record(Presence("ada", "in", "entry", 1.0))
    assert any(c.detail.endswith("1 passages kept, 1 in") for c in check_access(config))
    (tmp_path / PRESENCE_FILE).write_bytes(b"garbage" * 500)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"{PRESENCE_FILE}{suffix}").unlink(missing_ok=True)
    assert any(c.status == FAIL and c.subject == "anti-passback" for c in check_access(config))
