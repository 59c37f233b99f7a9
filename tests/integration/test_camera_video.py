"""The camera on the real H.264 sample videos of ../shared/data/video, end to end through the thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest

from appliance.camera import CameraThread, FileSource, Frame
from appliance.config import CameraConfig


def _decoded_directly(path: Path) -> List[np.ndarray]:
    """Every frame of ``path`` as OpenCV's FFmpeg back-end decodes it, without the appliance."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            frames.append(image)
    finally:
        capture.release()
    return frames


@pytest.fixture(scope="module")
def videos(shared_data: Path) -> Path:
    folder = shared_data / "video"
    if not (folder / "faceapi_test_video.mp4").is_file():
        pytest.fail(f"{folder}/faceapi_test_video.mp4 is missing from ../shared", pytrace=False)
    return folder


@pytest.mark.parametrize(
    ("name", "count", "shape"),
    [("faceapi_test_video.mp4", 5, (460, 820, 3)), ("fr_short_hamilton_clip.mp4", 275, (360, 640, 3))],
)
def test_a_real_h264_file_end_to_end(videos: Path, name: str, count: int, shape: tuple) -> None:
    path = videos / name
    reference = _decoded_directly(path)
    assert len(reference) == count, "this OpenCV decodes the H.264 sample differently than expected"
    stop_event = threading.Event()
    camera = CameraThread(CameraConfig(id="door", source=str(path)), stop_event)
    assert isinstance(camera.source, FileSource)
    camera.start()
    frames: List[Frame] = []
    try:
        while True:
            frame = camera.get(timeout=10.0)
            if frame is None:
                break
            frames.append(frame)
        assert camera.ended.is_set()
    finally:
        assert camera.stop(timeout=5.0)
    assert [f.index for f in frames] == list(range(count))
    for frame, expected in zip(frames, reference):
        assert frame.image.shape == shape and frame.image.dtype == np.uint8
        np.testing.assert_array_equal(frame.image, expected)
    status = camera.status()
    assert (status["state"], status["frames"], status["dropped"]) == ("ended", count, 0)
