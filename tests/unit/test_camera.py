"""Camera sources and the camera thread, on small videos and image folders made here.

The camera *device* is the only hardware edge that is faked (:class:`FakeLiveCamera`, a live source made
of arrays, standing in for a USB or RTSP camera); files, folders, OpenCV's decoders, the thread, its
back-off and logging are all real.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import cv2
import numpy as np
import pytest

from appliance.camera import (
    JETSON_CSI_PIPELINE,
    CameraError,
    CameraSource,
    CameraThread,
    FileSource,
    FolderSource,
    Frame,
    GStreamerSource,
    RtspSource,
    V4l2Source,
    create_source,
    guess_source_type,
    jetson_csi_pipeline,
    jetson_rtsp_pipeline,
    mask_credentials,
    open_source,
    opencv_has_gstreamer,
)
from appliance.config import CameraConfig
from appliance.errors import ApplianceError

SIZE = (64, 48)  # (width, height) of the test frames
STEP = 20  # grey-level step between consecutive test frames: frame i is filled with 10 + STEP * i


def level_of(image: np.ndarray) -> int:
    """The frame number encoded by :func:`write_video` / :func:`write_folder` (robust to JPEG noise)."""
    return round((float(image.mean()) - 10.0) / STEP)


def write_video(path: Path, frames: int) -> Path:
    """An MJPG .avi of ``frames`` 64×48 grey frames, frame i filled with ``10 + 20 i``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, SIZE)
    if not writer.isOpened():
        pytest.fail("cv2.VideoWriter cannot write MJPG .avi here", pytrace=False)
    for i in range(frames):
        writer.write(np.full((SIZE[1], SIZE[0], 3), 10 + STEP * i, np.uint8))
    writer.release()
    return path


def write_folder(folder: Path, frames: int) -> Path:
    """``frame_000.png`` … PNGs like :func:`write_video`'s frames, frame 1 in grey scale (one channel)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        image = np.full((SIZE[1], SIZE[0], 3), 10 + STEP * i, np.uint8)
        if i == 1:
            image = image[:, :, 0]
        cv2.imwrite(str(folder / f"frame_{i:03d}.png"), image)
    return folder


def camera_config(source: object, **overrides: object) -> CameraConfig:
    """A ``[camera]`` section with short reconnect delays (the smallest the configuration allows)."""
    values = {"id": "cam-test", "source": str(source), "reconnect_min_s": 0.1, "reconnect_max_s": 1.0}
    values.update(overrides)
    return CameraConfig(**values)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` (a hang guard, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def stop_event() -> threading.Event:
    """The daemon's stop event."""
    return threading.Event()


@pytest.fixture
def cameras(stop_event: threading.Event) -> Iterator[List[CameraThread]]:
    """Camera threads made by a test, stopped (and checked stopped) at its end."""
    made: List[CameraThread] = []
    yield made
    for camera in made:
        assert camera.stop(timeout=5.0), f"{camera.name} did not stop"


def take_all(camera: CameraThread, limit: int = 1000) -> List[Frame]:
    """Every frame until the camera ended (files and folders with ``at_end = stop``)."""
    frames: List[Frame] = []
    while len(frames) < limit:
        frame = camera.get(timeout=5.0)
        if frame is None:
            break
        frames.append(frame)
    return frames


class FakeLiveCamera(CameraSource):
    """A live camera made of arrays: the hardware edge faked in these tests.

    Frame n is an ``(8, 8, 3)`` uint8 image filled with ``n % 256``. ``fail_at_read``: the read that
    raises (the camera unplugged mid-way); after it, ``outage_opens`` opens fail before it is back.
    """

    type_key = "fake"
    live = True

    def __init__(
        self, period_s: float = 0.001, fail_at_read: Optional[int] = None, outage_opens: int = 0
    ) -> None:
        self.period_s = period_s
        self.fail_at_read = fail_at_read
        self.outage_opens = outage_opens
        self.failing_opens = 0
        self.reads = 0
        self.produced = 0
        self.opens = 0
        self.is_open = False
        self.closed = 0

    def open(self) -> None:
        self.opens += 1
        if self.failing_opens > 0:
            self.failing_opens -= 1
            raise CameraError("fake camera: device not found")
        self.is_open = True

    def read(self) -> Optional[np.ndarray]:
        if not self.is_open:
            raise CameraError("fake camera is not open")
        self.reads += 1
        if self.reads == self.fail_at_read:
            self.failing_opens = self.outage_opens
            raise CameraError("fake camera: no frame (unplugged)")
        time.sleep(self.period_s)
        image = np.full((8, 8, 3), self.produced % 256, np.uint8)
        self.produced += 1
        return image

    def close(self) -> None:
        self.is_open = False
        self.closed += 1

    def describe(self) -> str:
        return "fake camera"


# -- choosing sources ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("/dev/video0", "v4l2"),
        ("/dev/v4l/by-id/usb-Logitech_C920-video-index0", "v4l2"),
        ("0", "v4l2"),
        ("12", "v4l2"),
        ("rtsp://10.0.0.5:554/stream1", "rtsp"),
        ("RTSPS://user:pw@camera.local/live", "rtsp"),
        ("videotestsrc ! videoconvert ! video/x-raw,format=BGR ! appsink", "gstreamer"),
        ("/var/lib/face-appliance/door.mp4", "file"),
        ("clip.avi", "file"),
        ("video ! file", "file"),  # a '!' alone does not make a pipeline
    ],
)
def test_auto_type_guesses_from_the_form_of_the_source(source: str, expected: str) -> None:
    assert guess_source_type(source) == expected


def test_auto_type_takes_an_existing_directory_as_a_folder(tmp_path: Path) -> None:
    assert guess_source_type(str(tmp_path)) == "folder"
    assert guess_source_type(str(tmp_path / "not-yet-there")) == "file"


@pytest.mark.parametrize(
    ("source", "kind", "cls"),
    [
        ("clip.mp4", "auto", FileSource),
        ("/dev/video2", "auto", V4l2Source),
        ("3", "auto", V4l2Source),
        ("rtsp://cam/stream", "auto", RtspSource),
        ("videotestsrc ! appsink", "auto", GStreamerSource),
        ("/dev/video0", "file", FileSource),  # an explicit type wins over the guess
        ("images", "folder", FolderSource),
    ],
)
def test_create_source_picks_the_class_of_the_type(source: str, kind: str, cls: type) -> None:
    created = create_source(camera_config(source, type=kind))
    assert type(created) is cls
    assert created.live is (cls not in (FileSource, FolderSource))


def test_v4l2_source_takes_size_and_rate_from_the_config() -> None:
    source = create_source(camera_config("1", width=1280, height=720, fps=30.0))
    assert isinstance(source, V4l2Source)
    assert (source.device, source.width, source.height, source.fps) == (1, 1280, 720, 30.0)
    assert source.describe() == "V4L2 device 1"


def test_camera_error_is_an_appliance_error() -> None:
    assert issubclass(CameraError, ApplianceError)


# -- credentials --------------------------------------------------------------------------------------


def test_rtsp_credentials_never_show_in_describe() -> None:
    source = RtspSource("rtsp://admin:s3cret@10.0.0.5:554/Streaming/Channels/101?transport=tcp")
    text = source.describe()
    assert "s3cret" not in text and "admin" not in text
    assert text == "RTSP stream rtsp://***@10.0.0.5:554/Streaming/Channels/101?transport=tcp"
    assert "s3cret" not in repr(source)
    assert RtspSource("rtsp://10.0.0.5/live").describe() == "RTSP stream rtsp://10.0.0.5/live"


def test_mask_credentials_in_urls_parameters_and_pipelines() -> None:
    assert mask_credentials("rtsps://user@cam/x") == "rtsps://***@cam/x"
    assert mask_credentials("rtsp://cam/x?user=admin&password=pw1") == "rtsp://cam/x?user=***&password=***"
    pipeline = 'rtspsrc location="rtsp://a:b@cam/x" user-pw=hunter2 ! rtph264depay ! appsink'
    masked = GStreamerSource(pipeline).describe()
    assert "a:b" not in masked and "hunter2" not in masked
    assert "rtsp://***@cam/x" in masked and "user-pw=***" in masked


# -- pipelines for the Jetson -------------------------------------------------------------------------


def test_jetson_csi_pipeline() -> None:
    text = jetson_csi_pipeline(1280, 720, 30)
    assert text == (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
        "nvvidconv flip-method=0 ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=1 max-buffers=1"
    )
    assert text == JETSON_CSI_PIPELINE.format(sensor_id=0, width=1280, height=720, framerate="30/1", flip=0)
    assert guess_source_type(text) == "gstreamer"
    other = jetson_csi_pipeline(1920, 1080, 29.97, sensor_id=1, flip=2)
    assert "sensor-id=1" in other and "framerate=2997/100" in other and "flip-method=2" in other


@pytest.mark.parametrize(
    "arguments",
    [
        {"width": 0, "height": 720, "fps": 30},
        {"width": 1280, "height": 720, "fps": 0},
        {"width": 1280, "height": 720, "fps": 30, "flip": 8},
        {"width": 1280, "height": 720, "fps": 30, "sensor_id": -1},
    ],
)
def test_jetson_csi_pipeline_refuses_bad_values(arguments: dict) -> None:
    with pytest.raises(ValueError):
        jetson_csi_pipeline(**arguments)


def test_jetson_rtsp_pipeline_decodes_in_hardware() -> None:
    text = jetson_rtsp_pipeline("rtsp://u:p@cam:554/h264")
    assert text.startswith(
        'rtspsrc location="rtsp://u:p@cam:554/h264" latency=200 ! rtph264depay ! h264parse'
    )
    assert "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx" in text
    assert text.endswith("video/x-raw,format=BGR ! appsink drop=1 max-buffers=1")


# -- GStreamer ----------------------------------------------------------------------------------------


def test_gstreamer_line_of_the_build_information() -> None:
    assert opencv_has_gstreamer("  Video I/O:\n    FFMPEG:   YES\n    GStreamer:   YES (1.16.3)\n")
    assert not opencv_has_gstreamer("  Video I/O:\n    GStreamer:                   NO\n")
    assert not opencv_has_gstreamer("no such line")


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer (a Jetson's does)")
def test_gstreamer_is_refused_clearly_without_it(stop_event: threading.Event) -> None:
    pipeline = "videotestsrc ! videoconvert ! video/x-raw,format=BGR ! appsink"
    source = GStreamerSource(pipeline)
    with pytest.raises(CameraError, match=r"built without it .*'GStreamer: NO'.*JetPack"):
        source.check()
    with pytest.raises(CameraError, match="GStreamer"):
        source.open()
    with pytest.raises(CameraError, match="GStreamer"):
        open_source(camera_config(pipeline))
    camera = CameraThread(camera_config(pipeline), stop_event)
    with pytest.raises(CameraError, match="GStreamer"):
        camera.start()  # refused at start: retrying would never help
    assert not camera.is_alive()
    assert camera.stop()


# -- other sources' errors ----------------------------------------------------------------------------


def test_v4l2_device_that_does_not_exist() -> None:
    with pytest.raises(CameraError, match=r"V4L2 device not found: /dev/video97 does not exist"):
        V4l2Source("/dev/video97").open()
    with pytest.raises(CameraError, match=r"/dev/video98 does not exist"):
        V4l2Source(98).open()


def test_rtsp_camera_that_refuses_the_connection() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = RtspSource(f"rtsp://admin:pw@127.0.0.1:{port}/stream")
    with pytest.raises(CameraError, match="unreachable: connection refused") as caught:
        source.open()
    assert "pw@" not in str(caught.value)
    source.close()
    source.close()


def test_rtsp_url_without_a_host_is_refused_at_check() -> None:
    with pytest.raises(CameraError, match="not an RTSP URL"):
        RtspSource("rtsp:///stream").check()


# -- files --------------------------------------------------------------------------------------------


def test_file_source_reads_every_frame_then_none(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", 6)
    source = FileSource(path)
    assert not source.live
    assert source.describe() == f"video file {path}"
    with source:
        images = []
        while True:
            image = source.read()
            if image is None:
                break
            images.append(image)
        assert source.read() is None
    assert [level_of(image) for image in images] == list(range(6))
    for image in images:
        assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
        assert image.flags["C_CONTIGUOUS"]
    source.close()  # idempotent
    with pytest.raises(CameraError, match="not open"):
        source.read()


def test_file_source_reopens_from_the_start(tmp_path: Path) -> None:
    source = FileSource(write_video(tmp_path / "clip.avi", 3))
    source.open()
    first = source.read()
    source.read()
    source.open()
    again = source.read()
    source.close()
    assert first is not None and again is not None
    assert level_of(first) == level_of(again) == 0


def test_file_source_errors_say_why(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="does not exist"):
        FileSource(tmp_path / "missing.mp4").open()
    with pytest.raises(CameraError, match="is a directory"):
        FileSource(tmp_path).open()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(CameraError, match="not decodable"):
        FileSource(garbage).open()


# -- folders ------------------------------------------------------------------------------------------


def test_folder_skips_an_unreadable_image_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_folder(tmp_path / "images", 4)
    (folder / "frame_002.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / ".hidden.png").write_bytes(b"ignored")
    (folder / "sub").mkdir()
    caplog.set_level(logging.DEBUG, logger="appliance.camera")
    source = FolderSource(folder)
    for _ in range(2):  # two passes: the warning is not repeated
        source.open()
        images = []
        while True:
            image = source.read()
            if image is None:
                break
            images.append(image)
        assert [level_of(image) for image in images] == [0, 1, 3]
        assert all(image.shape == (SIZE[1], SIZE[0], 3) for image in images)  # frame 1 was grey
    source.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "frame_002.png" in warnings[0].getMessage()
    assert "unreadable image" in warnings[0].getMessage()


def test_folder_errors_say_why(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="does not exist"):
        FolderSource(tmp_path / "missing").open()
    with pytest.raises(CameraError, match="holds no files"):
        FolderSource(tmp_path).open()
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(CameraError, match="not a directory"):
        FolderSource(tmp_path / "file.png").open()


# -- the thread on files and folders ------------------------------------------------------------------


def test_file_delivers_every_frame_in_order_then_ends(
    tmp_path: Path, stop_event: threading.Event, cameras: List[CameraThread]
) -> None:
    path = write_video(tmp_path / "clip.avi", 8)
    camera = CameraThread(camera_config(path), stop_event)
    cameras.append(camera)
    assert camera.status()["state"] == "starting"
    camera.start()
    frames = []
    while len(frames) < 8:
        time.sleep(0.01)  # a consumer slower than the file: still nothing is dropped
        frame = camera.get(timeout=5.0)
        assert frame is not None
        frames.append(frame)
    assert camera.ended.wait(5.0)
    assert camera.get(timeout=0.1) is None
    assert [f.index for f in frames] == list(range(8))
    assert [level_of(f.image) for f in frames] == list(range(8))
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps) and stamps[-1] <= time.monotonic()
    wait_for(lambda: not camera.is_alive())
    status = camera.status()
    assert status["state"] == "ended"
    assert (status["frames"], status["dropped"], status["reconnects"], status["last_error"]) == (
        8,
        0,
        0,
        None,
    )
    assert status["source"] == f"video file {path}"
    assert camera.stop()
    assert camera.status()["state"] == "ended"


def test_file_loops_when_asked(
    tmp_path: Path, stop_event: threading.Event, cameras: List[CameraThread]
) -> None:
    path = write_video(tmp_path / "clip.avi", 3)
    camera = CameraThread(camera_config(path, at_end="loop"), stop_event)
    cameras.append(camera)
    camera.start()
    frames = [camera.get(timeout=5.0) for _ in range(10)]
    assert all(frame is not None for frame in frames)
    assert [level_of(f.image) for f in frames if f is not None] == [0, 1, 2] * 3 + [0]
    assert [f.index for f in frames if f is not None] == list(range(10))
    assert not camera.ended.is_set()
    assert camera.status()["state"] == "streaming"
    assert camera.status()["reconnects"] == 0  # starting over is not a reconnect
    stop_event.set()  # the daemon's stop event ends the thread
    wait_for(lambda: not camera.is_alive())
    assert camera.status()["state"] == "stopped"


def test_folder_through_the_thread(
    tmp_path: Path, stop_event: threading.Event, cameras: List[CameraThread]
) -> None:
    folder = write_folder(tmp_path / "images", 5)
    camera = CameraThread(camera_config(folder), stop_event)
    cameras.append(camera)
    camera.start()
    frames = take_all(camera)
    assert [level_of(f.image) for f in frames] == list(range(5))
    assert camera.ended.is_set()


def test_missing_file_is_lost_retried_with_backoff_and_recovers(
    tmp_path: Path, stop_event: threading.Event, cameras: List[CameraThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance.camera")
    path = tmp_path / "usb" / "door.avi"
    camera = CameraThread(camera_config(path), stop_event)
    cameras.append(camera)
    camera.start()
    wait_for(lambda: camera.status()["retries"] >= 4)
    status = camera.status()
    assert status["state"] == "lost"
    assert status["last_error"] == f"video file {path} does not exist"
    assert camera.get(timeout=0.05) is None

    path.parent.mkdir()  # the USB stick appears: write elsewhere, then move in one step
    write_video(tmp_path / "door.part.avi", 4).replace(path)
    frames = take_all(camera)
    assert [level_of(f.image) for f in frames] == list(range(4))
    assert camera.ended.is_set()
    status = camera.status()
    assert status["state"] == "ended"
    assert status["reconnects"] == 1
    assert status["last_error"] == f"video file {path} does not exist"  # kept for the record

    records = [r for r in caplog.records if r.name == "appliance.camera"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Camera cam-test unavailable" in warnings[0].getMessage()
    assert "does not exist" in warnings[0].getMessage()
    recovered = [r for r in records if r.levelno == logging.INFO and "recovered" in r.getMessage()]
    assert len(recovered) == 1
    assert "Camera cam-test recovered after" in recovered[0].getMessage()
    retries = [r for r in records if r.levelno == logging.DEBUG and "still unavailable" in r.getMessage()]
    assert len(retries) >= 3
    delays = [warnings[0].args[3]] + [r.args[3] for r in retries]  # type: ignore[index]
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert all(delay <= 1.0 for delay in delays)


# -- live sources -------------------------------------------------------------------------------------


def test_live_source_keeps_only_the_newest_frame(
    stop_event: threading.Event, cameras: List[CameraThread]
) -> None:
    source = FakeLiveCamera(period_s=0.001)
    camera = CameraThread(camera_config("fake"), stop_event, source=source)
    cameras.append(camera)
    camera.start()
    taken: List[Frame] = []
    for _ in range(10):
        time.sleep(0.03)  # a consumer far slower than the camera
        captured_before = camera.status()["frames"]
        frame = camera.get(timeout=5.0)
        assert frame is not None
        assert frame.index >= captured_before - 1  # the newest frame, never an old one: no backlog
        assert frame.image[0, 0, 0] == frame.index % 256
        taken.append(frame)
    indices = [f.index for f in taken]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert max(b - a for a, b in zip(indices, indices[1:])) > 1
    status = camera.status()
    assert status["dropped"] > 0
    assert status["fps"] > 0
    assert status["state"] == "streaming"
    assert camera.stop()
    leftover = 1 if camera.get(timeout=0) is not None else 0
    status = camera.status()
    assert status["frames"] == len(taken) + status["dropped"] + leftover
    assert status["state"] == "stopped"
    assert source.closed >= 1 and not source.is_open


def test_live_source_that_fails_midway_and_comes_back(
    stop_event: threading.Event, cameras: List[CameraThread], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="appliance.camera")
    source = FakeLiveCamera(period_s=0.002, fail_at_read=20, outage_opens=2)
    camera = CameraThread(camera_config("fake"), stop_event, source=source)
    cameras.append(camera)
    camera.start()
    wait_for(lambda: camera.status()["reconnects"] == 1 and camera.status()["frames"] > 40)
    status = camera.status()
    assert status["state"] == "streaming"
    assert status["retries"] == 3  # the failed read and two failed opens
    assert status["last_error"] == "fake camera: device not found"
    assert source.opens == 4
    frame = camera.get(timeout=5.0)
    assert frame is not None and frame.index > 19
    records = [r for r in caplog.records if r.name == "appliance.camera"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert warnings == [
        "Camera cam-test lost: fake camera: no frame (unplugged); retrying in 0.1 s, backing off to every 1 s"
    ]
    infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len([m for m in infos if "streaming" in m]) == 1
    assert len([m for m in infos if "recovered after" in m]) == 1
    assert len([r for r in records if "still unavailable" in r.getMessage()]) == 2


def test_stop_is_prompt_during_backoff(
    tmp_path: Path, stop_event: threading.Event, cameras: List[CameraThread]
) -> None:
    config = camera_config(tmp_path / "missing.avi", reconnect_min_s=60.0, reconnect_max_s=60.0)
    camera = CameraThread(config, stop_event)
    cameras.append(camera)
    camera.start()
    wait_for(lambda: camera.status()["state"] == "lost")
    started = time.monotonic()
    assert camera.stop(timeout=5.0)
    assert time.monotonic() - started < 2.0  # bounded by the poll interval, not the 60 s back-off
    assert camera.status()["state"] == "stopped"
    assert camera.get(timeout=5.0) is None  # returns at once: the thread has ended
    assert camera.stop()  # idempotent


def test_the_daemons_stop_event_ends_the_thread_during_backoff(
    tmp_path: Path, stop_event: threading.Event, cameras: List[CameraThread]
) -> None:
    config = camera_config(tmp_path / "missing.avi", reconnect_min_s=60.0, reconnect_max_s=60.0)
    camera = CameraThread(config, stop_event)
    cameras.append(camera)
    camera.start()
    wait_for(lambda: camera.status()["state"] == "lost")
    stop_event.set()
    wait_for(lambda: not camera.is_alive(), timeout=2.0)
    assert camera.status()["state"] == "stopped"


def test_stop_unblocks_a_file_reader_waiting_for_its_consumer(
    tmp_path: Path, stop_event: threading.Event, cameras: List[CameraThread]
) -> None:
    camera = CameraThread(camera_config(write_video(tmp_path / "clip.avi", 5)), stop_event)
    cameras.append(camera)
    camera.start()
    wait_for(lambda: camera.status()["frames"] == 1)  # frame 0 waits in the slot; nobody takes it
    assert camera.stop(timeout=5.0)
    assert not camera.ended.is_set()
    assert camera.status()["state"] == "stopped"


def test_start_twice_and_stop_before_start(tmp_path: Path, stop_event: threading.Event) -> None:
    source = FakeLiveCamera()
    camera = CameraThread(camera_config("fake"), stop_event, source=source)
    assert camera.stop()  # never started: nothing to join, the source is closed
    assert camera.status()["state"] == "stopped"
    with pytest.raises(RuntimeError, match="already started"):
        camera.start()
    other = CameraThread(camera_config("fake"), stop_event, source=FakeLiveCamera())
    with other:
        with pytest.raises(RuntimeError, match="already started"):
            other.start()
    assert not other.is_alive()


def test_a_source_that_never_delivers_is_an_outage_not_an_end(
    tmp_path: Path, stop_event: threading.Event, cameras: List[CameraThread]
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    camera = CameraThread(camera_config(folder, at_end="loop"), stop_event)
    cameras.append(camera)
    camera.start()
    wait_for(lambda: camera.status()["retries"] >= 2)
    status = camera.status()
    assert status["state"] == "lost" and status["last_error"] == f"image folder {folder} delivered no frame"
    assert not camera.ended.is_set()


def test_open_source_opens(tmp_path: Path) -> None:
    source = open_source(camera_config(write_video(tmp_path / "clip.avi", 2)))
    try:
        image = source.read()
        assert image is not None and image.shape == (SIZE[1], SIZE[0], 3)
    finally:
        source.close()
    with pytest.raises(CameraError, match="does not exist"):
        open_source(camera_config(tmp_path / "nothing.avi"))
