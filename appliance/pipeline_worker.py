"""The pipeline thread: the one owner of the loaded models.

:class:`PipelineWorker` starts the thread, which first loads the models and the gallery (so every
back-end, and with TensorRT the CUDA context, is created on the thread that will use it), hands the
gallery to the daemon's start-up through a future, then turns the loop:

1. run the model jobs other threads submitted (engine switch-overs, a model update's validation,
   re-embedding and switch) — :meth:`appliance.runtime.ModelRuntime.run_jobs`;
2. run the queued remote commands; reload on SIGHUP;
3. take the newest frame, process it, store the decisions as events.

On the way out it closes the runtime (every back-end) on this same thread.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, List, Optional, Protocol

from .camera import CameraThread
from .command_service import CommandService
from .event_recorder import EventRecorder
from .faults import Faults
from .gallery.gallery import Gallery
from .metrics import RateMeter
from .pipeline import Pipeline
from .runtime import ModelRuntime

logger = logging.getLogger(__name__)

#: How long the loop waits for a frame before it turns again (jobs and commands are served meanwhile).
FRAME_WAIT_S = 0.2


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
        fps: the frame rate meter.
    """

    def __init__(
        self,
        runtime: ModelRuntime,
        stop: threading.Event,
        reload: threading.Event,
        faults: Faults,
        fps: RateMeter,
    ) -> None:
        self.runtime = runtime
        self.stop = stop
        self.reload = reload
        self.faults = faults
        self.fps = fps
        #: The gallery once the models are loaded, or the start-up error.
        self.loaded: Future = Future()  # of Gallery
        self.frames_processed = 0
        self.heartbeat = 0.0  # last frame processed (monotonic)
        self.loop_heartbeat = 0.0  # last turn of the loop
        self.error: Optional[str] = None
        self.done = threading.Event()
        self._go = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pipeline: Optional[Pipeline] = None
        self._camera: Optional[CameraThread] = None
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
        camera: CameraThread,
        commands: CommandService,
        recorder: EventRecorder,
        health: Optional[HealthWatch] = None,
    ) -> None:
        """Start processing frames."""
        self._pipeline, self._camera, self._commands = pipeline, camera, commands
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
        self.runtime.run_jobs()
        assert self._commands is not None
        self._commands.run_pending()
        if self.reload.is_set():
            self.reload.clear()
            self._commands.reload()

    def _loop(self) -> None:
        pipeline, camera, recorder = self._pipeline, self._camera, self._recorder
        assert pipeline is not None and camera is not None and recorder is not None
        while not self.stop.is_set():
            self._between_frames()
            frame = camera.get(timeout=FRAME_WAIT_S)
            if frame is None:
                if camera.ended.is_set():
                    logger.info("the video ended; finishing")
                    break
                self.loop_heartbeat = time.monotonic()
                continue
            self.faults.maybe_stall(self.frames_processed, self.stop)
            try:
                if (
                    self.faults.fail_after_switch
                    and self._health is not None
                    and self._health.in_health_check()
                ):
                    from .faults import InjectedFaultError

                    raise InjectedFaultError("fault injection: a frame fails after the model switch")
                outcomes = pipeline.process(frame.image, frame.timestamp)
            except Exception as err:
                if self._health is None or not self._health.pipeline_failed(err):
                    raise
                logger.error("a frame failed right after a model switch: %s", err)
                continue
            if self._health is not None and pipeline.last_scores and self._health.in_health_check():
                self._health.observe_scores(pipeline.last_scores)
            self.frames_processed += 1
            self.fps.tick()
            self.heartbeat = self.loop_heartbeat = time.monotonic()
            if outcomes:  # the versions are a locked copy: taken only when there is an event
                recorder.record(outcomes, self.runtime.model_versions)
        recorder.record(pipeline.finish(time.monotonic()), self.runtime.model_versions)
        self._between_frames()


__all__ = ["FRAME_WAIT_S", "HealthWatch", "PipelineWorker"]
