"""The appliance daemon: ``face-appliance run``.

Threads (DESIGN §4), all stopped through one :class:`threading.Event`:

* **camera** (:class:`appliance.camera.CameraThread`): newest frame only for live sources, every frame
  for files; reconnects by itself.
* **pipeline** (this module): owns the models (and the CUDA context on a Jetson); per frame detect,
  track, embed where a decision still needs it, decide; each decision becomes an event written to
  the on-disk outbox before anyone is told. Remote commands are queued to this thread and carried
  out between frames, so they never race the models or the gallery.
* **MQTT** (:class:`appliance.mqtt_link.MqttLink`, paho's network thread): publishes the outbox in
  order, deletes an event on PUBACK, answers commands.
* **main thread**: the supervisor. Signals only set events (SIGTERM/SIGINT: stop; SIGHUP: reload);
  every second it checks the pipeline's heartbeat and pings the systemd watchdog only while frames
  are really being processed, republishes ``…/state``, and feeds ``STATUS=``.

Shutdown is staged: stop the camera, end the open tracks (their decisions still become events),
stop the pipeline thread, drain the outbox within ``outbox.drain_s``, publish ``offline``, release
the back-ends, close the stores. A video file that ends with ``camera.at_end = "stop"`` takes the
same path and the process exits 0.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, List, Optional

from . import __version__
from .camera import CameraThread, create_source
from .commands import (
    CommandError,
    EnrollCommand,
    ReloadCommand,
    RemoveCommand,
    SetThresholdCommand,
    StatusCommand,
    failure,
    parse,
    result,
)
from .config import ApplianceConfig
from .config_load import load_config
from .decisions import DecisionSettings
from .enrollment import Enroller
from .events import access_event, encode, rfc3339_now
from .faults import Faults
from .gallery.gallery import Gallery
from .metrics import Latencies, PrometheusServer, RateMeter
from .mqtt_link import MqttLink
from .outbox import Outbox, OutboxError
from .pipeline import Outcome, Pipeline
from .sdnotify import SystemdNotifier
from .trt_engines import SWITCH_TIMEOUT_S, EngineService, EngineSupervisor, EngineTarget, supervisor_for
from .updates.swap import SwapManager
from .vision.analyzer import FaceAnalyzer, backend_options, effective_backend
from .vision.image import ImageError, decode_image

logger = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"
#: A pipeline heartbeat older than this means frames are not being processed (no watchdog ping);
#: under a systemd watchdog it is two ping intervals, within these bounds.
STALL_S = 10.0
MIN_STALL_S = 2.0
SUPERVISOR_TICK_S = 0.5
#: With the camera unavailable this long after start-up, report READY anyway (degraded) rather than
#: let systemd's start timeout restart us in a loop while the camera is unplugged.
CAMERA_WAIT_S = 60.0


class Appliance:
    """The daemon. ``Appliance(config).run()`` returns the process exit code.

    Args:
        config: the validated configuration.
        config_path: the file it came from (re-read on reload).
        print_events: also write each event as a JSON line to stdout (the demo's view).
    """

    def __init__(
        self, config: ApplianceConfig, config_path: Optional[Path] = None, print_events: bool = False
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.print_events = print_events
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.started_at = time.monotonic()
        self.notifier = SystemdNotifier()
        self.latencies = Latencies()
        self.fps = RateMeter()
        self.commands: queue.Queue = queue.Queue(maxsize=100)  # (name, request id, command)
        self.heartbeat = 0.0
        self.loop_heartbeat = 0.0
        self.stall_s = STALL_S
        self.faults = Faults.from_environment()
        self.frames_processed = 0
        self.events_total = 0
        #: Events that could not be written to the outbox (a full disk), ever; and the current error.
        self.events_lost = 0
        self._outbox_error: Optional[str] = None
        self.ready = False
        self.error: Optional[str] = None
        self.analyzer: Optional[FaceAnalyzer] = None
        self.gallery: Optional[Gallery] = None
        self.outbox: Optional[Outbox] = None
        self.link: Optional[MqttLink] = None
        self.camera: Optional[CameraThread] = None
        self.pipeline: Optional[Pipeline] = None
        self.prometheus: Optional[PrometheusServer] = None
        self._pipeline_thread: Optional[threading.Thread] = None
        self._pipeline_done = threading.Event()
        self._state_published = 0.0
        self._degraded: List[str] = []
        #: callables for the pipeline thread, run between two frames: (action, done event, [result, error])
        self._actions: queue.Queue = queue.Queue()
        self._replaced: Optional[FaceAnalyzer] = None  # the analyzer part a model switch took out
        self.swap: Optional[SwapManager] = None
        self.uds: Optional[Any] = None
        self._last_transfer: Optional[Dict[str, Any]] = None
        #: TensorRT engines: which model runs where, and the background builds (backend.type = tensorrt)
        self.engines: Optional[EngineSupervisor] = None
        self._engine_service: Optional[EngineService] = None

    # -- life cycle ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, supervise until told to stop (or the video ended), stop. Returns the exit code."""
        self._install_signals()
        try:
            self.start()
        except Exception as err:
            logger.error("start-up failed: %s", err)
            logger.debug("start-up failure", exc_info=True)
            self.error = str(err)
            self.stop()
            return 1
        try:
            self._supervise()
        finally:
            self.stop()
        return 0 if self.error is None else 1

    def start(self) -> None:
        """Open the stores, load and warm up the models, connect, start the threads."""
        config = self.config
        storage = config.storage.dir
        storage.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox.open(
            storage / OUTBOX_FILE, config.outbox.max_events, config.outbox.max_age_h * 3600
        )
        key, degraded = effective_backend(config)
        if degraded:
            self._degraded.append(f"backend: {degraded}")
        self.notifier.status("loading models")
        self.engines = self._engine_supervisor(key)
        self.analyzer = FaceAnalyzer.from_config(
            config, opener=self.engines.opener() if self.engines is not None else None
        )
        if self.analyzer.degraded and f"backend: {self.analyzer.degraded}" not in self._degraded:
            self._degraded.append(f"backend: {self.analyzer.degraded}")
        for backend in self.analyzer._backends:
            backend.warmup(iterations=1)
        self.gallery = Gallery.open(config, self.analyzer.embedder.version, self.analyzer.embedder.dim)
        self._align_gallery()
        self.pipeline = Pipeline(
            self.analyzer, self.gallery, DecisionSettings.from_config(config), self.latencies
        )
        self.link = MqttLink(config, self.outbox, self._on_command)
        self._start_updates()
        self.link.publish_state(self.state())
        self.link.publish_model(self.model_document())
        self.link.start()
        if config.metrics.prometheus:
            self.prometheus = PrometheusServer(config.metrics.prometheus_port, self.state)
            self.prometheus.start()
        self.camera = CameraThread(
            config.camera,
            self.stop_event,
            self.faults.camera_source(create_source(config.camera), self.stop_event),
        )
        self.camera.start()
        self._pipeline_thread = threading.Thread(target=self._pipeline_main, name="pipeline", daemon=False)
        self._pipeline_thread.start()
        if self.engines is not None:
            self.engines.start(self._switch_engine)
        logger.info(
            "started: device %s, camera %s, back-end %s, %d templates in the gallery",
            config.device.id,
            self.camera.source.describe(),
            key,
            len(self.gallery),
        )

    def stop(self) -> None:
        """Staged shutdown; idempotent and safe after a failed start."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        self.stop_event.set()
        self.notifier.stopping()
        budget = time.monotonic() + self.config.outbox.drain_s + 10.0
        if self.engines is not None:
            self.engines.close()
        if self.uds is not None:
            self.uds.close()
        if self.swap is not None:
            self.swap.close()
        if self.camera is not None:
            self.camera.stop(timeout=5.0)
        if self._pipeline_thread is not None:
            self._pipeline_thread.join(timeout=max(1.0, budget - time.monotonic()))
            if self._pipeline_thread.is_alive():
                logger.warning("the pipeline thread did not stop in time (a model call stuck?)")
        if self.link is not None:
            if self.outbox is not None and self.outbox.depth():
                drained = self.link.drain(self.config.outbox.drain_s)
                if not drained:
                    logger.warning("%d event(s) stay in the outbox for the next start", self.outbox.depth())
            self.link.publish_state(self.state())
            self.link.stop(timeout=5.0)
        if self.prometheus is not None:
            self.prometheus.stop()
        for closable in (self._replaced, self.analyzer, self.gallery, self.outbox):
            if closable is not None:
                try:
                    closable.close()
                except Exception:
                    logger.exception("closing %s failed", type(closable).__name__)
        logger.info("stopped")

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, frame: Optional[FrameType]) -> None:
            self.stop_event.set()

        def reload(signum: int, frame: Optional[FrameType]) -> None:
            self.reload_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    # -- supervisor (main thread) --------------------------------------------------------------------

    def _supervise(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            self.stall_s = min(STALL_S, max(MIN_STALL_S, 2 * interval))
        last_ping = 0.0
        while not self.stop_event.wait(SUPERVISOR_TICK_S):
            now = time.monotonic()
            healthy = self._healthy(now)
            if healthy and not self.ready:
                self.ready = True
                self.notifier.ready()
                logger.info("ready after %.1f s", now - self.started_at)
            elif (
                not self.ready
                and now - self.started_at > CAMERA_WAIT_S
                and now - self.loop_heartbeat < self.stall_s
            ):
                self.ready = True
                self.notifier.ready(
                    "running without a camera: " + str(self._camera_status().get("last_error"))
                )
                logger.warning(
                    "ready without a camera after %.0f s; still retrying it", now - self.started_at
                )
            if interval is not None and healthy and now - last_ping >= interval:
                self.notifier.watchdog()
                last_ping = now
            if self.camera is not None and self.camera.check_stall() and now - self._state_published >= 1.0:
                self._publish_state(now)  # show the stall at once, not at the next state interval
            if now - self._state_published >= self.config.metrics.state_interval_s:
                self._publish_state(now)
            if self._pipeline_done.is_set():
                break
        self._publish_state(time.monotonic())

    def _healthy(self, now: float) -> bool:
        """Frames are being processed — or the camera is known to be away and the loop is alive.

        A pipeline stuck in a call (its loop no longer turning), or a camera that streams while no
        frame gets processed, is unhealthy: the watchdog pings stop and systemd restarts us.
        """
        if self.heartbeat == 0 and not self.ready:
            return False  # not ready: models warm, but no frame processed yet
        loop_alive = now - self.loop_heartbeat < self.stall_s
        frames_flow = now - self.heartbeat < self.stall_s
        camera_away = self._camera_status().get("state") in ("lost", "starting")
        return loop_alive and (frames_flow or camera_away)

    def _camera_status(self) -> Dict[str, Any]:
        return self.camera.status() if self.camera is not None else {"state": "stopped"}

    def _publish_state(self, now: float) -> None:
        state = self.state()
        if self.link is not None:
            self.link.publish_state(state)
            transfer = self._transfer_document()
            if transfer != self._last_transfer:
                self._last_transfer = transfer
                self.publish_model()
        gallery_size = state["gallery"]["identities"]
        self.notifier.status(
            f"{state['fps']:.1f} fps, {gallery_size} identities, outbox {state['outbox'].get('depth', 0)}"
        )
        self._state_published = now

    # -- pipeline thread -----------------------------------------------------------------------------

    def _pipeline_main(self) -> None:
        try:
            self._pipeline_loop()
        except Exception as err:
            logger.exception("the pipeline failed; stopping")
            self.error = f"pipeline: {err}"
            self.stop_event.set()
        finally:
            self._pipeline_done.set()

    def _pipeline_loop(self) -> None:
        pipeline, camera = self.pipeline, self.camera
        if pipeline is None or camera is None:
            return
        while not self.stop_event.is_set():
            self._run_commands()
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
            frame = camera.get(timeout=0.2)
            if frame is None:
                if camera.ended.is_set():
                    logger.info("the video ended; finishing")
                    break
                self.loop_heartbeat = time.monotonic()
                continue
            self.faults.maybe_stall(self.frames_processed, self.stop_event)
            try:
                if self.faults.fail_after_switch and self.swap is not None and self.swap.in_health_check():
                    from .faults import InjectedFaultError

                    raise InjectedFaultError("fault injection: a frame fails after the model switch")
                outcomes = pipeline.process(frame.image, frame.timestamp)
            except Exception as err:
                if self.swap is None or not self.swap.pipeline_failed(err):
                    raise
                logger.error("a frame failed right after a model switch: %s", err)
                continue
            self.frames_processed += 1
            self.fps.tick()
            self.heartbeat = self.loop_heartbeat = time.monotonic()
            self._emit(outcomes)
        self._emit(pipeline.finish(time.monotonic()))
        self._run_commands()

    def _emit(self, outcomes: List[Outcome]) -> None:
        if not outcomes or self.outbox is None or self.analyzer is None:
            return
        models = self.analyzer.model_versions
        for outcome in outcomes:
            latency_ms = (time.monotonic() - outcome.captured_at) * 1000.0
            crop = outcome.crop if self.config.events.face_crop else None
            event = access_event(
                outcome.decision,
                self.config.device.id,
                self.config.camera.id,
                models,
                latency_ms,
                crop,
                self.config.events.crop_quality,
            )
            payload = encode(event)
            try:
                self.outbox.put(event["event_id"], payload)
            except OutboxError as err:  # disk full, I/O error: keep recognising, report, retry next event
                self._outbox_failed(err, event["decision"])
                continue
            self._outbox_works()
            self.events_total += 1
            self.latencies.record("decision_to_outbox", latency_ms)
            logger.info(
                "access event: %s, track %d, %d frames",
                event["decision"],
                outcome.decision.track_id,
                outcome.decision.frames,
            )
            logger.debug("track %d: %s", outcome.decision.track_id, outcome.decision.reason)
            if self.print_events:
                sys.stdout.write(payload.decode("utf-8") + "\n")
                sys.stdout.flush()
        if self.link is not None:
            self.link.notify()

    def _outbox_failed(self, err: OutboxError, decision: str) -> None:
        """An event could not be stored: counted, logged once per episode, shown in the state."""
        self.events_lost += 1
        if self._outbox_error is None:
            logger.error(
                "the outbox cannot store events (%s); access events are lost until it can again (is the "
                "disk full?); the daemon keeps running",
                err,
            )
        else:
            logger.warning("access event lost (%s): the outbox still cannot store events", decision)
        self._outbox_error = str(err)

    def _outbox_works(self) -> None:
        if self._outbox_error is not None:
            logger.info("the outbox stores events again; %d event(s) were lost in all", self.events_lost)
            self._outbox_error = None

    # -- commands ------------------------------------------------------------------------------------

    def _on_command(self, name: str, payload: bytes) -> None:
        """Called from paho's thread: validate, then queue for the pipeline thread."""
        try:
            request_id, command = parse(name, payload)
        except CommandError as err:
            self._answer(name, failure(err.request_id, err.code, str(err)))
            return
        try:
            self.commands.put_nowait((name, request_id, command))
        except queue.Full:
            self._answer(name, failure(request_id, "busy", "too many commands waiting; try again"))

    def _answer(self, name: str, document: Dict[str, Any]) -> None:
        """Publish a command's answer. Never raises: a bad answer must not end the pipeline thread."""
        if self.link is None:
            return
        try:
            self.link.publish_result(name, document)
        except ValueError as err:  # a command name or a result that cannot go on the wire
            logger.warning("the answer to command %r cannot be sent: %s", name[:64], err)

    def _run_commands(self) -> None:
        self._run_actions()
        while True:
            try:
                name, request_id, command = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                outcome = self._execute(command)
            except CommandError as err:
                self._answer(name, failure(request_id, err.code, str(err)))
            except Exception as err:
                logger.exception("command %s failed", name)
                self._answer(name, failure(request_id, "failed", f"{type(err).__name__}: {err}"))
            else:
                self._answer(name, result(request_id, outcome))

    def _execute(self, command: object) -> Dict[str, Any]:
        gallery, analyzer, pipeline = self.gallery, self.analyzer, self.pipeline
        if gallery is None or analyzer is None or pipeline is None:
            raise CommandError("not ready", "busy")
        if isinstance(command, StatusCommand):
            return self.state()
        if isinstance(command, SetThresholdCommand):
            old = pipeline.settings.threshold
            pipeline.set_threshold(command.threshold)
            logger.info("match threshold changed from %.3f to %.3f by command", old, command.threshold)
            return {"old": old, "threshold": command.threshold}
        if isinstance(command, ReloadCommand):
            return self.reload()
        if isinstance(command, RemoveCommand):
            from .gallery.errors import IdentityError

            try:
                removed = gallery.remove(command.id)
            except IdentityError as err:
                raise CommandError(str(err)) from None
            return {"id": command.id, "templates_removed": removed}
        if isinstance(command, EnrollCommand):
            return self._enroll(command)
        raise CommandError("unsupported command")

    def _enroll(self, command: EnrollCommand) -> Dict[str, Any]:
        from .gallery.errors import IdentityError
        from .gallery.store import check_identity_id, slugify, utc_now

        if self.analyzer is None or self.gallery is None:
            raise CommandError("not ready", "busy")
        try:
            image = decode_image(command.image_bytes(), "image")
        except ImageError as err:
            raise CommandError(str(err), "invalid") from None
        identity_id = command.id or slugify(command.name)
        try:
            check_identity_id(identity_id)
            enroller = Enroller(self.analyzer, self.gallery, self.config.gallery)
            outcome = enroller.enroll(
                identity_id,
                command.name,
                [("image", image)],
                command.external_id,
                command.consent_at or utc_now(),
                command.face,
            )
        except IdentityError as err:
            raise CommandError(str(err)) from None
        photo = outcome.photos[0]
        if not outcome.template_ids:
            raise CommandError(f"photo refused: {photo.reason}")
        return {
            "id": identity_id,
            "templates": len(outcome.template_ids),
            "photo": photo.reason,
            "duplicates": outcome.duplicates,
        }

    def reload(self) -> Dict[str, Any]:
        """Re-read thresholds from the configuration file and the gallery from disk (SIGHUP, ``reload``)."""
        self.notifier.reloading()
        try:
            if self.config_path is not None:
                fresh = load_config(self.config_path)
                self.config.match.threshold = fresh.match.threshold
                self.config.decision = fresh.decision
                self.config.liveness.threshold = fresh.liveness.threshold
            if self.pipeline is not None:
                self.pipeline.set_threshold(self.config.match.threshold)
            if self.analyzer is not None and self.analyzer.liveness is not None:
                self.analyzer.liveness.threshold = self.config.liveness.threshold
            if self.gallery is not None:
                self.gallery.refresh()
            logger.info(
                "reloaded: threshold %.3f, %d templates", self.config.match.threshold, len(self.gallery or [])
            )
        finally:
            self.notifier.ready()
        return {"threshold": self.config.match.threshold, "templates": len(self.gallery or [])}

    # -- TensorRT engines ----------------------------------------------------------------------------

    def _engine_supervisor(self, key: str) -> Optional[EngineSupervisor]:
        """With TensorRT in use: the supervisor that opens each model from its cached engine, or on the
        CPU while the engine is built in the background (``fallback = "none"``: builds it first)."""
        if key != "tensorrt":
            return None
        self._engine_service = EngineService(backend_options(self.config, build_missing=False))
        return supervisor_for(
            self.config, self._engine_service, backend_options(self.config), self.notifier.extend_timeout
        )

    def _switch_engine(self, target: EngineTarget) -> bool:
        """Put a freshly built engine in place of the model's CPU back-end, between two frames.

        Runs on the pipeline thread (which owns the models and the CUDA context); ``False`` when the
        model no longer runs on the CPU or was replaced meanwhile by a model update.
        """
        service = self._engine_service
        if service is None:
            return False

        def switch() -> bool:
            analyzer = self.analyzer
            if analyzer is None:
                return False
            current = analyzer.loaded.get(target.name)
            if current is None or current.key != "cpu" or current.spec != target.spec:
                return False  # already on TensorRT, or replaced by a model update meanwhile
            backend = service.open(target)
            try:
                backend.warmup(iterations=1)
                fresh = analyzer.replaced(target.name, backend)
            except BaseException:
                backend.close()
                raise
            self.analyzer = fresh
            if self.pipeline is not None:
                self.pipeline.analyzer = fresh
            analyzer.close()  # it holds only the CPU back-end that was replaced
            return True

        return bool(self.run_between_frames(switch, SWITCH_TIMEOUT_S))

    # -- model updates -------------------------------------------------------------------------------

    def _start_updates(self) -> None:
        """The swap manager, and the UDS server on the CAN bus when ``updates.enabled``."""
        from .updates.swap import SwapManager, SwapSettings

        updates = self.config.updates
        trusted: Dict[str, Any] = {}
        if updates.enabled or updates.trusted_keys_dir.is_dir():
            from .updates.keys import load_trusted_keys

            trusted = load_trusted_keys(updates.trusted_keys_dir)
        self.swap = SwapManager(
            self,
            trusted,
            SwapSettings(
                health_frames=updates.health_frames,
                health_timeout_s=updates.health_timeout_s,
                latency_factor=updates.latency_factor,
            ),
            updates.max_package_mb * 2**20,
        )
        self.swap.active.prune()
        if not updates.enabled:
            return
        from .updates.uds_server import open_uds_server

        self.uds = open_uds_server(self.config, self.swap)
        self.uds.start()
        logger.info("model updates: UDS server on %s %s", updates.can.interface, updates.can.channel)

    def run_between_frames(self, action: Callable[[], Any], timeout: float) -> Any:
        """Run ``action`` on the pipeline thread between two frames and return its result.

        Raises:
            whatever ``action`` raised; UpdateError when the pipeline did not get to it in time.
        """
        from .updates.errors import UpdateError

        if threading.current_thread() is self._pipeline_thread or self._pipeline_thread is None:
            return action()
        done = threading.Event()
        outcome: List[Any] = [None, None]
        self._actions.put((action, done, outcome))
        if not done.wait(timeout):
            raise UpdateError(f"the pipeline did not reach a frame boundary within {timeout:.0f} s")
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    def _run_actions(self) -> None:
        while True:
            try:
                action, done, outcome = self._actions.get_nowait()
            except queue.Empty:
                return
            try:
                outcome[0] = action()
            except BaseException as err:  # handed to the waiting thread
                outcome[1] = err
            finally:
                done.set()

    def analyzer_replaced(self, name: str, backend: Any) -> None:
        """Put ``backend`` in place of model ``name`` (pipeline thread); the old part is kept for undo."""
        if self.analyzer is None:
            return
        if self._replaced is not None:
            self._replaced.close()
        old = self.analyzer
        self.analyzer = old.replaced(name, backend)
        self._replaced = old
        if self.pipeline is not None:
            self.pipeline.analyzer = self.analyzer

    def release_replaced(self) -> None:
        """The switch is final: release the back-end it took out."""
        replaced, self._replaced = self._replaced, None
        if replaced is not None:
            replaced.close()

    def restore_replaced(self) -> None:
        """Undo the last :meth:`analyzer_replaced` (pipeline thread)."""
        replaced, self._replaced = self._replaced, None
        if replaced is None or self.analyzer is None:
            return
        ((name, backend),) = replaced.loaded.items()
        fresh = self.analyzer
        self.analyzer = fresh.replaced(name, backend)
        fresh.close()  # now holds only the back-end that is being undone
        if self.pipeline is not None:
            self.pipeline.analyzer = self.analyzer

    def publish_model(self) -> None:
        if self.link is not None:
            self.link.publish_model(self.model_document())

    def _align_gallery(self) -> None:
        """Templates for the active embedder: re-embed from the crops when the store has only other versions.

        That happens after a model change that did not complete its switch here (a damaged package
        fell back to the registry model, or the pointer was reset by hand).
        """
        from .gallery.reembed import reembed, rows_for

        gallery, analyzer = self.gallery, self.analyzer
        if gallery is None or analyzer is None or len(gallery):
            return
        versions = {v: n for v, n in gallery.store.model_versions().items() if v != gallery.model_version}
        if not versions:
            return
        source = max(versions, key=lambda version: versions[version])
        logger.warning(
            "the gallery has no templates of %s but %d of %s: re-embedding them from the enrolment crops",
            gallery.model_version,
            versions[source],
            source,
        )
        result = reembed(gallery.store, source, analyzer.embedder.embed)
        gallery.store.put_version(gallery.model_version, rows_for(gallery.store, result))
        gallery.refresh()

    # -- documents -----------------------------------------------------------------------------------

    def state(self) -> Dict[str, Any]:
        """The retained ``…/state`` document."""
        identities = len(self.gallery.identities()) if self.gallery is not None else 0
        camera = self._camera_status()
        degraded = list(self._degraded)
        if self.engines is not None:
            degraded.extend(f"backend: {text}" for text in self.engines.degraded())
        if camera.get("state") == "lost":
            degraded.append("camera: " + str(camera.get("last_error")))
        elif camera.get("state") == "stalled":
            degraded.append(f"camera: stalled, no frame for {camera.get('stalled_s')} s")
        if self._outbox_error is not None:
            degraded.append(f"outbox: {self._outbox_error}")
        return {
            "firmware": __version__,
            "device_id": self.config.device.id,
            "ts": rfc3339_now(),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "ready": self.ready,
            "backend": {
                "type": self.config.backend.type,
                "degraded": self.analyzer.degraded if self.analyzer else None,
                "engines": self.engines.status() if self.engines is not None else {},
            },
            "models": self.analyzer.model_versions if self.analyzer is not None else {},
            "gallery": {
                "identities": identities,
                "templates": len(self.gallery) if self.gallery is not None else 0,
            },
            "threshold": self.pipeline.settings.threshold
            if self.pipeline is not None
            else self.config.match.threshold,
            "fps": round(self.fps.rate(), 2),
            "frames": self.frames_processed,
            "events": self.events_total,
            "events_lost": self.events_lost,
            "camera": camera,
            "latency_ms": self.latencies.percentiles(),
            "outbox": self.outbox.stats() if self.outbox is not None else {},
            "mqtt": self.link.status() if self.link is not None else {},
            "degraded": degraded,
            "pid": os.getpid(),
        }

    def _transfer_document(self) -> Optional[Dict[str, Any]]:
        if self.uds is None:
            return None
        progress = self.uds.progress()
        return {"state": progress.state.value, "size": progress.size, "received": progress.received}

    def model_document(self) -> Dict[str, Any]:
        """The retained ``…/model`` document (the CAN update fills the staged and transfer parts)."""
        document: Dict[str, Any] = {
            "active": self.analyzer.model_versions if self.analyzer is not None else {},
            "staged": None,
            "transfer": self._transfer_document(),
            "swap": None,
            "last_error": None,
        }
        if self.swap is not None:
            document.update(self.swap.document())
        document["ts"] = rfc3339_now()
        return document


def run_daemon(config: ApplianceConfig, config_path: Optional[Path], print_events: bool = False) -> int:
    """Entry point of ``face-appliance run``."""
    return Appliance(config, config_path, print_events).run()


__all__ = ["Appliance", "run_daemon"]
