"""Fault injection: a full disk, a broker killed again and again, a stalling camera, SIGKILL at random.

After each fault: nothing that was accepted is lost, the SQLite stores pass their integrity checks,
and the daemon recovers by itself. Repetitions are small in CI; ``FAULT_REPEATS`` raises them (e.g.
``FAULT_REPEATS=20`` for a long run). The broker and daemon kills are :mod:`tests.fault_runs`, which
``python -m bench.reliability`` runs a hundred times.

* **Disk full**: a subprocess (:mod:`tests.fault_writers`) writes into the outbox or the gallery under
  ``RLIMIT_FSIZE`` (SIGXFSZ ignored, so writes fail with EFBIG like ENOSPC) and, where this machine
  lets the test mount one, on a tiny tmpfs (a real ENOSPC). Every write acknowledged before the disk
  filled must be there afterwards; the stores reopen, pass their checks, and take writes again.
* **Broker killed and restarted** (SIGKILL) repeatedly while the daemon emits a stream of events: the
  daemon keeps running, and every event it wrote (its ``--print-events`` output) reaches a consumer at
  least once, with unique event ids.
* **Camera stalls** (the ``stall_camera_after`` fault): the state shows ``stalled``, the watchdog is no
  longer fed, and when frames come back the state recovers.
* **SIGKILL at random points** of a busy run (events, enrolments and removals in flight), repeated:
  the outbox and the gallery pass their integrity checks and the next start delivers what was pending.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import pytest

from appliance.camera import STALL_S
from appliance.gallery.gallery import Gallery
from appliance.gallery.store import TemplateStore
from appliance.outbox import Outbox
from appliance.vision.analyzer import FaceAnalyzer
from tests.conftest import REPO_ROOT
from tests.fault_runs import broker_outages, daemon_sigkills, failures_logged, printed_events, sqlite_problems
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import ROOT, Daemon, daemon_config, notify_listener, passage_video, wait_online

#: Repetitions of the repeated faults (broker kills, SIGKILLs of the daemon).
REPEATS = int(os.environ.get("FAULT_REPEATS", "3"))
#: Events the broker-outage run writes at least (each kill waits for one new event before it).
BURST_EVENTS = 6


# -- disk full ---------------------------------------------------------------------------------------------


def _tmpfs(folder: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` on ``folder``; False where this machine does not allow it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return done.returncode == 0


class FullDisk(NamedTuple):
    """Where a writer fills the disk, how, and how the test gives room back afterwards."""

    folder: Path
    #: RLIMIT_FSIZE for the writer in bytes; 0 on a tmpfs (its size is the limit).
    limit: int
    #: A file taking space on the tmpfs, deleted by the test to free room after the disk filled.
    ballast: Optional[Path]

    def make_room(self) -> None:
        if self.ballast is not None and self.ballast.exists():
            self.ballast.unlink()


@pytest.fixture(params=["rlimit", "tmpfs"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk]:
    """A folder whose "disk" fills up: by RLIMIT_FSIZE on the writer, or a 768 KiB tmpfs (608 KiB
    free: room for a few gallery identities of two noise crops each, and more as the schema grows)."""
    folder = tmp_path / "disk"
    if request.param == "rlimit":
        folder.mkdir()
        yield FullDisk(folder, 256 * 1024, None)
        return
    if not _tmpfs(folder, "768k"):
        pytest.skip(
            "mounting a tmpfs is not allowed here (needs root with CAP_SYS_ADMIN); RLIMIT_FSIZE covers it"
        )
    try:
        ballast = folder / "ballast"
        ballast.write_bytes(b"\0" * 160 * 1024)
        yield FullDisk(folder, 0, ballast)
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False, timeout=30)


def _fill(kind: str, target: Path, limit: int) -> Tuple[List[str], List[str]]:
    """Run a writer; its accepted ids and its refusals. Fails the test on a crash."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.fault_writers", kind, str(target), str(limit)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"the {kind} writer crashed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    lines = done.stdout.splitlines()
    accepted = [line.split(" ", 1)[1] for line in lines if line.startswith("ok ")]
    refused = [line for line in lines if line.startswith("refused ")]
    assert accepted, done.stdout[-2000:]
    assert len(refused) >= 5, f"the disk never filled:\n{done.stdout[-2000:]}"
    return accepted, [line for line in lines if not line.startswith("ok ")]


def _integrity(path: Path) -> None:
    assert sqlite_problems(path) == []


def test_disk_full_while_writing_the_outbox(full_disk: FullDisk) -> None:
    path = full_disk.folder / "outbox.db"
    accepted, rest = _fill("outbox", path, full_disk.limit)
    assert all(line.startswith(("refused OutboxError", "acked ")) for line in rest), rest
    acked = {line.split(" ", 1)[1] for line in rest if line.startswith("acked ")}
    _integrity(path)
    full_disk.make_room()
    with Outbox.open(path, 1_000_000, 3600.0) as outbox:
        pending = {entry.event_id for entry in outbox.pending(1_000_000)}
        assert pending == set(accepted) - acked, (
            "an accepted event was lost, or an acknowledged one came back"
        )
        outbox.put(str(uuid.uuid4()), b"{}")  # with room again, it takes events again
        outbox.ack_many([entry.seq for entry in outbox.pending(1_000_000)])
        assert outbox.depth() == 0


def test_disk_full_while_writing_the_gallery(full_disk: FullDisk) -> None:
    folder = full_disk.folder
    accepted, rest = _fill("gallery", folder, full_disk.limit)
    assert all(line.startswith(("refused GalleryStoreError", "removed ")) for line in rest), rest
    removed = {line.split(" ", 1)[1] for line in rest if line.startswith("removed ")}
    _integrity(folder / "gallery.db")
    full_disk.make_room()
    store = TemplateStore.open(folder / "gallery.db", folder / "gallery.key")
    assert store.check() == []
    kept = set(accepted) - removed
    assert kept, f"the disk filled before a second identity: {accepted}, removed {removed}; give it more room"
    with Gallery(store, "mobilefacenet@test", 128, folder / "gallery.index") as gallery:
        assert {identity.id for identity in gallery.identities()} == kept
        assert len(gallery) == 2 * len(kept)  # the index was rebuilt where it lagged
        probe = np.ones((1, 128), np.float32) / np.sqrt(128)
        assert gallery.search(probe)[0]


def test_an_index_that_cannot_be_saved_does_not_fail_the_gallery(tmp_path: Path) -> None:
    """The index is derived: when its file cannot be written (disk full, here its folder is a file),
    enrolment and removal still succeed, searches use the index in memory, the next start rebuilds it."""
    blocked = tmp_path / "index-folder"
    blocked.write_bytes(b"not a folder")
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key")
    with Gallery(store, "mobilefacenet@test", 128, blocked / "gallery.index") as gallery:
        gallery.add("ada", "Ada", vectors[:2])
        gallery.add("grace", "Grace", vectors[2:])
        assert gallery.remove("ada") == 2
        assert [c.identity_id for c in gallery.search(vectors[2:])[0]] == ["grace"]
    store = TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key")
    with Gallery(store, "mobilefacenet@test", 128, tmp_path / "gallery.index") as reopened:
        assert len(reopened) == 1 and reopened.search(vectors[2:])[0][0].identity_id == "grace"


# -- the daemon under faults ---------------------------------------------------------------------------------


def test_disk_full_while_the_daemon_runs(
    tmp_path: Path, storage: Path, shared_models: Path, shared_data: Path
) -> None:
    """The outbox's disk fills while the broker is away: the daemon keeps running (events it cannot
    store are counted as lost and the state says why); with room again it stores events again, and
    every event it stored reaches the consumer once the broker is back."""
    broker = MosquittoBroker(tmp_path / "broker", persistence=True)
    broker.start()
    consumer = Recorder(broker.host, broker.port, f"{ROOT}/#", client_id="consumer", clean_session=False)
    daemon: Optional[Daemon] = None
    try:
        consumer.start()
        broker.stop()  # graceful: the consumer's session is kept for the restart below
        video = passage_video(tmp_path, shared_data, pause=4)
        config = daemon_config(
            tmp_path,
            storage,
            shared_models,
            broker,
            video,
            at_end="loop",
            outbox="drain_s = 30.0",
        )
        # 128 KiB: the outbox's WAL (a few pages per event) fills it after some ten events.
        daemon = Daemon(config, args=["--print-events"], file_size_limit=128 * 1024)
        daemon.wait_log("the outbox cannot store events", timeout=120)
        daemon.wait_log("access event lost", timeout=60)
        assert daemon.process.poll() is None, daemon.text[-3000:]
        stored_while_full = len(printed_events(daemon))
        daemon.give_disk_space()
        daemon.wait_log("the outbox stores events again", timeout=60)
        broker.start()
        daemon.wait_log("MQTT: connected to", timeout=60)  # its first connection: the broker was away
        daemon.wait_log("access event:", count=stored_while_full + 4, timeout=60)
        assert daemon.stop() == 0, daemon.text[-3000:]
        written = [event["event_id"] for event in printed_events(daemon)]
        assert len(written) > stored_while_full
        delivered = consumer.wait_for(
            lambda ms: (
                {json.loads(m.payload)["event_id"] for m in ms if m.topic == f"{ROOT}/events"} >= set(written)
            ),
            60,
            "every event the daemon stored",
        )
        final = [json.loads(m.payload) for m in delivered if m.topic == f"{ROOT}/state"][-1]
        assert final["events_lost"] >= 1 and not [d for d in final["degraded"] if d.startswith("outbox")], (
            final
        )
        assert not failures_logged(daemon), daemon.text
        _integrity(storage / "outbox.db")
    finally:
        if daemon is not None:
            daemon.close()
        consumer.close()
        broker.stop()


def test_broker_killed_and_restarted_during_a_burst_of_events(
    tmp_path: Path, storage: Path, shared_models: Path, shared_data: Path
) -> None:
    report = broker_outages(
        tmp_path,
        storage,
        shared_models,
        shared_data,
        REPEATS,
        lambda kill: 0.3 + 0.4 * kill,
        min_events=BURST_EVENTS,  # waited for: a slow host sees fewer passages between the kills
    )
    assert report.kills == REPEATS, report.summary()
    assert not report.failures, report.failures
    assert len(report.written) == len(set(report.written)), "two events share an event_id"
    assert len(report.written) >= BURST_EVENTS
    # The broker may lose an event it acknowledged when it is SIGKILLed before forwarding it (in memory
    # only): the appliance may not lose any it was not acknowledged.
    assert not report.lost_by_appliance, f"events written but never delivered: {report.lost_by_appliance}"
    assert not report.unexpected, "an event arrived that the daemon never wrote"
    assert report.recoveries >= REPEATS
    print(
        f"\nbroker kills: {report.kills}, events: {len(report.written)}, deliveries: {len(report.received)} "
        f"(duplicates {report.duplicates}, lost by the broker after its PUBACK {len(report.lost_after_puback)})"
    )


#: how late the daemon's log lines may reach the test on a loaded machine
LOG_LAG_S = 2.0


def test_camera_stall_is_shown_and_recovers(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = notify_listener(notify_path, 0.2)
    video = passage_video(tmp_path, shared_data)
    config = daemon_config(tmp_path, storage, shared_models, mosquitto, video, at_end="loop")
    env = {
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "2000000",
        "FACE_APPLIANCE_FAULTS": f"stall_camera_after:40,stall_camera_s:{STALL_S + 8:.0f}",
    }
    pings: List[float] = []
    daemon = Daemon(config, env)
    try:
        wait_online(recorder, daemon)
        stalled_at = resumed_at = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            try:
                if b"WATCHDOG=1" in listener.recv(4096):
                    pings.append(time.monotonic())
            except socket.timeout:
                pass
            if stalled_at is None and any("the camera stalls now" in line for line in daemon.log):
                stalled_at = time.monotonic()
            if resumed_at is None and any("the camera stall ends" in line for line in daemon.log):
                resumed_at = time.monotonic()
            if resumed_at is not None and time.monotonic() - resumed_at > 5:
                break
        assert stalled_at is not None and resumed_at is not None, daemon.text[-3000:]
        states = [json.loads(m.payload) for m in recorder.on(f"{ROOT}/state")]
        stalled = [s for s in states if s["camera"]["state"] == "stalled"]
        assert stalled, "the state never showed the stall"
        assert any(d.startswith("camera: stalled") for d in stalled[-1]["degraded"])
        assert states[-1]["camera"]["state"] == "streaming", states[-1]["camera"]
        assert states[-1]["frames"] > stalled[-1]["frames"], "frames did not flow again"
        # Not fed while the camera was stalled (after the daemon's own stall threshold), fed again after.
        # The stall's end is seen here through the daemon's stderr, which a loaded machine delivers late:
        # a ping in the last LOG_LAG_S before it was seen may already follow the recovery.
        fed = [t for t in pings if stalled_at + STALL_S + 1 < t < resumed_at - LOG_LAG_S]
        assert not fed, f"watchdog fed during the stall (stall seen {stalled_at}–{resumed_at}): {fed}"
        assert [t for t in pings if t > resumed_at], "watchdog not fed again after the recovery"
        assert sum("Camera cam0 stalled" in line for line in daemon.log) == 1, daemon.text[-3000:]
        assert sum("recovered from a stall" in line for line in daemon.log) == 1, daemon.text[-3000:]
        assert daemon.process.poll() is None
    finally:
        daemon.stop()
        listener.close()


def test_sigkill_at_random_points_of_a_busy_run(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    analyzer: FaceAnalyzer,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    rng = random.Random(int(os.environ.get("FAULT_SEED", "8")))
    report = daemon_sigkills(
        tmp_path, storage, shared_models, shared_data, mosquitto, recorder, analyzer, REPEATS, rng
    )
    assert report.kills == REPEATS
    assert not report.failures, report.failures
    assert not report.lost_by_appliance, f"events written but never delivered: {report.lost_by_appliance}"
    delays = [detail["after_s"] for detail in report.details]
    print(f"\nSIGKILLs after {delays} s; {len(report.written)} events written, all delivered")
