"""Run-time figures: frame rate, per-stage latency percentiles, counters; and an opt-in Prometheus endpoint.

All recorders are thread-safe and bounded (a ring of the last samples), so a daemon that runs for
years holds the same memory on day one and day thousand.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

SAMPLES = 512


class RateMeter:
    """Events per second over a sliding window of the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window = window_s
        self._times: Deque[float] = collections.deque(maxlen=10_000)
        self._lock = threading.Lock()

    def tick(self, now: Optional[float] = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and self._times[0] < now - self._window:
                self._times.popleft()
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


class Latencies:
    """The last :data:`SAMPLES` durations (ms) of each named stage, with percentiles."""

    def __init__(self) -> None:
        self._samples: Dict[str, Deque[float]] = {}
        self._lock = threading.Lock()

    def record(self, stage: str, milliseconds: float) -> None:
        with self._lock:
            self._samples.setdefault(stage, collections.deque(maxlen=SAMPLES)).append(milliseconds)

    def counts(self) -> Dict[str, int]:
        """``{stage: samples retained}`` (at most :data:`SAMPLES` each)."""
        with self._lock:
            return {stage: len(values) for stage, values in self._samples.items() if values}

    def percentiles(self, quantiles: Iterable[float] = (50, 90, 99)) -> Dict[str, Dict[str, float]]:
        """``{stage: {"p50": ms, "p90": ms, "p99": ms}}`` over the retained samples."""
        wanted = list(quantiles)
        with self._lock:
            snapshot = {stage: list(values) for stage, values in self._samples.items() if values}
        return {
            stage: {f"p{q:g}": round(float(v), 2) for q, v in zip(wanted, np.percentile(values, wanted))}
            for stage, values in snapshot.items()
        }


class StageTimer:
    """``with timer.stage("detect"): ...`` records the block's wall time into :class:`Latencies`."""

    def __init__(self, latencies: Latencies) -> None:
        self._latencies = latencies

    class _Block:
        def __init__(self, latencies: Latencies, name: str) -> None:
            self._latencies, self._name = latencies, name

        def __enter__(self) -> None:
            self._started = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            self._latencies.record(self._name, (time.perf_counter() - self._started) * 1000.0)

    def stage(self, name: str) -> StageTimer._Block:
        return StageTimer._Block(self._latencies, name)


def _flatten(prefix: str, value: object, out: Dict[str, float]) -> None:
    if isinstance(value, bool):
        out[prefix] = float(value)
    elif isinstance(value, (int, float)):
        out[prefix] = float(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}_{key}" if prefix else str(key), item, out)


def _label(value: object) -> str:
    """A label value escaped as the text exposition format requires (backslash, quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: object) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _flag(value: object) -> Optional[float]:
    return float(value) if isinstance(value, bool) else None


def _gauge(lines: List[str], name: str, help_text: str, samples: List[Tuple[str, float]]) -> None:
    if samples:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(f"{name}{labels} {value:.6g}" for labels, value in samples)


def board_metrics(board: Mapping[str, object], namespace: str = "face_appliance") -> List[str]:
    """The board's health (``…/state`` → ``board``, :mod:`appliance.board_health`) as labelled gauges.

    ``{namespace}_board_temperature_celsius{zone="…"}``, ``{namespace}_gpu_load_ratio`` (0–1),
    ``{namespace}_board_throttling`` (0/1), ``{namespace}_clocks_locked`` (0/1) and
    ``{namespace}_board_power_mode{id="…",name="…"}`` (1). A value the board did not give (``null``)
    is left out rather than reported as 0; off a Jetson there are none.
    """
    lines: List[str] = []
    if board.get("jetson") is not True:
        return lines
    temperatures = board.get("temperatures_c")
    zones: List[Tuple[str, float]] = []
    if isinstance(temperatures, Mapping):
        for zone, value in sorted(temperatures.items(), key=lambda item: str(item[0])):
            number = _number(value)
            if number is not None:
                zones.append((f'{{zone="{_label(zone)}"}}', number))
    _gauge(lines, f"{namespace}_board_temperature_celsius", "Thermal zone temperature.", zones)
    load = _number(board.get("gpu_load_pct"))
    scalars = (
        ("gpu_load_ratio", "GPU load (0-1).", round(load / 100.0, 4) if load is not None else None),
        (
            "board_throttling",
            "1 while a thermal zone is at a passive or hot trip point, or over-current events occur.",
            _flag(board.get("throttling")),
        ),
        (
            "clocks_locked",
            "1 when jetson_clocks holds the CPU and GPU clocks at their maximum.",
            _flag(board.get("clocks_locked")),
        ),
    )
    for suffix, help_text, value in scalars:
        _gauge(lines, f"{namespace}_{suffix}", help_text, [("", value)] if value is not None else [])
    mode = board.get("power_mode")
    if isinstance(mode, Mapping) and mode.get("id") is not None:
        labels = f'{{id="{_label(mode.get("id"))}",name="{_label(mode.get("name") or "")}"}}'
        _gauge(lines, f"{namespace}_board_power_mode", "The nvpmodel power mode in force.", [(labels, 1.0)])
    return lines


#: Per-camera gauges: (key in a ``cameras`` entry of ``…/state``, gauge suffix, help text).
CAMERA_GAUGES = (
    ("processed_fps", "cameras_processed_fps", "Frames per second the pipeline processes from the camera."),
    ("fps", "cameras_capture_fps", "Frames per second the camera delivers."),
    ("frames_processed", "cameras_frames_processed", "Frames of the camera processed since the start."),
    ("dropped", "cameras_dropped", "Live frames replaced by a newer one before they were processed."),
    ("reconnects", "cameras_reconnects", "Times the camera delivered again after a loss."),
    ("events", "cameras_events", "Access events from the camera since the start."),
)


def camera_metrics(cameras: Sequence[object], namespace: str = "face_appliance") -> List[str]:
    """Each camera of ``…/state`` → ``cameras`` as gauges labelled ``camera="<id>"``
    (``{namespace}_cameras_processed_fps{camera="entry"}`` …), and ``{namespace}_cameras_streaming``
    (1 while it delivers frames, 0 when lost, stalled or ended)."""
    entries = [entry for entry in cameras if isinstance(entry, Mapping)]
    lines: List[str] = []
    for key, suffix, help_text in CAMERA_GAUGES:
        samples: List[Tuple[str, float]] = []
        for entry in entries:
            number = _number(entry.get(key))
            if number is not None:
                samples.append((f'{{camera="{_label(entry.get("id"))}"}}', number))
        _gauge(lines, f"{namespace}_{suffix}", help_text, samples)
    streaming = [
        (f'{{camera="{_label(entry.get("id"))}"}}', 1.0 if entry.get("state") == "streaming" else 0.0)
        for entry in entries
    ]
    _gauge(lines, f"{namespace}_cameras_streaming", "1 while the camera delivers frames.", streaming)
    return lines


def prometheus_text(state: Mapping[str, object], namespace: str = "face_appliance") -> str:
    """Numeric leaves of the state document in the Prometheus text exposition format; the board's
    health (``board``) as the labelled gauges of :func:`board_metrics`, each camera (``cameras``) as
    those of :func:`camera_metrics`."""
    flat: Dict[str, float] = {}
    _flatten("", {key: value for key, value in state.items() if key != "board"}, flat)
    lines = []
    for key in sorted(flat):
        name = f"{namespace}_{key}".replace(".", "_").replace("-", "_")
        name = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
        lines.append(f"# TYPE {name} gauge")
        lines.append(f"{name} {flat[key]:.6g}")
    board = state.get("board")
    if isinstance(board, Mapping):
        lines.extend(board_metrics(board, namespace))
    cameras = state.get("cameras")
    if isinstance(cameras, Sequence) and not isinstance(cameras, str):
        lines.extend(camera_metrics(cameras, namespace))
    return "\n".join(lines) + "\n"


class PrometheusServer:
    """``GET /metrics`` on 127.0.0.1:``port`` from a state provider; own thread; idempotent stop."""

    def __init__(self, port: int, provider: Callable[[], Mapping[str, object]]) -> None:
        self._provider = provider
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = prometheus_text(outer._provider()).encode("utf-8")
                except Exception:
                    logger.exception("building the Prometheus metrics failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="prometheus", daemon=True)

    @property
    def address(self) -> Tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()
        logger.info("Prometheus metrics on http://%s:%d/metrics", *self.address)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
