"""The model runtime (:class:`appliance.runtime.ModelRuntime`): one owner thread, jobs with futures,
candidates validated, switched, committed and undone — on the real models (CPU back-end) and a real
gallery; no thread other than the owner ever runs a model."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, List

import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.gallery.gallery import Gallery
from appliance.runtime import ModelLoader, ModelOwnershipError, ModelRuntime, RuntimeJobError, ValidationError
from appliance.runtime.engines import model_of
from appliance.runtime.loading import model_targets, target_for
from appliance.vision.image import read_image

WAIT_S = 30.0  # a bound for waits, never an expectation about speed


@pytest.fixture
def runtime(tmp_path: Path, shared_models: Path) -> Iterator[ModelRuntime]:
    config = validate_config({"models": {"dir": str(shared_models)}, "storage": {"dir": str(tmp_path)}})
    models = ModelRuntime(config, ModelLoader(config))
    models.own()  # the test's thread is the owner here
    models.load(*model_targets(config, liveness=False))
    yield models
    models.close()


def test_the_models_refuse_any_thread_but_their_owner(runtime: ModelRuntime) -> None:
    assert runtime.analyzer is not None
    errors: List[BaseException] = []

    def elsewhere() -> None:
        try:
            runtime.analyzer  # noqa: B018 - the access is the test
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=elsewhere, name="intruder")
    thread.start()
    thread.join(WAIT_S)
    assert len(errors) == 1 and isinstance(errors[0], ModelOwnershipError)
    assert "intruder" in str(errors[0]) and "submit it as a job" in str(errors[0])
    # Snapshots are for every thread.
    assert runtime.model_versions["embedder"].startswith("mobilefacenet@")


def test_jobs_run_on_the_owner_and_hand_back_results_and_errors(runtime: ModelRuntime) -> None:
    ran_on: List[str] = []
    futures = []

    def submit() -> None:
        futures.append(
            runtime.submit(lambda rt: ran_on.append(threading.current_thread().name) or 42, "answer")
        )
        futures.append(runtime.submit(lambda rt: 1 / 0, "divide"))

    thread = threading.Thread(target=submit, name="client")
    thread.start()
    thread.join(WAIT_S)
    assert not any(future.done() for future in futures)  # nothing runs until the owner turns
    assert runtime.run_jobs() == 2
    assert futures[0].result(0) == 42 and ran_on == [threading.current_thread().name]
    with pytest.raises(ZeroDivisionError):
        futures[1].result(0)


def test_a_job_the_owner_does_not_reach_is_cancelled_with_a_clear_error(runtime: ModelRuntime) -> None:
    outcome: List[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        try:
            runtime.call(lambda rt: None, "switching a model", timeout=0.3, stop=stop)
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=client)
    thread.start()
    thread.join(WAIT_S)
    assert isinstance(outcome[0], RuntimeJobError) and "not reached within" in str(outcome[0])
    assert runtime.run_jobs() == 0  # the cancelled job is dropped, not run late


def test_closing_fails_the_waiting_jobs(runtime: ModelRuntime) -> None:
    future = runtime.submit(lambda rt: "late", "a late job")
    runtime.close()
    with pytest.raises(RuntimeJobError, match="stopping"):
        future.result(0)
    with pytest.raises(RuntimeJobError, match="closed"):
        runtime.submit(lambda rt: None, "after close").result(0)


def test_an_embedder_switch_re_embeds_the_gallery_between_frames_and_can_be_undone(
    runtime: ModelRuntime, shared_data: Path
) -> None:
    from appliance.enrollment import Enroller

    config = runtime.config
    gallery = Gallery.open(config, *runtime.embedder)
    runtime.attach_gallery(gallery)
    try:
        Enroller(runtime.analyzer, gallery, config.gallery).enroll(
            "obama", "Barack Obama", [("obama.jpg", read_image(shared_data / "faces/fr_obama/obama.jpg"))]
        )
        old_version = gallery.model_version
        target = target_for(config, "mobilefacenet", None)
        candidate = dataclasses.replace(target, spec=dataclasses.replace(target.spec, version="2.0.0-test"))
        # The candidate's file is the registry's (same sha256), under another version name.
        runtime.open_candidate(candidate)
        report = runtime.validate_candidate(
            "mobilefacenet", None, latency_factor=100.0, latency_floor_ms=1000.0
        )
        assert report["latency_ms"] > 0 and "active_latency_ms" in report
        assert runtime.begin_reembedding("mobilefacenet") == 1
        assert runtime.reembed_step("mobilefacenet") == (1, 1)
        steps: List[str] = []
        commits: List[str] = []
        version = runtime.switch_to_candidate(
            "mobilefacenet", lambda: commits.append("pointer"), steps.append
        )
        assert version == "mobilefacenet@2.0.0-test" and steps == ["templates_written", "committed"]
        assert commits == ["pointer"] and gallery.model_version == version and len(gallery) == 1
        assert runtime.model_versions["embedder"] == version
        assert runtime.self_test("mobilefacenet") is None
        runtime.undo_switch("mobilefacenet", lambda: commits.append("restored"))
        assert gallery.model_version == old_version and len(gallery) == 1
        assert runtime.model_versions["embedder"] == old_version
        with pytest.raises(RuntimeJobError, match="no switch"):
            runtime.undo_switch("mobilefacenet", lambda: None)
    finally:
        gallery.close()


def test_a_candidate_that_misses_its_latency_budget_is_refused(runtime: ModelRuntime) -> None:
    target = target_for(runtime.config, "mtcnn-onet", None)
    runtime.open_candidate(target)
    with pytest.raises(ValidationError, match="over the budget"):
        runtime.validate_candidate("mtcnn-onet", None, latency_factor=0.0, latency_floor_ms=-1e9)
    runtime.discard_candidate("mtcnn-onet")
    with pytest.raises(RuntimeJobError, match="no candidate"):
        runtime.validate_candidate("mtcnn-onet", None, 3.0, 20.0)


def test_reference_outputs_that_do_not_match_refuse_the_candidate(runtime: ModelRuntime) -> None:
    class Mismatch:
        ok = False
        problems = ("output 'fc1' differs by 0.5",)

    runtime.open_candidate(target_for(runtime.config, "mobilefacenet", None))
    with pytest.raises(ValidationError, match="reference outputs are not reproduced: output 'fc1'"):
        runtime.validate_candidate("mobilefacenet", lambda backend: Mismatch(), 3.0, 20.0)


def test_frames_read_the_analyzer_of_the_moment(runtime: ModelRuntime, shared_data: Path) -> None:
    """A switch changes what the next frame uses; the old analyzer object is left alone."""
    before = runtime.analyzer
    image = read_image(shared_data / "faces/fr_obama/obama.jpg")
    runtime.open_candidate(target_for(runtime.config, "mtcnn-onet", None))
    runtime.switch_to_candidate("mtcnn-onet", lambda: None, lambda step: None)
    after = runtime.analyzer
    assert after is not before
    faces = after.detect(image, still=True)
    assert len(faces) >= 1 and np.isfinite(faces.boxes).all()
    assert runtime.finish_switch("mtcnn-onet") == 0  # no gallery attached: nothing to drop


# -- a new embedder must still tell people apart (issue 12, finding 3) ------------------------------


def _faces(identities: int, per_identity: int, dim: int = 16, spread: float = 0.1, seed: int = 0) -> tuple:
    """Unit vectors around one random centre per identity, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim))
    rows, labels = [], []
    for identity, centre in enumerate(centres):
        for _ in range(per_identity):
            rows.append(centre + spread * rng.normal(size=dim))
            labels.append(f"id{identity}")
    vectors = np.asarray(rows, np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels


def test_discrimination_refuses_a_collapsed_a_promiscuous_and_a_confused_embedder() -> None:
    from appliance.runtime.runtime import _discrimination_problem, discrimination

    good, labels = _faces(5, 3)
    live = discrimination(good, labels, 0.5)
    assert live["rank1"] == 1.0 and live["impostor_above"] == 0.0 and live["mean_cosine"] < 0.5
    assert _discrimination_problem({**discrimination(good, labels, 0.5), "live": live}) is None

    collapsed = np.tile(good[:1], (len(good), 1))  # every face → one vector
    report = {**discrimination(collapsed, labels, 0.5), "live": live}
    assert "collapsed" in str(_discrimination_problem(report))

    squeezed = good * 0.3 + np.ones_like(good) * 0.7 / np.sqrt(good.shape[1])  # all faces drawn together
    squeezed /= np.linalg.norm(squeezed, axis=1, keepdims=True)
    report = {**discrimination(squeezed, labels, 0.5), "live": live}
    problem = str(_discrimination_problem(report))
    assert "grant strangers" in problem or "collapsed" in problem

    shuffled = good[np.random.default_rng(1).permutation(len(good))]  # right spread, wrong people
    # (a threshold no pair reaches isolates the identification figure)
    report = {**discrimination(shuffled, labels, 1.01), "live": discrimination(good, labels, 1.01)}
    assert "confuses enrolled people" in str(_discrimination_problem(report))


def test_the_health_check_sees_every_face_scored_alike() -> None:
    from appliance.updates.swap import collapsed_scores

    assert collapsed_scores([1.0, 1.0, 0.99995, 1.0, 1.0, 1.0]) is not None
    assert collapsed_scores([0.61, 0.58, 0.64, 0.6, 0.59]) is None  # a real face at the door varies
    assert collapsed_scores([1.0, 1.0]) is None  # too few to tell


def test_a_reader_sees_an_engine_in_place_and_marked_ready_together(runtime: ModelRuntime) -> None:
    """The state document's ``engines`` and ``precisions`` come from one moment: a reader during the
    switch waits for the model to be marked ready, rather than seeing the engine's precision on a
    model still marked as building. The "engine" is the model on the CPU back-end with an engine's
    manifest (no TensorRT here)."""
    target = target_for(runtime.config, "mtcnn-onet", None)
    engine = runtime.loader.open_cpu(target)
    engine.manifest = SimpleNamespace(precision="fp16", precision_reason="no fast INT8 here")  # type: ignore[attr-defined]
    states = {"mtcnn-onet": "building"}
    switching = threading.Event()
    seen: List[Any] = []

    def in_place() -> None:
        switching.set()
        # Holds the switch open a moment for the reader below; a window, not a figure expected.
        threading.Event().wait(0.3)
        states["mtcnn-onet"] = "ready"

    def read() -> None:
        switching.wait(WAIT_S)
        seen.append(runtime.engine_report(lambda live: {**states, "live onet": live["mtcnn-onet"]}))

    reader = threading.Thread(target=read, name="state-report")
    reader.start()
    assert runtime.adopt_engine(target, lambda built: engine, in_place)
    reader.join(WAIT_S)
    assert seen == [
        (
            {"mtcnn-onet": "ready", "live onet": model_of(target.spec)},  # the states of what serves
            {"mtcnn-onet": {"precision": "fp16", "reason": "no fast INT8 here"}},
        )
    ]
    assert runtime.analyzer is not None and runtime.backend_keys()["mtcnn-onet"] == "cpu"
