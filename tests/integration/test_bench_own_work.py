"""``bench.own_work``: the pipeline's own work split by step, on the real models and a real photo, with
the networks running and replayed from a recording.

Time is attributed, not asserted: a known delay is put into one step (or into a model call) and the
test checks which step it lands in. The delays are lower bounds, so a slow machine cannot fail them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.runtime.loading import load_analyzer
from appliance.vision import analyzer as analyzer_module
from appliance.vision import mtcnn as mtcnn_module
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from bench.own_work import STEPS, Replay, ReplayError, own_work_by_step
from bench.vision import ModelClock

DELAY_S = 0.003
FRAMES = 3


@pytest.fixture
def frame(shared_data: Path) -> np.ndarray:
    return read_image(shared_data / "multi_face" / "fr_two_people.jpg")


@pytest.fixture
def clock(analyzer: FaceAnalyzer) -> Any:
    installed = ModelClock(analyzer._backends)
    yield installed
    installed.remove()


def _originals(analyzer: FaceAnalyzer) -> Dict[str, Any]:
    return {
        "pyramid": mtcnn_module.pyramid,
        "nms": mtcnn_module.nms,
        "nms_per_group": mtcnn_module.nms_per_group,
        "align_faces": analyzer_module.align_faces,
        "detector": dict(vars(analyzer.detector)),
        "embedder": dict(vars(analyzer.embedder)),
    }


def test_every_step_is_reported_and_everything_is_put_back(
    analyzer: FaceAnalyzer, clock: Any, frame: np.ndarray
) -> None:
    before = _originals(analyzer)
    passes = own_work_by_step(analyzer, clock, [frame], FRAMES)
    assert passes is not None and set(passes) == {"with_networks", "networks_replayed"}
    for steps in passes.values():
        assert set(steps) == {*STEPS, "total"}
        for name in ("pyramid", "pnet_inputs", "patches", "alignment"):
            assert steps[name] > 0, name  # two faces: every step ran
        # The steps are disjoint parts of the own work: counting one twice would push "other" below
        # zero (by more than the rounding of nine figures to 3 decimals).
        assert steps["other"] >= -0.005
    assert _originals(analyzer) == before
    assert len(analyzer.analyze(frame).faces) == 2
    clock.reset()
    analyzer.analyze(frame)
    assert clock.calls[analyzer.detector.pnet.spec.name] > 0  # type: ignore[attr-defined]  # timed again


def test_a_delay_in_the_pyramid_is_the_pyramids(
    analyzer: FaceAnalyzer, clock: Any, frame: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyramid = mtcnn_module.pyramid

    def slow(*args: Any) -> Any:
        time.sleep(DELAY_S)
        return pyramid(*args)

    monkeypatch.setattr(mtcnn_module, "pyramid", slow)
    passes = own_work_by_step(analyzer, clock, [frame], FRAMES)
    assert passes is not None
    assert passes["with_networks"]["pyramid"] >= DELAY_S * 1000
    assert passes["networks_replayed"]["pyramid"] >= DELAY_S * 1000
    assert mtcnn_module.pyramid is slow  # put back as it was found


def test_a_delay_inside_p_nets_run_is_model_time_not_the_candidates(
    analyzer: FaceAnalyzer, frame: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    pnet = analyzer.detector.pnet  # type: ignore[attr-defined]
    run = pnet.run
    slow_calls = 0

    def slow(feeds: Any) -> Any:
        nonlocal slow_calls
        slow_calls += 1
        time.sleep(DELAY_S)
        return run(feeds)

    # Calls of P-Net's run made while the replay answers the back-ends: there must be none.
    during_replay = []
    replaying = Replay.replaying

    @contextmanager
    def counted(self: Replay) -> Iterator[Any]:
        before = slow_calls
        with replaying(self) as load:
            yield load
        during_replay.append(slow_calls - before)

    monkeypatch.setattr(Replay, "replaying", counted)
    pnet.run = slow
    try:
        clock = ModelClock(analyzer._backends)  # wraps the slow run: the delay is inside a model call
        clock.reset()
        analyzer.analyze(frame)
        pnet_ms = clock.seconds[pnet.spec.name] * 1000
        passes = own_work_by_step(analyzer, clock, [frame], FRAMES)
    finally:
        clock.remove()  # drops the instance's run, the slow one with it
    assert "run" not in vars(pnet)
    assert passes is not None
    levels = len(analyzer.detector.scales(*frame.shape[:2]))  # type: ignore[attr-defined]
    assert pnet_ms >= DELAY_S * 1000 * levels
    # The frame's delays (one per level) went to the model, not to the step around the calls: had
    # they gone to the step, it would hold all of them, however fast the machine.
    assert passes["with_networks"]["pnet_candidates"] < DELAY_S * 1000 * levels
    assert during_replay == [0], "replayed, P-Net's run was called"


def test_the_replay_hands_back_the_recorded_outputs_and_refuses_to_diverge(
    analyzer: FaceAnalyzer, clock: Any, frame: np.ndarray
) -> None:
    expected = analyzer.analyze(frame)
    replay = Replay(clock.backends)
    replay.record(analyzer, [frame])
    with replay.replaying() as load:
        load(0)
        replayed = analyzer.analyze(frame)
        np.testing.assert_array_equal(replayed.faces.boxes, expected.faces.boxes)
        np.testing.assert_array_equal(replayed.embeddings, expected.embeddings)
        with pytest.raises(ReplayError, match="no further call"):
            analyzer.analyze(frame)  # the tape of that frame is used up
        load(0)
        with pytest.raises(ReplayError, match=r"mtcnn-pnet was called with \(1, 60, 40, 3\)"):
            analyzer.detector.pnet.run(np.zeros((1, 60, 40, 3), np.float32))  # type: ignore[attr-defined]
    assert all(vars(backend).get("run") is not None for backend in clock.backends)  # the clock's again


def test_a_detector_other_than_mtcnn_has_no_steps(shared_models: Path, frame: np.ndarray) -> None:
    config = validate_config({"models": {"dir": str(shared_models)}, "detector": {"type": "yunet"}})
    with load_analyzer(config, liveness=False) as yunet:
        clock = ModelClock(yunet._backends)
        try:
            assert own_work_by_step(yunet, clock, [frame], 1) is None
        finally:
            clock.remove()
