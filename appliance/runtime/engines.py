"""TensorRT engines in the daemon: which model runs from its engine, the builds, and the switch-over.

:class:`EngineSupervisor` holds the daemon's decisions, free of TensorRT so they are unit-tested with
fakes (the TensorRT edge is :class:`engines.tensorrt.service.EngineService`):

* **opening** (:meth:`EngineSupervisor.open`, called by the model runtime on the pipeline thread): a
  model whose cached engine matches the device (the manifest is checked *before* anything is
  deserialized) runs on TensorRT; otherwise, with ``backend.fallback = "cpu"``, it serves on the CPU
  back-end and its engine is queued for a background build; with ``fallback = "none"`` the engine is
  built first, stretching systemd's start timeout (``EXTEND_TIMEOUT_USEC``) while it builds.
* **background builds** (:meth:`EngineSupervisor.start`): one thread builds the queued engines into
  the cache — it produces files only. After each build it hands ``switch(target)`` to the caller,
  which submits the switch to the model runtime: the engine is opened, warmed and put in place on the
  pipeline thread, between two frames. A failed build leaves the model on the CPU with the reason in
  the state document.
* **preparing a model update** (:meth:`EngineSupervisor.prepare`, on the swap's thread): the engine
  of a package's model is built into the cache (INT8 from the package's calibration cache where the
  TensorRT version and GPU allow it) before the runtime opens it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from engines.backends import InferenceBackend
from engines.errors import EngineError, EngineLoadError, EngineMissingError
from engines.registry import ModelSpec
from engines.tensorrt.service import EngineService, EngineTarget

from ..config import ApplianceConfig

logger = logging.getLogger(__name__)

#: While an engine is built before READY (``fallback = "none"``), systemd's start timeout is pushed
#: out by EXTEND_BY_S every EXTEND_EVERY_S: a Nano needs minutes per engine.
EXTEND_EVERY_S = 20.0
EXTEND_BY_S = 90.0
#: Bounded waits of the daemon side.
JOIN_TIMEOUT_S = 10.0


# -- the daemon's decisions ---------------------------------------------------------------------------

TENSORRT, CPU = "tensorrt", "cpu"

#: ``switch(target, in_place)``: puts a freshly built engine in place (see :meth:`EngineSupervisor.start`).
Switch = Callable[[EngineTarget, Callable[[], None]], bool]


@dataclass
class ModelEngineState:
    """Where one model runs and why (the ``engines`` part of ``…/state``)."""

    backend: str  # TENSORRT or CPU
    state: str  # "ready", "queued", "building", "failed", "superseded"
    reason: Optional[str] = None  # why it is not (yet) on TensorRT
    since: float = dataclasses.field(default_factory=time.monotonic)

    def to_json(self) -> Dict[str, Any]:
        return {"backend": self.backend, "state": self.state, "reason": self.reason}


class EngineSupervisor:
    """Decides, per model, whether it runs from its cached TensorRT engine, on the CPU while the
    engine is built in the background, or only after the engine is built.

    Every side effect is injected, so the decisions are tested without TensorRT:

    Args:
        fallback: ``backend.fallback``: ``"cpu"`` serves on the CPU back-end while a missing or
            stale engine is built in the background; ``"none"`` builds it before the model opens.
        check: ``check(target)`` → ``None`` when a cached engine's manifest fits the device, else
            the reason (a TensorRT upgrade, a new ONNX model, no engine yet). Nothing is
            deserialized here.
        build: ``build(target, cancel)`` builds the engine into the cache; raises on failure.
        open_trt: ``open_trt(target)`` opens the cached engine (never builds); raises
            :class:`EngineMissingError` when it does not fit or does not deserialize.
        open_cpu: ``open_cpu(target)`` opens the model on the CPU back-end.
        extend_timeout: ``extend_timeout(seconds)`` (systemd ``EXTEND_TIMEOUT_USEC``), called while a
            build holds up the start; ``None`` without systemd.
    """

    def __init__(
        self,
        fallback: str,
        check: Callable[[EngineTarget], Optional[str]],
        build: Callable[[EngineTarget, threading.Event], Any],
        open_trt: Callable[[EngineTarget], InferenceBackend],
        open_cpu: Callable[[EngineTarget], InferenceBackend],
        extend_timeout: Optional[Callable[[float], Any]] = None,
        extend_every_s: float = EXTEND_EVERY_S,
        extend_by_s: float = EXTEND_BY_S,
    ) -> None:
        if fallback not in ("cpu", "none"):
            raise ValueError(f"fallback must be 'cpu' or 'none', got {fallback!r}")
        self.fallback = fallback
        self._check = check
        self._build = build
        self._open_trt = open_trt
        self._open_cpu = open_cpu
        self._extend = extend_timeout
        self._extend_every_s = extend_every_s
        self._extend_by_s = extend_by_s
        self._lock = threading.Lock()
        # Per model name and model (:func:`model_of`): an update's candidate has its own state beside
        # the live model's, and the state of the model that serves is the one reported (:meth:`status`).
        self._states: Dict[Tuple[str, str], ModelEngineState] = {}
        self._queue: List[EngineTarget] = []
        self._cancel = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._switch: Optional[Switch] = None
        self._closed = False

    # -- opening (start-up, the caller's thread) ------------------------------------------------------

    def open(self, target: EngineTarget) -> InferenceBackend:
        """Open ``target``: from its cached engine when the manifest fits, else per the fallback rule.

        Raises:
            EngineError: with ``fallback = "none"``, the engine could not be built or opened; with
                ``"cpu"``, the model cannot be opened on the CPU either.
        """
        try:
            reason = self._check(target)
        except EngineError as err:  # the device cannot be probed, the ONNX is missing, …
            if self.fallback == "none":
                raise
            return self._on_cpu(target, "failed", f"the engine cache cannot be checked: {err}")
        if reason is None:
            try:
                backend = self._open_trt(target)
            except EngineMissingError as err:  # the manifest fits, the engine does not deserialize
                reason = str(err)
            except EngineLoadError as err:
                if self.fallback == "none":
                    raise
                return self._on_cpu(target, "failed", f"TensorRT cannot load the engine: {err}")
            else:
                self._set(target, ModelEngineState(TENSORRT, "ready"))
                return backend
        logger.info("%s: no usable TensorRT engine: %s", target.name, reason)
        if self.fallback == "none":
            self._build_now(target, reason)
            backend = self._open_trt(target)
            self._set(target, ModelEngineState(TENSORRT, "ready"))
            return backend
        backend = self._on_cpu(target, "queued", reason)
        with self._lock:
            self._queue.append(target)
            switch = self._switch
        if switch is not None:  # after start-up (a model update on the CPU): build it now
            self.start(switch)
        return backend

    def _on_cpu(self, target: EngineTarget, state: str, reason: str) -> InferenceBackend:
        backend = self._open_cpu(target)
        self._set(target, ModelEngineState(CPU, state, reason))
        logger.warning("%s serves on the CPU back-end: %s", target.name, reason)
        return backend

    def _build_now(self, target: EngineTarget, reason: str) -> None:
        """Build before the model opens, keeping systemd's start timeout ahead of the build."""
        logger.warning("%s: building its TensorRT engine before start-up completes (%s)", target.name, reason)
        self._set(target, ModelEngineState(CPU, "building", reason))
        done = threading.Event()
        ticker: Optional[threading.Thread] = None
        if self._extend is not None:
            extend = self._extend

            def keep_extending() -> None:
                while True:
                    try:
                        extend(self._extend_by_s)
                    except Exception:  # systemd notification is best effort
                        logger.debug("extending the start timeout failed", exc_info=True)
                    if done.wait(self._extend_every_s):
                        return

            ticker = threading.Thread(target=keep_extending, name=f"extend-{target.name}", daemon=True)
            ticker.start()
        try:
            self._build(target, self._cancel)
        except BaseException as err:
            self._set(target, ModelEngineState(CPU, "failed", f"engine build failed: {err}"))
            raise
        finally:
            done.set()
            if ticker is not None:
                ticker.join(timeout=JOIN_TIMEOUT_S)

    # -- background builds and the switch (after start-up) --------------------------------------------

    @property
    def pending(self) -> List[str]:
        """Models waiting for their engine to be built in the background."""
        with self._lock:
            return [target.name for target in self._queue]

    def start(self, switch: Switch) -> bool:
        """Build the queued engines one after the other in a background thread.

        After each build ``switch(target, in_place)`` is called (from the background thread); it must
        put the new engine in place between two frames, call ``in_place()`` (which marks the model
        ready) as the engine takes its place, and return ``True``; or return ``False`` when the model
        was replaced meanwhile (a model update), so the engine is no longer wanted. Returns whether a
        thread was started (there was something to build).
        """
        with self._lock:
            self._switch = switch
            running = self._thread is not None and self._thread.is_alive()
            if self._closed or running or not self._queue or self._cancel.is_set():
                return False
            self._thread = threading.Thread(
                target=self._run, args=(switch,), name="engine-builder", daemon=True
            )
            self._thread.start()
        return True

    def _run(self, switch: Switch) -> None:
        while not self._cancel.is_set():
            with self._lock:
                if not self._queue:
                    return
                target = self._queue.pop(0)
            reason = self._state_reason(target)
            self._set(target, ModelEngineState(CPU, "building", reason))
            logger.info("%s: building its TensorRT engine in the background (%s)", target.name, reason)
            try:
                self._build(target, self._cancel)
            except Exception as err:
                text = (
                    "the engine build was cancelled"
                    if self._cancel.is_set()
                    else f"engine build failed: {err}"
                )
                logger.error("%s stays on the CPU back-end: %s", target.name, text)
                self._set(target, ModelEngineState(CPU, "failed", text))
                continue
            if self._cancel.is_set():
                return
            try:
                switched = switch(target, lambda built=target: self._mark_ready(built))
            except Exception as err:
                logger.error(
                    "%s stays on the CPU back-end: the new engine did not load: %s", target.name, err
                )
                self._set(target, ModelEngineState(CPU, "failed", f"the new engine did not load: {err}"))
                continue
            if switched:
                logger.info("%s switched to its TensorRT engine", target.name)
                self._mark_ready(target)  # a no-op when ``in_place`` marked it
            else:
                self._set(
                    target,
                    ModelEngineState(CPU, "superseded", "the model changed while its engine was built"),
                )

    def wait(self, timeout: float) -> bool:
        """Wait (bounded) for the background builds to finish; ``True`` when they have."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout=timeout)
        return not thread.is_alive()

    def open_engine(self, target: EngineTarget) -> InferenceBackend:
        """Open ``target``'s cached engine (never builds); the calling thread owns the back-end.

        Raises:
            EngineMissingError: no cached engine fits, or it does not deserialize.
            EngineLoadError: TensorRT or CUDA failed otherwise.
        """
        return self._open_trt(target)

    def cancel(self) -> None:
        """Ask the running build to stop (TensorRT 10+ stops within a build phase; older versions
        after the current build) and take no more from the queue."""
        self._cancel.set()

    def close(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Cancel the background builds and wait for the thread (bounded). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._cancel.set()
        if thread is not None:
            thread.join(timeout=timeout)
            if thread.is_alive():
                logger.warning(
                    "the engine build thread is still running after %.0f s (TensorRT busy)", timeout
                )

    # -- model updates (the swap's thread) -------------------------------------------------------------

    def prepare(self, target: EngineTarget, cancel: threading.Event) -> Optional[str]:
        """Build ``target``'s engine into the cache unless a fitting one is there (the caller's thread).

        Returns ``None`` when the engine is ready to open, else why not (with ``fallback = "cpu"``
        the model then opens on the CPU back-end).

        Raises:
            EngineError: with ``fallback = "none"``, the engine cannot be built.
        """
        try:
            reason = self._check(target)
        except EngineError as err:
            if self.fallback == "none":
                raise
            return f"the engine cache cannot be checked: {err}"
        if reason is None:
            return None
        logger.info("%s: building its TensorRT engine for the update (%s)", target.name, reason)
        self._set(target, ModelEngineState(CPU, "building", reason))
        try:
            self._build(target, cancel)
        except EngineError as err:
            text = "the engine build was cancelled" if cancel.is_set() else f"engine build failed: {err}"
            self._set(target, ModelEngineState(CPU, "failed", text))
            if self.fallback == "none":
                raise
            return text
        return None

    # -- status ---------------------------------------------------------------------------------------

    def status(self, live: Optional[Mapping[str, str]] = None) -> Dict[str, Dict[str, Any]]:
        """Model name → where it runs, the build state and the reason it is not on TensorRT.

        ``live``: model name → :func:`model_of` the model that serves (the model runtime's
        snapshot), whose state is then the one reported, not that of an update's candidate opened beside it (refused or not
        switched yet). A model not in ``live`` (none is, before the models are first installed, or
        without ``live``) reports its latest state.
        """
        with self._lock:
            latest: Dict[str, ModelEngineState] = {}
            for (name, model), state in self._states.items():  # oldest first
                if live is None or name not in live or model == live[name]:
                    latest[name] = state
            return {name: state.to_json() for name, state in latest.items()}

    def degraded(self, live: Optional[Mapping[str, str]] = None) -> List[str]:
        """One sentence per model that runs on the CPU instead of TensorRT (``live`` as in :meth:`status`)."""
        return [
            f"{name} runs on the CPU ({state['state']}): {state['reason']}"
            for name, state in self.status(live).items()
            if state["backend"] == CPU
        ]

    def _set(self, target: EngineTarget, state: ModelEngineState) -> None:
        key = (target.name, model_of(target.spec))
        with self._lock:
            self._states.pop(key, None)  # the latest last
            self._states[key] = state

    def _mark_ready(self, target: EngineTarget) -> None:
        with self._lock:
            state = self._states.get((target.name, model_of(target.spec)))
        if state is None or (state.backend, state.state) != (TENSORRT, "ready"):
            self._set(target, ModelEngineState(TENSORRT, "ready"))

    def _state_reason(self, target: EngineTarget) -> Optional[str]:
        with self._lock:
            state = self._states.get((target.name, model_of(target.spec)))
            return state.reason if state is not None else None


def model_of(spec: ModelSpec) -> str:
    """``version sha256``: which model an engine state is about — an update's package may carry the
    registry's file under another version, or a new file under the same version."""
    return f"{spec.version} {spec.sha256}"


def supervisor_for(
    config: ApplianceConfig,
    service: EngineService,
    open_cpu: Callable[[EngineTarget], InferenceBackend],
    extend_timeout: Optional[Callable[[float], Any]] = None,
) -> EngineSupervisor:
    """The daemon's :class:`EngineSupervisor` wired to a real :class:`EngineService`."""

    def build(target: EngineTarget, cancel: threading.Event) -> None:
        service.build(target, cancel)

    return EngineSupervisor(
        config.backend.fallback,
        service.check,
        build,
        service.open,
        open_cpu,
        extend_timeout,
    )


__all__ = [
    "CPU",
    "TENSORRT",
    "EngineSupervisor",
    "ModelEngineState",
    "Switch",
    "model_of",
    "supervisor_for",
]
