"""The fleet end to end: a real Mosquitto, the enrolment authority's command line, and three appliances
(subprocesses) on a looping video of a person. Enrol once, every door grants; the same person under a
second id is found by the doors and listed by ``fleet status``; remove, every door forgets (for real);
a door stopped during both catches up; hostile records change nothing anywhere. A rotated fleet key
reaches the doors given it and no other."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.fleet.records import (
    IdentityRecord,
    fleet_key_id,
    open_record,
    read_fleet_key,
    record_topic,
    seal_record,
)
from appliance.updates.keys import key_id, load_public_key
from tests.mqtt_broker import MosquittoBroker, Recorder, wait_until
from tests.support import Daemon, command, fleet_authority_config, fleet_door_config, passage_video, run_cli

SITE = "hq"
PREFIX = "face-appliance-fleet"
DOORS = ("door-a", "door-b", "door-c")
PERSON = "p-obama"  # the person of the video
SECOND_BADGE = "p-obama-2"  # the same person enrolled again, under another id
OTHER = "p-ada"


@pytest.fixture
def authority(tmp_path: Path, shared_models: Path, mosquitto: MosquittoBroker) -> Path:
    config = fleet_authority_config(tmp_path / "authority", SITE, mosquitto, shared_models)
    _ok("fleet", "init", "--config", str(config))
    return config


def _ok(*args: str) -> str:
    done = run_cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _state(recorder: Recorder, device: str) -> Dict[str, Any]:
    states = recorder.on(f"face-appliance/{device}/state")
    return json.loads(states[-1].payload) if states else {}


def _fleet_applied(recorder: Recorder, device: str) -> Dict[str, Any]:
    return _state(recorder, device).get("fleet") or {}


def _look_alikes_listed(recorder: Recorder, device: str) -> List[Dict[str, Any]]:
    return (_fleet_applied(recorder, device).get("look_alikes") or {}).get("listed", [])


def _decisions_since(recorder: Recorder, device: str, since: float) -> List[Dict[str, Any]]:
    messages = [
        m
        for m in recorder.messages
        if m.topic == f"face-appliance/{device}/events" and m.received_at >= since
    ]
    return [json.loads(m.payload) for m in messages]


def _wait_decision(recorder: Recorder, device: str, since: float, check: Any, what: str) -> None:
    recorder.wait_for(
        lambda _: any(check(e) for e in _decisions_since(recorder, device, since)), 120, f"{device}: {what}"
    )


def _bytes_of(store: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (store, store.with_name(store.name + "-wal")) if p.exists())


@pytest.fixture
def doors(
    tmp_path: Path, authority: Path, shared_models: Path, shared_data: Path, mosquitto: MosquittoBroker
) -> Iterator[Dict[str, Path]]:
    video = passage_video(tmp_path, shared_data)
    yield {
        device: fleet_door_config(tmp_path / device, device, SITE, authority, shared_models, mosquitto, video)
        for device in DOORS
    }


def test_enrol_once_every_door_knows(
    tmp_path: Path,
    authority: Path,
    doors: Dict[str, Path],
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    faces = shared_data / "faces"
    auth = ("--config", str(authority))
    running = {device: Daemon(config) for device, config in doors.items()}
    try:
        for device in DOORS:
            recorder.wait_for(
                lambda _, device=device: _fleet_applied(recorder, device).get("applied") == 0,
                120,
                f"{device} in the fleet",
            )
        status = json.loads(_ok("fleet", "status", *auth, "--json"))
        assert {door["device_id"] for door in status["doors"]} == set(DOORS)
        # Ada is enrolled at door A itself (a local id, made from her name) before the fleet enrols her.
        photo = base64.b64encode((faces / "deepface_personA/img6.jpg").read_bytes()).decode()
        enrolled = command(
            recorder,
            "enroll",
            {"request_id": "local-1", "name": "Ada Lovelace", "image": photo},
            root="face-appliance/door-a",
        )
        assert enrolled["ok"] is True, enrolled

        running["door-c"].stop()  # door C is away during both changes
        since = time.time()
        _ok(
            "fleet",
            "enroll",
            *auth,
            "--name",
            "Barack Obama",
            "--id",
            PERSON,
            str(faces / "fr_obama/obama.jpg"),
        )
        _ok(
            "fleet",
            "enroll",
            *auth,
            "--name",
            "Ada",
            "--id",
            OTHER,
            "--groups",
            "staff",
            str(faces / "deepface_personA/img2.jpg"),
        )
        for device in ("door-a", "door-b"):
            _wait_decision(
                recorder,
                device,
                since,
                lambda e: e["decision"] == "granted" and (e["identity"] or {}).get("id") == PERSON,
                "grants the person",
            )
        record = json.loads(recorder.on(record_topic(PREFIX, SITE, PERSON))[-1].payload)
        assert (
            b"Barack" not in recorder.on(record_topic(PREFIX, SITE, PERSON))[-1].payload
            and record["kind"] == "identity"
        )
        # The same person again under another id, from another photo: each door that applies it finds
        # it matches PERSON, and `fleet status` lists the pair once, with the doors and the names.
        _ok(
            "fleet",
            "enroll",
            *auth,
            "--name",
            "B. Obama",
            "--id",
            SECOND_BADGE,
            str(faces / "fr_obama/obama2.jpg"),
        )
        wait_until(
            lambda: all(
                SECOND_BADGE in {pair["id"] for pair in _look_alikes_listed(recorder, device)}
                for device in ("door-a", "door-b")
            ),
            60,
            "doors a and b find the look-alike",
        )
        out_of_step = run_cli("fleet", "status", *auth, "--json")
        assert out_of_step.returncode == 1
        report = json.loads(out_of_step.stdout)
        behind = [d["device_id"] for d in report["doors"] if not d["in_step"]]
        assert behind == ["door-c"], out_of_step.stdout
        pairs = {(pair["id"], pair["like"]): pair for pair in report["look_alikes"]}
        assert set(pairs) == {(SECOND_BADGE, PERSON), (OTHER, None)}, report["look_alikes"]
        assert pairs[SECOND_BADGE, PERSON]["doors"] == ["door-a", "door-b"]
        assert pairs[OTHER, None]["doors"] == ["door-a"]  # her local id stays on door A
        # the doors' gallery.duplicate_threshold, by default
        assert all(0.6 <= pair["score"] <= 1.0 for pair in pairs.values())
        by_door = {d["device_id"]: d["look_alikes"] for d in report["doors"]}
        assert by_door["door-a"]["count"] == 2 and by_door["door-c"]["count"] == 0
        assert {(p["id"], p["like"]) for p in _look_alikes_listed(recorder, "door-a")} == {
            (SECOND_BADGE, PERSON),
            (OTHER, "ada-lovelace"),  # the door's own …/state names it
        }
        assert b"ada-lovelace" not in recorder.on(f"{PREFIX}/{SITE}/doors/door-a")[-1].payload
        # At door A itself, beside its running daemon, the pairs with the names it holds.
        here = json.loads(_ok("gallery", "look-alikes", "--config", str(doors["door-a"]), "--json"))
        assert here["count"] == 2
        assert {
            (r["id"], r["like"], r["like_name"], r["like_enrolled_here"]) for r in here["look_alikes"]
        } == {
            (SECOND_BADGE, PERSON, "Barack Obama", False),
            (OTHER, "ada-lovelace", "Ada Lovelace", True),
        }
        lines = run_cli("fleet", "status", *auth).stdout
        assert f"{SECOND_BADGE} (B. Obama) ~ {PERSON} (Barack Obama)" in lines, lines
        assert f"{OTHER} (Ada) ~ an identity enrolled at the door" in lines, lines
        # Were they twins, the operator would mark them distinct: no longer listed, until undone. A
        # pair of two fleet identities is the authority's to mark, not a door's.
        at_door = command(
            recorder,
            "distinct",
            {"request_id": "d-0", "ids": [PERSON, SECOND_BADGE]},
            root="face-appliance/door-a",
        )
        assert at_door["ok"] is False and "(fleet distinct)" in at_door["error"]["message"], at_door
        _ok("fleet", "distinct", *auth, PERSON, SECOND_BADGE)
        marked = json.loads(run_cli("fleet", "status", *auth, "--json", "--wait", "0.3").stdout)  # C is away
        assert [(p["id"], p["like"]) for p in marked["look_alikes"]] == [(OTHER, None)]
        assert marked["distinct"] == [sorted([PERSON, SECOND_BADGE])]
        _ok("fleet", "distinct", *auth, PERSON, SECOND_BADGE, "--undo")

        # Removing one id would still let him in as the other: both go, in one change.
        since = time.time()
        _ok("fleet", "remove", *auth, PERSON, SECOND_BADGE)
        for device in ("door-a", "door-b"):
            wait_until(
                lambda device=device: PERSON not in _store_ids(doors[device]),
                60,
                f"{device} removes the person",
            )
            _wait_decision(
                recorder, device, since, lambda e: e["decision"] == "unknown", "no longer knows the person"
            )
            assert b"Barack Obama" not in _bytes_of(doors[device].parent / "state" / "gallery.db")

        running["door-c"] = Daemon(doors["door-c"])  # catches up from the retained records
        wait_until(lambda: run_cli("fleet", "status", *auth).returncode == 0, 120, "every door in step")
        assert _store_ids(doors["door-c"]) == {OTHER}
        # Every door follows the manifest live, the doors that asked for it again at their start too.
        wait_until(
            lambda: (
                {
                    d["manifest_revision"] == report["manifest"]["revision"]
                    for report in [json.loads(_ok("fleet", "status", *auth, "--json", "--wait", "0.3"))]
                    for d in report["doors"]
                }
                == {True}
            ),
            60,
            "every door on the site's newest manifest",
        )
        look_alikes = json.loads(_ok("fleet", "status", *auth, "--json"))["look_alikes"]
        assert [(pair["id"], pair["like"]) for pair in look_alikes] == [(OTHER, None)]  # Obama's are gone
        # Its catch-up's embedding ran as a job between two frames, and the door reports that wait.
        wait_until(
            lambda: "between_frames" in (_state(recorder, "door-c").get("latency_ms") or {}),
            60,
            "door-c's between_frames stage in …/state",
        )

        # hostile records: refused by all three, nothing changed anywhere
        before = {device: _store_ids(config) for device, config in doors.items()}
        keys = authority.parent / "keys"
        fleet_key = read_fleet_key(keys / "fleet.key")
        forger = Ed25519PrivateKey.generate()
        genuine = recorder.on(record_topic(PREFIX, SITE, OTHER))[-1].payload
        opened = open_record(
            genuine,
            SITE,
            fleet_key,
            {key_id(load_public_key(keys / "authority.pub")): load_public_key(keys / "authority.pub")},
        )
        assert isinstance(opened, IdentityRecord)
        forged = seal_record(
            IdentityRecord(
                "p-mallory",
                opened.revision + 100,
                "Mallory",
                None,
                opened.consent_at,
                opened.policy,
                opened.crops,
                opened.qualities,
            ),
            SITE,
            fleet_key,
            forger,
        )
        recorder.publish(record_topic(PREFIX, SITE, "p-mallory"), forged, retain=True)
        _ok("fleet", "set", *auth, OTHER, "--add-group", "night")  # a newer revision of Ada's record
        for device in DOORS:
            wait_until(
                lambda device=device: "night" in _policy_groups(doors[device], OTHER),
                60,
                f"{device} applies the newer record",
            )
        # At a door, the site's identity is the authority's: a change made there is refused (its next
        # record would undo it, and the other doors would never have it), over MQTT and beside the
        # daemon alike, naming the authority's command.
        refused = command(
            recorder,
            "set_policy",
            {"request_id": "p-0", "id": OTHER, "suspended": True},
            root="face-appliance/door-a",
        )
        assert refused["ok"] is False and f"fleet set {OTHER}" in refused["error"]["message"], refused
        beside = run_cli("gallery", "remove", "--config", str(doors["door-b"]), OTHER)
        assert beside.returncode == 1 and f"fleet remove {OTHER}" in beside.stderr, beside.stderr
        envelope = json.loads(recorder.on(record_topic(PREFIX, SITE, OTHER))[-1].payload)
        ciphertext = bytearray(base64.b64decode(envelope["ciphertext"]))
        ciphertext[len(ciphertext) // 2] ^= 1
        envelope["ciphertext"] = base64.b64encode(bytes(ciphertext)).decode()
        recorder.publish(
            record_topic(PREFIX, SITE, OTHER), json.dumps(envelope).encode(), retain=True
        )  # tampered
        recorder.publish(
            record_topic(PREFIX, SITE, OTHER), genuine, retain=True
        )  # the older revision, replayed
        for device in DOORS:
            wait_until(
                lambda device=device: (
                    (_fleet_applied(recorder, device).get("refused") or {}).get("count", 0) >= 3
                ),
                60,
                f"{device} refuses the three hostile records",
            )
            assert _store_ids(doors[device]) == before[device] and "night" in _policy_groups(
                doors[device], OTHER
            )

        # Were Ada and the fleet's p-ada two people (twins), door A marks the pair, with its local id,
        # beside its daemon: it leaves door A's digest and `fleet status`, until undone.
        door_a = ("--config", str(doors["door-a"]))

        def site_pairs() -> List[Tuple[str, Optional[str]]]:
            report = json.loads(_ok("fleet", "status", *auth, "--json", "--wait", "0.3"))
            return [(pair["id"], pair["like"]) for pair in report["look_alikes"]]

        _ok("gallery", "distinct", *door_a, "ada-lovelace", OTHER)
        wait_until(lambda: site_pairs() == [], 60, "the pair hidden by door A's mark")
        here = json.loads(_ok("gallery", "look-alikes", *door_a, "--json"))
        assert here["count"] == 0 and [d["ids"] for d in here["distinct"]] == [
            sorted(["ada-lovelace", OTHER])
        ]
        for pair, refusal in (([OTHER, "p-nobody"], "no identity 'p-nobody'"), ([OTHER, OTHER], "twice")):
            refused = run_cli("gallery", "distinct", *door_a, *pair)
            assert refused.returncode == 1 and refusal in refused.stderr, refused.stderr
        # The same over MQTT, done by the daemon itself: undone, the pair is listed again.
        undone = command(
            recorder,
            "distinct",
            {"request_id": "d-1", "ids": [OTHER, "ada-lovelace"], "undo": True},
            root="face-appliance/door-a",
        )
        assert undone["ok"] is True and undone["result"] == {
            "ids": sorted([OTHER, "ada-lovelace"]),
            "distinct": False,
            "changed": True,
        }, undone
        wait_until(lambda: site_pairs() == [(OTHER, None)], 60, "the pair listed again")

        # Ada's local enrolment removed at door A: her look-alike goes with it, and door A's digest
        # says so once its fleet thread is idle (no fleet record came).
        recorder.publish(
            "face-appliance/door-a/cmd/remove",
            json.dumps({"request_id": "local-2", "id": "ada-lovelace"}).encode(),
        )
        wait_until(
            lambda: json.loads(_ok("fleet", "status", *auth, "--json", "--wait", "0.3"))["look_alikes"] == [],
            60,
            "the look-alike gone from door A's digest",
        )
        assert "ada-lovelace" not in _store_ids(doors["door-a"])
    finally:
        for daemon in running.values():
            daemon.stop()
            daemon.close()


def _store_ids(config: Path) -> set:
    from appliance.gallery.store import TemplateStore

    state = config.parent / "state"
    with TemplateStore.open(state / "gallery.db", state / "gallery.key") as store:
        return {identity.id for identity in store.identities()}


def _policy_groups(config: Path, identity_id: str) -> tuple:
    from appliance.gallery.store import TemplateStore

    state = config.parent / "state"
    with TemplateStore.open(state / "gallery.db", state / "gallery.key") as store:
        identity = store.identity(identity_id)
        return identity.policy.groups if identity is not None else ()


def test_a_fresh_door_gets_every_record_from_a_broker_that_drops_part_of_the_burst(
    tmp_path: Path, analyzer: Any
) -> None:
    """Mosquitto sends a client at most ``max_queued_messages`` at once and drops the rest of a retained
    burst (a door stopped at 1 805 of 10 000 on the defaults); with a limit of 5 and 150 records, the
    door must still get them all, by asking for what the signed manifest lists and it lacks."""
    import numpy as np

    from appliance.updates.keys import load_private_key
    from bench.fleet import _authority, _scene, catch_up, reference_crop, seal_identities
    from tests.mqtt_broker import free_port

    nowhere = type("Nowhere", (), {"host": "127.0.0.1", "port": free_port()})()
    authority = _authority(tmp_path / "authority", nowhere, "catch-up")
    keys = authority.parent / "keys"
    signing_key = load_private_key(keys / "authority.key")
    sealed, _, _ = seal_identities(
        150,
        reference_crop(analyzer),
        read_fleet_key(keys / "fleet.key"),
        signing_key,
        np.random.default_rng(3),
    )
    result = catch_up(
        tmp_path / "run", authority, sealed, signing_key, _scene(tmp_path, "empty"), "max_queued_messages 5"
    )
    # Whether the broker cuts the burst depends on how fast the door reads: with a limit of 5 it
    # almost always does (the log says so); either way every record must arrive.
    assert result["complete"] and result["applied"] == 150 and result["after_restart"] is None, result


def test_a_rotated_fleet_key_reaches_the_doors_given_it_and_no_other(
    tmp_path: Path,
    authority: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    """``fleet rotate-key`` with two doors: the one kept in the site is given the new key and the old
    one as its previous key and restarted — it applies what is published after, and applies nothing
    again; the one left out (lost, say) keeps the old key and opens nothing published after; `fleet
    status` tells the two apart by the key ids of their ``…/state``, and forgets the one left out."""
    auth = ("--config", str(authority))
    keys = authority.parent / "keys"
    old_key = tmp_path / "old.key"
    shutil.copy(keys / "fleet.key", old_key)
    old_key.chmod(0o600)
    video = passage_video(tmp_path, shared_data)
    kept = fleet_door_config(tmp_path / "kept", "door-kept", SITE, authority, shared_models, mosquitto, video)
    left = fleet_door_config(tmp_path / "left", "door-left", SITE, authority, shared_models, mosquitto, video)
    left.write_text(left.read_text().replace(str(keys / "fleet.key"), str(old_key)))
    _ok("fleet", "enroll", *auth, "--no-face", "--name", "Ada", "--id", "p-ada", "--card", "w26:7:1")
    running = {"kept": Daemon(kept), "left": Daemon(left)}
    try:
        for config in (kept, left):
            wait_until(
                lambda config=config: "p-ada" in _store_ids(config), 120, f"{config.parent.name} applies Ada"
            )
        before = _fleet_revisions(kept)
        rotated = json.loads(_ok("fleet", "rotate-key", *auth, "--json"))
        assert (
            rotated["published"] == 1 and (keys / "fleet.key.previous").read_bytes() == old_key.read_bytes()
        )
        assert (keys / "fleet.key").read_bytes() != old_key.read_bytes()
        running["kept"].stop()
        kept.write_text(kept.read_text() + f'previous_fleet_key_file = "{keys / "fleet.key.previous"}"\n')
        running["kept"] = Daemon(kept)
        _ok("fleet", "enroll", *auth, "--no-face", "--name", "Bob", "--id", "p-bob", "--card", "w26:7:2")
        wait_until(lambda: "p-bob" in _store_ids(kept), 120, "the door given the new key applies Bob")
        assert _fleet_revisions(kept)["p-ada"] == before["p-ada"]  # resealed, not applied again
        wait_until(
            lambda: (
                (_fleet_applied(recorder, "door-left").get("refused") or {}).get("last", {}).get("reason")
                == "decrypt_failed"
            ),
            120,
            "the door left out refuses what it cannot open",
        )
        assert _store_ids(left) == {"p-ada"}  # what it held stays; nothing new
        wait_until(
            lambda: _fleet_applied(recorder, "door-kept").get("previous_key_id") is not None,
            60,
            "door-kept's …/state names the keys it holds",
        )
        report = json.loads(run_cli("fleet", "status", *auth, "--json").stdout)
        assert report["fleet_key_id"] == fleet_key_id(read_fleet_key(keys / "fleet.key"))
        doors = {door["device_id"]: (door["in_step"], door["fleet_key"]) for door in report["doors"]}
        assert doors == {"door-kept": (True, "current"), "door-left": (False, "other")}, report["doors"]
        # Out of service: stopped (its broker credentials revoked, in the field), then forgotten.
        running["left"].stop()
        _ok("fleet", "forget-door", *auth, "door-left")
        status = run_cli("fleet", "status", *auth, "--json")
        assert status.returncode == 0, status.stdout
        assert [door["device_id"] for door in json.loads(status.stdout)["doors"]] == ["door-kept"]
    finally:
        for daemon in running.values():
            daemon.stop()
            daemon.close()


def _fleet_revisions(config: Path) -> Dict[str, Tuple[int, str]]:
    from appliance.gallery.store import TemplateStore

    state = config.parent / "state"
    with TemplateStore.open(state / "gallery.db", state / "gallery.key") as store:
        return store.fleet_revisions()
