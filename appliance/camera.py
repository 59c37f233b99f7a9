"""Where frames come from: camera sources behind one small interface, and the camera thread.

Sources (python-can style: one base class, one class per kind, chosen from the configuration by
:func:`create_source` / :func:`open_source`):

==============  =====================================================================  =====
``type``        ``source``                                                             live
==============  =====================================================================  =====
``file``        a video file (``cv2.VideoCapture``, FFmpeg back-end)                   no
``folder``      a folder of images, read in name order (``read_image``)                no
``v4l2``        ``/dev/videoN``, ``/dev/v4l/by-id/…`` or a bare index ``N``            yes
``rtsp``        ``rtsp://`` / ``rtsps://`` URL (FFmpeg; Jetson hardware decoding)      yes
``gstreamer``   a GStreamer pipeline ending in ``appsink`` (needs OpenCV + GStreamer)  yes
==============  =====================================================================  =====

``type = "auto"`` guesses the kind from the form of ``source`` (:func:`guess_source_type`).

:class:`CameraThread` runs one source on its own thread. Live sources get *latest-frame* semantics:
the thread keeps only the newest frame and counts the ones nobody took (``dropped``), so the
consumer never falls behind a door camera. Files and folders hand over *every* frame (the reader
waits for the consumer), which keeps tests and demos deterministic. A source that cannot be opened
or fails while reading is retried with exponential back-off; the loss is logged once (WARNING) and
the recovery once (INFO), retries only at DEBUG.

On a Jetson, use JetPack's OpenCV (built with GStreamer) rather than the pip wheels, which have no
GStreamer: the CSI camera (:func:`jetson_csi_pipeline`) and hardware RTSP decoding need it.
"""

from __future__ import annotations

import abc
import collections
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Deque, Dict, List, Optional, Sequence, Tuple, Type, Union
from urllib.parse import urlsplit

import cv2
import numpy as np

from engines.tensorrt.platform import is_jetson

from .config import CameraConfig
from .errors import ApplianceError
from .vision.image import ImageError, read_image, to_bgr

logger = logging.getLogger(__name__)

#: The Jetson CSI camera (Argus) as an OpenCV GStreamer pipeline; fill it with :func:`jetson_csi_pipeline`.
#: ``nvarguscamerasrc`` gives NV12 frames in NVMM (GPU) memory; ``nvvidconv`` copies them to CPU memory
#: as BGRx (and flips/rotates: ``flip-method`` 0 none, 1 ccw 90°, 2 180°, 3 cw 90°, 4 horizontal,
#: 5 upper-right diagonal, 6 vertical, 7 upper-left diagonal); ``videoconvert`` drops the x;
#: ``appsink drop=1 max-buffers=1`` keeps only the newest frame (after jkjung-avt/tensorrt_demos'
#: ``utils/camera.py``).
JETSON_CSI_PIPELINE = (
    "nvarguscamerasrc sensor-id={sensor_id} ! "
    "video/x-raw(memory:NVMM),width={width},height={height},framerate={framerate} ! "
    "nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! "
    "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1"
)

#: An H.264 RTSP stream decoded by the Jetson's hardware decoder (NVDEC through ``nvv4l2decoder``).
#: Used by :class:`RtspSource` when OpenCV has GStreamer and the machine is a Jetson; an H.265
#: camera needs ``rtph265depay ! h265parse`` instead (give that as a ``gstreamer`` source).
JETSON_RTSP_H264_PIPELINE = (
    'rtspsrc location="{url}" latency={latency_ms} ! rtph264depay ! h264parse ! nvv4l2decoder ! '
    "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
    "appsink drop=1 max-buffers=1"
)

#: The file that exists on a Jetson (L4T) and nowhere else.

#: How long an RTSP source may take to connect, and to deliver the next frame, before it counts as failed.
RTSP_OPEN_TIMEOUT_S = 10.0
RTSP_READ_TIMEOUT_S = 10.0
#: How long the TCP reachability probe of an RTSP camera waits.
RTSP_PROBE_TIMEOUT_S = 3.0
#: Latency (jitter buffer) of ``rtspsrc`` in the Jetson pipeline, in milliseconds.
RTSP_LATENCY_MS = 200

#: Longest uninterrupted wait of the camera thread: how soon it sees the daemon's stop event.
POLL_S = 0.1
#: Window over which ``status()["fps"]`` measures the capture rate.
FPS_WINDOW_S = 5.0
#: A source whose read has not returned for this long is reported as ``stalled`` (a hung driver, a
#: camera that stopped sending without closing the stream).
STALL_S = 5.0


class CameraError(ApplianceError):
    """A camera source that cannot be opened or stopped delivering frames.

    Example scenarios: the video file does not exist or is not decodable; ``/dev/video0`` is absent
    or not accessible to the service user; the RTSP camera refuses the connection or stops sending;
    a GStreamer pipeline was configured but this OpenCV was built without GStreamer.
    """


# -- helpers ------------------------------------------------------------------------------------------

_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"']*@")
_SECRET_PARAMS = re.compile(
    r"(?i)(\b(?:user(?:name)?|user-id|pass(?:word)?|user-pw|pwd|token|key|auth)=)([^&\s\"'!]+)"
)


def mask_credentials(text: str) -> str:
    """``text`` with the credentials of every URL in it (``user:pass@``) and secret-looking
    parameters (``password=…``, ``user-pw=…``, ``token=…``) replaced by ``***``.

    ``rtsp://admin:secret@10.0.0.5/stream`` becomes ``rtsp://***@10.0.0.5/stream``.
    """
    return _SECRET_PARAMS.sub(r"\1***", _URL_USERINFO.sub(r"\1***@", text))


def _build_information() -> str:
    return str(cv2.getBuildInformation())


def opencv_has_gstreamer(build_information: Optional[str] = None) -> bool:
    """Whether OpenCV was built with GStreamer (the ``GStreamer: YES`` line of ``cv2.getBuildInformation()``).

    Args:
        build_information: the text to look in; default this process's OpenCV.
    """
    text = _build_information() if build_information is None else build_information
    match = re.search(r"^\s*GStreamer:\s*(\S+)", text, re.MULTILINE)
    return bool(match and match.group(1).upper().startswith("YES"))


def _framerate(fps: float) -> str:
    """``fps`` as a GStreamer fraction: 30 → ``30/1``, 29.97 → ``30000/1001``."""
    fraction = Fraction(fps).limit_denominator(1001)
    return f"{fraction.numerator}/{fraction.denominator}"


def jetson_csi_pipeline(width: int, height: int, fps: float, sensor_id: int = 0, flip: int = 0) -> str:
    """The GStreamer pipeline that reads the Jetson CSI camera ``sensor_id`` (see :data:`JETSON_CSI_PIPELINE`).

    Args:
        width, height: a mode the sensor supports (e.g. 1920×1080, 1280×720 for the IMX219).
        fps: frames per second of that mode.
        sensor_id: the CSI port (0 or 1 on a dev kit).
        flip: ``nvvidconv flip-method``, 0–7 (2 turns an upside-down camera).

    Raises:
        ValueError: a value out of range.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}×{height}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if sensor_id < 0:
        raise ValueError(f"sensor_id must be 0 or more, got {sensor_id}")
    if not 0 <= flip <= 7:
        raise ValueError(f"flip must be 0–7 (nvvidconv flip-method), got {flip}")
    return JETSON_CSI_PIPELINE.format(
        sensor_id=int(sensor_id),
        width=int(width),
        height=int(height),
        framerate=_framerate(fps),
        flip=int(flip),
    )


def jetson_rtsp_pipeline(url: str, latency_ms: int = RTSP_LATENCY_MS) -> str:
    """The hardware-decoding pipeline for the H.264 RTSP stream ``url`` (see :data:`JETSON_RTSP_H264_PIPELINE`)."""
    if '"' in url:
        raise ValueError('an RTSP URL with a double quote (") cannot be put in a GStreamer pipeline')
    return JETSON_RTSP_H264_PIPELINE.format(url=url, latency_ms=int(latency_ms))


def guess_source_type(source: str) -> str:
    """The ``camera.type`` that ``type = "auto"`` picks for ``source``.

    In order: an existing directory → ``folder``; ``/dev/video*``, ``/dev/v4l/…`` or a bare integer →
    ``v4l2``; ``rtsp://`` or ``rtsps://`` → ``rtsp``; text with ``!`` and ``appsink`` → ``gstreamer``;
    anything else is taken as a video file path → ``file``.
    """
    text = source.strip()
    if os.path.isdir(text):
        return "folder"
    if text.startswith(("/dev/video", "/dev/v4l/")) or text.isdigit():
        return "v4l2"
    if text.lower().startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if "!" in text and "appsink" in text:
        return "gstreamer"
    return "file"


def _fourcc_text(value: float) -> str:
    """A ``CAP_PROP_FOURCC`` value as its four characters (``MJPG``, ``YUYV``), or ``?`` when unset."""
    code = int(value)
    if code <= 0:
        return "?"
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00") or "?"


# -- sources ------------------------------------------------------------------------------------------


class CameraSource(abc.ABC):
    """One source of ``(H, W, 3)`` uint8 BGR frames.

    Life cycle: :meth:`check` (can this ever work here?), :meth:`open`, :meth:`read` until ``None``
    (the end of a file or folder) or :class:`CameraError`, :meth:`close`. ``open()`` on an open source
    reopens it (a file starts over). A source is used from one thread at a time.

    Attributes:
        type_key: the ``camera.type`` that selects the class.
        live: ``True`` for cameras and streams (frames keep coming; a failure is an outage), ``False``
            for files and folders (they end).
    """

    type_key: ClassVar[str] = ""
    live: bool = True

    def check(self) -> None:
        """Raise :class:`CameraError` when this source can never work on this machine.

        Only for lasting problems (OpenCV without GStreamer, a malformed URL), not for a camera that is
        unplugged right now: :meth:`open` reports those, and the camera thread retries them.
        The base class finds nothing wrong.
        """
        return

    @abc.abstractmethod
    def open(self) -> None:
        """Open (or reopen) the source.

        Raises:
            CameraError: with the reason (absent, permission denied, unreachable, not decodable, …).
        """

    @abc.abstractmethod
    def read(self) -> Optional[np.ndarray]:
        """The next frame: ``(H, W, 3)`` uint8 BGR, C-contiguous; ``None`` at the end of a file or folder.

        Raises:
            CameraError: the source is not open, or a live source failed.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the source; idempotent."""

    @abc.abstractmethod
    def describe(self) -> str:
        """What this source is, for logs and the state topic; never with credentials."""

    def __enter__(self) -> CameraSource:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class _CaptureSource(CameraSource):
    """A source read through ``cv2.VideoCapture``; subclasses say how to open it."""

    def __init__(self) -> None:
        self._capture: Optional[cv2.VideoCapture] = None

    @abc.abstractmethod
    def _open_capture(self) -> cv2.VideoCapture:
        """An opened capture; raise :class:`CameraError` with the reason otherwise."""

    def _read_failed(self) -> str:
        """Why a live source returned no frame."""
        return f"{self.describe()} delivered no frame (disconnected, or the stream stopped)"

    def open(self) -> None:
        self.close()
        self._capture = self._open_capture()

    def read(self) -> Optional[np.ndarray]:
        if self._capture is None:
            raise CameraError(f"{self.describe()} is not open")
        try:
            ok, image = self._capture.read()
        except cv2.error as err:
            raise CameraError(f"{self.describe()}: read failed: {err}") from err
        if not ok or image is None:
            if self.live:
                raise CameraError(self._read_failed())
            return None
        try:
            return to_bgr(image)
        except ImageError as err:
            raise CameraError(f"{self.describe()}: unusable frame: {err}") from err

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()


def _video_capture(target: Union[str, int], api: int, params: Sequence[int] = ()) -> cv2.VideoCapture:
    """``cv2.VideoCapture(target, api[, params])``, possibly not opened (the caller checks ``isOpened()``).

    ``params`` (OpenCV ≥ 4.5.2) are dropped on an OpenCV too old to take them.

    Raises:
        CameraError: OpenCV raised while opening.
    """
    try:
        if params:
            try:
                capture = cv2.VideoCapture(target, api, list(params))
            except TypeError:  # OpenCV before 4.5.2 has no open parameters
                capture = cv2.VideoCapture(target, api)
        else:
            capture = cv2.VideoCapture(target, api)
    except cv2.error as err:
        raise CameraError(f"OpenCV cannot open {mask_credentials(str(target))}: {err}") from err
    return capture


class FileSource(_CaptureSource):
    """A video file, decoded by OpenCV's FFmpeg back-end (any back-end when OpenCV has no FFmpeg).

    Args:
        path: the file.
    """

    type_key = "file"
    live = False

    def __init__(self, path: Union[str, os.PathLike[str]]) -> None:
        super().__init__()
        self.path = Path(path)

    def describe(self) -> str:
        return f"video file {self.path}"

    def _open_capture(self) -> cv2.VideoCapture:
        path = self.path
        if not path.exists():
            raise CameraError(f"video file {path} does not exist")
        if path.is_dir():
            raise CameraError(f"video file {path} is a directory (give camera.type = 'folder' for images)")
        if not os.access(path, os.R_OK):
            raise CameraError(f"video file {path}: permission denied")
        build = _build_information()
        api = cv2.CAP_FFMPEG if re.search(r"^\s*FFMPEG:\s*YES", build, re.MULTILINE) else cv2.CAP_ANY
        capture = _video_capture(str(path), api)
        if not capture.isOpened():
            capture.release()
            raise CameraError(
                f"video file {path} is not decodable (not a video, a container or codec this OpenCV "
                f"cannot read, or a truncated file)"
            )
        logger.debug(
            "Opened %s: %dx%d, %d frames at %.2f fps (%s)",
            self.describe(),
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            capture.get(cv2.CAP_PROP_FPS),
            capture.getBackendName(),
        )
        return capture


class FolderSource(CameraSource):
    """The images of a folder, one frame each, in name order (plain string order: zero-pad numbers).

    Hidden files (``.name``) and sub-folders are left out; a file that is not a readable image is
    skipped with one WARNING (once per file, however often the folder loops). The folder is listed
    again at every :meth:`open`, so images added meanwhile show up on the next pass.

    Args:
        path: the folder.
    """

    type_key = "folder"
    live = False

    def __init__(self, path: Union[str, os.PathLike[str]]) -> None:
        self.path = Path(path)
        self._files: Optional[List[Path]] = None
        self._next = 0
        self._warned: Dict[str, str] = {}

    def describe(self) -> str:
        return f"image folder {self.path}"

    def open(self) -> None:
        self.close()
        path = self.path
        if not path.exists():
            raise CameraError(f"image folder {path} does not exist")
        if not path.is_dir():
            raise CameraError(f"image folder {path} is not a directory")
        try:
            files = sorted(
                (entry for entry in path.iterdir() if not entry.name.startswith(".") and entry.is_file()),
                key=lambda entry: entry.name,
            )
        except OSError as err:
            raise CameraError(f"image folder {path}: cannot list: {err.strerror or err}") from err
        if not files:
            raise CameraError(f"image folder {path} holds no files")
        self._files = files
        self._next = 0
        logger.debug("Opened %s: %d files", self.describe(), len(files))

    def read(self) -> Optional[np.ndarray]:
        if self._files is None:
            raise CameraError(f"{self.describe()} is not open")
        while self._next < len(self._files):
            file = self._files[self._next]
            self._next += 1
            try:
                return read_image(file)
            except ImageError as err:
                if file.name not in self._warned:
                    self._warned[file.name] = str(err)
                    logger.warning("Skipping an unreadable image in %s: %s", self.describe(), err)
                else:
                    logger.debug("Skipping %s again: %s", file, err)
        return None

    def close(self) -> None:
        self._files = None
        self._next = 0


class V4l2Source(_CaptureSource):
    """A V4L2 camera (USB/UVC, or a CSI sensor exposed as ``/dev/videoN``) through ``cv2.CAP_V4L2``.

    Requested width, height and frame rate are set with ``CAP_PROP_*`` (with the MJPG pixel format
    when a size is given: raw YUYV over USB 2 cannot carry 720p at 30 fps); the device may give
    something else, which is logged at every open.

    Args:
        device: ``/dev/videoN``, a stable link such as ``/dev/v4l/by-id/…``, or an index ``N``.
        width, height: requested frame size; both or neither.
        fps: requested frame rate.
    """

    type_key = "v4l2"
    live = True

    def __init__(
        self,
        device: Union[str, int],
        width: Optional[int] = None,
        height: Optional[int] = None,
        fps: Optional[float] = None,
    ) -> None:
        super().__init__()
        text = str(device).strip()
        self.device: Union[str, int] = int(text) if text.isdigit() else text
        self.width = width
        self.height = height
        self.fps = fps

    @property
    def _path(self) -> Path:
        return Path(f"/dev/video{self.device}") if isinstance(self.device, int) else Path(self.device)

    def describe(self) -> str:
        return f"V4L2 device {self.device}"

    def _open_capture(self) -> cv2.VideoCapture:
        path = self._path
        if os.name == "posix" and not path.exists():
            present = sorted(str(p) for p in Path("/dev").glob("video*"))
            raise CameraError(
                f"V4L2 device not found: {path} does not exist (is the camera plugged in?); "
                f"devices present: {', '.join(present) or 'none'}"
            )
        if os.name == "posix" and not os.access(path, os.R_OK | os.W_OK):
            raise CameraError(
                f"permission denied on {path}: run the service as a user in the group that owns it "
                f"({_group_of(path)})"
            )
        capture = _video_capture(self.device if isinstance(self.device, int) else str(path), cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise CameraError(
                f"cannot open {path} with V4L2: busy (used by another program?) or not a capture device"
            )
        if self.width is not None and self.height is not None:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps is not None:
            capture.set(cv2.CAP_PROP_FPS, self.fps)
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = capture.get(cv2.CAP_PROP_FPS)
        fourcc = _fourcc_text(capture.get(cv2.CAP_PROP_FOURCC))
        logger.info("%s gives %dx%d at %.1f fps, %s", self.describe(), width, height, fps, fourcc)
        if (self.width is not None and (width, height) != (self.width, self.height)) or (
            self.fps is not None and abs(fps - self.fps) > 0.5
        ):
            logger.warning(
                "%s does not do the requested %sx%s at %s fps; it gives %dx%d at %.1f fps (list its "
                "modes with `v4l2-ctl -d %s --list-formats-ext`)",
                self.describe(),
                self.width,
                self.height,
                self.fps,
                width,
                height,
                fps,
                path,
            )
        return capture


def _group_of(path: Path) -> str:
    """The name of the group owning ``path`` (``video`` for cameras), for error messages."""
    try:
        import grp

        return f"group '{grp.getgrgid(path.stat().st_gid).gr_name}'"
    except (ImportError, KeyError, OSError):
        return "usually 'video'"


class RtspSource(_CaptureSource):
    """An RTSP (IP camera) stream.

    Decoded by OpenCV's FFmpeg back-end over TCP (``OPENCV_FFMPEG_CAPTURE_OPTIONS`` may override the
    transport); on a Jetson whose OpenCV has GStreamer, by the hardware decoder through
    :data:`JETSON_RTSP_H264_PIPELINE` first, falling back to FFmpeg if that pipeline does not open
    (an H.265 camera, for one). Before opening, the camera's TCP port is probed so that an unreachable
    camera is reported as such.

    Args:
        url: ``rtsp://[user:password@]host[:port]/path`` (or ``rtsps://``).
    """

    type_key = "rtsp"
    live = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url.strip()
        self._told_decoder = False

    def describe(self) -> str:
        return f"RTSP stream {mask_credentials(self.url)}"

    def _address(self) -> Tuple[str, int]:
        parts = urlsplit(self.url)
        if parts.scheme.lower() not in ("rtsp", "rtsps") or not parts.hostname:
            raise CameraError(
                f"{mask_credentials(self.url)} is not an RTSP URL (rtsp://[user:password@]host[:port]/path)"
            )
        try:
            port = parts.port
        except ValueError as err:
            raise CameraError(f"{mask_credentials(self.url)}: bad port: {err}") from err
        return parts.hostname, port or (322 if parts.scheme.lower() == "rtsps" else 554)

    def check(self) -> None:
        self._address()

    def _probe(self) -> None:
        host, port = self._address()
        where = f"{host}:{port}"
        try:
            with socket.create_connection((host, port), timeout=RTSP_PROBE_TIMEOUT_S):
                pass
        except socket.gaierror as err:
            raise CameraError(f"{self.describe()} unreachable: cannot resolve {host}: {err}") from err
        except ConnectionRefusedError as err:
            raise CameraError(
                f"{self.describe()} unreachable: connection refused by {where} (wrong port, or the "
                f"camera's RTSP server is off)"
            ) from err
        except socket.timeout as err:
            raise CameraError(
                f"{self.describe()} unreachable: no answer from {where} within {RTSP_PROBE_TIMEOUT_S:.0f} s "
                f"(network, firewall, or the camera is off)"
            ) from err
        except OSError as err:
            raise CameraError(f"{self.describe()} unreachable: {where}: {err.strerror or err}") from err

    def _open_capture(self) -> cv2.VideoCapture:
        self._probe()
        if opencv_has_gstreamer() and is_jetson() and '"' not in self.url:
            capture = _video_capture(jetson_rtsp_pipeline(self.url), cv2.CAP_GSTREAMER)
            if capture.isOpened():
                self._tell_decoder("the Jetson hardware decoder (nvv4l2decoder)")
                return capture
            capture.release()
            logger.debug("%s: the H.264 hardware pipeline did not open; trying FFmpeg", self.describe())
        # FFmpeg's RTSP default is UDP, which smears frames on a lossy network; the variable is read at open.
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        params: List[int] = []
        for name, seconds in (
            ("CAP_PROP_OPEN_TIMEOUT_MSEC", RTSP_OPEN_TIMEOUT_S),
            ("CAP_PROP_READ_TIMEOUT_MSEC", RTSP_READ_TIMEOUT_S),
        ):
            prop = getattr(cv2, name, None)
            if prop is not None:
                params += [int(prop), int(seconds * 1000)]
        capture = _video_capture(self.url, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            raise CameraError(
                f"{self.describe()} reachable but not opened: wrong path or credentials, or a codec this "
                f"OpenCV cannot decode"
            )
        self._tell_decoder("FFmpeg")
        return capture

    def _tell_decoder(self, decoder: str) -> None:
        if not self._told_decoder:
            self._told_decoder = True
            logger.info("%s decoded by %s", self.describe(), decoder)


class GStreamerSource(_CaptureSource):
    """A GStreamer pipeline ending in ``appsink``, through ``cv2.CAP_GSTREAMER``.

    End it with ``video/x-raw,format=BGR ! appsink drop=1 max-buffers=1`` so that OpenCV gets BGR and
    the pipeline never queues stale frames. Needs an OpenCV built with GStreamer (JetPack's is; the
    pip wheels are not): :meth:`check` refuses clearly otherwise. Treated as live: a pipeline that
    ends or fails is restarted with back-off.

    Args:
        pipeline: the ``gst-launch-1.0``-style description.
    """

    type_key = "gstreamer"
    live = True

    def __init__(self, pipeline: str) -> None:
        super().__init__()
        self.pipeline = pipeline.strip()

    def describe(self) -> str:
        return f"GStreamer pipeline '{mask_credentials(self.pipeline)}'"

    def check(self) -> None:
        if not opencv_has_gstreamer():
            raise CameraError(
                f"{self.describe()} needs OpenCV with GStreamer, and this OpenCV ({cv2.__version__}, "
                f"{getattr(cv2, '__file__', '?')}) was built without it (cv2.getBuildInformation() says "
                f"'GStreamer: NO'). On a Jetson use JetPack's OpenCV (apt python3-opencv) and remove the "
                f"pip wheels that shadow it (pip uninstall opencv-python opencv-python-headless)"
            )
        if "appsink" not in self.pipeline:
            raise CameraError(
                f"{self.describe()} does not end in appsink: OpenCV reads frames from an appsink"
            )

    def _open_capture(self) -> cv2.VideoCapture:
        self.check()
        capture = _video_capture(self.pipeline, cv2.CAP_GSTREAMER)
        if not capture.isOpened():
            capture.release()
            raise CameraError(
                f"{self.describe()} did not start: a missing element or device, or caps that do not "
                f"negotiate (try it with gst-launch-1.0, with fakesink for appsink)"
            )
        return capture


#: ``camera.type`` → source class (``auto`` is resolved by :func:`guess_source_type`).
SOURCE_TYPES: Dict[str, Type[CameraSource]] = {
    cls.type_key: cls for cls in (FileSource, FolderSource, V4l2Source, RtspSource, GStreamerSource)
}


def source_type(config: CameraConfig) -> str:
    """``camera.type``, with ``auto`` resolved from the form of ``camera.source``."""
    return guess_source_type(config.source) if config.type == "auto" else config.type


def create_source(config: CameraConfig) -> CameraSource:
    """The source ``config`` names, not yet opened (:class:`CameraThread` opens it, with retries).

    Raises:
        CameraError: an unknown type.
    """
    kind = source_type(config)
    text = config.source.strip()
    if kind == "file":
        return FileSource(text)
    if kind == "folder":
        return FolderSource(text)
    if kind == "v4l2":
        return V4l2Source(text, config.width, config.height, config.fps)
    if kind == "rtsp":
        return RtspSource(text)
    if kind == "gstreamer":
        return GStreamerSource(text)
    raise CameraError(f"unknown camera.type {kind!r}; known: {', '.join(sorted(SOURCE_TYPES))}")


def open_source(config: CameraConfig) -> CameraSource:
    """The source ``config`` names, checked and opened (for one-off use: ``doctor``, tools, tests).

    Raises:
        CameraError: it cannot work here, or cannot be opened now; the message says why.
    """
    source = create_source(config)
    source.check()
    try:
        source.open()
    except BaseException:
        source.close()
        raise
    return source


# -- the camera thread --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured frame.

    Attributes:
        index: 0, 1, 2, … in capture order over the thread's life (across loops and reconnects); a gap
            between two frames a consumer took means frames were dropped in between.
        timestamp: ``time.monotonic()`` when it was captured.
        image: ``(H, W, 3)`` uint8 BGR, C-contiguous.
    """

    index: int
    timestamp: float
    image: np.ndarray


class CameraThread:
    """Runs one camera source on a named thread (non-daemon) and hands its frames to one consumer.

    - Live sources: latest-frame semantics. Frames are read as fast as the camera gives them; a
      one-slot buffer keeps the newest; a frame replaced before anyone took it counts in ``dropped``.
    - Files and folders: every frame is handed over (the reader waits until the previous one was
      taken), nothing is dropped. At the end, ``camera.at_end = "loop"`` reopens the source and goes
      on; ``"stop"`` sets :attr:`ended` once the last frame was taken, and the thread ends.
    - Failures (open or read): the source is closed and retried after ``reconnect_min_s``, doubling up
      to ``reconnect_max_s``; logged once when lost (WARNING) and once when frames flow again (INFO).

    The thread stops when the daemon's ``stop_event`` is set or :meth:`stop` is called (which stops
    this thread only); it notices within :data:`POLL_S`, or when a blocking open/read returns. It owns
    the source and closes it.

    Args:
        config: the ``[camera]`` section (or one ``[[cameras]]`` table).
        stop_event: the daemon's stop event; only read here.
        source: the source to run; default :func:`create_source` ``(config)``. Tests pass fakes.
        wake: set whenever a frame is ready to be taken, and when the thread ends or :attr:`ended` is
            set: one consumer of several cameras waits on one event for all of them.

    Attributes:
        ended: set when a file or folder ended with ``at_end = "stop"``.
    """

    def __init__(
        self,
        config: CameraConfig,
        stop_event: threading.Event,
        source: Optional[CameraSource] = None,
        wake: Optional[threading.Event] = None,
    ) -> None:
        self.config = config
        self.source = source if source is not None else create_source(config)
        self.name = f"camera-{config.id}"
        self.ended = threading.Event()
        self._wake = wake
        self._shared_stop = stop_event
        self._own_stop = threading.Event()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._finished = False
        self._closed = False
        # Guarded by _cond:
        self._slot: Optional[Frame] = None
        self._state = "starting"
        self._frames = 0
        self._dropped = 0
        self._reconnects = 0
        self._retries = 0
        self._last_error: Optional[str] = None
        self._lost_since = 0.0
        self._times: Deque[float] = collections.deque(maxlen=1024)
        # When the current source.read() started (None between reads), and whether its stall was logged.
        self._reading_since: Optional[float] = None
        self._stall_logged = False
        # Used by the thread only:
        self._delay = config.reconnect_min_s

    # -- life cycle

    def start(self) -> None:
        """Start the thread.

        Raises:
            RuntimeError: already started, or already stopped.
            CameraError: the source can never work here (:meth:`CameraSource.check`).
        """
        if self._thread is not None or self._own_stop.is_set():
            raise RuntimeError(f"camera thread {self.name} was already started")
        self.source.check()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=False)
        self._thread.start()
        logger.debug("Started %s on %s", self.name, self.source.describe())

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop this thread (not the daemon) and wait for it at most ``timeout`` seconds; idempotent.

        Returns:
            ``True`` when the thread has ended (or never ran); ``False`` when it is still blocked in the
            source (logged as a WARNING naming the thread; it ends when that call returns).
        """
        self._own_stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            self._release_source()
            with self._cond:
                if self._state != "ended":
                    self._state = "stopped"
                self._finished = True
                self._cond.notify_all()
            return True
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "Thread %s did not stop within %.1f s: it is blocked in a call to %s (a slow open or "
                "read); it ends when that call returns",
                thread.name,
                timeout,
                self.source.describe(),
            )
            return False
        return True

    def close(self) -> None:
        """Same as :meth:`stop` with the default timeout."""
        self.stop()

    def __enter__(self) -> CameraThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.stop()

    def is_alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # -- consumer side

    def get(self, timeout: float) -> Optional[Frame]:
        """Take the next frame (live sources: the newest), waiting at most ``timeout`` seconds.

        Returns:
            the frame, or ``None`` when none came in time or the thread has ended.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._slot is None:
                remaining = deadline - time.monotonic()
                if self._finished or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    def status(self) -> Dict[str, Any]:
        """Counters and state for the ``…/state`` topic.

        Returns:
            ``state`` ("starting", "streaming", "lost", "ended" or "stopped"), ``frames`` (captured),
            ``dropped`` (live frames replaced before they were taken), ``reconnects`` (times frames
            flowed again after a loss), ``retries`` (failed open/read attempts), ``last_error`` (the
            latest failure, kept after recovery; ``None`` if none), ``source`` (:meth:`describe`),
            ``id`` (``camera.id``) and ``fps`` (capture rate over the last :data:`FPS_WINDOW_S`).
            ``state`` is ``"stalled"`` while a streaming source's read has not returned for
            :data:`STALL_S` (``stalled_s``: for how long; ``None`` otherwise).
        """
        now = time.monotonic()
        stalled_s = self.stalled_for(now)
        with self._cond:
            recent = [t for t in self._times if t >= now - FPS_WINDOW_S]
            fps = (
                (len(recent) - 1) / (recent[-1] - recent[0])
                if len(recent) >= 2 and recent[-1] > recent[0]
                else 0.0
            )
            return {
                "id": self.config.id,
                "state": "stalled" if stalled_s and self._state == "streaming" else self._state,
                "stalled_s": round(stalled_s, 1) if stalled_s else None,
                "frames": self._frames,
                "dropped": self._dropped,
                "reconnects": self._reconnects,
                "retries": self._retries,
                "last_error": self._last_error,
                "source": self.source.describe(),
                "fps": round(fps, 2),
            }

    def stalled_for(self, now: Optional[float] = None) -> float:
        """Seconds the source's current read has been blocked, once past :data:`STALL_S`; else 0."""
        started = self._reading_since
        if started is None:
            return 0.0
        blocked = (time.monotonic() if now is None else now) - started
        return blocked if blocked >= STALL_S else 0.0

    def check_stall(self) -> bool:
        """Log a stall once when it starts (the camera thread, blocked in the read, cannot); ``True`` while stalled.

        Called by the daemon's supervisor; the recovery is logged by the camera thread when the read returns.
        """
        stalled = self.stalled_for()
        if stalled and not self._stall_logged:
            self._stall_logged = True
            logger.warning(
                "Camera %s stalled: %s has delivered nothing for %.0f s (a hung driver or stream?)",
                self.config.id,
                self.source.describe(),
                stalled,
            )
        return bool(stalled)

    # -- the thread

    def _stopping(self) -> bool:
        return self._own_stop.is_set() or self._shared_stop.is_set()

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stopped, whichever comes first; ``True`` if stopped."""
        deadline = time.monotonic() + seconds
        while not self._stopping():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._own_stop.wait(min(remaining, POLL_S))  # the shared event is checked every POLL_S
        return True

    def _release_source(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.source.close()
            except Exception:
                logger.exception("Closing %s failed", self.source.describe())

    def _close_for_retry(self) -> None:
        try:
            self.source.close()
        except Exception:
            logger.exception("Closing %s failed", self.source.describe())

    def _run(self) -> None:
        is_open = False
        frames_this_pass = 0
        try:
            while not self._stopping():
                if not is_open:
                    try:
                        self.source.open()
                    except Exception as err:
                        self._close_for_retry()
                        if self._failed(err, "cannot open"):
                            break
                        continue
                    is_open = True
                    frames_this_pass = 0
                self._reading_since = time.monotonic()
                try:
                    image = self.source.read()
                except Exception as err:
                    self._close_for_retry()
                    is_open = False
                    if self._failed(err, "read failed"):
                        break
                    continue
                finally:
                    self._end_read()
                if image is None:
                    self._close_for_retry()
                    is_open = False
                    if self.source.live:
                        reason = CameraError(f"{self.source.describe()} ended")
                    elif frames_this_pass == 0:
                        reason = CameraError(f"{self.source.describe()} delivered no frame")
                    elif self.config.at_end == "loop":
                        logger.debug(
                            "End of %s; starting over (camera.at_end = loop)", self.source.describe()
                        )
                        continue
                    else:
                        self._end()
                        break
                    if self._failed(reason, "no frame"):
                        break
                    continue
                frames_this_pass += 1
                self._deliver(image)
        except Exception:  # a bug, not a camera problem: log it, end the thread, let the daemon see it
            logger.exception("Thread %s failed", self.name)
        finally:
            self._release_source()
            with self._cond:
                if self._state != "ended":
                    self._state = "stopped"
                self._finished = True
                self._cond.notify_all()
            self._tell_consumer()
            logger.debug("Thread %s ended", self.name)

    def _tell_consumer(self) -> None:
        """Wake the consumer that waits on several cameras (``wake``)."""
        if self._wake is not None:
            self._wake.set()

    def _end_read(self) -> None:
        """A read returned: log the end of a stall that was reported."""
        started, self._reading_since = self._reading_since, None
        if self._stall_logged:
            self._stall_logged = False
            logger.info(
                "Camera %s recovered from a stall of %.1f s: %s delivers again",
                self.config.id,
                time.monotonic() - (started or time.monotonic()),
                self.source.describe(),
            )

    def _failed(self, err: BaseException, what: str) -> bool:
        """Record a failure, log it (WARNING when it starts an outage), back off; ``True`` if stopped."""
        expected = isinstance(err, CameraError)
        reason = str(err) if expected else f"{what}: {type(err).__name__}: {err}"
        reason = mask_credentials(reason)
        delay = self._delay
        self._delay = min(self._delay * 2.0, self.config.reconnect_max_s)
        with self._cond:
            started_outage = self._state != "lost"
            never_streamed = self._state == "starting"
            if started_outage:
                self._lost_since = time.monotonic()
            self._state = "lost"
            self._last_error = reason
            self._retries += 1
            attempts = self._retries
        if started_outage:
            logger.warning(
                "Camera %s %s: %s; retrying in %.1f s, backing off to every %.0f s",
                self.config.id,
                "unavailable" if never_streamed else "lost",
                reason,
                delay,
                self.config.reconnect_max_s,
                exc_info=None if expected else err,
            )
        else:
            logger.debug(
                "Camera %s still unavailable (attempt %d): %s; next try in %.1f s",
                self.config.id,
                attempts,
                reason,
                delay,
            )
        return self._sleep(delay)

    def _deliver(self, image: np.ndarray) -> None:
        """Put a frame in the slot: replace (live) or wait until the previous one was taken (file, folder)."""
        captured = time.monotonic()
        with self._cond:
            if not self.source.live:
                while self._slot is not None and not self._stopping():
                    self._cond.wait(POLL_S)
                if self._stopping():
                    return
                # A file frame "arrives" when the consumer can take it, as a camera running at the
                # processing rate would deliver it; time spent decoding ahead is not latency.
                captured = time.monotonic()
            previous = self._state
            down_s = captured - self._lost_since
            if previous == "lost":
                self._reconnects += 1
            self._state = "streaming"
            if self._slot is not None:
                self._dropped += 1
            self._slot = Frame(self._frames, captured, image)
            self._frames += 1
            self._times.append(captured)
            self._cond.notify_all()
        self._tell_consumer()
        self._delay = self.config.reconnect_min_s
        if previous == "lost":
            logger.info(
                "Camera %s recovered after %.1f s: %s, %dx%d",
                self.config.id,
                down_s,
                self.source.describe(),
                image.shape[1],
                image.shape[0],
            )
        elif previous == "starting":
            logger.info(
                "Camera %s streaming: %s, %dx%d",
                self.config.id,
                self.source.describe(),
                image.shape[1],
                image.shape[0],
            )

    def _end(self) -> None:
        """A file or folder ended with ``at_end = "stop"``: wait until the last frame is taken, set :attr:`ended`."""
        with self._cond:
            while self._slot is not None and not self._stopping():
                self._cond.wait(POLL_S)
            if self._slot is not None:  # stopped before the last frame was taken
                return
            self._state = "ended"
            frames = self._frames
        self.ended.set()
        self._tell_consumer()
        logger.info("End of %s after %d frames (camera.at_end = stop)", self.source.describe(), frames)
