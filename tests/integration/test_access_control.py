"""Access control with the real models on real photos: the policy through the command line (enrol with a
validity, change it, groups, schedules, holidays, bundles) and in the daemon's events."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from appliance.access.policy import IdentityPolicy, parse_instant
from appliance.access.presence import PRESENCE_FILE, Presence, PresenceStore
from appliance.decisions import Decision
from appliance.event_mac import EventKey
from appliance.events import access_event, encode
from appliance.fleet.records import create_fleet_key
from appliance.gallery.store import TemplateStore
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import (
    Daemon,
    command,
    daemon_config,
    event_documents,
    make_passage_video,
    passage_video,
    run_cli,
    unique_events,
    wait_online,
)


def _config(tmp_path: Path, models: Path, access: str = "") -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[storage]\ndir = "state"\n[models]\ndir = "{models}"\n[access]\n{access}\n')
    return path


def _faces(config: Path, *photos: Path) -> List[Dict[str, Any]]:
    done = run_cli("identify", "--config", str(config), "--json", *map(str, photos))
    assert done.returncode == 0, done.stderr
    return [image["faces"][0] for image in json.loads(done.stdout)["images"]]


def _ok(*args: str) -> str:
    done = run_cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_policy_from_the_command_line(tmp_path: Path, shared_models: Path, shared_data: Path) -> None:
    faces = shared_data / "faces"
    obama, ada = (faces / "fr_obama/obama2.jpg", faces / "deepface_personA/img2.jpg")
    config = _config(tmp_path, shared_models)
    c = ("--config", str(config))
    _ok(
        "enroll",
        *c,
        "--name",
        "Barack Obama",
        "--id",
        "obama",
        "--valid-until",
        "2020-01-01T00:00:00Z",
        str(faces / "fr_obama/obama.jpg"),
    )
    _ok(
        "enroll",
        *c,
        "--name",
        "Ada",
        "--id",
        "ada",
        "--external-id",
        "4711",
        str(faces / "deepface_personA/img1.jpg"),
    )
    expired, valid = _faces(config, obama, ada)
    assert (expired["decision"], expired["reason"], expired["identity"]["id"]) == (
        "denied",
        "expired",
        "obama",
    )
    assert (valid["decision"], valid["reason"], valid["identity"]["id"]) == ("granted", None, "ada")

    # validity changed later; a malformed change is refused and changes nothing
    bad = run_cli("gallery", "set", "obama", *c, "--valid-until", "2030-01-01")
    assert bad.returncode == 2 and "no offset" in bad.stderr
    _ok("gallery", "set", "obama", *c, "--valid-until", "none", "--suspend")
    assert _faces(config, obama)[0]["reason"] == "suspended"
    _ok("gallery", "set", "obama", *c, "--resume")
    assert _faces(config, obama)[0]["decision"] == "granted"

    # a door that admits only staff, with a schedule and today as a holiday
    today = datetime.now(timezone.utc).date().isoformat()
    door = _config(tmp_path, shared_models, 'groups = ["staff"]\ntime_zone = "UTC"')
    d = ("--config", str(door))
    _ok("access", "group", "set", "staff", *d, "--schedule", "daily 00:00-24:00", "--holidays", "public")
    assert _faces(door, ada)[0]["reason"] == "not_in_group"
    _ok("gallery", "set", "ada", *d, "--add-group", "staff")
    assert _faces(door, ada)[0]["decision"] == "granted"
    _ok("access", "calendar", "set", "public", today, *d)
    assert _faces(door, ada)[0]["reason"] == "holiday"
    check = run_cli("access", "check", "ada", *d, "--json")
    assert check.returncode == 1 and json.loads(check.stdout)["reason"] == "holiday"
    tomorrow = run_cli("access", "check", "ada", *d, "--at", f"{today}T23:59:59Z", "--json")
    assert json.loads(tomorrow.stdout)["reason"] == "holiday"
    assert "staff" in json.loads(_ok("access", "show", *d, "--json"))["door"]["groups"]
    listed = json.loads(_ok("gallery", "list", *d, "--json"))["identities"]
    assert {i["id"]: i["policy"]["groups"] for i in listed} == {"ada": ["staff"], "obama": []}

    # export / import: the policy, the groups and the calendars travel with the people
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery\n")
    bundle = tmp_path / "gallery.bundle"
    _ok("gallery", "export", str(bundle), *d, "--passphrase-file", str(secret))
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    other = _config(elsewhere, shared_models, 'groups = ["staff"]\ntime_zone = "UTC"')
    imported = _ok("gallery", "import", str(bundle), "--config", str(other), "--passphrase-file", str(secret))
    assert "group:staff" in imported and "calendar:public" in imported
    assert _faces(other, ada)[0]["reason"] == "holiday"
    obama_there = run_cli("access", "check", "obama", "--config", str(other), "--json")
    assert obama_there.returncode == 1 and json.loads(obama_there.stdout)["reason"] == "not_in_group"


def test_the_daemon_reports_why_a_recognised_person_is_denied(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:
        store.set_policy("obama", IdentityPolicy(valid_until=parse_instant("2020-01-01T00:00:00Z", "t")))
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        passage_video(tmp_path, shared_data),
        access='time_zone = "Europe/Berlin"',
    )
    daemon = Daemon(config)
    try:
        assert daemon.wait(timeout=120) == 0, daemon.text
    finally:
        daemon.close()
    events = unique_events(event_documents(recorder.messages))
    assert [(e["decision"], e["reason"]) for e in events] == [("denied", "expired"), ("unknown", None)], (
        daemon.text
    )
    assert events[0]["identity"] == {"id": "obama", "name": "Barack Obama"}  # recognised, outside policy
    assert events[1]["identity"] is None


def test_the_policy_is_managed_over_mqtt_on_a_running_daemon(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        passage_video(tmp_path, shared_data),
        at_end="loop",
        access='groups = ["staff"]\ntime_zone = "Europe/Berlin"',
    )
    daemon = Daemon(config)
    try:
        wait_online(recorder, daemon)
        answer = command(
            recorder,
            "set_group",
            {"request_id": "g1", "name": "staff", "schedule": ["daily 00:00-24:00"], "holidays": ["public"]},
        )
        assert answer["ok"] and answer["result"]["schedule"] == ["daily 00:00-24:00"], answer
        answer = command(
            recorder, "set_calendar", {"request_id": "c1", "name": "public", "days": ["2026-12-25"]}
        )
        assert answer["ok"] and answer["result"]["days"] == 1, answer
        answer = command(
            recorder,
            "set_policy",
            {
                "request_id": "p1",
                "id": "obama",
                "add_groups": ["staff"],
                "valid_until": "2099-01-01T00:00:00+01:00",
            },
        )
        assert answer["result"]["policy"] == {
            "valid_from": None,
            "valid_until": "2098-12-31T23:00:00Z",
            "suspended": False,
            "groups": ["staff"],
            "cards": [],
            "pin": False,
            "duress_pin": False,
        }, answer
        # a card and a PIN over MQTT: the PIN is hashed on the door, the answer says only that it is set
        answer = command(
            recorder,
            "set_policy",
            {"request_id": "p1b", "id": "obama", "add_cards": ["W26:7:12345"], "pin": "2468"},
        )
        policy = answer["result"]["policy"]
        assert (policy["cards"], policy["pin"], policy["duress_pin"]) == (["w26:7:12345"], True, False), (
            answer
        )
        assert "scrypt" not in json.dumps(answer) and "2468" not in json.dumps(answer)
        answer = command(
            recorder, "set_policy", {"request_id": "p1c", "id": "obama", "pin": None, "cards": []}
        )
        assert (answer["result"]["policy"]["cards"], answer["result"]["policy"]["pin"]) == ([], False), answer
        answer = command(recorder, "access", {"request_id": "a1"})
        assert answer["result"]["door"] == {"groups": ["staff"], "time_zone": "Europe/Berlin"}
        assert [g["name"] for g in answer["result"]["groups"]] == ["staff"]
        # refused, each with its request id, and nothing changed
        refused = command(recorder, "set_policy", {"request_id": "p2", "id": "nobody", "suspended": True})
        assert refused["error"]["code"] == "refused" and "no identity" in refused["error"]["message"]
        refused = command(
            recorder, "set_policy", {"request_id": "p3", "id": "obama", "valid_from": "2100-01-01T00:00:00Z"}
        )
        assert refused["error"]["code"] == "invalid" and "not after" in refused["error"]["message"], refused
        refused = command(recorder, "remove_group", {"request_id": "r1", "name": "night"})
        assert refused["error"]["code"] == "refused"
        # a person without a face (card and PIN only), and a face forgotten (on the change thread)
        answer = command(
            recorder,
            "enroll",
            {"request_id": "n1", "name": "Vera", "id": "vera", "no_face": True, "cards": ["w26:7:4242"]},
        )
        assert answer["ok"] and answer["result"]["templates"] == 0, answer
        assert answer["result"]["policy"]["cards"] == ["w26:7:4242"]
        refused = command(
            recorder, "enroll", {"request_id": "n2", "name": "Vera", "no_face": True, "image": "AAAA"}
        )
        assert refused["error"]["code"] == "invalid" and "no_face" in refused["error"]["message"], refused
        answer = command(recorder, "forget_face", {"request_id": "f1", "id": "vera"})
        assert answer["result"] == {"id": "vera", "removed": 0}, answer
        refused = command(recorder, "forget_face", {"request_id": "f2", "id": "nobody"})
        assert refused["error"]["code"] == "refused", refused
        # the next passages of the enrolled person are granted through the staff group
        recorder.wait_for(
            lambda messages: any(e["decision"] == "granted" for e in event_documents(messages)), 90, "a grant"
        )
        # the door's groups and time zone are re-read on reload, like the thresholds
        config.write_text(config.read_text().replace('groups = ["staff"]', 'groups = ["night"]'))
        assert command(recorder, "reload", {"request_id": "l1"})["ok"]
        answer = command(recorder, "access", {"request_id": "a2"})
        assert answer["result"]["door"]["groups"] == ["night"], answer
    finally:
        daemon.stop()
        daemon.close()
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:  # survives the restart
        assert store.identity("obama").policy.groups == ("staff",)
        assert set(store.policy_tables().calendars) == {"public"}
        vera = store.identity("vera")
        assert vera is not None and vera.templates == 0 and vera.policy.cards == ("w26:7:4242",)


def _two_way_config(
    tmp_path: Path,
    storage: Path,
    models: Path,
    broker: MosquittoBroker,
    entry: Path,
    exit_: Path,
    at_end: str,
    mode: str = "hard",
) -> Path:
    """An entry camera (direction in) and an exit camera (out), anti-passback in ``mode``."""
    config = daemon_config(
        tmp_path,
        storage,
        models,
        broker,
        None,
        cameras=[("entry", entry, at_end), ("exit", exit_, at_end)],
        access=f'[access.anti_passback]\nmode = "{mode}"\nsame_passage_s = 0',
    )
    text = config.read_text()
    for camera, direction in (("entry", "in"), ("exit", "out")):
        text = text.replace(f'id = "{camera}"\n', f'id = "{camera}"\ndirection = "{direction}"\n')
    config.write_text(text)
    return config


def _run_until_the_videos_end(config: Path, recorder: Recorder) -> Dict[str, List[Dict[str, Any]]]:
    """The daemon over both videos; its events per camera, as (decision, reason, direction), and
    ``"violation"`` added when soft anti-passback flagged one."""
    recorder.clear()
    daemon = Daemon(config)
    try:
        assert daemon.wait(timeout=180) == 0, daemon.text
    finally:
        daemon.close()
    events: Dict[str, List[Any]] = {"entry": [], "exit": []}
    for event in unique_events(event_documents(recorder.messages)):
        flag = (event["anti_passback"],) if "anti_passback" in event else ()
        events[event["camera_id"]].append((event["decision"], event["reason"], event["direction"], *flag))
    return events


def test_hard_anti_passback_at_an_entry_and_an_exit_camera(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    obama = shared_data / "faces/fr_obama/obama2.jpg"
    # 1. In twice, never seen leaving: the second entry is a passback.
    twice = make_passage_video(tmp_path / "twice.avi", [(obama, 25), (None, 20), (obama, 25), (None, 10)])
    nobody = make_passage_video(tmp_path / "nobody.avi", [(None, 20)])
    config = _two_way_config(tmp_path, storage, shared_models, mosquitto, twice, nobody, "stop")
    events = _run_until_the_videos_end(config, recorder)
    assert events == {
        "entry": [("granted", None, "in"), ("denied", "anti_passback", "in")],
        "exit": [],
    }, events
    c = ("--config", str(config))
    listed = json.loads(_ok("access", "presence", "list", "--json", *c))
    assert (listed["mode"], listed["in"], listed["out"]) == ("hard", 1, 0)
    assert [(p["id"], p["name"], p["camera_id"]) for p in listed["passages"]] == [
        ("obama", "Barack Obama", "entry")
    ]
    asked = run_cli("access", "check", "obama", "--camera", "entry", "--json", *c)
    assert asked.returncode == 1 and json.loads(asked.stdout)["reason"] == "anti_passback", asked
    assert json.loads(_ok("access", "check", "obama", "--camera", "exit", "--json", *c))["reason"] is None
    assert run_cli("access", "check", "obama", "--camera", "lobby", *c).returncode != 0

    # 2. After a restart (the state is kept): refused at the entry, out through the exit, then in again.
    entry = make_passage_video(tmp_path / "entry.avi", [(obama, 25), (None, 60), (obama, 25), (None, 10)])
    exit_ = make_passage_video(tmp_path / "exit.avi", [(None, 35), (obama, 25), (None, 10)])
    config = _two_way_config(tmp_path, storage, shared_models, mosquitto, entry, exit_, "stop")
    events = _run_until_the_videos_end(config, recorder)
    assert events == {
        "entry": [("denied", "anti_passback", "in"), ("granted", None, "in")],
        "exit": [("granted", None, "out")],
    }, events

    # 3. Security's view and reset over MQTT, on a running daemon; a reload that turns it off keeps nothing.
    quiet = make_passage_video(tmp_path / "quiet.avi", [(None, 10)])
    config = _two_way_config(tmp_path, storage, shared_models, mosquitto, quiet, quiet, "loop")
    recorder.clear()  # the last run's "online" is not this one's
    daemon = Daemon(config)
    try:
        wait_online(recorder, daemon)
        answer = command(recorder, "presence", {"request_id": "p1", "direction": "in"})
        assert answer["ok"] and (answer["result"]["in"], answer["result"]["out"]) == (1, 0), answer
        assert answer["result"]["passages"][0]["id"] == "obama"
        refused = command(recorder, "door_open", {"request_id": "d1"})  # no [door] here
        assert refused["error"]["code"] == "refused" and "drives no door" in refused["error"]["message"]
        refused = command(recorder, "presence_reset", {"request_id": "r0", "ids": ["obama"], "all": True})
        assert refused["error"]["code"] == "invalid" and "not both" in refused["error"]["message"], refused
        answer = command(recorder, "presence_reset", {"request_id": "r1", "ids": ["obama", "nobody"]})
        assert answer["result"] == {"forgotten": 1}, answer
        assert command(recorder, "presence", {"request_id": "p2"})["result"]["passages"] == []
        assert (
            json.loads(_ok("access", "check", "obama", "--camera", "entry", "--json", *c))["reason"] is None
        )
        # A removed person leaves no passage behind: Kit is enrolled, passes in, and is removed.
        photo = (shared_data / "faces/fr_kit_harington/john1.jpeg").read_bytes()
        enrolled = command(
            recorder,
            "enroll",
            {"request_id": "e1", "id": "kit", "name": "Kit", "image": base64.b64encode(photo).decode()},
        )
        assert enrolled["ok"], enrolled
        with PresenceStore.open(storage / PRESENCE_FILE) as store:  # as the daemon records a passage
            store.record(Presence("kit", "in", "entry", time.time()))
            assert command(recorder, "remove", {"request_id": "x1", "id": "kit"})["ok"]
            deadline = time.monotonic() + 30
            while store.last("kit") is not None:
                assert time.monotonic() < deadline, "the removed person's passage is still kept"
                time.sleep(0.1)
            store.record(Presence("obama", "in", "entry", time.time()))
        assert command(recorder, "presence", {"request_id": "p3"})["result"]["in"] == 1
        config.write_text(config.read_text().replace('mode = "hard"', 'mode = "off"'))
        assert command(recorder, "reload", {"request_id": "l1"})["ok"]
        refused = command(recorder, "presence", {"request_id": "p4"})
        assert refused["error"]["code"] == "refused" and "anti-passback is off" in refused["error"]["message"]
        with PresenceStore.open(storage / PRESENCE_FILE) as store:
            assert store.entries() == []  # off keeps nothing about who is in
    finally:
        daemon.stop()
        daemon.close()

    # 4. Soft: the second entry is granted, and its event says it was a passback.
    config = _two_way_config(tmp_path, storage, shared_models, mosquitto, twice, nobody, "stop", "soft")
    events = _run_until_the_videos_end(config, recorder)
    assert events == {
        "entry": [("granted", None, "in"), ("granted", None, "in", "violation")],
        "exit": [],
    }, events


def _door_b_event(direction: str, key: Optional[EventKey]) -> bytes:
    """An access event of door B (another appliance of the area) granting Obama, as its code writes it,
    signed with the site's fleet key when ``key`` is given."""
    granted = Decision(
        1, "granted", "obama", "Barack Obama", 0.8, 0.5, 9, None, np.zeros(4, np.float32), 0.9, 0, 1, ""
    )
    event = access_event(granted, "door-b", "gate", {}, 5.0, direction=direction)
    if key is not None:
        key.sign(event)
    return encode(event)


def _kept_from_door_b(storage: Path, direction: str) -> None:
    """Wait until door A keeps Obama's passage at door B in ``direction``."""
    deadline = time.monotonic() + 30
    with PresenceStore.open(storage / PRESENCE_FILE) as store:
        while True:
            last = store.last("obama")
            if last is not None and (last.camera_id, last.direction) == ("door-b/gate", direction):
                return
            assert time.monotonic() < deadline, f"door B's passage {direction} not applied; kept {last}"
            time.sleep(0.1)


def test_anti_passback_across_the_doors_of_an_area(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    """Door A has only an entry camera; door B (the test publishes its events, as B's appliance would)
    is the area's other door. Someone who entered at B is refused at A's entry until B lets them out.
    Both hold the site's fleet key: B's events count only signed with it, and A signs its own. What B
    publishes while A is away reaches A when it is back."""
    obama = shared_data / "faces/fr_obama/obama2.jpg"
    video = make_passage_video(tmp_path / "entry.avi", [(None, 20), (obama, 25), (None, 20)])
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        None,
        cameras=[("entry", video, "loop")],
        access='[access.anti_passback]\nmode = "hard"\nsame_passage_s = 0\narea_doors = ["door-b"]',
    )
    key_file = tmp_path / "fleet.key"
    site_key = EventKey(create_fleet_key(key_file))
    text = config.read_text().replace('id = "entry"\n', 'id = "entry"\ndirection = "in"\n')
    config.write_text(f'{text}\n[fleet]\nfleet_key_file = "{key_file}"\n')
    door_b = "face-appliance/door-b/events"
    daemon = Daemon(config)
    try:
        wait_online(recorder, daemon)
        recorder.publish(door_b, _door_b_event("in", site_key))
        _kept_from_door_b(storage, "in")
        recorder.clear()
        entry = recorder.wait_for(lambda m: bool(event_documents(m)), 60, "an entry event")
        first = event_documents(entry)[0]
        assert (first["decision"], first["reason"]) == ("denied", "anti_passback"), first
        site_key.verify(first)  # door A's own events are signed for the area's other doors

        recorder.publish(door_b, _door_b_event("out", site_key))
        _kept_from_door_b(storage, "out")
        recorder.clear()
        entry = recorder.wait_for(lambda m: bool(event_documents(m)), 60, "an entry event")
        first = event_documents(entry)[0]
        assert (first["decision"], first["direction"]) == ("granted", "in"), first

        recorder.publish(door_b, b"{not json")
        recorder.publish(door_b, _door_b_event("in", site_key).replace(b'"door-b"', b'"door-c"'))
        recorder.publish(door_b, _door_b_event("in", None))  # a client on the broker without the key
        deadline = time.monotonic() + 30
        while True:
            area = command(recorder, "status", {"request_id": f"s{time.monotonic()}"})["result"]["area"]
            if area["refused"] + area["unauthenticated"] >= 3:
                break
            assert time.monotonic() < deadline, area
            time.sleep(0.2)
        assert (area["refused"], area["unauthenticated"], area["applied"], area["received"]) == (
            2,
            1,
            2,
            5,
        ), area
        assert area["doors"] == ["door-b"] and area["signed"] is True, area
        with PresenceStore.open(storage / PRESENCE_FILE) as store:
            last = store.last("obama")  # his own entry here, not the unsigned "in" at door B
        assert last is not None and (last.camera_id, last.direction) == ("entry", "in"), last

        # Door A is away; door B lets Obama out meanwhile. The broker keeps the event in A's area
        # session, and A, back, lets him in again (without it: denied, anti_passback).
        daemon.stop()
        daemon.close()
        recorder.publish(door_b, _door_b_event("out", site_key))
        recorder.clear()
        daemon = Daemon(config)
        wait_online(recorder, daemon)
        entry = recorder.wait_for(lambda m: bool(event_documents(m)), 60, "an entry event after the restart")
        first = event_documents(entry)[0]
        assert (first["decision"], first["direction"]) == ("granted", "in"), first
        area = command(recorder, "status", {"request_id": "after-restart"})["result"]["area"]
        assert area["applied"] == 1 and area["session"]["resumed"] is True, area
    finally:
        daemon.stop()
        daemon.close()


def test_the_two_person_rule_in_the_daemon(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    """Obama (vault) is held until Kit (a supervisor) is granted; Kit's grant names him."""
    faces = shared_data / "faces"
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:
        store.set_policy("obama", IdentityPolicy(groups=("vault",)))
    video = make_passage_video(
        tmp_path / "vault.avi",
        [
            (None, 5),
            (faces / "fr_obama/obama2.jpg", 25),
            (None, 10),
            (faces / "fr_kit_harington/john1.jpeg", 25),
        ],
    )
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        video,
        access='[access.two_person]\ngroups = ["vault"]\ncompanions = ["supervisors"]\nwithin_s = 600',
    )
    kit = faces / "fr_kit_harington/john2.jpeg"
    _ok(
        "enroll", "--config", str(config), "--name", "Kit", "--id", "kit", "--groups", "supervisors", str(kit)
    )
    daemon = Daemon(config)
    try:
        assert daemon.wait(timeout=120) == 0, daemon.text
    finally:
        daemon.close()
    events = unique_events(event_documents(recorder.messages))
    assert [(e["decision"], e["reason"], e["identity"]["id"]) for e in events] == [
        ("denied", "two_person", "obama"),
        ("granted", None, "kit"),
    ], daemon.text
    assert events[1]["companions"] == ["obama"] and "companions" not in events[0]
