"""Fault injection for tests: ``FACE_APPLIANCE_FAULTS`` turns on failures a test cannot cause from outside.

The variable holds comma-separated ``name:value`` items; unset (always, in production) it does
nothing. Known faults:

* ``stall_pipeline_after:N`` — after N processed frames the pipeline thread blocks (as a model call
  that never returns would) until the daemon is told to stop: the systemd watchdog must notice.
* ``stall_camera_after:N`` (with ``stall_camera_s:S``, default: until stopped) — after N frames the
  camera source's read blocks for S seconds, once, as a hung driver or a stream that stops sending
  would: the state must show ``stalled``, the watchdog stop being fed, and frames flow again after.
* ``kill_at:POINT`` — the process SIGKILLs itself when a model swap reaches POINT (``staged``,
  ``validated``, ``templates_written``, ``committed``, ``health``): a power cut at that step.
* ``fail_after_switch:1`` — frames raise while a model switch is being health-checked: it must roll back.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from .camera import CameraSource

logger = logging.getLogger(__name__)

ENVIRONMENT = "FACE_APPLIANCE_FAULTS"


@dataclass(frozen=True)
class Faults:
    """The injected faults of this process (none unless the environment asks)."""

    stall_pipeline_after: Optional[int] = None
    stall_camera_after: Optional[int] = None
    stall_camera_s: Optional[float] = None
    kill_at: Optional[str] = None
    fail_after_switch: bool = False

    @classmethod
    def from_environment(cls) -> Faults:
        spec = os.environ.get(ENVIRONMENT, "").strip()
        if not spec:
            return cls()
        items: Dict[str, str] = {}
        for part in spec.split(","):
            name, _, value = part.partition(":")
            items[name.strip()] = value.strip()
        logger.warning("fault injection is on: %s", spec)
        stall = items.get("stall_pipeline_after")
        camera = items.get("stall_camera_after")
        camera_s = items.get("stall_camera_s")
        return cls(
            stall_pipeline_after=int(stall) if stall else None,
            stall_camera_after=int(camera) if camera else None,
            stall_camera_s=float(camera_s) if camera_s else None,
            kill_at=items.get("kill_at") or None,
            fail_after_switch=items.get("fail_after_switch", "0") not in ("", "0"),
        )

    def camera_source(self, source: CameraSource, stop: threading.Event) -> CameraSource:
        """``source``, or a wrapper of it that stalls when the camera stall fault is on."""
        if self.stall_camera_after is None:
            return source
        return _StallingSource(source, self.stall_camera_after, self.stall_camera_s, stop)

    def maybe_stall(self, frames_processed: int, stop: threading.Event) -> None:
        """Block the calling thread until ``stop`` when the stall fault is due."""
        if self.stall_pipeline_after is not None and frames_processed >= self.stall_pipeline_after:
            logger.warning("fault injection: the pipeline stalls now")
            stop.wait()

    def maybe_kill(self, point: str) -> None:
        """SIGKILL this process when the ``kill_at`` fault names ``point``."""
        if self.kill_at == point:
            logger.warning("fault injection: killed at %s", point)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class InjectedFaultError(RuntimeError):
    """An error raised on purpose by fault injection."""


class _StallingSource(CameraSource):
    """A camera source whose read blocks once, after ``after`` frames, for ``seconds`` (or until stopped)."""

    def __init__(
        self, inner: CameraSource, after: int, seconds: Optional[float], stop: threading.Event
    ) -> None:
        self.inner = inner
        self.live = inner.live
        self._after = after
        self._seconds = seconds
        self._stop = stop
        self._frames = 0
        self._done = False

    def check(self) -> None:
        self.inner.check()

    def open(self) -> None:
        self.inner.open()

    def read(self) -> Optional[np.ndarray]:
        if not self._done and self._frames >= self._after:
            self._done = True
            logger.warning("fault injection: the camera stalls now")
            self._stop.wait(self._seconds)
            logger.warning("fault injection: the camera stall ends")
        self._frames += 1
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()

    def describe(self) -> str:
        return self.inner.describe()
