"""A fleet batch off the pipeline thread (:func:`appliance.fleet.member.apply_batch`): the pipeline
thread only embeds the crops, the fleet thread stores them, and a model switch that comes between the
two has the rest embedded again — on the real models (CPU back-end), a real runtime and gallery.

The test's thread plays the pipeline thread (it owns the models and turns :meth:`run_jobs`); the
fleet's side runs on a thread of its own. Every wait has a deadline, so a pipeline thread that blocks
on the store fails the test instead of hanging it.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import pytest

from appliance.access.policy import IdentityPolicy
from appliance.commands import CommandError, DistinctCommand, parse
from appliance.config_load import validate_config
from appliance.fleet.errors import FleetError
from appliance.fleet.member import (
    EmbeddingJob,
    EmbeddingPace,
    PipelineEmbedding,
    apply_batch,
    embed_crops,
    prune_to_manifest,
)
from appliance.fleet.records import IdentityRecord, Manifest, Tombstone
from appliance.gallery.errors import IdentityError
from appliance.gallery.gallery import Gallery
from appliance.runtime import ModelLoader, ModelRuntime, model_targets
from appliance.runtime.loading import target_for
from appliance.vision.image import read_image
from tests.support import Held
from tests.synthetic import random_crops, unit_vectors

DEADLINE_S = 30.0  # a bound for waits, never an expectation about speed
CONSENT_AT = "2026-12-01T00:00:00Z"


@pytest.fixture
def runtime(tmp_path: Path, shared_models: Path) -> Iterator[ModelRuntime]:
    config = validate_config({"models": {"dir": str(shared_models)}, "storage": {"dir": str(tmp_path)}})
    models = ModelRuntime(config, ModelLoader(config))
    models.own()  # the test's thread plays the pipeline thread
    models.load(*model_targets(config, liveness=False))
    gallery = Gallery.open(config, *models.embedder)
    models.attach_gallery(gallery)
    yield models
    gallery.close()
    models.close()


def _record(identity_id: str, revision: int, crop: np.ndarray) -> IdentityRecord:
    return IdentityRecord(
        identity_id, revision, "Fleet Person", None, CONSENT_AT, IdentityPolicy(), (crop,), (0.9,)
    )


def _crop(runtime: ModelRuntime, shared_data: Path) -> np.ndarray:
    analysis = runtime.analyzer.analyze(
        read_image(shared_data / "faces/fr_obama/obama.jpg"), still=True, embed=False
    )
    assert analysis.crops is not None and len(analysis.crops) == 1
    return np.asarray(analysis.crops[0])


class _FleetThread:
    """``apply_batch`` on a thread of its own, embedding through the runtime's jobs as the door does
    (paced by ``pace`` when given); the version of every embedding it used is kept."""

    def __init__(self, runtime: ModelRuntime, batch: List[Any], pace: Optional[EmbeddingPace] = None) -> None:
        self.versions: List[str] = []
        self.outcome: List[Any] = []
        versions = self.versions

        class Recorded(PipelineEmbedding):
            def result(self) -> Tuple[str, np.ndarray]:
                version, vectors = super().result()
                versions.append(version)
                return version, vectors

        assert runtime.gallery is not None
        gallery, stop = runtime.gallery, threading.Event()
        paced = pace or EmbeddingPace(runtime.config.embedder.batch_size, 0.0)
        self.thread = threading.Thread(
            target=lambda: self.outcome.append(
                apply_batch(
                    gallery,
                    batch,
                    lambda crops: Recorded(runtime, crops, stop, paced),
                    paced.crops,
                    save=True,
                )
            ),
            name="fleet",
            daemon=True,
        )
        self.thread.start()

    def turn_until(self, runtime: ModelRuntime, done: Callable[[], bool]) -> None:
        """Turn the pipeline's jobs until ``done()`` (bounded)."""
        deadline = threading.Event()
        timer = threading.Timer(DEADLINE_S, deadline.set)
        timer.start()
        try:
            while not done():
                assert not deadline.is_set(), "the fleet thread did not get there in time"
                runtime.run_jobs()
                deadline.wait(0.01)
        finally:
            timer.cancel()


def test_the_pipeline_thread_only_embeds_and_goes_on_while_the_store_is_written(
    runtime: ModelRuntime, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = runtime.gallery
    assert gallery is not None
    crop = _crop(runtime, shared_data)
    write = Held(monkeypatch, gallery.store, "put_fleet_identity", DEADLINE_S)
    timings: List[Tuple[str, int, float]] = []

    class Timed(EmbeddingPace):
        def timed(self, crops: int, seconds: float, kind: Optional[str] = None) -> None:
            timings.append((threading.current_thread().name, crops, seconds))
            assert kind is None  # sized (and run) with nobody in view
            super().timed(crops, seconds, kind)

    fleet = _FleetThread(runtime, [_record("p-000000000001", 1, crop)], Timed(8, 0.010))
    try:
        fleet.turn_until(runtime, write.entered.is_set)  # the embedding ran here, as a job
        # … and was timed where it ran, for the size of the jobs while someone is at the door.
        assert [(name, crops) for name, crops, _ in timings] == [(threading.current_thread().name, 1)]
        assert timings[0][2] > 0
        # The store is being written on the fleet thread: this thread's jobs and searches go on.
        assert fleet.versions == [runtime.model_versions["embedder"]]
        assert runtime.run_jobs() == 0
        probe = runtime.analyzer.embedder.embed(crop[None])
        assert gallery.search(probe, 1) == [[]]  # not there yet
    finally:
        write.release()
        fleet.thread.join(DEADLINE_S)
    assert not fleet.thread.is_alive() and fleet.outcome == [(1, 0, [])]
    hit = gallery.search(probe, 1)[0][0]
    assert hit.identity_id == "p-000000000001" and hit.score > 0.99
    assert gallery.store.fleet_identities() == {"p-000000000001": 1}


def test_a_model_switch_between_the_embedding_and_the_store_has_the_crops_embedded_again(
    runtime: ModelRuntime, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = runtime.gallery
    assert gallery is not None
    crop = _crop(runtime, shared_data)
    old_version = gallery.model_version
    store = Held(monkeypatch, gallery, "apply_fleet_identity", DEADLINE_S)
    fleet = _FleetThread(runtime, [_record("p-000000000002", 1, crop)])
    try:
        fleet.turn_until(runtime, store.entered.is_set)  # embedded with the old model, not yet stored
        # Meanwhile, between two frames, an embedder update switches the model (the registry's file
        # under another version name).
        target = target_for(runtime.config, "mobilefacenet", None)
        runtime.open_candidate(
            dataclasses.replace(target, spec=dataclasses.replace(target.spec, version="2.0.0-test"))
        )
        runtime.begin_reembedding("mobilefacenet")
        new_version = runtime.switch_to_candidate("mobilefacenet", lambda: None, lambda step: None)
    finally:
        store.release()
    fleet.turn_until(runtime, lambda: not fleet.thread.is_alive())
    assert fleet.versions == [old_version, new_version]  # refused under the lock, embedded again
    assert fleet.outcome == [(1, 0, [])]
    stored = [t for t in gallery.store.templates(new_version) if t.identity_id == "p-000000000002"]
    assert len(stored) == 1
    assert not [t for t in gallery.store.templates(old_version) if t.identity_id == "p-000000000002"]


def test_model_switches_that_keep_coming_leave_the_records_for_later(
    runtime: ModelRuntime, shared_data: Path
) -> None:
    gallery = runtime.gallery
    assert gallery is not None

    def embed_then_switch(crops: np.ndarray) -> EmbeddingJob:
        version, vectors = embed_crops(runtime, crops)  # this thread owns the models here
        gallery.switch_model(f"{version}-next", gallery.dim)  # a switch before every store
        return _done((version, vectors))

    with pytest.raises(FleetError, match="model switch came in between"):
        apply_batch(
            gallery,
            [_record("p-000000000003", 1, _crop(runtime, shared_data))],
            embed_then_switch,
            lambda: 8,
            True,
        )
    assert gallery.store.fleet_identities() == {}


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    config = validate_config({"storage": {"dir": str(tmp_path)}})
    with Gallery.open(config, "mobilefacenet@foamliu-v1.0", 128) as opened:
        yield opened


def _no_model(crops: np.ndarray) -> EmbeddingJob:
    raise AssertionError("a removal asked for the models")


def _done(value: Tuple[str, np.ndarray]) -> EmbeddingJob:
    future: Future = Future()  # a finished job: it is an EmbeddingJob
    future.set_result(value)
    return future


def test_tombstones_and_the_manifest_never_reach_the_models(gallery: Gallery) -> None:
    for number in (1, 2, 3):
        gallery.apply_fleet_identity(
            f"p-00000000000{number}",
            1,
            f"P {number}",
            None,
            CONSENT_AT,
            IdentityPolicy(),
            unit_vectors(1, number, dim=128),
            random_crops(1, number),
            [0.9],
        )
    batch = [Tombstone("p-000000000001", 2, CONSENT_AT), Tombstone("p-000000000001", 3, CONSENT_AT)]
    assert apply_batch(gallery, batch, _no_model, lambda: 8, save=True) == (0, 1, [])
    assert apply_batch(gallery, [Tombstone("p-000000000002", 1, CONSENT_AT)], _no_model, lambda: 8, True) == (
        0,
        0,
        [],  # the same revision again: skipped quietly
    )
    manifest = Manifest(5, {"p-000000000002": 1}, {}, CONSENT_AT)
    assert prune_to_manifest(gallery, manifest) == 1  # p-3 is gone from the site's list
    assert gallery.store.fleet_identities() == {"p-000000000002": 1} and len(gallery) == 1


def test_a_catch_up_is_embedded_one_embedder_batch_per_job_the_next_while_this_one_is_stored(
    gallery: Gallery,
) -> None:
    stored_before: List[int] = []
    sizes: List[int] = []

    def embed(crops: np.ndarray) -> EmbeddingJob:
        stored_before.append(len(gallery.store.fleet_identities()))
        sizes.append(len(crops))
        return _done((gallery.model_version, unit_vectors(len(crops), len(sizes), dim=128)))

    crops = random_crops(3, 7)
    batch: List[Any] = [
        IdentityRecord(
            f"p-{number:012d}",
            1,
            "P",
            None,
            CONSENT_AT,
            IdentityPolicy(),
            tuple(crops[: 1 + number % 3]),
            (0.9,) * (1 + number % 3),
        )
        for number in range(10)
    ]  # 1, 2, 3, 1, 2, … crops: 19 in all
    batch.insert(4, Tombstone("p-000000000099", 1, CONSENT_AT))
    assert apply_batch(gallery, batch, embed, lambda: 8, save=True) == (10, 1, [])
    # Whole records, at most 8 crops a call (1+2+3+1 and the tombstone, 2+3+1+2, 3+1); the second
    # group's embedding starts before the first group is stored, the third once it is.
    assert sizes == [7, 8, 4] and stored_before == [0, 0, 4]
    assert len(gallery) == 19


def test_while_someone_is_at_the_door_a_job_embeds_what_fits_in_the_budget(gallery: Gallery) -> None:
    """Each group is cut when its embedding starts: while ``in_view()`` it holds the crops that fit
    in ``in_view_s`` at the last job's cost per crop (one before any job is timed, one record at
    least), otherwise the embedder batch; every record is stored. The costs are stated (the
    pipeline thread times the real jobs): 0.5 ms a call and 3 ms a crop, one job of 40 ms."""
    views = iter([True, True, True, True, False, True, True, True])  # someone there; gone a moment
    pace = EmbeddingPace(8, 0.010, lambda: next(views))
    sizes: List[int] = []

    def embed(crops: np.ndarray) -> EmbeddingJob:
        sizes.append(len(crops))
        slow = len(sizes) == 6  # e.g. a collection on the pipeline thread
        pace.timed(len(crops), 0.040 if slow else 0.0005 + 0.003 * len(crops))
        return _done((gallery.model_version, unit_vectors(len(crops), len(sizes), dim=128)))

    crop = random_crops(1, 11)
    batch: List[Any] = [
        IdentityRecord(f"p-{number:012d}", 1, "P", None, CONSENT_AT, IdentityPolicy(), tuple(crop), (0.9,))
        for number in range(23)
    ]
    assert apply_batch(gallery, batch, embed, pace.crops, save=True) == (23, 0, [])
    # In view: 1 untimed, then 10 / 3.5 → 2, 10 / 3.25 → 3, 3 (9.5 ms a job: the budget, from below);
    # nobody: the batch, 8; in view: 3, 40 ms → 1, 10 / 3.5 → 2.
    assert sizes == [1, 2, 3, 3, 8, 3, 1, 2]
    assert len(gallery) == 23 and len(gallery.store.fleet_identities()) == 23
    # A record of more crops than fit is one group of its own; with no budget a job is one record.
    assert EmbeddingPace(8, 0.0, lambda: True).crops() == 1
    idle = EmbeddingPace(8, 0.010, lambda: False)
    idle.timed(1, 1.0)
    assert idle.crops() == 8


@pytest.mark.parametrize("fleet_ended", [True, False])
def test_the_daemon_closes_the_gallery_only_once_the_fleet_thread_has_ended(
    gallery: Gallery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fleet_ended: bool
) -> None:
    from appliance.daemon import Appliance

    events: List[str] = []
    close = gallery.close
    monkeypatch.setattr(gallery, "close", lambda **kwargs: events.append("gallery closed") or close(**kwargs))
    appliance = Appliance(validate_config({"storage": {"dir": str(tmp_path)}}), stop_budget_s=2.0)
    appliance.gallery = gallery
    appliance.fleet = SimpleNamespace(close=lambda timeout: events.append("fleet stopped") or fleet_ended)
    appliance.stop()  # nothing else was started: stop is safe after a failed start
    # A fleet thread still storing a record keeps the gallery open (the process exit ends both).
    assert events == (["fleet stopped", "gallery closed"] if fleet_ended else ["fleet stopped"])


def _near(vector: np.ndarray, seed: int, by: float) -> np.ndarray:
    """A unit vector about ``by`` (a small angle, radians) from the unit ``vector``: another capture
    of the same face."""
    step = unit_vectors(1, seed, dim=len(vector))[0]
    moved = vector + by * (step - (step @ vector) * vector)
    return (moved / np.linalg.norm(moved)).astype(np.float32)


def test_a_record_whose_faces_match_another_identity_is_stored_with_its_look_alike(gallery: Gallery) -> None:
    """Before a record is stored its faces are searched: another identity (of the fleet or enrolled
    here) they match at the threshold is stored with it as its look-alike, and a look-alike leaves
    with either identity or the next revision's own search. The embeddings are stated: one person's
    face, another capture of it (cosine ≈ 0.9), and strangers (cosine ≈ 0)."""
    face = unit_vectors(1, 100, dim=128)[0]
    gallery.add("local-ada", "Ada", face[None, :])  # enrolled at this door
    planned: List[np.ndarray] = []

    def embed(crops: np.ndarray) -> EmbeddingJob:
        vectors, planned[: len(crops)] = np.stack(planned[: len(crops)]), []
        return _done((gallery.model_version, vectors))

    def apply(*records: Tuple[str, int, List[np.ndarray]]) -> None:
        batch: List[Any] = []
        for identity_id, revision, vectors in records:
            planned.extend(vectors)
            crops = random_crops(len(vectors), revision)
            batch.append(
                IdentityRecord(
                    identity_id,
                    revision,
                    "P",
                    None,
                    CONSENT_AT,
                    IdentityPolicy(),
                    tuple(crops),
                    (0.9,) * len(crops),
                )
            )
        applied = apply_batch(gallery, batch, embed, lambda: 8, save=True, look_alike_threshold=0.6)
        assert applied == (len(records), 0, [])

    def pairs() -> List[Tuple[str, str, float]]:
        count, listed = gallery.store.look_alikes()
        assert count == len(listed) and gallery.store.look_alikes(2) == (count, listed[:2])
        return [(pair.id, pair.like_id, round(pair.score, 2)) for pair in listed]

    stranger, other = unit_vectors(2, 101, dim=128)
    near = _near(face, 102, 0.45)
    apply(("p-1", 1, [stranger]), ("p-2", 1, [other, near]), ("p-3", 1, [unit_vectors(1, 103, dim=128)[0]]))
    score = round(float(near @ face), 2)
    assert 0.6 <= score < 0.99
    # p-2's second face is Ada's: she is enrolled here and under p-2; p-1 and p-3 are strangers.
    assert pairs() == [("p-2", "local-ada", score)]

    # The same face under two more ids, in one batch: p-5 is stored after p-4, and its search sees
    # p-4 as well as Ada and p-2 (whose second face is hers); best scores first.
    apply(("p-4", 1, [_near(face, 104, 0.2)]), ("p-5", 1, [face]))
    found = pairs()
    assert {(a, b) for a, b, _ in found} == {
        ("p-2", "local-ada"),
        ("p-4", "local-ada"),
        ("p-4", "p-2"),
        ("p-5", "local-ada"),
        ("p-5", "p-2"),
        ("p-5", "p-4"),
    }
    assert [s for _, _, s in found] == sorted((s for _, _, s in found), reverse=True)
    assert found[0] == ("p-5", "local-ada", 1.0)

    # p-4's next revision is another face: every look-alike of p-4, either way round, is gone.
    apply(("p-4", 2, [stranger * -1.0]))
    assert {(a, b) for a, b, _ in pairs()} == {("p-2", "local-ada"), ("p-5", "local-ada"), ("p-5", "p-2")}
    # Were Ada and p-5 twins, the pair is marked at this door (Ada's id never leaves it): listed no
    # more, a next revision of p-5 included, until the mark is undone.
    store = gallery.store
    commits = store.commits
    assert store.mark_distinct("p-5", "local-ada")
    assert store.commits == commits + 1  # what the fleet thread follows to publish the digest again
    assert not store.mark_distinct("local-ada", "p-5")  # the same pair, either way round
    assert [(a, b) for a, b, _ in store.distinct_pairs()] == [("local-ada", "p-5")]
    assert {(a, b) for a, b, _ in pairs()} == {("p-2", "local-ada"), ("p-5", "p-2")}
    for first, second, refusal in (
        ("p-5", "p-5", "twice"),
        ("p-5", "nobody", "no identity 'nobody'"),
        ("p-5", "p-2", "both the fleet's"),
    ):
        with pytest.raises(IdentityError, match=refusal):
            store.mark_distinct(first, second)
    apply(("p-5", 2, [face]))
    assert {(a, b) for a, b, _ in pairs()} == {("p-2", "local-ada"), ("p-5", "p-2")}
    assert store.mark_distinct("local-ada", "p-5", distinct=False)
    assert not store.mark_distinct("local-ada", "p-5", distinct=False)
    assert {(a, b) for a, b, _ in pairs()} == {("p-2", "local-ada"), ("p-5", "local-ada"), ("p-5", "p-2")}
    assert store.mark_distinct("p-5", "local-ada")
    # A tombstone, and a local removal, take their identity's look-alikes (and marks) with them.
    assert apply_batch(gallery, [Tombstone("p-5", 3, CONSENT_AT)], _no_model, lambda: 8, save=True) == (
        0,
        1,
        [],
    )
    assert pairs() == [("p-2", "local-ada", score)] and store.distinct_pairs() == []
    gallery.remove("local-ada")
    assert pairs() == []
    # Without a threshold nothing is searched.
    apply_batch(
        gallery,
        [IdentityRecord("p-6", 1, "P", None, CONSENT_AT, IdentityPolicy(), (random_crops(1, 6)[0],), (0.9,))],
        lambda crops: _done((gallery.model_version, face[None, :])),
        lambda: 8,
        save=True,
    )
    assert pairs() == []


def test_the_distinct_command_is_validated_before_anything_is_done() -> None:
    _, command = parse("distinct", b'{"request_id": "d", "ids": ["p-5", "local-ada"]}')
    assert isinstance(command, DistinctCommand) and command.ids == ["p-5", "local-ada"] and not command.undo
    for payload, message in (
        (b'{"request_id": "r", "ids": ["p-5"]}', "at least 2"),
        (b'{"request_id": "r", "ids": ["p-5", "a", "b"]}', "at most 2"),
        (b'{"request_id": "r", "ids": ["p-5", "p-5"]}', "not the same one twice"),
        (b'{"request_id": "r", "ids": ["p-5", ""]}', "1 to 64 characters"),
        (b'{"request_id": "r", "ids": ["p-5", "local-ada"], "undo": "yes"}', "valid boolean"),
    ):
        with pytest.raises(CommandError, match=message) as raised:
            parse("distinct", payload)
        assert raised.value.code == "invalid" and raised.value.request_id == "r"


def test_faces_of_a_model_switched_away_are_not_searched_for_look_alikes(gallery: Gallery) -> None:
    """Embeddings made before a switch to an embedder of another size are refused by the store (the
    record is embedded again); searching them first would feed the index vectors of the wrong size."""
    searched: List[int] = []
    search = gallery.search

    def counted(embeddings: np.ndarray, identities: int = 2) -> Any:
        searched.append(len(embeddings))
        return search(embeddings, identities)

    gallery.search = counted  # type: ignore[method-assign]
    old = gallery.model_version

    def embed_then_switch(crops: np.ndarray) -> EmbeddingJob:
        gallery.switch_model(f"{old}-next-{len(searched)}", 256)  # a switch before every store
        return _done((old, unit_vectors(len(crops), 1, dim=128)))

    record = IdentityRecord(
        "p-7", 1, "P", None, CONSENT_AT, IdentityPolicy(), (random_crops(1, 7)[0],), (0.9,)
    )
    with pytest.raises(FleetError, match="model switch came in between"):
        apply_batch(gallery, [record], embed_then_switch, lambda: 8, True, look_alike_threshold=0.6)
    assert searched == [] and gallery.store.fleet_identities() == {}


def test_a_job_sized_for_nobody_that_finds_someone_in_view_embeds_what_fits_and_leaves_the_rest(
    runtime: ModelRuntime,
) -> None:
    """A job is sized when it is handed over; if someone comes into view before it runs, it embeds
    what fits in the budget at its start and submits the rest for the next turn (``run_jobs`` runs
    what was queued when it was called). The embeddings come back whole and in order, the jobs kept
    apart by how they were sized. The real embedder; the cost per crop is stated for the sizes."""
    view = [False]
    pace = EmbeddingPace(8, 0.010, lambda: view[0])
    crops = random_crops(8, 21)
    expected = runtime.analyzer.embedder.embed(crops)  # this thread owns the models
    assert pace.crops() == 8 and pace.sized_in_view is False  # handed over for nobody: a batch
    job = PipelineEmbedding(runtime, crops, threading.Event(), pace)
    view[0] = True  # someone came into view before it ran
    pace.timed(3, 0.009)  # 3 ms a crop: 3 fit in 10 ms (not kept apart: no kind)
    sizes: List[int] = []
    timed = pace.timed

    def recorded(count: int, seconds: float, kind: Optional[str] = None) -> None:
        sizes.append(count)
        timed(count, 0.003 * count, kind)  # the stated cost, whatever this machine took

    pace.timed = recorded  # type: ignore[method-assign]
    turns = 0
    while len(sizes) < 3 and turns < 10:  # one job a turn: 3, 3, then 2
        turns += 1
        assert runtime.run_jobs() == 1
    version, vectors = job.result()
    assert sizes == [3, 3, 2] and turns == 3
    assert version == runtime.analyzer.embedder.version
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
    assert pace.document()["resized_at_start"]["n"] == 3

    # Sized for someone in view: run as it is, kept apart as such; with nobody in view: not kept.
    assert pace.crops() == 3 and pace.sized_in_view is True
    PipelineEmbedding(runtime, crops[:3], threading.Event(), pace)
    assert runtime.run_jobs() == 1 and sizes[-1] == 3
    assert pace.document()["sized_in_view"]["n"] == 1
    view[0] = False
    PipelineEmbedding(runtime, crops, threading.Event(), pace)
    assert runtime.run_jobs() == 1 and sizes[-1] == 8
    assert {kind: figures["n"] for kind, figures in pace.document().items()} == {
        "resized_at_start": 3,
        "sized_in_view": 1,
    }
