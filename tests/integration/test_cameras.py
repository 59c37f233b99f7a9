"""Two cameras on one appliance: shared models batched across cameras, decisions and events per camera.

In process: the pipeline on the real models, with every back-end call counted. As a subprocess: the
daemon with two video cameras against a real Mosquitto, one camera ending or lost while the other
goes on.
"""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.decisions import DecisionSettings
from appliance.enrollment import Enroller
from appliance.gallery.gallery import Gallery
from appliance.metrics import Latencies, prometheus_text
from appliance.pipeline import CameraFrame, Outcome, Pipeline
from appliance.runtime import ModelRuntime
from appliance.vision.image import read_image
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import (
    ROOT,
    Daemon,
    daemon_config,
    event_documents,
    live_runtime,
    make_passage_video,
    passage_video,
    unique_events,
)

PERSON = "faces/fr_obama/obama2.jpg"
STRANGER = "faces/fr_kit_harington/john1.jpeg"
#: A bound on the turns a decision may take (the default vote needs a handful), not a time.
MAX_TURNS = 40


class Calls:
    """Every ``run`` of the wrapped back-ends: (model, batch size)."""

    def __init__(self) -> None:
        self.runs: List[Tuple[str, int]] = []

    def wrap(self, name: str, backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        run: Callable[..., Dict[str, np.ndarray]] = backend.run

        def counted(feeds: Any) -> Dict[str, np.ndarray]:
            batch = len(feeds) if isinstance(feeds, np.ndarray) else len(next(iter(feeds.values())))
            self.runs.append((name, batch))
            return run(feeds)

        monkeypatch.setattr(backend, "run", counted)

    def of(self, name: str) -> List[int]:
        return [batch for model, batch in self.runs if model == name]


@pytest.fixture
def models(tmp_path: Path, shared_models: Path, shared_data: Path) -> Iterator[Tuple[ModelRuntime, Gallery]]:
    """The real models with liveness on this test's thread (the owner), and Obama in the gallery."""
    config = validate_config({"models": {"dir": str(shared_models)}, "storage": {"dir": str(tmp_path)}})
    with live_runtime(config) as runtime, Gallery.open(config, *runtime.embedder) as gallery:
        Enroller(runtime.analyzer, gallery, config.gallery).enroll(
            "obama", "Barack Obama", [("obama.jpg", read_image(shared_data / "faces/fr_obama/obama.jpg"))]
        )
        yield runtime, gallery


def test_one_embedding_and_one_liveness_call_per_turn_for_both_cameras(
    models: Tuple[ModelRuntime, Gallery], shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, gallery = models
    analyzer = runtime.analyzer
    assert analyzer.liveness is not None
    calls = Calls()
    calls.wrap("embedder", analyzer.embedder.backend, monkeypatch)
    for index, backend in enumerate(analyzer.liveness.backends):
        calls.wrap(f"liveness{index}", backend, monkeypatch)
    settings = DecisionSettings.from_config(validate_config({}))
    pipeline = Pipeline(runtime, gallery, settings, Latencies(), camera_ids=["entry", "exit"])
    person, stranger = read_image(shared_data / PERSON), read_image(shared_data / STRANGER)
    assert not pipeline.faces_in_view

    outcomes: List[Outcome] = []
    turns_embedding = 0
    for turn in range(MAX_TURNS):
        calls.runs.clear()
        wanted = sum(
            lane.engine.wants_embedding(track, float(turn))
            for lane in pipeline.lanes.values()
            for track in lane.engine.track_ids
        )
        outcomes += pipeline.process_frames(
            [CameraFrame("entry", person, float(turn)), CameraFrame("exit", stranger, float(turn))]
        )
        if turn == 0 or wanted == 2:  # both faces still to identify: one call holds both
            assert calls.of("embedder") == [2], calls.runs
            for index in range(len(analyzer.liveness.backends)):
                assert calls.of(f"liveness{index}") == [2], calls.runs
        turns_embedding += bool(calls.of("embedder"))
        assert len(calls.of("embedder")) <= 1, calls.runs  # never one call per camera
        if {o.camera_id for o in outcomes} == {"entry", "exit"}:
            break
    by_camera = {o.camera_id: o.decision for o in outcomes}
    assert by_camera["entry"].decision == "granted" and by_camera["entry"].identity_id == "obama"
    assert by_camera["exit"].decision == "unknown" and by_camera["exit"].identity_id is None
    assert turns_embedding >= 2

    # Each camera has its own tracks: ending one camera's ends only those. Faces are in view (what a
    # fleet catch-up watches) while either camera tracks one.
    assert pipeline.lanes["entry"].tracker.active_ids and pipeline.lanes["exit"].tracker.active_ids
    assert pipeline.faces_in_view
    pipeline.finish_camera("exit", float(MAX_TURNS))
    assert pipeline.lanes["entry"].tracker.active_ids and not pipeline.lanes["exit"].tracker.active_ids
    assert pipeline.faces_in_view
    pipeline.finish_camera("entry", float(MAX_TURNS))
    assert not pipeline.faces_in_view
    with pytest.raises(ValueError, match="no camera 'lobby'"):
        pipeline.process_frames([CameraFrame("lobby", person, 0.0)])


def test_liveness_of_several_frames_in_one_call_scores_as_frame_by_frame(
    models: Tuple[ModelRuntime, Gallery], shared_data: Path
) -> None:
    runtime, _ = models
    analyzer = runtime.analyzer
    assert analyzer.liveness is not None
    images = [read_image(shared_data / PERSON), read_image(shared_data / STRANGER)]
    boxes = [analyzer.detect(image).boxes for image in images]
    together = analyzer.liveness.check_many(list(zip(images, boxes)))
    apart = [analyzer.liveness.check(image, found) for image, found in zip(images, boxes)]
    assert len(together.scores) == sum(len(found) for found in boxes) >= 2
    np.testing.assert_allclose(together.scores, np.concatenate([a.scores for a in apart]), atol=1e-5)
    assert analyzer.liveness.check_many([]).scores.shape == (0,)


def _events_by_camera(messages: List[Any]) -> Dict[str, List[Dict[str, Any]]]:
    events: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for event in unique_events(event_documents(messages)):
        events[event["camera_id"]].append(event)
    return events


def test_two_cameras_each_decide_their_passages_with_their_id(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    entry = passage_video(tmp_path, shared_data, "entry.avi")  # Obama, then a stranger
    exit_ = make_passage_video(tmp_path / "exit.avi", [(None, 3), (shared_data / PERSON, 25), (None, 12)])
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        None,
        cameras=[("entry", entry, "stop"), ("exit", exit_, "stop")],
    )
    daemon = Daemon(config)
    try:
        assert daemon.wait(timeout=180) == 0, daemon.text  # it finishes once both videos ended
    finally:
        daemon.close()
    events = _events_by_camera(recorder.messages)
    assert set(events) == {"entry", "exit"}, daemon.text
    assert [e["decision"] for e in events["entry"]] == ["granted", "unknown"], daemon.text
    assert [e["decision"] for e in events["exit"]] == ["granted"], daemon.text  # one passage, one event
    for event in (events["entry"][0], events["exit"][0]):
        assert event["identity"] == {"id": "obama", "name": "Barack Obama"}
    assert sum("the video ended; the other cameras go on" in line for line in daemon.log) == 1
    assert sum("every video ended; finishing" in line for line in daemon.log) == 1

    state = json.loads(recorder.on(f"{ROOT}/state")[-1].payload)
    cameras = {camera["id"]: camera for camera in state["cameras"]}
    assert list(cameras) == ["entry", "exit"]
    assert cameras["entry"]["frames_processed"] == 3 + 25 + 12 + 25 + 12
    assert cameras["exit"]["frames_processed"] == 3 + 25 + 12
    assert state["frames"] == cameras["entry"]["frames_processed"] + cameras["exit"]["frames_processed"]
    assert cameras["entry"]["events"] == 2 and cameras["exit"]["events"] == 1
    assert all(camera["state"] == "ended" and camera["dropped"] == 0 for camera in cameras.values())
    assert state["camera"]["id"] == "entry"  # the single-camera key: the first camera
    metrics = prometheus_text(state)
    assert 'face_appliance_cameras_frames_processed{camera="exit"} 40' in metrics.splitlines()


def test_a_lost_camera_does_not_stop_the_other(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    door = passage_video(tmp_path, shared_data, "door.avi")
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        None,
        cameras=[("broken", tmp_path / "absent.avi", "stop"), ("door", door, "stop")],
    )
    daemon = Daemon(config)
    try:
        daemon.wait_log("camera door: the video ended; the other cameras go on", timeout=180)

        def settled(messages: List[Any]) -> List[Dict[str, Any]]:
            states = [json.loads(m.payload) for m in messages if m.topic == f"{ROOT}/state"]
            return [
                s
                for s in states
                if s["cameras"]  # none before the cameras start
                and s["cameras"][1]["state"] == "ended"
                and s["cameras"][1]["events"] == 2
            ]

        recorder.wait_for(settled, 60, "a state with the door camera ended")
        state = settled(recorder.messages)[0]
        assert daemon.process.poll() is None  # the lost camera may still come: the daemon runs on
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, daemon.text
    finally:
        daemon.close()
    events = _events_by_camera(recorder.messages)
    assert list(events) == ["door"], daemon.text
    assert [e["decision"] for e in events["door"]] == ["granted", "unknown"]
    broken = state["cameras"][0]
    assert broken["id"] == "broken" and broken["state"] == "lost" and broken["frames_processed"] == 0
    assert "does not exist" in broken["last_error"]
    assert any(text.startswith("camera broken: ") for text in state["degraded"]), state["degraded"]
    warnings = [line for line in daemon.log if "WARNING" in line and "Camera broken" in line]
    assert len(warnings) == 1, warnings  # the loss logged once, the retries not
