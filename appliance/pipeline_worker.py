"""The pipeline thread: the one owner of the loaded models.

:class:`PipelineWorker` starts the thread, which first loads the models and the gallery (so every
back-end, and with TensorRT the CUDA context, is created on the thread that will use it), hands the
gallery to the daemon's start-up through a future, then turns the loop:

1. run the model jobs other threads submitted (engine switch-overs, a model update's validation,
   re-embedding and switch) — :meth:`appliance.runtime.ModelRuntime.run_jobs`;
2. run the queued remote commands; reload on SIGHUP;
3. take the newest frame of every camera that has one (waiting on one event all the camera threads
   set), process them together (:meth:`appliance.pipeline.Pipeline.process_frames`: the models are
   shared, embedding and liveness batched across cameras), store the decisions as events.

A camera that is lost only stops contributing frames; one whose video ended has its tracks closed
(their decisions become events) and the loop ends once every camera has ended. On the way out it
closes the runtime (every back-end) on this same thread.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Set, Tuple

from .camera import CameraThread, Frame
from .command_service import CommandService
from .event_recorder import EventRecorder
from .faults import Faults
from .gallery.gallery import Gallery
from .metrics import Latencies, RateMeter
from .pipeline import CameraFrame, Pipeline
from .runtime import ModelRuntime

logger = logging.getLogger(__name__)

#: How long the loop waits for a frame before it turns again (jobs and commands are served meanwhile).
FRAME_WAIT_S = 0.2
#: Window of the per-camera processing rates.
CAMERA_FPS_WINDOW_S = 5.0


class HealthWatch(Protocol):
    """What a model swap watches after its switch (:class:`appliance.updates.swap.SwapManager`)."""

    def in_health_check(self) -> bool: ...

    def pipeline_failed(self, error: BaseException) -> bool: ...

    def observe_scores(self, scores: List[float]) -> None: ...


class PipelineWorker:
    """Runs the pipeline thread.

    Args:
        runtime: the models; this worker's thread becomes their owner.
        stop: the daemon's stop event.
        reload: set by SIGHUP; the loop reloads on its next turn.
        faults: fault injection for the reliability tests (a stall, a failing frame).
        fps: the frame rate meter (every camera's frames).
        latencies: where the ``between_frames`` stage goes: the time this thread spent on jobs and
            commands between two turns, recorded for the turns that had any (what the door's frames
            waited for: a fleet batch's embedding, an enrolment, a model switch, a reload); and
            ``between_frames_in_view``, the same for the turns when a camera tracked a face (what
            someone at the door waited for).
    """

    def __init__(
        self,
        runtime: ModelRuntime,
        stop: threading.Event,
        reload: threading.Event,
        faults: Faults,
        fps: RateMeter,
        latencies: Latencies,
    ) -> None:
        self.runtime = runtime
        self.stop = stop
        self.reload = reload
        self.faults = faults
        self.fps = fps
        self.latencies = latencies
        #: The gallery once the models are loaded, or the start-up error.
        self.loaded: Future = Future()  # of Gallery
        self.frames_processed = 0
        #: Per camera id: frames processed, and their rate (filled by :meth:`go`).
        self.camera_frames: Dict[str, int] = {}
        self.camera_fps: Dict[str, RateMeter] = {}
        #: Set by the camera threads when a frame is ready (their ``wake``): the loop waits on it.
        self.frame_ready = threading.Event()
        self.heartbeat = 0.0  # last frame processed (monotonic)
        self.loop_heartbeat = 0.0  # last turn of the loop
        self.error: Optional[str] = None
        self.done = threading.Event()
        self._go = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pipeline: Optional[Pipeline] = None
        self._cameras: List[CameraThread] = []
        self._commands: Optional[CommandService] = None
        self._recorder: Optional[EventRecorder] = None
        self._health: Optional[HealthWatch] = None

    def start(self, load: Callable[[], Gallery]) -> None:
        """Start the thread; it runs ``load()`` (models, then the gallery) before anything else."""
        # A daemon thread: a model call stuck past the stop deadline (a TensorRT 8 engine build during
        # start-up cannot be interrupted) must not keep the process alive after systemd's stop timeout.
        self._thread = threading.Thread(target=self._main, args=(load,), name="pipeline", daemon=True)
        self._thread.start()

    def wait_loaded(self) -> Gallery:
        """Wait for the models and the gallery (returns when loaded, raises what loading raised).

        Loading can take minutes (a TensorRT engine built first with ``fallback = "none"``); the
        wait ends early when the daemon is told to stop.

        Raises:
            RuntimeJobError: the daemon was told to stop meanwhile.
        """
        from concurrent.futures import TimeoutError as FutureTimeout

        from .runtime import RuntimeJobError

        while True:
            try:
                return self.loaded.result(timeout=0.2)
            except FutureTimeout:
                if self.stop.is_set():
                    raise RuntimeJobError("stopped while the models were loading") from None

    def go(
        self,
        pipeline: Pipeline,
        cameras: Sequence[CameraThread],
        commands: CommandService,
        recorder: EventRecorder,
        health: Optional[HealthWatch] = None,
    ) -> None:
        """Start processing frames of ``cameras`` (created with ``wake=`` :attr:`frame_ready`)."""
        for camera in cameras:
            self.camera_frames.setdefault(camera.config.id, 0)
            self.camera_fps.setdefault(camera.config.id, RateMeter(CAMERA_FPS_WINDOW_S))
        self._pipeline, self._cameras, self._commands = pipeline, list(cameras), commands
        self._recorder, self._health = recorder, health
        self._go.set()

    def join(self, timeout: float) -> bool:
        """Wait for the thread (bounded); ``True`` when it has ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout=max(0.0, timeout))
        return not self._thread.is_alive()

    # -- the thread -----------------------------------------------------------------------------------

    def _main(self, load: Callable[[], Gallery]) -> None:
        self.runtime.own()
        try:
            try:
                gallery = load()
            except BaseException as err:
                self.loaded.set_exception(err)
                return
            self.loaded.set_result(gallery)
            while not self._go.wait(FRAME_WAIT_S):
                if self.stop.is_set():
                    return
                self.runtime.run_jobs()
            self._loop()
        except Exception as err:
            logger.exception("the pipeline failed; stopping")
            self.error = f"pipeline: {err}"
            self.stop.set()
        finally:
            try:
                self.runtime.close()
            finally:
                self.done.set()

    def _between_frames(self) -> None:
        started = time.monotonic()
        done = self.runtime.run_jobs()
        assert self._commands is not None
        done += self._commands.run_pending()
        done += self._commands.take_area_passages()
        self._commands.watch_store()
        # A reload refreshes the gallery here: it waits while a removal writes its snapshot, rather
        # than hold the frames behind that write.
        if self.reload.is_set() and not self._commands.busy():
            self.reload.clear()
            self._commands.reload()
            done += 1
        if done:
            waited = (time.monotonic() - started) * 1000.0
            self.latencies.record("between_frames", waited)
            if self._pipeline is not None and self._pipeline.faces_in_view:  # someone was waiting
                self.latencies.record("between_frames_in_view", waited)

    def _loop(self) -> None:
        pipeline, cameras, recorder = self._pipeline, self._cameras, self._recorder
        assert pipeline is not None and cameras and recorder is not None
        ended: Set[str] = set()  # cameras whose video ended, their tracks closed
        while not self.stop.is_set():
            self._between_frames()
            decided = self._commands.take_credentials(time.monotonic())
            if decided:
                recorder.record(decided, self.runtime.model_versions)
            self.frame_ready.wait(FRAME_WAIT_S)
            self.frame_ready.clear()  # before taking: a frame that comes meanwhile sets it again
            taken: List[Tuple[str, Frame]] = []
            for camera in cameras:
                frame = camera.get(timeout=0.0)
                if frame is not None:
                    taken.append((camera.config.id, frame))
                elif camera.ended.is_set() and camera.config.id not in ended:
                    # Its last frame was taken (ended is set only then): close its tracks.
                    ended.add(camera.config.id)
                    recorder.record(
                        pipeline.finish_camera(camera.config.id, time.monotonic()),
                        self.runtime.model_versions,
                    )
                    if len(cameras) > 1 and len(ended) < len(cameras):
                        logger.info("camera %s: the video ended; the other cameras go on", camera.config.id)
            if taken:
                self._process(pipeline, recorder, taken)
            elif len(ended) == len(cameras):
                logger.info(
                    "the video ended; finishing" if len(cameras) == 1 else "every video ended; finishing"
                )
                break
            else:
                self.loop_heartbeat = time.monotonic()
        recorder.record(pipeline.finish(time.monotonic()), self.runtime.model_versions)
        self._commands.stop_learning()
        self._between_frames()

    def _process(
        self, pipeline: Pipeline, recorder: EventRecorder, taken: Sequence[Tuple[str, Frame]]
    ) -> None:
        """One turn: the frames taken from the cameras, processed together; their decisions stored."""
        self.faults.maybe_stall(self.frames_processed, self.stop)
        try:
            if self.faults.fail_after_switch and self._health is not None and self._health.in_health_check():
                from .faults import InjectedFaultError

                raise InjectedFaultError("fault injection: a frame fails after the model switch")
            outcomes = pipeline.process_frames(
                [CameraFrame(camera_id, frame.image, frame.timestamp) for camera_id, frame in taken]
            )
        except Exception as err:
            if self._health is None or not self._health.pipeline_failed(err):
                raise
            logger.error("a frame failed right after a model switch: %s", err)
            return
        if self._health is not None and pipeline.last_scores and self._health.in_health_check():
            self._health.observe_scores(pipeline.last_scores)
        now = time.monotonic()
        for camera_id, _ in taken:
            self.frames_processed += 1
            self.camera_frames[camera_id] += 1
            self.camera_fps[camera_id].tick(now)
            self.fps.tick(now)
        self.heartbeat = self.loop_heartbeat = now
        if outcomes:  # the versions are a locked copy: taken only when there is an event
            recorder.record(outcomes, self.runtime.model_versions)


__all__ = ["FRAME_WAIT_S", "HealthWatch", "PipelineWorker"]
