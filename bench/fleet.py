"""The fleet at scale: a fresh door catching up on N identities, what the broker retains per identity,
and doors converging after an enrol and a remove (issue 14).

    python -m bench.fleet [--identities 1000 10000] [--doors 3] [--rounds 3] [--scene empty|passage]
                          [--in-view-job-ms MS …] [--roster N] [--json OUT] [--quick]

Everything is real: a Mosquitto on a free loopback port, ``face-appliance run`` subprocesses on the CPU
back-end with ``[fleet]`` enabled, the authority's command line for the convergence part.

1. **Catch-up.** One real photo is detected and aligned once; N identity records (one 112×112 crop
   each, that crop with ±2 of pixel noise per identity so that no two are alike, opaque ids
   ``p-%012x``, revisions 1…N) are sealed with :func:`appliance.fleet.records.seal_record` under a
   fresh fleet key and authority key (``fleet init``), and published retained with QoS 1 through the
   authority's own connection (:class:`appliance.fleet.broker.FleetBroker`), then the manifest. A
   fresh door (empty gallery) starts; the time from its process start until its retained digest
   document says ``applied == N`` *and* its digest equals :func:`fleet_digest` of the published
   entries is the catch-up. The door subscribes to the records at QoS 0, and Mosquitto drops outgoing
   QoS 0 messages while ``max_queued_messages`` (1000 by default) packets wait for a client: a door
   that stops short (no progress for a minute) is reported with its numbers (applied, its manifest
   revision, its own ``dropped`` count, the broker's "being dropped" log lines), restarted once to
   see whether a reconnection brings the rest, and the same size is then run again on a broker with
   ``max_queued_messages 0`` to measure the door's own speed. With ``--in-view-job-ms``, each size is
   caught up once per value of ``fleet.in_view_job_ms`` (what a job may take between two frames
   while a camera tracks a face: the passage scene), side by side.
2. **The cost per identity**, timed in this process with the real code before the door starts:
   *verify* (:func:`open_record` on the record with one signature bit flipped: envelope, base64,
   Ed25519), *decrypt* (with a wrong fleet key: AES-GCM over the whole ciphertext, minus verify),
   *decode* (the genuine record: JSON, PNG crop, checks, minus the two), *embed* (the active embedder
   on one embedder batch, a pipeline job's worth as the door does, per crop) and *store*
   (``Gallery.apply_fleet_identity``, on the fleet thread in the door,
   with ``save=False`` on a fresh gallery, every one of the N records, so at that gallery's size).
3. **Bytes.** Each record's payload (mean, max), a noise-free crop's PNG and record, the manifest at
   N, and the broker's resident memory before and after the records are retained.
4. **Convergence.** ``--doors`` daemons of another site run and are in step; per round, ``fleet
   enroll`` (the CLI, a real photo) and then ``fleet remove``: the seconds from the moment the record
   (or tombstone) reaches a subscriber until each door's digest document shows the change, per door
   and the slowest. Then a roster, one row per person folder of the shared faces (``--roster N``
   rows: the folders again, each row its own badge), through ``fleet enroll-batch``: its wall time,
   per person, and the seconds from its start until each door holds everyone. ``fleet status`` at the end must say every door is in step.

``--quick`` is the tiny run CI uses (``tests/integration/test_bench_fleet.py``): 20 identities, two
doors, one round. The exit status is 1 when a door did not apply everything (on a broker as installed)
or the doors did not converge; the findings say which.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from appliance.access.policy import IdentityPolicy
from appliance.config import MqttConfig
from appliance.config_load import validate_config
from appliance.fleet.broker import FleetBroker
from appliance.fleet.door_settings import FleetConfig
from appliance.fleet.errors import BAD_SIGNATURE, DECRYPT_FAILED, FleetRecordError
from appliance.fleet.member import store_identity
from appliance.fleet.records import (
    IdentityRecord,
    Manifest,
    door_topic,
    fleet_digest,
    manifest_topic,
    open_record,
    parse_door_document,
    read_fleet_key,
    record_topic,
    seal_manifest,
    seal_record,
)
from appliance.fleet.settings import DEFAULT_PREFIX
from appliance.gallery.gallery import Gallery
from appliance.runtime.loading import load_analyzer
from appliance.updates.keys import key_id, load_private_key
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image

from .daemon import REPO, SHARED, _proc
from .machine import describe

sys.path.insert(0, str(REPO))  # the real broker and the daemon subprocess helpers of the tests
from tests.mqtt_broker import MosquittoBroker, Recorder, free_port
from tests.support import (
    Daemon,
    fleet_authority_config,
    fleet_door_config,
    make_passage_video,
    passage_video,
    run_cli,
)

PHOTO = SHARED / "data/faces/fr_obama/obama.jpg"
CATCH_UP_SITE = "catch-up"
CONVERGE_SITE = "hq"
CATCH_UP_DOOR = "door-catch-up"
CONSENT_AT = "2024-01-01T00:00:00Z"
#: Pixel noise (±) added to the one real crop so that every identity's crop differs.
NOISE = 2
#: Records opened per stage for the verify/decrypt/decode figures (each is a constant cost per record).
OPEN_SAMPLE = 1000
#: Passes over each in-process measurement; the fastest is kept.
PASSES = 3
#: A catch-up that makes no progress for this long has stopped (the rest is not coming).
STALL_S = 60.0
#: The same after the door was restarted to see whether a reconnection brings the rest.
RESTART_STALL_S = 30.0
#: The catch-up brokers: Mosquitto as installed, and (when a door stops short there) with no bound on
#: the messages waiting for one client.
DEFAULT_QUEUE = "Mosquitto defaults (max_queued_messages 1000)"
UNBOUNDED_QUEUE = "max_queued_messages 0"
#: Longest wait for a door to join the fleet (models loaded, its first digest document).
JOIN_S = 300.0
#: Longest wait for every door to show one enrol or remove.
CONVERGE_S = 120.0
#: More time for the doors to apply a roster, per person (a few crops each, embedded by every door).
ROSTER_S_PER_PERSON = 1.0
QUICK = {"identities": [20], "doors": 2, "rounds": 1}

SealedRecord = Tuple[str, int, bytes]  # id, revision, payload


# -- set-up ---------------------------------------------------------------------------------------------


def _authority(folder: Path, broker: Any, site: str) -> Path:
    """An enrolment authority of ``site`` after ``fleet init`` (fleet key, signing key, state): its AUTH.toml."""
    config = fleet_authority_config(folder, site, broker, SHARED / "models")
    _cli("fleet", "init", "--config", str(config))
    return config


def _cli(*args: str) -> str:
    done = run_cli(*args)
    if done.returncode != 0:
        raise RuntimeError(
            f"face-appliance {' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return done.stdout


def _scene(workdir: Path, scene: str) -> Path:
    """The doors' looping video: an empty gray scene, or people walking up (tests.support.passage_video)."""
    if scene == "passage":
        return passage_video(workdir, SHARED / "data", name="passage.avi")
    return make_passage_video(workdir / "empty.avi", [(None, 20)])


def _pid_of(config_path: Path) -> Optional[int]:
    """The process whose command line names ``config_path`` (the broker), or ``None``."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as stream:
                    if str(config_path).encode() in stream.read():
                        return int(entry)
            except OSError:
                continue
    return None


def _rss(pid: Optional[int]) -> float:
    return _proc(pid).get("rss_mib", float("nan")) if pid is not None else float("nan")


def _digest_documents(recorder: Recorder, topic: str, since: float = 0.0) -> List[Tuple[float, Any]]:
    """The door's digest documents received on ``topic`` at or after ``since``: ``(received_at, parsed)``."""
    return [
        (m.received_at, parse_door_document(m.payload)) for m in recorder.on(topic) if m.received_at >= since
    ]


# -- the records ----------------------------------------------------------------------------------------


def reference_crop(analyzer: FaceAnalyzer) -> np.ndarray:
    """The aligned 112×112 crop of the one real photo."""
    analysis = analyzer.analyze(read_image(PHOTO), still=True, embed=False)
    if analysis.crops is None or not len(analysis.crops):
        raise RuntimeError(f"no face found in {PHOTO}")
    return analysis.crops[0]


def noisy(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``crop`` with ±:data:`NOISE` of pixel noise."""
    noise = rng.integers(-NOISE, NOISE + 1, crop.shape, dtype=np.int16)
    return np.clip(crop.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def identity(identity_id: str, revision: int, crop: np.ndarray) -> IdentityRecord:
    return IdentityRecord(
        identity_id, revision, f"Person {revision}", None, CONSENT_AT, IdentityPolicy(), (crop,), (0.9,)
    )


def seal_identities(
    count: int, crop: np.ndarray, fleet_key: bytes, signing_key: Any, rng: np.random.Generator
) -> Tuple[List[SealedRecord], List[np.ndarray], float]:
    """``count`` sealed identity records (revisions 1…count), their crops, and the seconds sealing took."""
    sealed: List[SealedRecord] = []
    crops: List[np.ndarray] = []
    ids = set()
    seconds = 0.0
    while len(sealed) < count:
        identity_id = f"p-{int(rng.integers(0, 2**48)):012x}"
        if identity_id in ids:
            continue
        ids.add(identity_id)
        revision = len(sealed) + 1
        crops.append(noisy(crop, rng))
        started = time.perf_counter()
        payload = seal_record(
            identity(identity_id, revision, crops[-1]), CATCH_UP_SITE, fleet_key, signing_key
        )
        seconds += time.perf_counter() - started
        sealed.append((identity_id, revision, payload))
    return sealed, crops, seconds


def _flip_signature(payload: bytes) -> bytes:
    envelope = json.loads(payload)
    signature = bytearray(base64.b64decode(envelope["signature"]))
    signature[0] ^= 1
    envelope["signature"] = base64.b64encode(bytes(signature)).decode("ascii")
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def _ms_each(items: Sequence[Any], action: Callable[[Any], Any], passes: int = 1) -> float:
    """Milliseconds per item of ``action``: the fastest of ``passes`` passes (other work on the machine
    only ever adds time)."""
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        for item in items:
            action(item)
        best = min(best, time.perf_counter() - started)
    return best / max(1, len(items)) * 1000


def _refused(reason: str, attempt: Callable[[], Any]) -> None:
    try:
        attempt()
    except FleetRecordError as err:
        if err.reason != reason:
            raise
        return
    raise AssertionError(f"a record that should be refused ({reason}) opened")


def per_identity_costs(
    analyzer: FaceAnalyzer,
    sealed: Sequence[SealedRecord],
    crops: Sequence[np.ndarray],
    fleet_key: bytes,
    trusted: Dict[str, Any],
    folder: Path,
    embed_rounds: int,
) -> Dict[str, float]:
    """Milliseconds per identity of each stage of applying a record, with the real code (see the module doc)."""
    sample = sealed[:OPEN_SAMPLE]
    forged = [(i, _flip_signature(p)) for i, _, p in sample]
    wrong_key = os.urandom(32)
    verify = _ms_each(
        forged,
        lambda r: _refused(BAD_SIGNATURE, lambda: open_record(r[1], CATCH_UP_SITE, fleet_key, trusted, r[0])),
        PASSES,
    )
    up_to_decrypt = _ms_each(
        sample,
        lambda r: _refused(
            DECRYPT_FAILED, lambda: open_record(r[2], CATCH_UP_SITE, wrong_key, trusted, r[0])
        ),
        PASSES,
    )
    whole = _ms_each(sample, lambda r: open_record(r[2], CATCH_UP_SITE, fleet_key, trusted, r[0]), PASSES)
    # One pipeline job's worth: one embedder batch, as the door embeds a catch-up.
    batch = np.stack([crops[i % len(crops)] for i in range(analyzer.embedder.batch_size)])
    vectors = analyzer.embedder.embed(batch)  # warm
    embed = _ms_each(range(embed_rounds), lambda _: analyzer.embedder.embed(batch), PASSES) / len(batch)
    config = validate_config({"models": {"dir": str(SHARED / "models")}, "storage": {"dir": str(folder)}})
    with Gallery.open(config, analyzer.embedder.version, analyzer.embedder.dim) as gallery:

        def store(position: int) -> None:
            identity_id, revision, _ = sealed[position]
            record = identity(identity_id, revision, crops[position])
            store_identity(gallery, record, vectors[position % len(vectors)][None, :])

        store_ms = _ms_each(range(len(sealed)), store)
        started = time.perf_counter()
        gallery.save_index()
        save_index_s = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "verify_ms": round(verify, 3),
        "decrypt_ms": round(max(0.0, up_to_decrypt - verify), 3),
        "decode_ms": round(max(0.0, whole - up_to_decrypt), 3),
        "embed_ms_per_crop": round(embed, 3),
        "embed_batch": len(batch),
        "store_ms": round(store_ms, 3),
        "sum_ms": round(whole + embed + store_ms, 3),
        "index_save_s": round(save_index_s, 3),
        "opened_sample": len(sample),
    }


# -- 1 and 2: a fresh door catching up ---------------------------------------------------------------------


def _publish(broker: MosquittoBroker, items: Sequence[Tuple[str, bytes]]) -> float:
    """Publish retained, QoS 1, each acknowledged (as the authority does); seconds taken."""
    started = time.perf_counter()
    with FleetBroker(MqttConfig(host=broker.host, port=broker.port), "bench-fleet-publisher", 30.0) as link:
        for topic, payload in items:
            link.publish(topic, payload)
    return time.perf_counter() - started


def catch_up(
    workdir: Path,
    authority: Path,
    sealed: Sequence[SealedRecord],
    signing_key: Any,
    video: Path,
    broker_config: str = "",
    in_view_job_ms: Optional[float] = None,
) -> Dict[str, Any]:
    """Publish ``sealed`` on a fresh broker (``broker_config``: extra Mosquitto lines), start one fresh
    door (``in_view_job_ms``: its ``fleet.in_view_job_ms``, else the default), and time its catch-up;
    a door that stops short is restarted once to see whether it resumes."""
    count = len(sealed)
    entries = {identity_id: revision for identity_id, revision, _ in sealed}
    manifest = seal_manifest(Manifest(count + 1, entries, {}, CONSENT_AT), CATCH_UP_SITE, signing_key)
    expected = fleet_digest(entries)
    broker = MosquittoBroker(workdir / "mosquitto", extra_config=broker_config).start()
    logs: List[str] = []
    try:
        broker_pid = _pid_of(broker.config_path)
        rss_before = _rss(broker_pid)
        publish_s = _publish(
            broker,
            [(record_topic(DEFAULT_PREFIX, CATCH_UP_SITE, i), p) for i, _, p in sealed]
            + [(manifest_topic(DEFAULT_PREFIX, CATCH_UP_SITE), manifest)],
        )
        rss_after = _rss(broker_pid)
        config = fleet_door_config(
            workdir / CATCH_UP_DOOR,
            CATCH_UP_DOOR,
            CATCH_UP_SITE,
            authority,
            SHARED / "models",
            broker,
            video,
            "" if in_view_job_ms is None else f"in_view_job_ms = {in_view_job_ms}\n",
        )
        topic = door_topic(DEFAULT_PREFIX, CATCH_UP_SITE, CATCH_UP_DOOR)
        with ExitStack() as stack:
            documents = stack.enter_context(Recorder(broker.host, broker.port, topic))
            states = stack.enter_context(
                Recorder(broker.host, broker.port, f"face-appliance/{CATCH_UP_DOOR}/state")
            )
            door = Daemon(config)
            stack.callback(door.stop)
            watched = _watch_catch_up(
                door, documents, topic, count, expected, time.time(), broker_pid, STALL_S
            )
            door_state = _fresh_state(states)
            logs += _fleet_lines(door)
            if not watched["digest_ok"]:  # does a reconnection bring the rest?
                door.stop()
                door = Daemon(config)
                stack.callback(door.stop)
                again = _watch_catch_up(
                    door, documents, topic, count, expected, time.time(), broker_pid, RESTART_STALL_S
                )
                watched["after_restart"] = {
                    k: again[k] for k in ("applied", "digest_ok", "manifest_revision")
                }
                logs += _fleet_lines(door)
    finally:
        broker.stop()
    sizes = [len(p) for _, _, p in sealed]
    catch_up_s = watched.get("all_applied_s")
    joined_s = watched.get("joined_s")
    span = None if catch_up_s is None or joined_s is None else catch_up_s - joined_s
    return {
        "identities": count,
        "in_view_job_ms": FleetConfig().in_view_job_ms if in_view_job_ms is None else in_view_job_ms,
        "broker": broker_config or DEFAULT_QUEUE,
        "complete": watched["digest_ok"],
        "applied": watched["applied"],
        "digest_ok": watched["digest_ok"],
        "manifest_revision": watched["manifest_revision"],
        # Every record is a noisy copy of one face: each one's look-alike search finds the identities
        # applied before it (the worst case of that search, and of what the door stores).
        "look_alikes": watched["look_alikes"],
        "joined_s": joined_s,
        "all_applied_s": catch_up_s,
        "catch_up_s": None if span is None else round(span, 2),
        "per_identity_ms": None if span is None else round(span / count * 1000, 2),
        "identities_per_s": None if not span else round(count / span, 1),
        "stalled_after_s": watched.get("stalled_after_s"),
        "after_restart": watched.get("after_restart"),
        "progress": watched["progress"],
        "door_peak_rss_mib": watched["door_peak_rss_mib"],
        "broker_peak_rss_mib": watched["broker_peak_rss_mib"],
        "door_fleet_state": {
            k: (door_state.get("fleet") or {}).get(k)
            for k in ("applied", "pending", "dropped", "changes", "refused")
        },
        # What the door's frames waited for between two turns (the batches' part on the pipeline
        # thread), over the last turns that had any.
        "door_between_frames_ms": (door_state.get("latency_ms") or {}).get("between_frames"),
        # The same over the turns when a camera tracked a face (the passage scene): a job takes about
        # ``in_view_job_ms`` then.
        "door_between_frames_in_view_ms": (door_state.get("latency_ms") or {}).get("between_frames_in_view"),
        # The embedding jobs that ran while a face was in view, by how they were sized: for someone
        # in view (``fleet.in_view_job_ms``), or for nobody and again as they started.
        "door_jobs_in_view_ms": (door_state.get("fleet") or {}).get("jobs_in_view_ms"),
        "broker_dropped_log_lines": broker.log_text().count("being dropped"),
        "publish_s": round(publish_s, 2),
        "record_bytes_mean": round(float(np.mean(sizes)), 1),
        "record_bytes_max": int(max(sizes)),
        "record_topic_bytes": len(record_topic(DEFAULT_PREFIX, CATCH_UP_SITE, sealed[0][0])),
        "retained_mib": round(sum(sizes) / 2**20, 1),
        "manifest_bytes": len(manifest),
        "broker_rss_mib": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
        "broker_rss_per_identity_kib": round((rss_after - rss_before) * 1024 / count, 1),
        "door_log_fleet": logs[-20:],
    }


def _fleet_lines(door: Daemon) -> List[str]:
    return [line for line in door.log if "appliance.fleet" in line]


def _fresh_state(states: Recorder, timeout: float = 5.0) -> Dict[str, Any]:
    """The door's first ``…/state`` received from now on (the last one if none comes)."""
    since = time.time()
    try:
        messages = states.wait_for(lambda ms: bool(ms) and ms[-1].received_at >= since, timeout, "a state")
    except AssertionError:
        messages = states.messages
    return json.loads(messages[-1].payload) if messages else {}


def _watch_catch_up(
    door: Daemon,
    documents: Recorder,
    topic: str,
    count: int,
    expected: str,
    started: float,
    broker_pid: Optional[int],
    stall_s: float,
) -> Dict[str, Any]:
    """Follow the door's digest documents (from ``started`` on) until it applied ``count`` with the
    ``expected`` digest, or made no progress for ``stall_s`` seconds."""
    result: Dict[str, Any] = {
        "applied": 0,
        "digest_ok": False,
        "manifest_revision": None,
        "look_alikes": 0,
        "progress": [],
    }
    door_peak = broker_peak = 0.0
    last_change = started
    seen = 0
    while True:
        door_peak = max(door_peak, _rss(door.process.pid))
        broker_peak = max(broker_peak, _rss(broker_pid))
        received = _digest_documents(documents, topic, started)
        for at, document in received[seen:]:
            if "joined_s" not in result:
                result["joined_s"] = round(at - started, 2)
            if document.applied != result["applied"]:
                last_change = at
            result["applied"] = document.applied
            result["manifest_revision"] = document.manifest_revision
            result["look_alikes"] = document.look_alike_count
            result["progress"].append([round(at - started, 2), document.applied])
            if document.applied == count and document.digest == expected:
                result["digest_ok"] = True
                result["all_applied_s"] = round(at - started, 2)
        seen = len(received)
        if result["digest_ok"]:
            break
        if door.process.poll() is not None:
            raise RuntimeError("the door exited during the catch-up:\n" + "\n".join(door.log[-40:]))
        if time.time() - last_change > (stall_s if "joined_s" in result else JOIN_S):
            result["stalled_after_s"] = round(time.time() - started, 1)
            break
        time.sleep(0.25)
    result["door_peak_rss_mib"] = round(door_peak, 1)
    result["broker_peak_rss_mib"] = round(broker_peak, 1)
    return result


# -- 3: doors converging -----------------------------------------------------------------------------------


def _until_in_step(
    recorder: Recorder,
    devices: Sequence[str],
    since: float,
    expected: str,
    what: str,
    timeout: float = CONVERGE_S,
) -> Dict[str, float]:
    """Per door, seconds from ``since`` to its first digest document with ``expected`` received after it
    (each door given ``timeout`` seconds from now)."""
    seen: Dict[str, float] = {}
    deadline = time.time() + timeout
    while len(seen) < len(devices):
        for device in devices:
            if device in seen:
                continue
            topic = door_topic(DEFAULT_PREFIX, CONVERGE_SITE, device)
            for at, document in _digest_documents(recorder, topic, since):
                if document.digest == expected:
                    seen[device] = round(at - since, 3)
                    break
        if time.time() > deadline:
            missing = sorted(set(devices) - set(seen))
            raise RuntimeError(f"{what}: {', '.join(missing)} not in step within {timeout:g} s")
        time.sleep(0.02)
    return seen


def _published_at(recorder: Recorder, topic: str, since: float, timeout: float = 30.0) -> float:
    """When the record (or tombstone) published on ``topic`` after ``since`` reached a subscriber."""
    message = recorder.wait_for(
        lambda messages: any(m.topic == topic and m.received_at >= since for m in messages), timeout, topic
    )
    return next(m.received_at for m in message if m.topic == topic and m.received_at >= since)


def converge(
    workdir: Path, doors: int, rounds: int, video: Path, roster_people: Optional[int] = None
) -> Dict[str, Any]:
    """``doors`` daemons in step, then per round ``fleet enroll`` and ``fleet remove``: seconds per door;
    then a roster of ``roster_people`` (:func:`enroll_roster`)."""
    broker = MosquittoBroker(workdir / "mosquitto").start()
    devices = [f"door-{index + 1}" for index in range(doors)]
    report: Dict[str, Any] = {"doors": doors, "rounds": []}
    try:
        authority = _authority(workdir / "authority", broker, CONVERGE_SITE)
        auth = ("--config", str(authority))
        configs = [
            fleet_door_config(
                workdir / device, device, CONVERGE_SITE, authority, SHARED / "models", broker, video
            )
            for device in devices
        ]
        with ExitStack() as stack:
            recorder = stack.enter_context(
                Recorder(broker.host, broker.port, f"{DEFAULT_PREFIX}/{CONVERGE_SITE}/#")
            )
            started = time.time()
            for config in configs:
                stack.callback(Daemon(config).stop)
            joined = _until_joined(recorder, devices, started)
            report["joined_s"] = joined
            live: Dict[str, int] = {}
            for round_index in range(rounds):
                since = time.time()
                enrolled = json.loads(
                    _cli(
                        "fleet",
                        "enroll",
                        *auth,
                        "--name",
                        f"Bench Person {round_index + 1}",
                        "--json",
                        str(PHOTO),
                    )
                )
                enroll_cli_s = time.time() - since
                identity_id, revision = enrolled["id"], int(enrolled["revision"])
                topic = record_topic(DEFAULT_PREFIX, CONVERGE_SITE, identity_id)
                at = _published_at(recorder, topic, since)
                live[identity_id] = revision
                enrol = _until_in_step(recorder, devices, at, fleet_digest(live), "enrol")
                since = time.time()
                _cli("fleet", "remove", *auth, identity_id, "--json")
                remove_cli_s = time.time() - since
                at = _published_at(recorder, topic, since)
                live.pop(identity_id)
                remove = _until_in_step(recorder, devices, at, fleet_digest(live), "remove")
                report["rounds"].append(
                    {
                        "enrol": enrol,
                        "remove": remove,
                        "enroll_cli_s": round(enroll_cli_s, 2),
                        "remove_cli_s": round(remove_cli_s, 2),
                    }
                )
            report["roster"] = enroll_roster(workdir, auth, recorder, devices, live, roster_people)
            status = run_cli("fleet", "status", *auth, "--json")
            report["status_in_step"] = status.returncode == 0
    finally:
        broker.stop()
    return report


def enroll_roster(
    workdir: Path,
    auth: Sequence[str],
    recorder: Recorder,
    devices: Sequence[str],
    live: Dict[str, int],
    people: Optional[int] = None,
) -> Dict[str, Any]:
    """``fleet enroll-batch`` of a roster whose rows are the person folders of the shared faces (every
    photo of the folder, ``--largest``), ``people`` rows (default one per folder; more take the folders
    again, each row its own badge): the command's wall time, and per door the seconds from the
    command's start to its digest document holding everyone (``live`` gains them)."""
    folders = sorted(p for p in (SHARED / "data/faces").iterdir() if p.is_dir())
    count = people or len(folders)
    roster = workdir / "roster.csv"
    rows = [f"{folders[i % len(folders)]},Roster Person {i + 1},R-{i + 1:05}" for i in range(count)]
    roster.write_text("\n".join(["photos,name,external_id", *rows]) + "\n")
    since = time.time()
    done = json.loads(_cli("fleet", "enroll-batch", *auth, "--largest", "--json", str(roster)))
    cli_s = time.time() - since
    for person in done["people"]:
        if person["status"] == "published":
            live[person["id"]] = person["revision"]
    in_step = _until_in_step(
        recorder, devices, since, fleet_digest(live), "roster", CONVERGE_S + ROSTER_S_PER_PERSON * count
    )
    return {
        "people": count,
        "photos": sum(len(person["photos"]) for person in done["people"]),
        "published": done["published"],
        "cli_s": round(cli_s, 2),
        "per_person_s": round(cli_s / count, 3),
        "in_step_s": in_step,
    }


def _until_joined(recorder: Recorder, devices: Sequence[str], started: float) -> Dict[str, float]:
    """Per door, seconds from the start of the daemons to its first digest document (models loaded)."""
    joined: Dict[str, float] = {}
    deadline = started + JOIN_S
    while len(joined) < len(devices):
        for device in devices:
            documents = _digest_documents(recorder, door_topic(DEFAULT_PREFIX, CONVERGE_SITE, device))
            if documents and device not in joined:
                joined[device] = round(documents[0][0] - started, 2)
        if time.time() > deadline:
            raise RuntimeError(
                f"doors not in the fleet within {JOIN_S:g} s: {sorted(set(devices) - set(joined))}"
            )
        time.sleep(0.1)
    return joined


# -- the whole run -----------------------------------------------------------------------------------------


def run(
    identities: Sequence[int],
    doors: int,
    rounds: int,
    scene: str,
    workdir: Path,
    in_view_jobs_ms: Sequence[Optional[float]] = (None,),
    roster_people: Optional[int] = None,
) -> Dict[str, Any]:
    """Every part of the benchmark (see the module doc); the report as a JSON-ready dict.
    ``in_view_jobs_ms``: the catch-ups' ``fleet.in_view_job_ms`` values (``None``: the default);
    ``roster_people``: the rows of the convergence's roster (``None``: one per shared person folder)."""
    rng = np.random.default_rng(14)
    video = _scene(workdir, scene)
    nowhere = SimpleNamespace(host="127.0.0.1", port=free_port())  # fleet init connects to no broker
    authority = _authority(workdir / "catch-up-authority", nowhere, CATCH_UP_SITE)
    keys = authority.parent / "keys"
    fleet_key = read_fleet_key(keys / "fleet.key")
    signing_key = load_private_key(keys / "authority.key")
    trusted = {key_id(signing_key.public_key()): signing_key.public_key()}
    most = max(identities)
    config = validate_config({"models": {"dir": str(SHARED / "models")}, "storage": {"dir": str(workdir)}})
    costs: Dict[int, Dict[str, float]] = {}
    with load_analyzer(config, liveness=False) as analyzer:
        crop = reference_crop(analyzer)
        sealed, crops, seal_s = seal_identities(most, crop, fleet_key, signing_key, rng)
        for count in identities:
            costs[count] = per_identity_costs(
                analyzer,
                sealed[:count],
                crops[:count],
                fleet_key,
                trusted,
                workdir / f"store-{count}",
                2 if count < 100 else 5,
            )
    clean = seal_record(identity("p-000000000001", 1, crop), CATCH_UP_SITE, fleet_key, signing_key)
    crop_png = len(cv2.imencode(".png", crop)[1])
    runs = []
    for budget, count in itertools.product(in_view_jobs_ms, identities):
        folder = workdir / f"catch-up-{count}-{budget}"
        result = catch_up(folder, authority, sealed[:count], signing_key, video, in_view_job_ms=budget)
        result["costs"] = costs[count]
        runs.append(result)
        if not result["complete"]:  # the same on a broker that bounds nothing: the door's own speed
            result = catch_up(
                workdir / f"catch-up-{count}-{budget}-unbounded",
                authority,
                sealed[:count],
                signing_key,
                video,
                UNBOUNDED_QUEUE,
                budget,
            )
            result["costs"] = costs[count]
            runs.append(result)
    return {
        "options": {
            "identities": list(identities),
            "doors": doors,
            "rounds": rounds,
            "scene": scene,
            "in_view_job_ms": list(in_view_jobs_ms),
            "roster_people": roster_people,
        },
        "seal_ms_per_record": round(seal_s / most * 1000, 3),
        "clean_crop_png_bytes": crop_png,
        "clean_record_bytes": len(clean),
        "catch_up": runs,
        "convergence": converge(workdir / "converge", doors, rounds, video, roster_people),
    }


def findings(report: Dict[str, Any]) -> List[str]:
    """What the run found wrong, in words (empty when every door applied everything and converged)."""
    found = []
    for result in report["catch_up"]:
        if result["complete"]:
            continue
        state = result["door_fleet_state"]
        restart = result.get("after_restart") or {}
        found.append(
            f"{result['identities']} identities on a broker with {result['broker']}: the door applied "
            f"{result['applied']} and made no progress for {STALL_S:g} s (manifest revision "
            f"{result['manifest_revision']}); its state says dropped {state.get('dropped')}, pending "
            f"{state.get('pending')}; the broker logged {result['broker_dropped_log_lines']} 'Outgoing messages "
            f"are being dropped' line(s); restarted, the door ended at {restart.get('applied')} applied "
            f"({'in step' if restart.get('digest_ok') else 'still not in step'})"
        )
    if not report["convergence"].get("status_in_step"):
        found.append("`fleet status` did not report every door in step after the rounds")
    return found


def _ms(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:g}"


def _fine(ms: float) -> str:
    """A small cost in ms; under 0.01 ms (AES-GCM on one record) it is below what subtraction resolves."""
    return "< 0.01" if ms < 0.01 else f"{ms:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    print("| " + " | ".join(header) + " |")
    print("| --- | " + " | ".join("---:" for _ in header[1:]) + " |")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def print_report(report: Dict[str, Any], machine: Dict[str, str]) -> None:
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    runs = report["catch_up"]
    first: Dict[int, Dict[str, Any]] = {}  # per size, its run on the default broker
    for r in runs:
        first.setdefault(r["identities"], r)
    best = {**first, **{r["identities"]: r for r in runs if r["complete"]}}  # a complete run where one is
    print(
        f"\nA fresh door catching up (one daemon, CPU back-end, {report['options']['scene']} scene looping, "
        "records subscribed at QoS 0; frames waited: the pipeline thread's time on jobs between two turns "
        "that had any, `…/state` → `latency_ms.between_frames` over its last 512 such turns; with a face "
        "in view: `between_frames_in_view`, the turns when a camera tracked one; in-view jobs: the "
        "embedding jobs that ran while one was tracked, sized for someone in view, or sized for nobody "
        "and sized again as they started (`fleet.jobs_in_view_ms`); look-alike pairs: every "
        "record is a noisy copy of one face, so each record's search finds those applied before it, the "
        "worst case of the door's look-alike search):\n"
    )
    _table(
        (
            "identities",
            "in view job (ms)",
            "broker",
            "applied",
            "start → in the fleet (s)",
            "start → all applied (s)",
            "catch-up (s)",
            "per identity (ms)",
            "identities/s",
            "frames waited p50 / p99 (ms)",
            "with a face in view p50 / p99 (ms)",
            "in-view jobs sized in view p50 / p99 (ms, n)",
            "resized at start p50 / p99 (ms, n)",
            "look-alike pairs",
            "door peak RSS (MiB)",
        ),
        [
            (
                r["identities"],
                r["in_view_job_ms"],
                r["broker"],
                f"{r['applied']}" + ("" if r["complete"] else f" (stopped; {_restarted(r)})"),
                _ms(r["joined_s"]),
                _ms(r["all_applied_s"]),
                _ms(r["catch_up_s"]),
                _ms(r["per_identity_ms"]),
                _ms(r["identities_per_s"]),
                _waited(r.get("door_between_frames_ms")),
                _waited(r.get("door_between_frames_in_view_ms")),
                _jobs(r.get("door_jobs_in_view_ms"), "sized_in_view"),
                _jobs(r.get("door_jobs_in_view_ms"), "resized_at_start"),
                r.get("look_alikes", "–"),
                r["door_peak_rss_mib"],
            )
            for r in runs
        ],
    )
    print(
        "\nPer identity, in-process with the real code (ms; one crop per identity; embed on one embedder "
        f"batch of {next(iter(best.values()))['costs']['embed_batch']}, a pipeline job's worth; the store "
        "on the fleet thread, on a gallery growing to N, save=False):\n"
    )
    _table(
        ("identities", "verify", "decrypt", "decode", "embed", "store", "sum", "in the door (catch-up / N)"),
        [
            (
                count,
                _fine(c["verify_ms"]),
                _fine(c["decrypt_ms"]),
                _fine(c["decode_ms"]),
                f"{c['embed_ms_per_crop']:.2f}",
                f"{c['store_ms']:.2f}",
                f"{c['sum_ms']:.2f}",
                _ms(r["per_identity_ms"]),
            )
            for count, r in best.items()
            for c in (r["costs"],)
        ],
    )
    print(
        f"\nThe broker's retained bytes (a record carries one crop; a noise-free crop is a "
        f"{report['clean_crop_png_bytes']} B PNG and a {report['clean_record_bytes']} B record; sealing takes "
        f"{report['seal_ms_per_record']} ms a record):\n"
    )
    _table(
        (
            "identities",
            "record mean (B)",
            "record max (B)",
            "retained records (MiB)",
            "manifest (B)",
            "manifest per identity (B)",
            "broker RSS before → after (MiB)",
            "per identity (KiB)",
            "publish, QoS 1 one by one (s)",
        ),
        [
            (
                count,
                f"{r['record_bytes_mean']:.0f}",
                r["record_bytes_max"],
                r["retained_mib"],
                r["manifest_bytes"],
                f"{r['manifest_bytes'] / count:.1f}",
                f"{r['broker_rss_mib']['before']} → {r['broker_rss_mib']['after']}",
                r["broker_rss_per_identity_kib"],
                r["publish_s"],
            )
            for count, r in first.items()
        ],
    )
    convergence = report["convergence"]
    devices = sorted(convergence["joined_s"])
    print(
        f"\n{convergence['doors']} doors converging (seconds from the record or tombstone reaching a subscriber "
        "to each door's digest document showing it; `fleet enroll` and `fleet remove` as the operator runs them):\n"
    )
    _table(
        ("change", "round", *devices, "slowest", "CLI wall time (s)"),
        [
            (
                change,
                index,
                *(f"{r[change][d]:.2f}" for d in devices),
                f"{max(r[change].values()):.2f}",
                r[cli],
            )
            for index, r in enumerate(convergence["rounds"], 1)
            for change, cli in (("enrol", "enroll_cli_s"), ("remove", "remove_cli_s"))
        ],
    )
    roster = convergence["roster"]
    single = [r["enroll_cli_s"] for r in convergence["rounds"]]
    print(
        f"\na roster of {roster['people']} people ({roster['photos']} photos, the shared faces) with `fleet "
        f"enroll-batch`: {roster['published']} published in {roster['cli_s']:.2f} s, {roster['per_person_s']:.3f} "
        f"s a person (one `fleet enroll`: {min(single):.2f}–{max(single):.2f} s); from the command's start to "
        "each door in step: " + ", ".join(f"{d} {roster['in_step_s'][d]:.2f} s" for d in devices)
    )
    joined = convergence["joined_s"]
    in_step = "every door in step" if convergence.get("status_in_step") else "NOT in step"
    print(
        f"\nstart → in the fleet: {', '.join(f'{d} {joined[d]} s' for d in devices)} (all started together); "
        f"`fleet status` after the rounds: {in_step}"
    )
    found = report["findings"]
    if found:
        print("\nfindings:\n" + "\n".join(f"- {f}" for f in found))
    else:
        print("\nno finding: every door applied everything and converged")


def _waited(percentiles: Optional[Dict[str, float]]) -> str:
    return "–" if not percentiles else f"{percentiles['p50']:.1f} / {percentiles['p99']:.1f}"


def _jobs(document: Optional[Dict[str, Any]], kind: str) -> str:
    figures = (document or {}).get(kind)
    return "–" if not figures else f"{_waited(figures)} ({figures['n']})"


def _restarted(run: Dict[str, Any]) -> str:
    restart = run.get("after_restart") or {}
    return f"{restart.get('applied')} after a restart"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--identities", type=int, nargs="+", default=[1000, 10000], help="catch-up sizes (default 1000 10000)"
    )
    parser.add_argument("--doors", type=int, default=3, help="daemons converging (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="enrol + remove rounds (default 3)")
    parser.add_argument(
        "--scene", choices=("empty", "passage"), default="empty", help="what the doors' cameras see"
    )
    parser.add_argument(
        "--in-view-job-ms",
        type=float,
        nargs="+",
        default=[None],
        help="catch up once per value of fleet.in_view_job_ms (default: the configuration's default)",
    )
    parser.add_argument(
        "--roster",
        type=int,
        default=None,
        metavar="N",
        help="rows of the enroll-batch roster (default: one per person folder of the shared faces; more "
        "take the folders again)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--quick", action="store_true", help="a tiny run: 20 identities, 2 doors, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.identities, args.doors, args.rounds = QUICK["identities"], QUICK["doors"], QUICK["rounds"]
    if min(args.identities) < 1 or args.doors < 1 or args.rounds < 1 or (args.roster or 1) < 1:
        parser.error("--identities, --doors, --rounds and --roster must be at least 1")
    machine = describe()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as folder:
        report = run(
            args.identities,
            args.doors,
            args.rounds,
            args.scene,
            Path(folder),
            args.in_view_job_ms,
            args.roster,
        )
    report["findings"] = findings(report)
    report["wall_s"] = round(time.monotonic() - started, 1)
    print_report(report, machine)
    print(f"\nwhole run: {report['wall_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, **report}, indent=2))
    return 1 if report["findings"] else 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
