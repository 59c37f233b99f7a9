"""The appliance daemon: ``face-appliance run`` — its life cycle and the supervisor.

Threads (DESIGN §4), all stopped through one :class:`threading.Event`:

* **pipeline** (:class:`appliance.pipeline_worker.PipelineWorker`): the one owner of the loaded
  models (:class:`appliance.runtime.ModelRuntime`; with TensorRT, the CUDA context). It loads them,
  then per turn takes the newest frame of every camera, detects and tracks per camera, embeds (and
  checks liveness) where a decision still needs it — every camera's faces in one batched call — and
  decides per camera; between two turns it runs the jobs other threads submitted (an engine
  switch-over, a model update's steps) and the remote commands
  (:class:`appliance.command_service.CommandService`).
* **camera** (:class:`appliance.camera.CameraThread`), one per configured camera (``[camera]`` or
  each ``[[cameras]]`` table): newest frame only for live sources, every frame for files; reconnects
  by itself. A camera that is lost or stalls only stops contributing frames; the others go on.
* **MQTT** (:class:`appliance.mqtt_link.MqttLink`, paho's network thread): publishes the outbox in
  order, deletes an event on PUBACK, receives commands.
* **engine-builder** (:class:`appliance.runtime.engines.EngineSupervisor`, TensorRT only) and
  **model-swap** (:class:`appliance.updates.swap.SwapManager`): produce files (engines, staged
  packages) and submit jobs to the pipeline thread; they never touch a model or the gallery.
* **main thread**: this module's supervisor. Signals only set events (SIGTERM/SIGINT: stop; SIGHUP:
  reload); every half second it checks the pipeline's heartbeat and pings the systemd watchdog only
  while frames are really being processed, and republishes ``…/state``
  (:class:`appliance.state_report.StateReporter`).

Shutdown is staged within one deadline that every join shares (:data:`STOP_BUDGET_S`, inside the
unit's ``TimeoutStopSec``): cancel the builds and the swap, stop the cameras, let the pipeline end
its tracks (their decisions still become events) and close the models on its own thread, drain the
outbox, publish ``offline``, close the stores. Video files that end with ``camera.at_end = "stop"``
take the same path once every camera has ended, and the process exits 0.

Every camera's grant drives the one door of ``[door]`` (and the ``[osdp]`` panel): an appliance with
an entry and an exit camera opens the same door for either; the door events that follow a grant
name its ``access_event_id``, whose event carries the ``camera_id``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, List, Optional

from .access.area import AreaFeed
from .access.area_link import AreaLink
from .access.credentials import CredentialInbox
from .access.judge import AccessJudge
from .access.passback import open_presence
from .access.presence import PresenceStore
from .attack_guard import AttackGuard
from .camera import CameraThread, create_source
from .change_thread import ChangeThread
from .command_service import CommandService
from .config import ApplianceConfig
from .decisions import DecisionSettings
from .event_mac import EventKey
from .event_recorder import EventRecorder
from .faults import Faults
from .gallery.gallery import Gallery
from .logs import model_fields
from .metrics import Latencies, PrometheusServer, RateMeter
from .mqtt_link import MqttLink
from .outbox import Outbox
from .peripherals import PeripheralHub, create_peripherals
from .pipeline import Outcome, Pipeline
from .pipeline_worker import PipelineWorker
from .runtime import ModelLoader, ModelRuntime, model_targets
from .runtime.engines import EngineSupervisor
from .sightings.keeper import KeepSettings, SightingKeeper
from .sightings.store import STORE_FILE, ClusterSettings, SightingStore
from .state_report import StateReporter
from .systemd_notify import SystemdNotifier
from .template_update import TemplateUpdater
from .updates.swap import SwapManager

logger = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"
SIGHTINGS_FILE = STORE_FILE  # appliance.sightings.store: sightings.db
#: A pipeline heartbeat older than this means frames are not being processed (no watchdog ping);
#: under a systemd watchdog it is two ping intervals, within these bounds.
STALL_S = 10.0
MIN_STALL_S = 2.0
SUPERVISOR_TICK_S = 0.5
#: With the camera unavailable this long after start-up, report READY anyway (degraded) rather than
#: let systemd's start timeout restart us in a loop while the camera is unplugged.
CAMERA_WAIT_S = 60.0
#: Everything the stop does shares this deadline: the unit's TimeoutStopSec is 30 s, and systemd
#: kills what is still running then.
STOP_BUDGET_S = 25.0
#: Kept from the outbox drain for publishing the last state and ``offline``.
OFFLINE_RESERVE_S = 3.0
#: The longest the stop waits for a cancelled engine build (within the shared deadline).
BUILD_JOIN_S = 3.0
#: How long a background thread waits for the pipeline thread to take a job (an engine switch).
JOB_TIMEOUT_S = 60.0


class Deadline:
    """One point in time every stage of the stop shares (no sum of per-stage timeouts)."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self, reserve: float = 0.0) -> float:
        """Seconds left, less ``reserve``; never negative."""
        return max(0.0, self.at - time.monotonic() - reserve)


class Appliance:
    """The daemon. ``Appliance(config).run()`` returns the process exit code.

    Args:
        config: the validated configuration.
        config_path: the file it came from (re-read on reload).
        print_events: also write each event as a JSON line to stdout (the demo's view).
        stop_budget_s: the shared deadline of the stop.
    """

    def __init__(
        self,
        config: ApplianceConfig,
        config_path: Optional[Path] = None,
        print_events: bool = False,
        stop_budget_s: float = STOP_BUDGET_S,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.print_events = print_events
        self.stop_budget_s = stop_budget_s
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.started_at = time.monotonic()
        self.notifier = SystemdNotifier()
        self.latencies = Latencies()
        self.fps = RateMeter()
        self.stall_s = STALL_S
        self.faults = Faults.from_environment()
        self.ready = False
        self.error: Optional[str] = None
        #: Start-up degradations (the back-end fell back, …) as sentences for ``…/state``.
        self.degraded: List[str] = []
        self.runtime: Optional[ModelRuntime] = None
        self.engines: Optional[EngineSupervisor] = None
        self.worker: Optional[PipelineWorker] = None
        self.gallery: Optional[Gallery] = None
        self.pipeline: Optional[Pipeline] = None
        self.outbox: Optional[Outbox] = None
        self.recorder: Optional[EventRecorder] = None
        self.templates: Optional[TemplateUpdater] = None  # adaptive.enabled
        #: Gallery work off the pipeline thread: removals, readings of the store, adaptive templates.
        self.changes = ChangeThread()
        self.sightings: Optional[SightingStore] = None  # faces kept (events.keep_crops_h, [unknowns])
        self.keeper: Optional[SightingKeeper] = None
        #: The identities' last passages (anti-passback); written on the pipeline thread.
        self.presence: Optional[PresenceStore] = None
        #: The other doors' passages (``access.anti_passback.area_doors``).
        self.area: Optional[AreaFeed] = None
        self.area_link: Optional[AreaLink] = None
        self.commands: Optional[CommandService] = None
        self.link: Optional[MqttLink] = None
        self.cameras: List[CameraThread] = []
        self.prometheus: Optional[PrometheusServer] = None
        self.swap: Optional[SwapManager] = None
        self.uds: Optional[Any] = None
        self.door: Optional[PeripheralHub] = None
        self.fleet: Optional[Any] = None  # appliance.fleet.member.FleetMember with [fleet] enabled
        self.reporter = StateReporter(self)
        self._state_published = 0.0
        self._stopped = False

    # -- what the swap and the reporter read -----------------------------------------------------------

    @property
    def camera(self) -> Optional[CameraThread]:
        """The first camera (the only one of a ``[camera]`` configuration)."""
        return self.cameras[0] if self.cameras else None

    @property
    def frames_processed(self) -> int:
        return self.worker.frames_processed if self.worker is not None else 0

    def state(self) -> Dict[str, Any]:
        return self.reporter.state()

    def model_document(self) -> Dict[str, Any]:
        return self.reporter.model_document()

    def publish_model(self) -> None:
        if self.link is not None:
            self.link.publish_model(self.model_document())

    # -- life cycle ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Start, supervise until told to stop (or the video ended), stop. Returns the exit code."""
        self._install_signals()
        try:
            self.start()
        except Exception as err:
            if self.stop_event.is_set():  # SIGTERM while starting (an engine build, say): a clean stop
                logger.info("stopped during start-up (%s)", err)
                self.stop()
                return 0
            logger.error("start-up failed: %s", err)
            logger.debug("start-up failure", exc_info=True)
            self.error = str(err)
            self.stop()
            return 1
        try:
            self._supervise()
        finally:
            self.stop()
        if self.error is None and self.worker is not None and self.worker.error is not None:
            self.error = self.worker.error
        return 0 if self.error is None else 1

    def start(self) -> None:
        """Open the stores, load the models on the pipeline thread, connect, start the threads."""
        config = self.config
        storage = config.storage.dir
        storage.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox.open(
            storage / OUTBOX_FILE, config.outbox.max_events, config.outbox.max_age_h * 3600
        )
        self.notifier.status("loading models")
        loader = ModelLoader(config)
        if loader.key == "tensorrt":
            self.engines = self._engine_supervisor(loader)
            loader.engines = self.engines
        self.runtime = ModelRuntime(config, loader)
        targets, notes = model_targets(config)
        self.worker = PipelineWorker(
            self.runtime, self.stop_event, self.reload_event, self.faults, self.fps, self.latencies
        )
        runtime = self.runtime

        def load() -> Gallery:  # on the pipeline thread: it owns what it opens
            runtime.load(targets, notes)
            version, dim = runtime.embedder
            gallery = Gallery.open(config, version, dim)
            try:
                runtime.attach_gallery(gallery)
            except BaseException:
                gallery.close(rebuild_stop_s=0.0)  # a failed start waits for no rebuild of its index
                raise
            return gallery

        self.worker.start(load)
        self.gallery = self.worker.wait_loaded()
        store = self.gallery.store
        self._open_sightings()
        if self.keeper is not None:  # a face removed or forgotten takes what was kept of it along
            self.gallery.face_forgotten = self.keeper.forget_identity
        self.presence = open_presence(config)
        event_key = self._event_key()
        self._open_area(event_key)
        self.pipeline = Pipeline(
            self.runtime,
            self.gallery,
            DecisionSettings.from_config(config),
            self.latencies,
            AccessJudge.for_appliance(config, store, self.presence),
            [camera.id for camera in config.configured_cameras],
            views=pipeline_views(config),
            guard=attack_guard(config),
        )
        if config.adaptive.enabled:
            self.templates = TemplateUpdater(
                self.gallery, config.adaptive, config.liveness.enabled, changes=self.changes
            )
        if config.configured_readers:
            self.pipeline.credentials = CredentialInbox(wake=self.worker.frame_ready.set)
        outbox = self.outbox
        self.door = PeripheralHub(
            create_peripherals(config, self.pipeline.credentials),
            config.device.id,
            lambda event_id, payload: outbox.put(event_id, payload, "door"),
            self._notify_link,
            event_key,
        )
        doors: List[Any] = [p for p in self.door.peripherals if p.source == "door"]
        closing = [door for door in doors if door.config.unlock.holidays]
        tables = store.policy_tables() if closing else None
        for door in closing:  # shut from its first wake on a holiday
            door.set_closed_days(tables.days_of(door.config.unlock.holidays))
        self.door.start()
        doors = [door for door in doors if door in self.door.peripherals]  # those that could not start: gone
        self.degraded.extend(self.door.failures)
        self.reporter.board.attach(self.door.emitter("board"))  # throttling start/end as door events

        self.recorder = EventRecorder(
            config,
            self.outbox,
            self.latencies,
            self._notify_link,
            self.print_events,
            self.door.on_passage if self.door.peripherals else None,
            store.identity,
            self._stored_listener(),
            self.door.emitter("liveness"),
            event_key,
        )
        self.commands = CommandService(
            config,
            self.config_path,
            self.runtime,
            self.pipeline,
            self._answer,
            self.state,
            self.notifier.reloading,
            self.notifier.ready,
            sightings=self.sightings,
            templates=self.templates,
            changes=self.changes,
            presence=self.presence,
            doors=doors,
            area=self.area,
        )
        self.link = MqttLink(config, self.outbox, self.commands.receive)
        if self.area is not None:  # a session of its own, kept by the broker while this door is away
            self.area_link = AreaLink(config, self.area)
            self.area_link.start()
        self.fleet = self._fleet_member(self.link)
        self._start_updates()
        self.link.publish_state(self.state())
        self.link.publish_model(self.model_document())
        self.link.start()
        if config.metrics.prometheus:
            self.prometheus = PrometheusServer(config.metrics.prometheus_port, self.state)
            self.prometheus.start()
        for camera_config in config.configured_cameras:
            camera = CameraThread(
                camera_config,
                self.stop_event,
                self.faults.camera_source(create_source(camera_config), self.stop_event),
                wake=self.worker.frame_ready,
            )
            self.cameras.append(camera)  # before start(): stop() stops whatever was created
            camera.start()
        self.worker.go(self.pipeline, self.cameras, self.commands, self.recorder, self.swap)
        if self.fleet is not None:
            self.fleet.start()  # its thread embeds through the pipeline thread, which runs now
        if self.engines is not None:
            self.engines.start(self._adopt_engine)
        logger.info(
            "started: device %s, %s %s, back-end %s, %d templates in the gallery",
            config.device.id,
            "camera" if len(self.cameras) == 1 else "cameras",
            ", ".join(
                camera.source.describe()
                if len(self.cameras) == 1
                else f"{camera.config.id} ({camera.source.describe()})"
                for camera in self.cameras
            ),
            loader.key,
            len(self.gallery),
            extra=model_fields(self.runtime.model_versions),
        )

    def stop(self) -> None:
        """Staged shutdown within one shared deadline; idempotent and safe after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        deadline = Deadline(self.stop_budget_s)
        self.stop_event.set()
        self.notifier.stopping()
        if self.engines is not None:
            self.engines.cancel()
        if self.swap is not None:
            self.swap.cancel()
        if self.uds is not None:
            self.uds.close()
        if self.area_link is not None:  # what is not applied yet comes again at the next start
            self.area_link.stop()
        fleet_ended = True
        if self.fleet is not None:  # its embeddings wait on the pipeline thread: stopped first
            fleet_ended = self.fleet.close(min(BUILD_JOIN_S, deadline.remaining(OFFLINE_RESERVE_S)))
        for camera in self.cameras:  # all are stopping already (the shared stop event): joined in turn
            camera.stop(timeout=deadline.remaining(OFFLINE_RESERVE_S))
        pipeline_ended = True
        if self.worker is not None:
            budget = deadline.remaining(OFFLINE_RESERVE_S)
            if not self.worker.loaded.done():  # still loading: maybe inside an uninterruptible build
                budget = min(BUILD_JOIN_S, budget)
            pipeline_ended = self.worker.join(budget)
            if not pipeline_ended:
                logger.warning("the pipeline thread did not stop in time (a model call stuck?)")
        gallery_free = fleet_ended  # the fleet thread applies its records to the gallery
        # A removal (its snapshot), a reading of the gallery or an adaptive template under way.
        if not self.changes.join(deadline.remaining(OFFLINE_RESERVE_S)):
            gallery_free = False
            logger.warning("a gallery change did not finish in time; the index is rebuilt at the next start")
        self.changes.close()
        if self.keeper is not None:  # after the pipeline: the faces of its last events are written
            self.keeper.close(min(BUILD_JOIN_S, deadline.remaining(OFFLINE_RESERVE_S)))
        if self.swap is not None:
            self.swap.close(deadline.remaining(OFFLINE_RESERVE_S))
        if self.door is not None:  # after the pipeline: its last passages still reach the door
            self.door.close(lambda: deadline.remaining(OFFLINE_RESERVE_S))
        if self.engines is not None:
            # A TensorRT 10+ build stops at its next step; an 8.x build cannot be interrupted and is
            # left behind (it writes the cache only through atomic renames; the process exit ends it).
            self.engines.close(min(BUILD_JOIN_S, deadline.remaining(OFFLINE_RESERVE_S)))
        if self.link is not None:
            if self.outbox is not None and self.outbox.depth():
                drained = self.link.drain(
                    min(self.config.outbox.drain_s, deadline.remaining(OFFLINE_RESERVE_S))
                )
                if not drained:
                    logger.warning("%d event(s) stay in the outbox for the next start", self.outbox.depth())
            self.link.publish_state(self.state())
            self.link.stop(timeout=max(0.5, deadline.remaining()))
        if self.prometheus is not None:
            self.prometheus.stop()
        # The gallery belongs to the pipeline thread: closed here only once that thread has ended
        # (and a removal's own thread and the fleet thread too).
        closables: List[Any] = (
            [self.gallery, self.outbox] if pipeline_ended and gallery_free else [self.outbox]
        )
        if pipeline_ended:  # its writer
            closables.append(self.presence)
        closables.append(self.sightings)
        for closable in closables:
            if closable is not None:
                try:
                    if closable is self.gallery:  # a rebuild of its index stops within the deadline
                        self.gallery.close(rebuild_stop_s=deadline.remaining())
                    else:
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
        worker = self.worker
        assert worker is not None
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
                and now - worker.loop_heartbeat < self.stall_s
            ):
                self.ready = True
                away = [c for c in self.reporter.camera_statuses() if c.get("state") != "streaming"]
                self.notifier.ready(
                    "running without a camera: " + "; ".join(str(c.get("last_error")) for c in away)
                )
                logger.warning(
                    "ready without a camera after %.0f s; still retrying it", now - self.started_at
                )
            if interval is not None and healthy and now - last_ping >= interval:
                self.notifier.watchdog()
                last_ping = now
            stalled = [camera.check_stall() for camera in self.cameras]  # each logs its own stall once
            if any(stalled) and now - self._state_published >= 1.0:
                self._publish_state(now)  # show the stall at once, not at the next state interval
            if now - self._state_published >= self.config.metrics.state_interval_s:
                self._publish_state(now)
            if worker.done.is_set():
                break
        self._publish_state(time.monotonic())

    def _healthy(self, now: float) -> bool:
        """Frames are being processed — or every camera is known to be away and the loop is alive.

        A pipeline stuck in a call (its loop no longer turning), or a camera that streams while no
        frame gets processed, is unhealthy: the watchdog pings stop and systemd restarts us.
        """
        worker = self.worker
        if worker is None or (worker.heartbeat == 0 and not self.ready):
            return False  # not ready: models warm, but no frame processed yet
        loop_alive = now - worker.loop_heartbeat < self.stall_s
        frames_flow = now - worker.heartbeat < self.stall_s
        cameras_away = all(
            camera.get("state") in ("lost", "starting", "ended") for camera in self.reporter.camera_statuses()
        )
        return loop_alive and (frames_flow or cameras_away)

    def _publish_state(self, now: float) -> None:
        state = self.state()
        if self.link is not None:
            self.link.publish_state(state)
            if self.reporter.transfer_changed():
                self.publish_model()
        gallery_size = state["gallery"]["identities"]
        self.notifier.status(
            f"{state['fps']:.1f} fps, {gallery_size} identities, outbox {state['outbox'].get('depth', 0)}"
        )
        self._state_published = now

    # -- wiring ---------------------------------------------------------------------------------------

    def _open_sightings(self) -> None:
        """The store of kept faces and its writer thread: with ``events.keep_crops_h`` or ``[unknowns]`` on,
        and also when a store exists from before (its faces still expire on time; nothing new is kept)."""
        config = self.config
        settings = keep_settings(config)
        path = config.storage.dir / SIGHTINGS_FILE
        if not settings.active and not path.exists():
            return
        self.sightings = SightingStore.open(path, config.gallery_key_file, config.events.keep_crops_max)
        self.keeper = SightingKeeper(self.sightings, settings)
        self.keeper.start()
        if settings.active:
            logger.info(
                "keeping faces: every event's for %g h, unknown visitors' %s",
                config.events.keep_crops_h,
                f"for {config.unknowns.retention_h:g} h" if config.unknowns.enabled else "not",
            )

    def _stored_listener(self) -> Optional[Callable[[Outcome, str], None]]:
        """What is told of each stored event (pipeline thread): the template update and the keeper of faces."""
        listeners = [
            listener
            for listener in (
                self.templates.on_stored if self.templates is not None else None,
                self.keeper.offer if self.keeper is not None and self.keeper.settings.active else None,
            )
            if listener is not None
        ]
        if not listeners:
            return None

        def stored(outcome: Outcome, event_id: str) -> None:
            for listener in listeners:
                listener(outcome, event_id)

        return stored

    def _notify_link(self) -> None:
        if self.link is not None:
            self.link.notify()

    def _answer(self, name: str, document: Dict[str, Any]) -> None:
        """Publish a command's answer. Never raises: a bad answer must not end the pipeline thread."""
        if self.link is None:
            return
        try:
            self.link.publish_result(name, document)
        except ValueError as err:  # a command name or a result that cannot go on the wire
            logger.warning("the answer to command %r cannot be sent: %s", name[:64], err)

    def _engine_supervisor(self, loader: ModelLoader) -> EngineSupervisor:
        """With TensorRT in use: the supervisor that opens each model from its cached engine, or on the
        CPU while the engine is built in the background (``fallback = "none"``: builds it first)."""
        import dataclasses

        from engines.tensorrt.service import EngineService

        from .runtime.engines import supervisor_for

        service = EngineService(dataclasses.replace(loader.options, build_missing=False))
        return supervisor_for(self.config, service, loader.open_cpu, self.notifier.extend_timeout)

    def _adopt_engine(self, target: Any, in_place: Callable[[], None]) -> bool:
        """Called by the engine-builder thread after a build: the pipeline thread opens the engine and
        puts it in place of the model's CPU back-end between two frames, marking it ready as it does
        (``in_place``), so the state document never shows the engine's precision on a model still
        marked as building."""
        runtime, engines = self.runtime, self.engines
        if runtime is None or engines is None:
            return False
        open_engine = engines.open_engine
        return bool(
            runtime.call(
                lambda rt: rt.adopt_engine(target, open_engine, in_place),
                f"switching {target.name} to its TensorRT engine",
                JOB_TIMEOUT_S,
                self.stop_event,
            )
        )

    def _event_key(self) -> Optional[EventKey]:
        """The key that signs this door's access events, from the site's fleet key when one is set.
        A key that cannot be read leaves the events unsigned, degraded and saying why."""
        path = self.config.fleet.fleet_key_file
        if path is None:
            return None
        from .fleet.errors import FleetError
        from .fleet.records import read_fleet_key, read_previous_fleet_key

        try:
            return EventKey(
                read_fleet_key(path), read_previous_fleet_key(self.config.fleet.previous_fleet_key_file)
            )
        except FleetError as err:
            logger.error("access events go out unsigned: %s", err)
            self.degraded.append(f"event signing: {err}")
            return None

    def _open_area(self, event_key: Optional[EventKey]) -> None:
        """The other doors' passages (``access.anti_passback.area_doors``), with anti-passback on. Signed
        events without the key to check them: not followed at all, rather than taken unchecked."""
        passback = self.config.access.anti_passback
        if self.presence is None or not passback.area_doors:
            return
        if passback.area_events == "signed" and event_key is None:
            logger.error("anti-passback: the area's doors are not followed: their events cannot be checked")
            self.degraded.append("area: the fleet key cannot be read; the area's doors are not followed")
            return
        key = event_key if passback.area_events == "signed" else None
        self.area = AreaFeed(self.config.mqtt.prefix, passback.area_doors, key)

    def _fleet_member(self, link: MqttLink) -> Optional[Any]:
        """With ``[fleet]`` enabled: the member that applies the site's records, subscribed on ``link``.
        Keys that cannot be read leave the door running on what it holds, degraded and saying why."""
        if not self.config.fleet.enabled:
            return None
        from .fleet.errors import FleetError
        from .fleet.member import FleetMember

        try:
            pipeline = self.pipeline
            member = FleetMember(
                self.config.fleet,
                self.config.device.id,
                self._runtime(),
                link.publish_retained,
                in_view=lambda: pipeline is not None and pipeline.faces_in_view,
            )
        except (FleetError, OSError) as err:
            logger.error("fleet: cannot take part (%s); running on the identities held here", err)
            self.degraded.append(f"fleet: {err}")
            return None
        # QoS 0: Mosquitto queues at most max_queued_messages (1000) QoS 1 messages for a client and
        # drops the rest (measured: 1 020 of 3 000 at QoS 1). At QoS 0 it drops part of a big burst of
        # 50 KB records too (1 805 of 10 000): the member compares the signed manifest with what it
        # holds and asks for the missing records again, topic by topic, in small chunks.
        for topic_filter, handler in member.subscriptions():
            link.subscribe(topic_filter, handler, qos=0)
        member.fetch = link.fetch_retained  # what a retained burst dropped is asked for again
        return member

    def _runtime(self) -> ModelRuntime:
        assert self.runtime is not None
        return self.runtime

    def _start_updates(self) -> None:
        """The swap manager, and the UDS server on the CAN bus when ``updates.enabled``."""
        from .updates.swap import SwapSettings

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


def keep_settings(config: ApplianceConfig) -> KeepSettings:
    """What the daemon keeps of the faces it sees (``events.keep_crops_h``, ``[unknowns]``)."""
    unknowns = config.unknowns
    clusters = (
        ClusterSettings(
            unknowns.cluster_threshold,
            unknowns.retention_h * 3600.0,
            unknowns.max_clusters,
            unknowns.max_crops_per_cluster,
        )
        if unknowns.enabled
        else None
    )
    return KeepSettings(config.events.keep_crops_h * 3600.0, clusters)


def attack_guard(config: ApplianceConfig) -> Optional[AttackGuard]:
    """The counter of liveness denials per camera, with ``liveness.alarm_after`` (else ``None``)."""
    liveness = config.liveness
    if not liveness.alarm_after:
        return None
    return AttackGuard(liveness.alarm_after, liveness.alarm_window_s, liveness.lockout_s)


def pipeline_views(config: ApplianceConfig) -> int:
    """Embedded frames a track's outcome carries: with faces kept, an unknown visitor's views for walk-up
    enrolment (``events.walk_up_views``); with ``adaptive`` alone, the best one; else none."""
    if keep_settings(config).active:
        return config.events.walk_up_views
    return 1 if config.adaptive.enabled else 0


def run_daemon(config: ApplianceConfig, config_path: Optional[Path], print_events: bool = False) -> int:
    """Entry point of ``face-appliance run``."""
    return Appliance(config, config_path, print_events).run()


__all__ = ["Appliance", "Deadline", "run_daemon"]
