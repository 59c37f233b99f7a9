"""Unknown visitors with the real models and the real daemon (issue 17, part 3).

The daemon runs over the audience clip of ``shared/data/video`` (nobody in it is enrolled) with
``[unknowns]`` on: its unknown faces are kept encrypted and grouped into clusters, which
``gallery unknowns`` lists. A purge leaves no byte of a cluster's faces; everything expires at the
retention (an injected clock, not a sleep); a cluster's crops enrol a visitor through the enrolment path.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import List

from appliance.config_load import validate_config
from appliance.sightings.store import STORE_FILE, SightingStore
from appliance.vision.analyzer import FaceAnalyzer
from tests.fault_runs import printed_events
from tests.support import Daemon, daemon_config, run_cli


def _sealed(path: Path, cluster: str) -> List[bytes]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT embedding, crop FROM faces WHERE cluster_id=?", (cluster,)).fetchall()
        rows += db.execute(
            "SELECT v.crop, NULL FROM face_views v JOIN faces f ON f.event_id = v.event_id WHERE f.cluster_id=?",
            (cluster,),
        ).fetchall()
        rows += db.execute("SELECT centroid, NULL FROM clusters WHERE id=?", (cluster,)).fetchall()
    return [bytes(b) for row in rows for b in row if b is not None]


def _bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def test_unknown_visitors_are_clustered_listed_purged_and_expire(
    tmp_path: Path, shared_models: Path, shared_data: Path, analyzer: FaceAnalyzer, mosquitto: object
) -> None:
    storage = tmp_path / "state"
    video = shared_data / "video/fr_short_hamilton_clip.mp4"
    config_path = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        video,
        unknowns="enabled = true\nretention_h = 2.0",
        decision="unknown_after_frames = 6\nreannounce_s = 600.0",
    )
    # The audience comes twice: the clip is played two times.
    runs = []
    for _ in range(2):
        daemon = Daemon(config_path, args=["--print-events"])
        assert daemon.wait(timeout=300) == 0, daemon.text[-3000:]
        runs.append([e for e in printed_events(daemon) if e["decision"] == "unknown"])
    assert runs[0], "the clip gave no unknown event"

    listed = run_cli("gallery", "unknowns", "--json", "--config", str(config_path))
    assert listed.returncode == 0, listed.stderr
    clusters = json.loads(listed.stdout)["clusters"]
    # Every unknown face of the second visit joined the cluster of its first (9 faces: 9 clusters seen twice).
    assert sum(c["seen"] for c in clusters) == len(runs[0]) + len(runs[1]), (clusters, [len(r) for r in runs])
    assert len(clusters) == len(runs[0]) and all(c["seen"] == 2 for c in clusters), clusters
    assert all(c["crops"] >= 1 and c["first_seen"] <= c["last_seen"] for c in clusters)

    # The best crop of the most seen cluster, on request.
    exported = run_cli(
        "gallery",
        "unknowns",
        "--export-crop",
        clusters[0]["id"],
        str(tmp_path / "out"),
        "--config",
        str(config_path),
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / f"unknown-{clusters[0]['id']}.png").stat().st_size > 1000

    # A frequent visitor is enrolled from the crops of a cluster, through the enrolment checks; the cluster
    # is purged then.
    refused = run_cli(
        "gallery",
        "enroll-unknown",
        clusters[0]["id"],
        "--id",
        "v1",
        "--name",
        "Visitor One",
        "--config",
        str(config_path),
    )
    assert refused.returncode == 1 and "consent" in refused.stderr
    # Each cluster's kept crops are offered with the other views kept with them (events.walk_up_views).
    key_file = validate_config({"storage": {"dir": str(storage)}}).gallery_key_file
    with SightingStore.open(storage / STORE_FILE, key_file) as store:
        offered = {
            c["id"]: sum(1 + len(store.views(face.event_id)) for face in store.cluster_faces(c["id"]))
            for c in clusters
        }
        assert store.counts()["views"] > 0, "no unknown face of the clip was kept with another view"
    # The audience turns its heads: a cluster whose crops the enrolment checks refuse stays, with the reason.
    enrolled_from = None
    for cluster in clusters:
        exported = run_cli(
            "gallery",
            "unknowns",
            "--export-crop",
            cluster["id"],
            str(tmp_path / "out"),
            "--config",
            str(config_path),
        )
        assert exported.returncode == 0, exported.stderr
        enrolled = run_cli(
            "gallery",
            "enroll-unknown",
            cluster["id"],
            "--id",
            "v1",
            "--name",
            "Visitor One",
            "--consent",
            "--json",
            "--config",
            str(config_path),
        )
        report = json.loads(enrolled.stdout)
        assert len(report["photos"]) == offered[cluster["id"]], report
        if enrolled.returncode == 0:
            assert report["templates"] >= 1
            enrolled_from = cluster
            break
        assert report["templates"] == 0 and all(p["reason"] for p in report["photos"]), report
    assert enrolled_from is not None, "no cluster of the clip could be enrolled"
    # The visitor is recognised at the door now: the clip again, the enrolled visitor granted.
    again = Daemon(config_path, args=["--print-events"])
    assert again.wait(timeout=300) == 0, again.text[-3000:]
    assert [e for e in printed_events(again) if e["decision"] == "granted" and e["identity"]["id"] == "v1"]
    left = {
        c["id"]
        for c in json.loads(run_cli("gallery", "unknowns", "--json", "--config", str(config_path)).stdout)[
            "clusters"
        ]
    }
    assert enrolled_from["id"] not in left
    clusters = [c for c in clusters if c["id"] in left]

    # A purge leaves no trace of the cluster's faces.
    database = storage / STORE_FILE
    blobs = _sealed(database, clusters[-1]["id"])
    assert blobs
    purged = run_cli("gallery", "unknowns", "--purge", clusters[-1]["id"], "--config", str(config_path))
    assert purged.returncode == 0, purged.stderr
    data = _bytes(database)
    assert not [n for n, blob in enumerate(blobs) if blob[12:44] in data]
    listed = run_cli("gallery", "unknowns", "--json", "--config", str(config_path))
    assert clusters[-1]["id"] not in {c["id"] for c in json.loads(listed.stdout)["clusters"]}

    # Everything expires at the retention: a second before the first face's, every cluster is there; a
    # second after the last face's, nothing is.
    config = validate_config({"storage": {"dir": str(storage)}})
    with SightingStore.open(database, config.gallery_key_file) as store:
        seen = [face.seen_at for face in store.faces()]
    first_seen, last_seen = min(seen), max(seen)
    blobs = [blob for cluster in clusters[:-1] for blob in _sealed(database, cluster["id"])]
    retention = 2 * 3600
    with SightingStore.open(
        database, config.gallery_key_file, clock=lambda: first_seen + retention - 1
    ) as store:
        assert {c.id for c in store.clusters()} >= {c["id"] for c in clusters[:-1]}
    with SightingStore.open(
        database, config.gallery_key_file, clock=lambda: last_seen + retention + 1
    ) as store:
        assert store.clusters() == [] and store.counts()["faces"] == 0
    data = _bytes(database)
    assert not [n for n, blob in enumerate(blobs) if blob[12:44] in data]
