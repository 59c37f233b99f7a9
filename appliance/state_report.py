"""The retained documents the daemon publishes: ``…/state`` and ``…/model`` (DESIGN §5.3).

Built on the supervisor (main) thread from thread-safe views only: the model runtime's snapshots,
counters, the cameras' and the link's status.

Cameras: ``cameras`` lists every camera in the configuration's order, each with its capture status
(:meth:`appliance.camera.CameraThread.status`: ``id``, ``state``, ``fps`` of capture, ``dropped`` …)
and what the pipeline made of it: ``processed_fps``, ``frames_processed`` and ``events``. ``camera``
is the first camera's capture status, as it was with a single camera; ``fps`` and ``frames`` count
every camera's frames.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from . import __version__
from .board_health import BoardMonitor
from .events import rfc3339_now
from .outbox import NEARLY_FULL

if TYPE_CHECKING:
    from .daemon import Appliance


class StateReporter:
    """Composes the state and model documents of one :class:`appliance.daemon.Appliance`.

    Args:
        app: the appliance.
        board: the board's health (default: read from ``/``, sampled at most every few seconds); the
            daemon attaches the door hub's emitter to it so throttling becomes a door event.
    """

    def __init__(self, app: Appliance, board: Optional[BoardMonitor] = None) -> None:
        self.app = app
        self.board = board if board is not None else BoardMonitor()
        self._last_transfer: Optional[Dict[str, Any]] = None

    def camera_status(self) -> Dict[str, Any]:
        """The first camera's capture status (the ``camera`` key of a single-camera appliance)."""
        cameras = self.app.cameras
        return cameras[0].status() if cameras else {"state": "stopped"}

    def camera_statuses(self) -> List[Dict[str, Any]]:
        """Every camera's capture status, in the configuration's order."""
        return [camera.status() for camera in self.app.cameras or []]

    def cameras(self) -> List[Dict[str, Any]]:
        """The ``cameras`` list: each camera's capture status and what the pipeline made of it."""
        worker, recorder = self.app.worker, self.app.recorder
        documents = []
        for status in self.camera_statuses():
            camera_id = status["id"]
            meter = worker.camera_fps.get(camera_id) if worker is not None else None
            status["processed_fps"] = round(meter.rate(), 2) if meter is not None else 0.0
            status["frames_processed"] = worker.camera_frames.get(camera_id, 0) if worker is not None else 0
            status["events"] = recorder.camera_events.get(camera_id, 0) if recorder is not None else 0
            status["colourless"] = self._colourless(camera_id)
            documents.append(status)
        return documents

    def _colourless(self, camera_id: str) -> Optional[bool]:
        """Whether the camera's faces last checked for liveness had no colour (``None``: not checked)."""
        pipeline = self.app.pipeline
        lane = pipeline.lanes.get(camera_id) if pipeline is not None else None
        return lane.colourless if lane is not None else None

    def degraded(self) -> list:
        """One sentence per way the appliance runs below its configuration."""
        app = self.app
        degraded = list(app.degraded)
        if app.runtime is not None and app.runtime.degraded:
            degraded.append(f"backend: {app.runtime.degraded}")
        if app.engines is not None and app.runtime is not None:
            lines, _ = app.runtime.engine_report(app.engines.degraded)
            degraded.extend(f"backend: {text}" for text in lines)
        statuses = self.camera_statuses()
        for camera in statuses:
            which = "camera" if len(statuses) == 1 else f"camera {camera.get('id')}"
            if camera.get("state") == "lost":
                degraded.append(f"{which}: " + str(camera.get("last_error")))
            elif camera.get("state") == "stalled":
                degraded.append(f"{which}: stalled, no frame for {camera.get('stalled_s')} s")
            if self._colourless(str(camera.get("id"))):
                degraded.append(
                    f"{which}: faces without colour (an infrared / night mode?); liveness refuses nearly "
                    "every live face without colour: passages are denied for liveness"
                )
        if app.recorder is not None and app.recorder.outbox_error is not None:
            degraded.append(f"outbox: {app.recorder.outbox_error}")
        if app.outbox is not None and app.outbox.nearly_full:
            degraded.append(
                f"outbox: {round(100 * NEARLY_FULL)} % full of events the broker has not acknowledged; "
                "the oldest are dropped when it is full"
            )
        if app.keeper is not None and app.keeper.error is not None:
            degraded.append(f"sightings: faces are not kept: {app.keeper.error}")
        board = self.board.document()
        if board.get("throttling"):
            zones = ", ".join(str(zone.get("zone")) for zone in board.get("throttling_zones") or [])
            degraded.append(f"board: throttling ({zones or 'over-current'})")
        return list(dict.fromkeys(degraded))

    def state(self) -> Dict[str, Any]:
        """The retained ``…/state`` document."""
        app = self.app
        gallery = app.gallery
        worker = app.worker
        recorder = app.recorder
        engines, precisions = (
            app.runtime.engine_report(app.engines.status if app.engines is not None else lambda live: {})
            if app.runtime is not None
            else ({}, {})
        )
        return {
            "firmware": __version__,
            "device_id": app.config.device.id,
            "ts": rfc3339_now(),
            "uptime_s": round(time.monotonic() - app.started_at, 1),
            "ready": app.ready,
            "backend": {
                "type": app.config.backend.type,
                "degraded": app.runtime.degraded if app.runtime is not None else None,
                "engines": engines,
                "precisions": precisions,
            },
            "models": app.runtime.model_versions if app.runtime is not None else {},
            "gallery": {
                "identities": len(gallery.identities()) if gallery is not None else 0,
                "templates": len(gallery) if gallery is not None else 0,
            },
            "threshold": app.pipeline.settings.threshold
            if app.pipeline is not None
            else app.config.match.threshold,
            "fps": round(app.fps.rate(), 2),
            "frames": worker.frames_processed if worker is not None else 0,
            "events": recorder.events_total if recorder is not None else 0,
            "events_lost": recorder.events_lost if recorder is not None else 0,
            "camera": self.camera_status(),
            "cameras": self.cameras(),
            "latency_ms": app.latencies.percentiles(),
            "outbox": app.outbox.stats() if app.outbox is not None else {},
            "mqtt": app.link.status() if app.link is not None else {},
            "door": app.door.state() if app.door is not None else {},
            "fleet": app.fleet.state() if app.fleet is not None else None,
            "sightings": {"kept": app.keeper.kept, "lost": app.keeper.lost, "error": app.keeper.error}
            if app.keeper is not None
            else None,
            "adaptive": {"added": app.templates.added, "refused": dict(app.templates.refused)}
            if app.templates is not None
            else None,
            "area": app.area.state() if app.area is not None else None,
            "board": self.board.document(),
            "degraded": self.degraded(),
            "pid": os.getpid(),
        }

    def transfer(self) -> Optional[Dict[str, Any]]:
        """The CAN transfer's progress, or ``None`` without a UDS server."""
        if self.app.uds is None:
            return None
        progress = self.app.uds.progress()
        document: Dict[str, Any] = {
            "state": progress.state.value,
            "size": progress.size,
            "received": progress.received,
        }
        document.update(self.app.uds.drops())  # requests and frames a flooding node made it drop
        return document

    def transfer_changed(self) -> bool:
        """Whether the transfer progressed since the last call (``…/model`` is then republished)."""
        transfer = self.transfer()
        changed = transfer != self._last_transfer
        self._last_transfer = transfer
        return changed

    def model_document(self) -> Dict[str, Any]:
        """The retained ``…/model`` document (the CAN update fills the staged and transfer parts)."""
        app = self.app
        document: Dict[str, Any] = {
            "active": app.runtime.model_versions if app.runtime is not None else {},
            "staged": None,
            "transfer": self.transfer(),
            "swap": None,
            "last_error": None,
            "last_error_source": None,
            "last_error_at": None,
        }
        if app.swap is not None:
            document.update(app.swap.document())
        document["ts"] = rfc3339_now()
        return document


__all__ = ["StateReporter"]
