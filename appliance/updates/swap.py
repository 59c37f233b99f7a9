"""The model swap: a verified package becomes the active model while the pipeline keeps serving.

Steps (DESIGN §5.4), each reported on ``…/model`` and through the UDS status identifiers:

1. **verify** (:meth:`SwapManager.verify`): signature, digests, compatibility, anti-rollback.
2. **stage**: the payload is written (fsync'd) to ``<storage>/models/packages/<name>-<version>-r<release>``.
3. **prepare**: on TensorRT, the model's engine is built into the engine cache on the swap's thread
   (files only) — INT8 from the package's own calibration cache (``calibration_cache``) where the
   TensorRT version and GPU allow it; then the pipeline thread opens the model as a *candidate*
   beside the live one (an ONNX Runtime session on the CPU back-end).
4. **validate** (pipeline thread): the I/O is checked on load; the package's reference inputs must
   reproduce its reference outputs within the package's tolerance; the latency at batch 1 must stay
   within ``latency_factor`` of the active model's.
5. **re-embed** (a new embedder; pipeline thread, one batch of templates between two frames): every
   enrolled template computed again from its encrypted crop.
6. **switch**, between two frames on the pipeline thread: templates enrolled meanwhile are re-embedded,
   the new templates are written in one transaction, the active pointer is replaced atomically
   (fsync'd) — that is the commit — and the runtime and the gallery switch to the new model.
7. **health check** over the next frames: any pipeline error, or no frame processed and a failed
   self-test, rolls back (the same switch in reverse).

The swap's thread never touches a model or the gallery: every step that does is a job submitted to
the model runtime (:class:`appliance.runtime.ModelRuntime`), run by the pipeline thread, its result
coming back through a future.

A power cut before the commit leaves the old pointer, and the old model's templates untouched; after
it, the new pointer and the new templates. Leftovers of an interrupted attempt (a staging folder,
templates of a version that is not active) are harmless and cleared by the next attempt.
"""

from __future__ import annotations

import enum
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol

import numpy as np

from engines.registry import get_model
from engines.tensorrt.service import EngineTarget

from .. import __version__
from ..config import ApplianceConfig
from ..events import rfc3339_now
from ..faults import Faults
from ..runtime import ModelRuntime, ValidationError, target_for
from ..runtime.engines import EngineSupervisor
from .active import ActiveModels, InstalledModel, Pointer
from .errors import PackageError, UpdateError
from .handler import UpdateStatus

logger = logging.getLogger(__name__)


class SwapState(str, enum.Enum):
    """Where the swap stands (``swap_state`` in ``…/model`` and the UDS identifier)."""

    IDLE = "idle"
    VERIFIED = "verified"
    STAGING = "staging"
    PREPARING = "preparing"
    VALIDATING = "validating"
    REEMBEDDING = "reembedding"
    SWITCHING = "switching"
    HEALTH_CHECK = "health_check"
    DONE = "done"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


#: States in which a swap is under way (no second one may start).
BUSY = {
    SwapState.STAGING,
    SwapState.PREPARING,
    SwapState.VALIDATING,
    SwapState.REEMBEDDING,
    SwapState.SWITCHING,
    SwapState.HEALTH_CHECK,
}


class SwapHost(Protocol):
    """What the daemon offers the swap manager."""

    config: ApplianceConfig
    runtime: Optional[ModelRuntime]
    engines: Optional[EngineSupervisor]
    faults: Faults
    stop_event: threading.Event

    @property
    def frames_processed(self) -> int:
        """Frames the pipeline has processed so far."""

    def publish_model(self) -> None:
        """Republish ``…/model``."""


@dataclass(frozen=True)
class SwapSettings:
    """Limits of a swap."""

    health_frames: int = 30
    health_timeout_s: float = 30.0
    latency_factor: float = 3.0
    latency_floor_ms: float = 20.0
    switch_timeout_s: float = 30.0


@dataclass
class _Staged:
    name: str
    package: Any  # VerifiedPackage
    version: str
    release: int


class SwapManager:
    """Carries out verify → … → health check for packages received over the CAN bus (or a file).

    Implements :class:`appliance.updates.handler.UpdateHandler`. Thread-safe; the swap runs on its own
    thread, the switch on the pipeline thread.
    """

    def __init__(
        self,
        host: SwapHost,
        trusted_keys: Mapping[str, Any],
        settings: Optional[SwapSettings] = None,
        max_package_bytes: Optional[int] = None,
    ) -> None:
        self.host = host
        self.trusted_keys = dict(trusted_keys)
        self.settings = settings or SwapSettings()
        self.max_package_bytes = max_package_bytes
        self.active = ActiveModels(host.config.storage.dir)
        self._lock = threading.Lock()
        self._state = SwapState.IDLE
        self._step = ""
        self._progress: Optional[float] = None
        self._staged: Optional[_Staged] = None
        self._last_error = ""
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._watching = False  # a switch is under its health check
        self._health_error: Optional[str] = None  # the first frame error seen while watching
        self._health_scores: List[float] = []  # best match scores seen while watching

    # -- the handler interface -----------------------------------------------------------------------

    def verify(self, package_path: Path) -> str:
        """Verify a received package and keep it as the staged one; returns its version.

        Raises:
            PackageError: refused (``reason`` says why); the staged package, if any, is dropped.
            UpdateError: a swap is under way.
        """
        from .package import verify_package

        with self._lock:
            if self._state in BUSY:
                raise UpdateError(f"a swap is under way ({self._state.value}); wait for it to finish")
        try:
            package = verify_package(
                package_path,
                self.trusted_keys,
                active_release=None,
                firmware_version=__version__,
                max_size=self.max_package_bytes,
            )
            name = model_name(package.manifest)
            self._check_release(name, package.manifest)
        except PackageError as err:
            with self._lock:
                self._staged = None
                self._set_error(f"{err.reason}: {err}")
            self.host.publish_model()
            raise
        manifest = package.manifest
        with self._lock:
            self._staged = _Staged(name, package, str(manifest.version), int(manifest.release))
            self._state = SwapState.VERIFIED
            self._step = f"{name} {manifest.version} (release {manifest.release}) verified"
            self._last_error = ""
        logger.info("update: package %s %s release %d verified", name, manifest.version, manifest.release)
        self.host.publish_model()
        return str(manifest.version)

    def activate(self) -> None:
        """Start the swap to the verified package in the background.

        Raises:
            UpdateError: nothing verified, or a swap is under way.
        """
        with self._lock:
            if self._state in BUSY:
                raise UpdateError(f"a swap is under way ({self._state.value})")
            staged = self._staged
            if staged is None:
                raise UpdateError("no verified package to activate; transfer and verify one first")
            self._state = SwapState.STAGING
            self._thread = threading.Thread(target=self._run, args=(staged,), name="model-swap", daemon=True)
            self._thread.start()

    def rollback(self) -> None:
        """Return the most recently switched model to what was active before it (in the background).

        Raises:
            UpdateError: no previous model, or a swap is under way.
        """
        pointer = self.active.snapshot()
        with self._lock:
            if self._state in BUSY:
                raise UpdateError(f"a swap is under way ({self._state.value})")
            name = pointer.last
            if name is None or name not in pointer.previous:
                raise UpdateError("no previous model to roll back to")
            self._state = SwapState.PREPARING
            self._thread = threading.Thread(
                target=self._run_rollback, args=(name,), name="model-rollback", daemon=True
            )
            self._thread.start()

    def status(self) -> UpdateStatus:
        with self._lock:
            staged = self._staged
            state = self._state.value
            error = self._last_error
        return UpdateStatus(
            active_version=self._active_text(),
            staged_version=f"{staged.name}@{staged.version}" if staged is not None else "",
            swap_state=state,
            last_error=error,
        )

    # -- documents -----------------------------------------------------------------------------------

    def document(self) -> Dict[str, Any]:
        """The swap part of ``…/model``."""
        with self._lock:
            staged = self._staged
            return {
                "staged": (
                    {"model": staged.name, "version": staged.version, "release": staged.release}
                    if staged is not None
                    else None
                ),
                "swap": {"state": self._state.value, "step": self._step, "progress": self._progress},
                "last_error": self._last_error or None,
                "releases": self.active.snapshot().max_release,
            }

    def _active_text(self) -> str:
        runtime = self.host.runtime
        if runtime is None:
            return ""
        return ",".join(f"{kind}={version}" for kind, version in sorted(runtime.model_versions.items()))

    # -- health: called from the pipeline thread -----------------------------------------------------

    def in_health_check(self) -> bool:
        """A switch is being watched (frames that fail now roll it back)."""
        with self._lock:
            return self._watching

    def observe_scores(self, scores: List[float]) -> None:
        """The best match scores of a frame's faces during the health check (pipeline thread)."""
        with self._lock:
            if self._watching and len(self._health_scores) < HEALTH_SCORES_MAX:
                self._health_scores.extend(scores)

    def pipeline_failed(self, error: BaseException) -> bool:
        """A frame raised ``error``. True when a swap's health check owns it (it will roll back)."""
        with self._lock:
            if not self._watching:
                return False
            if self._health_error is None:
                self._health_error = f"{type(error).__name__}: {error}"
        return True

    # -- the swap (its own thread) -------------------------------------------------------------------

    def _call(self, action: Callable[[ModelRuntime], Any], what: str) -> Any:
        """Run ``action`` on the pipeline thread (which owns the models) and return its result."""
        runtime = self.host.runtime
        if runtime is None:
            raise UpdateError("the pipeline has no models loaded")
        return runtime.call(action, what, self.settings.switch_timeout_s, self._stop)

    def _run(self, staged: _Staged) -> None:
        name = staged.name
        opened = False
        try:
            self._set_state(SwapState.STAGING, f"writing {name} {staged.version} to disk")
            entry = self._stage(staged)
            self.host.faults.maybe_kill("staged")
            self._set_state(SwapState.PREPARING, "building or loading the model")
            target = target_for(self.host.config, name, entry)
            self._prepare(target)
            opened = True
            self._call(lambda rt: rt.open_candidate(target), f"opening {name} {staged.version}")
            self._set_state(SwapState.VALIDATING, "reference outputs and latency")
            self._validate(name, staged.package)
            self.host.faults.maybe_kill("validated")
            self._reembed(name)
            self._check_discrimination(name, staged.package)
            self._switch(name, self.active.with_active(entry))
            opened = False  # the runtime serves it now
            self._health_check(name)
        except Exception as err:
            if opened:
                self._discard(name)
            self._fail(err)
        finally:
            with self._lock:
                self._staged = None
            self.host.publish_model()

    def _run_rollback(self, name: str) -> None:
        opened = False
        try:
            pointer = self.active.with_rollback(name)
            entry = pointer.active.get(name)
            self._set_state(SwapState.PREPARING, f"loading the previous {name}")
            target = target_for(self.host.config, name, entry)
            self._prepare(target)
            opened = True
            self._call(lambda rt: rt.open_candidate(target), f"opening the previous {name}")
            self._reembed(name)
            self._switch(name, pointer)
            opened = False
            self._call(lambda rt: rt.finish_switch(name), f"releasing the rolled-back {name}")
            with self._lock:
                self._state = SwapState.ROLLED_BACK
                self._step = f"{name} rolled back to {entry.version if entry else 'the registry default'}"
            logger.info("update: %s", self._step)
        except Exception as err:
            if opened:
                self._discard(name)
            self._fail(err)
        finally:
            self.host.publish_model()

    def _stage(self, staged: _Staged) -> InstalledModel:
        directory = f"{staged.name}-{staged.version}-r{staged.release}"
        target = self.active.packages_dir / directory
        if target.exists():
            shutil.rmtree(target)  # an earlier, interrupted attempt
        model_path = staged.package.extract_to(target)
        from engines.files import digest_and_size

        digest, size = digest_and_size(model_path)
        return InstalledModel(
            name=staged.name,
            version=staged.version,
            release=staged.release,
            directory=f"packages/{directory}",
            file=str(model_path.relative_to(target)),
            size=size,
            sha256=digest,
            key_id=str(staged.package.key_id),
            installed_at=rfc3339_now(),
            # The package's INT8 calibration cache: what its INT8 TensorRT engine is built from.
            calibration_file=staged.package.manifest.calibration_file,
        )

    def _prepare(self, target: EngineTarget) -> None:
        """On TensorRT, build the model's engine into the cache here (files only; the pipeline thread
        opens it). The calibration cache of the package (``target.calibration_cache``) makes it INT8."""
        engines = self.host.engines
        if engines is None:
            return
        if target.calibration_cache is not None:
            logger.info(
                "update: %s: INT8 from the package's calibration cache %s",
                target.name,
                target.calibration_cache,
            )
        reason = engines.prepare(target, self._stop)
        if reason is not None:
            logger.warning("update: %s will run on the CPU back-end: %s", target.name, reason)

    def _discard(self, name: str) -> None:
        try:
            self._call(lambda rt: rt.discard_candidate(name), f"discarding the candidate {name}")
        except Exception:
            logger.warning("update: the candidate %s could not be discarded", name, exc_info=True)

    def _validate(self, name: str, package: Any) -> None:
        reference_check = package.check_backend if package.reference() is not None else None
        settings = self.settings
        try:
            report = self._call(
                lambda rt: rt.validate_candidate(
                    name, reference_check, settings.latency_factor, settings.latency_floor_ms
                ),
                f"validating {name}",
            )
        except ValidationError as err:
            raise UpdateError(str(err)) from None
        if "min_cosine" in report:
            logger.info(
                "update: %s reproduces the package's reference outputs (max |diff| %.3g, min cosine %.4f)",
                name,
                report["max_abs"],
                report["min_cosine"],
            )
        logger.info(
            "update: %s latency %.1f ms (active model %s ms)",
            name,
            report["latency_ms"],
            f"{report['active_latency_ms']:.1f}" if "active_latency_ms" in report else "n/a",
        )

    def _reembed(self, name: str) -> None:
        """A new embedder: the gallery's templates computed again, one batch per job between frames."""
        total = self._call(lambda rt: rt.begin_reembedding(name), "planning the re-embedding")
        if not total:
            return
        self._set_state(SwapState.REEMBEDDING, f"re-embedding {total} template(s)")
        done = 0
        while done < total:
            if self._stop.is_set():
                raise UpdateError("the daemon is stopping")
            done, total = self._call(lambda rt: rt.reembed_step(name), "re-embedding templates")
            with self._lock:
                self._progress = round(done / total, 3) if total else None
        logger.info("update: %d template(s) re-embedded for %s", total, name)

    def _check_discrimination(self, name: str, package: Any) -> None:
        """A new embedder must still tell people apart (on the enrolled faces and the package's own
        reference faces), not only reproduce its own reference outputs."""
        reference = package.reference()
        samples = reference[0] if reference is not None else None
        threshold = self.host.config.match.threshold
        try:
            report = self._call(
                lambda rt: rt.check_discrimination(name, threshold, samples),
                f"checking that {name} tells faces apart",
            )
        except ValidationError as err:
            raise UpdateError(str(err)) from None
        if report:
            logger.info("update: %s tells faces apart: %s", name, report)

    def _switch(self, name: str, pointer: Pointer) -> None:
        self._set_state(SwapState.SWITCHING, "switching between two frames")
        faults = self.host.faults
        version = self._call(
            lambda rt: rt.switch_to_candidate(name, lambda: self.active.commit(pointer), faults.maybe_kill),
            f"switching {name}",
        )
        logger.info("update: switched %s to %s", name, version)

    def _health_check(self, name: str) -> None:
        self._set_state(SwapState.HEALTH_CHECK, f"watching {self.settings.health_frames} frames")
        start_frames = self.host.frames_processed
        with self._lock:
            self._watching, self._health_error, self._health_scores = True, None, []
        deadline = time.monotonic() + self.settings.health_timeout_s
        self.host.faults.maybe_kill("health")
        try:
            while time.monotonic() < deadline and self._health_error is None:
                if self.host.frames_processed - start_frames >= self.settings.health_frames:
                    break
                if self._stop.wait(0.1):
                    break
        finally:
            with self._lock:
                self._watching = False
                error = self._health_error or collapsed_scores(self._health_scores)
        if error is None and self.host.frames_processed == start_frames:
            error = self._call(lambda rt: rt.self_test(name), f"self-testing {name}")
            if error is None:
                logger.info("update: no frames during the health window; the self-test passed")
        if error is not None:
            logger.error("update: %s failed its health check (%s); rolling back", name, error)
            self._undo(name)
            raise UpdateError(f"health check failed: {error}; rolled back")
        dropped = self._call(lambda rt: rt.finish_switch(name), f"releasing the previous {name}")
        if dropped:
            logger.info("update: %d template(s) of the previous embedder deleted", dropped)
        with self._lock:
            self._state = SwapState.DONE
            self._step = f"{name} active"
            self._progress = None
        logger.info("update: %s passed its health check; the swap is done", name)

    def _undo(self, name: str) -> None:
        pointer = self.active.with_rollback(name)
        self._call(lambda rt: rt.undo_switch(name, lambda: self.active.commit(pointer)), f"undoing {name}")
        with self._lock:
            self._state = SwapState.ROLLED_BACK

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _check_release(self, name: str, manifest: Any) -> None:
        active = self.active.release(name)
        if active is not None and int(manifest.release) <= active and not bool(manifest.rollback):
            raise PackageError(
                f"{name} release {manifest.release} is not above the active release {active}; a package "
                "must carry a higher release counter (or be signed as a rollback)",
                reason="not_newer",
            )

    def _set_state(self, state: SwapState, step: str) -> None:
        with self._lock:
            self._state = state
            self._step = step
            self._progress = None
        logger.info("update: %s — %s", state.value, step)
        self.host.publish_model()

    def _set_error(self, text: str) -> None:
        self._last_error = text[:500]

    def _fail(self, err: BaseException) -> None:
        with self._lock:
            if self._state != SwapState.ROLLED_BACK:
                self._state = SwapState.FAILED
            self._set_error(str(err))
            self._progress = None
        logger.error("update: the swap failed: %s", err)
        logger.debug("swap failure", exc_info=err)

    def cancel(self) -> None:
        """Make a running swap fail at its next step (the daemon is stopping)."""
        self._stop.set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the swap (a running one fails at its next step) and join its thread (bounded). Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout)


#: Scores kept from one health check, and how many make the collapse test meaningful.
HEALTH_SCORES_MAX = 10_000
HEALTH_SCORES_MIN = 5


def collapsed_scores(scores: List[float]) -> Optional[str]:
    """Why the best match scores seen after a switch show a collapsed embedder, or ``None``.

    A working embedder gives a face in front of the door a score that varies from frame to frame;
    one that maps every face to one vector scores every face alike, near 1.0.
    """
    if len(scores) < HEALTH_SCORES_MIN:
        return None
    values = np.asarray(scores, np.float64)
    if float(values.min()) > 0.98 and float(np.ptp(values)) < 1e-3:
        return (
            f"every one of {len(values)} faces matched with a score of {values.mean():.4f}: the new "
            "embedder maps faces to one vector"
        )
    return None


def model_name(manifest: Any) -> str:
    """The registry model a package's manifest replaces.

    Raises:
        PackageError: the manifest names no model this firmware knows (``reason`` "incompatible").
    """
    name = str(getattr(manifest, "model", None) or getattr(manifest, "kind", ""))
    try:
        get_model(name)
    except Exception:
        raise PackageError(
            f"the package is for model {name!r}, which this firmware does not know", reason="incompatible"
        ) from None
    return name


__all__ = ["BUSY", "SwapHost", "SwapManager", "SwapSettings", "SwapState", "model_name"]
