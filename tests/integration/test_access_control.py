"""Access control with the real models on real photos: the policy through the command line (enrol with a
validity, change it, groups, schedules, holidays, bundles) and in the daemon's events."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

from appliance.access.policy import IdentityPolicy, parse_instant
from appliance.gallery.store import TemplateStore
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import (
    Daemon,
    command,
    daemon_config,
    event_documents,
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
        }, answer
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
