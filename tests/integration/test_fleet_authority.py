"""The enrolment authority's command line against a real Mosquitto and the real models: `fleet init`,
`fleet enroll` of a real photo (the retained record opens with the fleet key and holds the aligned
crop; the broker never sees the name or the image), `fleet remove` (a tombstone), `fleet status`
against door documents (in step, then not), and a broker that is not there."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
import pytest

from appliance.fleet.records import (
    IdentityRecord,
    Tombstone,
    door_document,
    door_topic,
    manifest_topic,
    open_manifest,
    open_record,
    read_fleet_key,
    record_topic,
)
from appliance.updates.keys import load_trusted_keys
from tests.mqtt_broker import MosquittoBroker, Recorder, free_port

PREFIX = "face-appliance-fleet"
SITE = "hq"
NAME = "Barack Hussein Obama"
NOW = "2026-01-02T03:04:05Z"


def fleet(capsys: pytest.CaptureFixture, *argv: str) -> Tuple[int, str, str]:
    """Run ``face-appliance fleet …`` in this process through ``appliance.cli.main`` (its exit codes)."""
    from appliance import cli

    capsys.readouterr()
    code = cli.main(["fleet", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def auth_file(tmp_path: Path, mosquitto: MosquittoBroker, shared_models: Path) -> Path:
    path = tmp_path / "authority" / "AUTH.toml"
    path.parent.mkdir()
    path.write_text(
        f'[authority]\nsite = "{SITE}"\nsigning_key = "keys/authority.key"\nfleet_key_file = "keys/fleet.key"\n'
        f'state_dir = "state"\nbroker_wait_s = 0.3\n'
        f'[mqtt]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
        f'[models]\ndir = "{shared_models}"\n[logging]\nlevel = "WARNING"\n'
    )
    return path


def _status(capsys: pytest.CaptureFixture, auth_file: Path) -> Tuple[int, Dict[str, Any]]:
    code, out, err = fleet(capsys, "status", "--config", str(auth_file), "--wait", "0.5", "--json")
    assert code in (0, 1), err
    return code, json.loads(out)


def test_enroll_status_remove(
    capsys: pytest.CaptureFixture,
    auth_file: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
    shared_data: Path,
) -> None:
    photo = shared_data / "faces" / "fr_obama" / "obama.jpg"
    code, out, err = fleet(capsys, "init", "--config", str(auth_file), "--json")
    assert code == 0, err
    keys = json.loads(out)
    keys_dir = auth_file.parent / "keys"
    assert keys["public_key"] == str(keys_dir / "authority.pub")
    assert oct((keys_dir / "fleet.key").stat().st_mode & 0o777) == "0o600"
    assert fleet(capsys, "init", "--config", str(auth_file))[0] == 0  # again: everything is kept
    fleet_key = read_fleet_key(keys_dir / "fleet.key")
    trusted = load_trusted_keys(keys_dir)
    assert list(trusted) == [keys["key_id"]]

    code, out, err = fleet(
        capsys,
        "enroll",
        "--config",
        str(auth_file),
        "--name",
        NAME,
        "--external-id",
        "B-4444",
        "--groups",
        "staff",
        "--valid-until",
        "2030-01-01T00:00:00Z",
        "--json",
        str(photo),
    )
    assert code == 0, err
    published = json.loads(out)
    identity_id = published["id"]
    assert identity_id.startswith("p-") and published["revision"] == 1 and published["crops"] == 1
    assert published["topic"] == record_topic(PREFIX, SITE, identity_id)

    recorder.wait_for_message(manifest_topic(PREFIX, SITE))
    with Recorder(mosquitto.host, mosquitto.port, f"{PREFIX}/#") as late:  # what a door joining now gets
        late.wait_for(lambda ms: len(ms) >= 2, what="the retained record and manifest")
        retained = {m.topic: m for m in late.messages}
    record_message = retained[record_topic(PREFIX, SITE, identity_id)]
    assert record_message.retain
    record = open_record(record_message.payload, SITE, fleet_key, trusted, topic_id=identity_id)
    assert isinstance(record, IdentityRecord)
    assert (record.name, record.external_id, record.revision) == (NAME, "B-4444", 1)
    assert record.policy.groups == ("staff",) and record.policy.valid_until is not None
    assert len(record.crops) == 1 and record.crops[0].shape == (112, 112, 3)
    assert 0 < record.qualities[0] <= 1
    manifest = open_manifest(retained[manifest_topic(PREFIX, SITE)].payload, SITE, trusted)
    assert manifest.entries == {identity_id: 1} and manifest.revision == 1

    # The broker never sees the person: no name, no badge, no image, raw or base64.
    jpeg = photo.read_bytes()
    for m in recorder.messages:
        for secret in (b"Obama", b"Barack", b"B-4444", b"\x89PNG", b"iVBORw0KGgo", b"\xff\xd8\xff"):
            assert secret not in m.payload, (m.topic, secret)
        assert jpeg[1000:1064] not in m.payload
        assert base64.b64encode(jpeg[999:1047]) not in m.payload

    # `fleet list` shows the name from the authority's own state.
    code, out, _ = fleet(capsys, "list", "--config", str(auth_file))
    assert code == 0 and identity_id in out and NAME in out

    # The same id again without --replace: refused before any model loads.
    code, _, err = fleet(
        capsys, "enroll", "--config", str(auth_file), "--name", NAME, "--id", identity_id, str(photo)
    )
    assert code == 2 and "enrolled already" in err

    # A door in step, online.
    door = door_topic(PREFIX, SITE, "door-1")
    recorder.publish(
        door,
        json.dumps(door_document("door-1", SITE, 1, {identity_id: 1}, 0, None, NOW)).encode(),
        retain=True,
    )
    recorder.publish("face-appliance/door-1/availability", b"online", retain=True)
    code, report = _status(capsys, auth_file)
    assert code == 0, report
    (row,) = report["doors"]
    assert row["device_id"] == "door-1" and row["in_step"] and row["reachable"] is True
    assert report["manifest"]["source"] == "broker" and report["in_step"]

    # Removal: a signed tombstone retained on the identity's topic, and a new manifest.
    code, out, err = fleet(capsys, "remove", "--config", str(auth_file), identity_id, "--json")
    assert code == 0, err
    assert json.loads(out)["revision"] == 2
    recorder.wait_for(
        lambda ms: len([m for m in ms if m.topic == record_topic(PREFIX, SITE, identity_id)]) == 2,
        what="the tombstone",
    )
    tombstone_message = recorder.on(record_topic(PREFIX, SITE, identity_id))[-1]
    tombstone = open_record(tombstone_message.payload, SITE, fleet_key, trusted, topic_id=identity_id)
    assert isinstance(tombstone, Tombstone) and tombstone.revision == 2

    # The door has not applied it yet: out of step, and named.
    code, report = _status(capsys, auth_file)
    assert code == 1
    (row,) = report["doors"]
    assert not row["in_step"] and row["applied"] == 1 and row["expected"] == 0
    assert any("extra" in note for note in row["differences"])
    code, out, _ = fleet(capsys, "status", "--config", str(auth_file), "--wait", "0.5")
    assert code == 1 and "1 of 1 door(s) not in step: door-1" in out

    # It applies the tombstone: in step again.
    recorder.publish(
        door, json.dumps(door_document("door-1", SITE, 2, {}, 0, None, NOW)).encode(), retain=True
    )
    code, report = _status(capsys, auth_file)
    assert code == 0, report

    # Policy change of a removed identity, unknown ids: refused, nothing published.
    assert fleet(capsys, "remove", "--config", str(auth_file), identity_id)[0] == 1
    assert fleet(capsys, "set", "--config", str(auth_file), identity_id, "--suspend")[0] == 1


def test_a_person_without_a_face_is_published_and_a_face_forgotten(
    capsys: pytest.CaptureFixture, auth_file: Path, recorder: Recorder
) -> None:
    """``fleet enroll --no-face`` publishes a record without crops (no model loaded, no photo);
    ``fleet set ID --forget-face`` republishes a record with crops without them."""
    from appliance.access.policy import IdentityPolicy
    from appliance.fleet.authority import Authority, Enrolment
    from appliance.fleet.settings import load_authority_config

    assert fleet(capsys, "init", "--config", str(auth_file))[0] == 0
    keys_dir = auth_file.parent / "keys"
    fleet_key, trusted = read_fleet_key(keys_dir / "fleet.key"), load_trusted_keys(keys_dir)

    def record(identity_id: str, revision: int) -> IdentityRecord:
        topic = record_topic(PREFIX, SITE, identity_id)
        recorder.wait_for(
            lambda ms: len([m for m in ms if m.topic == topic]) >= revision,
            what=f"r{revision} of {identity_id}",
        )
        opened = open_record(recorder.on(topic)[-1].payload, SITE, fleet_key, trusted, topic_id=identity_id)
        assert isinstance(opened, IdentityRecord)
        return opened

    code, out, err = fleet(
        capsys, "enroll", "--config", str(auth_file), "--no-face", "--name", "Ada Lovelace",
        "--id", "p-0000000000aa", "--card", "w26:7:12345", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["crops"] == 0 and "warning" not in err
    ada = record("p-0000000000aa", 1)
    assert ada.crops == () and ada.qualities == () and ada.policy.cards == ("w26:7:12345",)
    code, _, err = fleet(
        capsys, "enroll", "--config", str(auth_file), "--no-face", "--name", "Vera", "--id", "p-0000000000ee"
    )
    assert code == 0 and "holds no card" in err

    crop = np.full((112, 112, 3), 120, np.uint8)
    authority = Authority.open(load_authority_config(auth_file))
    bob = authority.enroll(Enrolment("p-0000000000bb", "Bob", None, NOW, IdentityPolicy(), (crop,), (0.8,)))
    assert len(record(bob.identity_id, 1).crops) == 1
    code, out, err = fleet(
        capsys, "set", "--config", str(auth_file), bob.identity_id, "--forget-face", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["crops"] == 0 and json.loads(out)["revision"] > bob.revision
    forgotten = record(bob.identity_id, 2)
    assert forgotten.crops == () and forgotten.name == "Bob"


def test_refused_photos_publish_nothing(
    capsys: pytest.CaptureFixture, auth_file: Path, recorder: Recorder, tmp_path: Path
) -> None:
    assert fleet(capsys, "init", "--config", str(auth_file))[0] == 0
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    code, out, err = fleet(
        capsys,
        "enroll",
        "--config",
        str(auth_file),
        "--name",
        "Nobody",
        "--json",
        str(blank),
        str(not_an_image),
    )
    assert code == 1, err
    report = json.loads(out)
    assert report["published"] is False
    reasons = [photo["reason"] for photo in report["photos"]]
    assert reasons[0] == "no face found" and "not a decodable image" in reasons[1]
    assert not [m for m in recorder.messages if m.topic.startswith(PREFIX)]
    # Hostile text is refused before any model loads (exit 2).
    code, _, err = fleet(capsys, "enroll", "--config", str(auth_file), "--name", "\x1b[2JAdmin", str(blank))
    assert code == 2 and "ESCAPE" in err


def test_broker_unreachable_is_a_clear_error(
    capsys: pytest.CaptureFixture, tmp_path: Path, shared_models: Path
) -> None:
    path = tmp_path / "AUTH.toml"
    path.write_text(
        f'[authority]\nsite = "{SITE}"\nsigning_key = "authority.key"\nfleet_key_file = "fleet.key"\n'
        f'state_dir = "state"\ntimeout_s = 2\n[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n'
        f'[models]\ndir = "{shared_models}"\n'
    )
    assert fleet(capsys, "init", "--config", str(path))[0] == 0
    code, _, err = fleet(capsys, "remove", "--config", str(path), "p-000000000000")
    assert code == 1 and "cannot reach the MQTT broker 127.0.0.1:" in err
    code, _, err = fleet(capsys, "status", "--config", str(path), "--wait", "0.2")
    assert code == 1 and "cannot reach" in err
    state: List[Path] = sorted((tmp_path / "state").iterdir())
    assert [p.name for p in state] == ["lock"]  # nothing allocated, nothing written


def test_enroll_batch_from_a_roster_resumes_after_an_interruption(
    capsys: pytest.CaptureFixture,
    auth_file: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
    shared_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from appliance.cli import fleet_enroll

    faces = shared_data / "faces"
    roster = tmp_path / "roster.csv"
    roster.write_text(
        "photos,name,external_id,groups\n"
        f"{faces / 'fr_obama'},Barack Obama,B-1,staff\n"
        f"{faces / 'fr_biden'},Joe Biden,B-2,\n"
        f"{faces / 'fr_kit_harington' / 'john1.jpeg'},Kit Harington,B-3,staff night\n"
        f"{faces / 'fr_lin_manuel_miranda'},Lin-Manuel Miranda,B-4,\n"  # two faces in the photo
    )
    assert fleet(capsys, "init", "--config", str(auth_file))[0] == 0
    batch = ("enroll-batch", "--config", str(auth_file), "--json", str(roster))

    # A roster with a wrong row: refused whole with its line, before any model loads.
    bad = tmp_path / "bad.csv"
    bad.write_text(roster.read_text() + f"{faces / 'nobody'},Nobody,B-5,\n")
    code, _, err = fleet(capsys, "enroll-batch", "--config", str(auth_file), str(bad))
    assert code == 2 and "line 6:" in err and "does not exist" in err and "nothing was enrolled" in err

    # --check: every photo checked, nothing published.
    code, out, err = fleet(capsys, *batch, "--check")
    checked = json.loads(out)
    assert code == 1, err
    assert (checked["would_publish"], checked["refused"], checked["published"]) == (3, 1, 0)
    assert "2 faces found" in checked["people"][3]["photos"][0]["reason"]
    assert all(person["look_alikes"] == [] for person in checked["people"])  # four different people

    # One person on two rows (two badges): warned, with the earlier row's line.
    twice = tmp_path / "twice.csv"
    twice.write_text(
        "photos,name,external_id\n"
        f"{faces / 'fr_obama'},Barack Obama,B-1\n"
        f"{faces / 'fr_biden'},Joe Biden,B-2\n"
        f"{faces / 'fr_obama' / 'obama.jpg'},B. Obama,B-9\n"
    )
    code, out, err = fleet(capsys, "enroll-batch", "--config", str(auth_file), "--check", str(twice))
    assert code == 0, err
    (warning,) = re.findall(r"warning: very similar to line (\d+) \(score ([0-9.]+)\)", out)
    assert warning[0] == "2" and float(warning[1]) >= 0.6  # obama.jpg is one of line 2's photos
    assert out.index("line 4") < out.index("warning:")

    # Interrupted while checking the fourth person, two people per change: the first two are published,
    # the third was checked but not yet published.
    monkeypatch.setattr(fleet_enroll, "PEOPLE_PER_CHANGE", 2)
    checked_paths: List[List[Path]] = []
    check_photos = fleet_enroll.check_photos
    interrupt = True

    def counted(enroller: Any, paths: Any, face: Any, largest: bool) -> Any:
        checked_paths.append(list(paths))
        if interrupt and len(checked_paths) == 4:
            raise KeyboardInterrupt
        return check_photos(enroller, paths, face, largest)

    monkeypatch.setattr(fleet_enroll, "check_photos", counted)
    code, _, err = fleet(capsys, *batch)
    assert code == 130 and "interrupted: 2 published" in err and "Run the same command again" in err
    live = _manifest_entries(recorder, auth_file, 2)
    assert len(live) == 2

    # Run again as it is: the two are held without their photos being read; the rest is checked.
    checked_paths.clear()
    interrupt = False
    code, out, err = fleet(capsys, *batch)
    report = json.loads(out)
    assert code == 1, err  # Lin-Manuel: no photo accepted
    assert (report["published"], report["held"], report["refused"]) == (1, 2, 1)
    assert [paths[0].parent.name for paths in checked_paths] == ["fr_kit_harington", "fr_lin_manuel_miranda"]
    held = [person["id"] for person in report["people"][:2]]
    assert set(held) == set(live)

    # --largest takes the largest face of Lin-Manuel's photo: everyone is enrolled, each once.
    code, out, err = fleet(capsys, *batch, "--largest")
    report = json.loads(out)
    assert code == 0, err
    assert (report["published"], report["held"], report["refused"]) == (1, 3, 0)
    ids = [person["id"] for person in report["people"]]
    entries = _manifest_entries(recorder, auth_file, 4)
    assert sorted(entries) == sorted(ids) and len(set(ids)) == 4

    keys_dir = auth_file.parent / "keys"
    fleet_key, trusted = read_fleet_key(keys_dir / "fleet.key"), load_trusted_keys(keys_dir)
    with Recorder(mosquitto.host, mosquitto.port, f"{PREFIX}/{SITE}/records/+") as late:
        late.wait_for(lambda ms: len(ms) >= 4, what="the four retained records")
        records = {
            m.topic: open_record(m.payload, SITE, fleet_key, trusted, topic_id=m.topic.rsplit("/", 1)[1])
            for m in late.messages
        }
    by_badge = {r.external_id: r for r in records.values() if isinstance(r, IdentityRecord)}
    assert sorted(by_badge) == ["B-1", "B-2", "B-3", "B-4"]
    obama_photos = report["people"][0]
    assert by_badge["B-1"].name == "Barack Obama" and by_badge["B-1"].policy.groups == ("staff",)
    assert len(by_badge["B-1"].crops) == 6 and obama_photos["status"] == "held"
    assert by_badge["B-3"].policy.groups == ("night", "staff") and len(by_badge["B-3"].crops) == 1
    assert all(crop.shape == (112, 112, 3) for r in by_badge.values() for crop in r.crops)

    # --replace: the holder of the badge is replaced under the same id, at a new revision.
    one = tmp_path / "one.csv"
    one.write_text(f"photos,name,external_id\n{faces / 'fr_kit_harington'},Kit Harington,B-3\n")
    code, out, err = fleet(
        capsys, "enroll-batch", "--config", str(auth_file), "--json", "--replace", str(one)
    )
    assert code == 0, err
    (replaced,) = json.loads(out)["people"]
    assert replaced["status"] == "published" and replaced["id"] == by_badge["B-3"].id
    assert replaced["revision"] > max(entries.values())

    # Leavers by badge and by id, in one command; a badge nobody holds refuses the whole command.
    code, _, err = fleet(capsys, "remove", "--config", str(auth_file), "--external-id", "B-404")
    assert code == 1 and "nothing was removed" in err and "'B-404'" in err
    code, out, err = fleet(
        capsys, "remove", "--config", str(auth_file), "--json", by_badge["B-2"].id, "--external-id", "B-1"
    )
    assert code == 0, err
    removed = json.loads(out)["removed"]
    assert [r["id"] for r in removed] == [by_badge["B-2"].id, by_badge["B-1"].id]
    assert all(r["kind"] == "tombstone" for r in removed)
    left = _manifest_entries(recorder, auth_file, 2)
    assert sorted(left) == sorted([by_badge["B-3"].id, by_badge["B-4"].id])
    code, _, err = fleet(capsys, "remove", "--config", str(auth_file))
    assert code == 2 and "--external-id" in err


def _manifest_entries(recorder: Recorder, auth_file: Path, count: int) -> Dict[str, int]:
    """The entries of the newest manifest on the broker once it lists ``count`` identities."""
    trusted = load_trusted_keys(auth_file.parent / "keys")

    def entries() -> Dict[str, int]:
        messages = recorder.on(manifest_topic(PREFIX, SITE))
        return open_manifest(messages[-1].payload, SITE, trusted).entries if messages else {}

    recorder.wait_for(lambda _: len(entries()) == count, what=f"a manifest of {count} identities")
    return entries()
