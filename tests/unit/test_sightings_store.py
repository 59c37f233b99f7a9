"""The store of faces seen at the door: sealed, expiring on an injected clock, bounded, no trace left."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import List

import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.decisions import Decision
from appliance.errors import ConfigError
from appliance.face_views import FaceSample
from appliance.gallery.crypto import create_key
from appliance.pipeline import Outcome
from appliance.sightings.errors import NotKeptError, SightingStoreError
from appliance.sightings.keeper import KeepSettings, SightingKeeper
from appliance.sightings.store import MAX_VIEWS, SCHEMA_VERSION, ClusterSettings, SeenFace, SightingStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _face(
    event_id: str, vector: np.ndarray, decision: str = "granted", quality: float = 0.8, views: int = 0
) -> SeenFace:
    rng = np.random.default_rng(abs(hash(event_id)) % 2**32)
    return SeenFace(
        event_id,
        1_800_000_000.0,
        "cam0",
        decision,
        "person-a" if decision == "granted" else None,
        0.5,
        quality,
        "mobilefacenet@v1",
        vector / np.linalg.norm(vector),
        rng.integers(0, 255, (112, 112, 3), dtype=np.uint8),
        tuple(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(views)),
    )


def _bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def _sealed(path: Path) -> List[bytes]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT embedding, crop FROM faces").fetchall()
        rows += db.execute("SELECT centroid, NULL FROM clusters").fetchall()
    return [bytes(blob) for row in rows for blob in row if blob is not None]


def test_a_face_is_sealed_kept_until_its_retention_and_then_leaves_no_trace(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "sightings.db"
    vector = np.arange(1, 129, dtype=np.float32)
    with SightingStore.open(path, tmp_path / "gallery.key", clock=clock) as store:
        store.put(_face("event-1", vector), keep_s=3600)
        kept = store.face("event-1")
        assert kept is not None and kept.identity_id == "person-a" and kept.crop is not None
        np.testing.assert_allclose(kept.embedding, vector / np.linalg.norm(vector), rtol=1e-6)
        blobs = _sealed(path)
        assert len(blobs) == 2
        assert np.asarray(vector / np.linalg.norm(vector), "<f4").tobytes()[:32] not in _bytes(path)
        clock.now += 3599
        assert store.face("event-1") is not None
        clock.now += 2
        assert store.face("event-1") is None  # past its retention, even before the expiry ran
        assert store.expire() == 1
        data = _bytes(path)
        assert not [n for n, blob in enumerate(blobs) if blob[12:44] in data]
        assert b"event-1" not in data and b"person-a" not in data


def test_the_row_count_is_bounded_oldest_first(tmp_path: Path) -> None:
    clock = Clock()
    with SightingStore.open(tmp_path / "s.db", tmp_path / "k", max_faces=3, clock=clock) as store:
        for n in range(5):
            clock.now += 1
            store.put(_face(f"e{n}", np.random.default_rng(n).normal(size=128).astype(np.float32)), 3600)
        assert [face.event_id for face in store.faces()] == ["e2", "e3", "e4"]
        assert store.counts()["dropped_full"] == 2


def test_unknown_faces_cluster_expire_at_the_retention_and_a_purge_leaves_nothing(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.db"
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=128).astype(np.float32), rng.normal(size=128).astype(np.float32)
    settings = ClusterSettings(threshold=0.6, retention_s=100.0, max_clusters=10, max_crops=2)
    with SightingStore.open(path, tmp_path / "k", clock=clock) as store:
        ids = []
        for n in range(4):
            clock.now += 10
            noisy = a + 0.1 * rng.normal(size=128).astype(np.float32)
            ids.append(store.put(_face(f"a{n}", noisy, "unknown", quality=0.5 + n / 10), 0.0, settings))
        clock.now += 10
        other = store.put(_face("b0", b, "unknown"), 0.0, settings)
        assert len(set(ids)) == 1 and other != ids[0]
        clusters = {c.id: c for c in store.clusters()}
        assert clusters[ids[0]].seen == 4 and clusters[ids[0]].crops == 2  # the 2 best crops kept
        assert [f.event_id for f in store.cluster_faces(ids[0])] == ["a3", "a2"]
        # a0 (seen 40 s before b0) expires first; the cluster lives on with the others.
        clock.now += 61
        clusters = {c.id: c for c in store.clusters()}
        assert clusters[ids[0]].seen == 3
        blobs_b = [bytes(x) for x in _sealed(path)]
        assert store.purge_cluster(other) == 1
        with pytest.raises(NotKeptError):
            store.purge_cluster(other)
        clock.now += 100
        assert store.clusters() == []
        data = _bytes(path)
        assert not [n for n, blob in enumerate(blobs_b) if blob[12:44] in data]


def _view_blobs(path: Path) -> List[bytes]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return [bytes(row[0]) for row in db.execute("SELECT crop FROM face_views")]


def test_an_unknown_face_keeps_its_other_views_sealed_and_they_leave_with_it(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.db"
    rng = np.random.default_rng(3)
    with SightingStore.open(path, tmp_path / "k", clock=clock) as store:
        face = _face("u1", rng.normal(size=128).astype(np.float32), "unknown", views=2)
        store.put(face, keep_s=3600)
        store.put(_face("u2", rng.normal(size=128).astype(np.float32), "unknown", views=1), keep_s=60)
        store.put(_face("g1", rng.normal(size=128).astype(np.float32)), keep_s=3600)
        assert store.counts()["views"] == 3
        views = store.views("u1")
        assert len(views) == 2  # PNG: the very pixels, best first
        for kept, given in zip(views, face.views):
            np.testing.assert_array_equal(kept, given)
        assert store.views("g1") == [] and store.views("no-such-event") == []
        with pytest.raises(SightingStoreError, match="at most 4"):
            store.put(_face("u9", rng.normal(size=128).astype(np.float32), "unknown", views=5), 60)
        assert store.face("u9") is None
        blobs = _view_blobs(path)
        data = _bytes(path)
        assert all(view.tobytes()[:64] not in data for view in face.views)  # sealed, not in the clear
        # Each view is sealed to its event and rank: two swapped blobs do not open.
        with sqlite3.connect(path) as db:
            db.execute("UPDATE face_views SET rank = -rank WHERE event_id = 'u1'")
            db.execute("UPDATE face_views SET rank = 5 + rank WHERE event_id = 'u1'")  # 2 ↔ 3
        with pytest.raises(SightingStoreError):
            store.views("u1")
        # Expiry takes a face's views with it (u2, kept 60 s); walk-up enrolment forgets u1's.
        clock.now += 61
        assert store.views("u2") == []
        store.expire()
        assert store.counts()["views"] == 2
        assert store.forget_event("u1")
        assert store.counts()["views"] == 0
        data = _bytes(path)
        assert not [n for n, blob in enumerate(blobs) if blob[12:44] in data]


def test_a_cluster_that_drops_a_members_crop_drops_its_views(tmp_path: Path) -> None:
    clock = Clock()
    vector = np.random.default_rng(5).normal(size=128).astype(np.float32)
    settings = ClusterSettings(threshold=0.6, retention_s=100.0, max_clusters=10, max_crops=1)
    with SightingStore.open(tmp_path / "s.db", tmp_path / "k", clock=clock) as store:
        store.put(_face("low", vector, "unknown", quality=0.4, views=2), 0.0, settings)
        store.put(_face("high", vector, "unknown", quality=0.9, views=1), 0.0, settings)
        assert store.counts()["views"] == 1
        assert store.views("low") == [] and len(store.views("high")) == 1


def test_a_schema_1_store_is_migrated_with_its_faces(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "s.db"
    vector = np.random.default_rng(9).normal(size=128).astype(np.float32)
    with SightingStore.open(path, tmp_path / "k", clock=clock) as store:
        store.put(_face("old", vector, "unknown"), 3600)
    # What firmware of schema 1 left: no table of views.
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE face_views")
        db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    # Another key is refused before anything is migrated.
    create_key(tmp_path / "other")
    with pytest.raises(SightingStoreError, match="another key"):
        SightingStore.open(path, tmp_path / "other", clock=clock)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name='face_views'").fetchone()
    with SightingStore.open(path, tmp_path / "k", clock=clock) as store:
        kept = store.face("old")
        assert kept is not None and kept.crop is not None and store.views("old") == []
        store.put(_face("new", vector, "unknown", views=2), 3600)
        assert len(store.views("new")) == 2
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
            SCHEMA_VERSION
        )
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(SightingStoreError, match="newer than this firmware"):
        SightingStore.open(path, tmp_path / "k", clock=clock)


def _outcome(decision: str, views: int) -> Outcome:
    rng = np.random.default_rng(views)
    samples = [
        FaceSample(
            0.9 - n / 10,
            rng.normal(size=128).astype(np.float32),
            rng.integers(0, 255, (112, 112, 3), dtype=np.uint8),
            None,
            "mobilefacenet@v1",
        )
        for n in range(1 + views)
    ]
    verdict = Decision(
        track_id=3,
        decision=decision,  # type: ignore[arg-type]
        identity_id="person-a" if decision == "granted" else None,
        name=None,
        score=0.7,
        threshold=0.5,
        frames=12,
        liveness=None,
        box=np.array([10.0, 20.0, 90.0, 120.0], np.float32),
        quality=0.9,
        first_seen=0.0,
        decided_at=1.0,
        reason="test",
    )
    return Outcome(verdict, 1.0, samples[0].crop, "cam0", samples[0], tuple(samples[1:]))


def test_the_keeper_keeps_the_views_of_an_unknown_face_only(tmp_path: Path) -> None:
    with SightingStore.open(tmp_path / "s.db", tmp_path / "k", clock=Clock()) as store:
        keeper = SightingKeeper(store, KeepSettings(3600.0), wall_clock=Clock())
        keeper.start()
        unknown, granted = _outcome("unknown", 2), _outcome("granted", 2)
        keeper.offer(unknown, "u1")
        keeper.offer(granted, "g1")
        keeper.close()
        assert keeper.kept == 2
        for kept, given in zip(store.views("u1"), unknown.views):
            np.testing.assert_array_equal(kept, given.crop)
        assert len(store.views("u1")) == 2 and store.views("g1") == []


def test_another_key_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    with SightingStore.open(tmp_path / "s.db", tmp_path / "k1", clock=clock) as store:
        store.put(_face("e", np.ones(128, np.float32)), 60)
    with pytest.raises(SightingStoreError, match="missing"):
        SightingStore.open(tmp_path / "s.db", tmp_path / "k2", clock=clock)
    create_key(tmp_path / "k2")
    with pytest.raises(SightingStoreError, match="another key"):
        SightingStore.open(tmp_path / "s.db", tmp_path / "k2", clock=clock)


def test_the_retention_settings_are_validated() -> None:
    assert validate_config({}).events.keep_crops_h == 0 and not validate_config({}).unknowns.enabled
    for bad in (
        {"events": {"keep_crops_h": -1.0}},
        {"events": {"keep_crops_h": 721.0}},
        {"unknowns": {"retention_h": 0.0}},
        {"events": {"walk_up_views": 0}},
        {"events": {"walk_up_views": 6}},
    ):
        with pytest.raises(ConfigError):
            validate_config(bad)


def test_the_pipeline_keeps_views_only_where_something_uses_them() -> None:
    from appliance.daemon import pipeline_views

    assert pipeline_views(validate_config({})) == 0
    assert pipeline_views(validate_config({"adaptive": {"enabled": True, "require_liveness": False}})) == 1
    assert pipeline_views(validate_config({"events": {"keep_crops_h": 1.0}})) == 3
    # The most the configuration allows is the face and the other views the store keeps.
    most = validate_config({"events": {"keep_crops_h": 1.0, "walk_up_views": MAX_VIEWS + 1}})
    assert pipeline_views(most) == MAX_VIEWS + 1
    assert (
        pipeline_views(validate_config({"unknowns": {"enabled": True}, "events": {"walk_up_views": 1}})) == 1
    )


def test_the_faces_kept_of_a_removed_or_forgotten_face_go_at_once_and_leave_no_trace(tmp_path: Path) -> None:
    from dataclasses import replace

    from appliance import cli
    from appliance.gallery.gallery import Gallery

    path = tmp_path / "sightings.db"
    vector = np.arange(1, 129, dtype=np.float32)
    with SightingStore.open(path, tmp_path / "gallery.key") as store:
        for event_id, identity in (("event-1", "person-a"), ("event-2", "person-a"), ("event-3", "person-b")):
            store.put(replace(_face(event_id, vector), identity_id=identity), keep_s=3600)
        store.put(_face("event-4", vector, decision="unknown"), keep_s=3600)
        blobs = _sealed(path)
        assert store.forget_identity("person-a") == 2 and store.forget_identity("nobody") == 0
        assert store.face("event-1") is None and store.face("event-2") is None
        assert store.face("event-3") is not None and store.face("event-4") is not None
        data = _bytes(path)
        assert b"event-1" not in data and b"person-a" not in data
        assert sum(blob[12:44] in data for blob in blobs) == 4  # event-3's and event-4's crop and embedding

    # Every way a face leaves the gallery tells the hook; the CLI's hook deletes in sightings.db.
    config = validate_config({"storage": {"dir": str(tmp_path)}})
    told: List[str] = []
    with Gallery.open(config, "mobilefacenet@v1", 128) as gallery:
        gallery.face_forgotten = told.append
        gallery.add("person-b", "B", vector[None, :] / np.linalg.norm(vector))
        gallery.add("person-c", "C", vector[None, :] / np.linalg.norm(vector))
        gallery.forget_face("person-b")
        gallery.remove("person-c")
        assert told == ["person-b", "person-c"]

        def broken(identity_id: str) -> None:
            raise OSError("disk gone")

        gallery.face_forgotten = broken
        gallery.add_identity("person-d", "D")
        assert gallery.remove("person-d") == 0  # the removal stands; the failure is logged
    with SightingStore.open(path, tmp_path / "gallery.key") as store:
        store.put(replace(_face("event-5", vector), identity_id="person-e"), keep_s=3600)
    config_file = tmp_path / "appliance.toml"
    config_file.write_text(f'[storage]\ndir = "{tmp_path}"\n[models]\ndir = "{tmp_path / "no-models"}"\n')
    with Gallery.open(config, "mobilefacenet@v1", 128) as gallery:
        gallery.add("person-e", "E", vector[None, :] / np.linalg.norm(vector))
    assert cli.main(["gallery", "remove", "person-e", "--config", str(config_file)]) == 0
    with SightingStore.open(path, tmp_path / "gallery.key") as store:
        assert store.face("event-5") is None and store.face("event-3") is not None


def test_a_face_offered_before_its_identity_was_forgotten_does_not_outlive_it(tmp_path: Path) -> None:
    import threading

    with SightingStore.open(tmp_path / "s.db", tmp_path / "k", clock=Clock()) as store:
        keeper = SightingKeeper(store, KeepSettings(3600.0), wall_clock=Clock())
        writing, release = threading.Event(), threading.Event()
        put = store.put

        def slow_put(*args: object, **kwargs: object) -> object:
            writing.set()
            release.wait(10)  # the disk is slow: the face is written after the forget
            return put(*args, **kwargs)  # type: ignore[arg-type]

        store.put = slow_put  # type: ignore[method-assign]
        keeper.start()
        keeper.offer(_outcome("granted", 0), "g1")
        assert writing.wait(10)
        keeper.forget_identity("person-a")  # the gallery removed A meanwhile
        release.set()
        keeper.close()
        assert keeper.kept == 1 and store.face("g1") is None
