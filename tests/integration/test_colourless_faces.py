"""Faces without colour (an infrared / night-mode camera): MiniFASNet refuses nearly every live face in
greyscale, so the appliance says so instead of leaving the installer to read "denied: liveness" for
everyone. Real models and images; the grey frames are the colour photos converted and JPEG-compressed,
as an infrared camera's stream arrives."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, List, Tuple

import cv2
import numpy as np
import pytest

from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.decisions import DecisionSettings
from appliance.gallery.gallery import Gallery
from appliance.metrics import Latencies
from appliance.pipeline import CameraFrame, Pipeline
from appliance.runtime import ModelRuntime
from appliance.state_report import StateReporter
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from appliance.vision.liveness import colourless
from tests.support import live_runtime

GREY_ORIGINALS = "faces/faceapi_"  # face-api.js's 150×150 crops are greyscale already


def _grey_jpeg(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    ok, data = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def test_colour_faces_have_colour_and_grey_ones_do_not(analyzer: FaceAnalyzer, shared_data: Path) -> None:
    with open(shared_data / "faces_identities.csv", newline="") as stream:
        paths = [row["path"] for row in csv.DictReader(stream)]
    judged: List[Tuple[str, bool, bool]] = []
    for path in paths:
        image = read_image(shared_data / path)
        faces = analyzer.detect(image, still=True)
        if not len(faces):
            continue
        box = faces.boxes[[faces.largest()]]
        judged.append((path, colourless(image, box), colourless(_grey_jpeg(image), box)))
    assert len(judged) >= 95
    # Every photo's face judged as it is: the colour ones have colour, the grey originals do not ...
    assert [path for path, as_is, _ in judged if as_is != path.startswith(GREY_ORIGINALS)] == []
    # ... and every one of them turned grey (and JPEG-compressed) has none.
    assert all(grey for _, _, grey in judged)
    assert colourless(read_image(shared_data / paths[0]), np.zeros((0, 4))) is False


@pytest.fixture
def live_models(tmp_path: Path, shared_models: Path) -> Iterator[Tuple[ModelRuntime, ApplianceConfig]]:
    config = validate_config(
        {
            "models": {"dir": str(shared_models)},
            "storage": {"dir": str(tmp_path / "state")},
            "liveness": {"enabled": True},
        }
    )
    with live_runtime(config) as runtime:
        yield runtime, config


def test_the_pipeline_and_the_state_say_when_a_cameras_faces_lose_their_colour(
    live_models: Tuple[ModelRuntime, ApplianceConfig], shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime, config = live_models
    colour = read_image(shared_data / "faces/fr_obama/obama-480p.jpg")
    grey = _grey_jpeg(colour)
    with Gallery.open(config, *runtime.embedder) as gallery:
        pipeline = Pipeline(
            runtime, gallery, DecisionSettings.from_config(config), Latencies(), camera_ids=["door"]
        )
        lane = pipeline.lanes["door"]
        reporter = StateReporter(
            SimpleNamespace(pipeline=pipeline),
            SimpleNamespace(document=lambda: {}),  # type: ignore[arg-type]
        )
        assert lane.colourless is None and reporter._colourless("door") is None  # nothing checked yet
        pipeline.process_frames([CameraFrame("door", colour, 0.0)])
        assert lane.colourless is False

        with caplog.at_level(logging.INFO, logger="appliance.pipeline"):
            for turn in range(1, 4):  # said once, not per frame
                pipeline.process_frames([CameraFrame("door", grey, float(turn))])
            assert lane.colourless is True and reporter._colourless("door") is True
            warnings = [
                r for r in caplog.records if r.levelno == logging.WARNING and "no colour" in r.message
            ]
            assert len(warnings) == 1 and "camera door" in warnings[0].message
            pipeline.process_frames([CameraFrame("door", colour, 4.0)])
            assert lane.colourless is False
            assert any("colour again" in r.message for r in caplog.records)
        pipeline.finish(5.0)
