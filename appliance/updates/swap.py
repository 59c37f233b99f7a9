"""The model swap: a verified package becomes the active model while the pipeline keeps serving.

Steps (DESIGN §5.4), each reported on ``…/model`` and through the UDS status identifiers:

1. **verify** (:meth:`SwapManager.verify`): signature, digests, compatibility, anti-rollback.
2. **stage**: the payload is written (fsync'd) to ``<storage>/models/packages/<name>-<version>-r<release>``.
3. **prepare**: the model is opened on the back-end in a background thread (an ONNX Runtime session
   here; on a Jetson the back-end builds or loads its TensorRT engine).
4. **validate**: the I/O is checked on load; the package's reference inputs must reproduce its
   reference outputs within the package's tolerance; the latency at batch 1 must stay within
   ``latency_factor`` of the active model's.
5. **re-embed** (a new embedder): every enrolled template computed again from its encrypted crop, in
   the background.
6. **switch**, between two frames on the pipeline thread: templates enrolled meanwhile are re-embedded,
   the new templates are written in one transaction, the active pointer is replaced atomically
   (fsync'd) — that is the commit — and the analyzer and gallery switch to the new model.
7. **health check** over the next frames: any pipeline error, or no frame processed and a failed
   self-test, rolls back (the same switch in reverse).

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
from typing import Any, Callable, Dict, Mapping, Optional, Protocol

import numpy as np

from engines.backends import BackendOptions, InferenceBackend, open_model
from engines.registry import KIND_EMBEDDER, get_model

from .. import __version__
from ..config import ApplianceConfig
from ..events import rfc3339_now
from ..faults import Faults
from ..gallery.gallery import Gallery
from ..gallery.reembed import Reembedding, reembed, rows_for
from ..vision.analyzer import FaceAnalyzer, backend_options, effective_backend
from ..vision.embedder import Embedder
from .active import ActiveModels, InstalledModel
from .errors import PackageError, UpdateError
from .handler import UpdateStatus

logger = logging.getLogger(__name__)

LATENCY_RUNS = 5


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
    analyzer: Optional[FaceAnalyzer]
    gallery: Optional[Gallery]
    frames_processed: int
    faults: Faults

    def run_between_frames(self, action: Callable[[], Any], timeout: float) -> Any:
        """Run ``action`` on the pipeline thread between two frames; its result, or its exception."""

    def publish_model(self) -> None:
        """Republish ``…/model``."""

    def analyzer_replaced(self, name: str, backend: InferenceBackend) -> None:
        """Put ``backend`` in place of model ``name`` (pipeline thread), keeping the old one for undo."""

    def release_replaced(self) -> None:
        """The switch is final: release the back-end it took out."""

    def restore_replaced(self) -> None:
        """Undo the last :meth:`analyzer_replaced` (pipeline thread)."""


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
        analyzer = self.host.analyzer
        if analyzer is None:
            return ""
        return ",".join(f"{kind}={version}" for kind, version in sorted(analyzer.model_versions.items()))

    # -- health: called from the pipeline thread -----------------------------------------------------

    def in_health_check(self) -> bool:
        """A switch is being watched (frames that fail now roll it back)."""
        with self._lock:
            return self._watching

    def pipeline_failed(self, error: BaseException) -> bool:
        """A frame raised ``error``. True when a swap's health check owns it (it will roll back)."""
        with self._lock:
            if not self._watching:
                return False
            if self._health_error is None:
                self._health_error = f"{type(error).__name__}: {error}"
        return True

    # -- the swap (its own thread) -------------------------------------------------------------------

    def _run(self, staged: _Staged) -> None:
        name = staged.name
        backend: Optional[InferenceBackend] = None
        try:
            self._set_state(SwapState.STAGING, f"writing {name} {staged.version} to disk")
            entry = self._stage(staged)
            self.host.faults.maybe_kill("staged")
            self._set_state(SwapState.PREPARING, "loading the model")
            backend = self._open(name, entry)
            self._set_state(SwapState.VALIDATING, "reference outputs and latency")
            self._validate(name, staged.package, backend)
            self.host.faults.maybe_kill("validated")
            reembedding = self._reembed_in_background(name, backend)
            self._switch(name, entry, backend, reembedding)
            backend = None  # the analyzer owns it now
            self._health_check(name)
        except Exception as err:
            if backend is not None:
                backend.close()
            self._fail(err)
        finally:
            with self._lock:
                self._staged = None
            self.host.publish_model()

    def _run_rollback(self, name: str) -> None:
        backend: Optional[InferenceBackend] = None
        try:
            pointer = self.active.with_rollback(name)
            entry = pointer.active.get(name)
            self._set_state(SwapState.PREPARING, f"loading the previous {name}")
            backend = self._open(name, entry)
            reembedding = self._reembed_in_background(name, backend)
            self._switch(name, entry, backend, reembedding, pointer=pointer)
            backend = None
            with self._lock:
                self._state = SwapState.ROLLED_BACK
                self._step = f"{name} rolled back to {entry.version if entry else 'the registry default'}"
            logger.info("update: %s", self._step)
        except Exception as err:
            if backend is not None:
                backend.close()
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
        )

    def _open(self, name: str, entry: Optional[InstalledModel]) -> InferenceBackend:
        config = self.host.config
        key, _degraded = effective_backend(config)
        options: BackendOptions = backend_options(config)
        base = get_model(name)
        if entry is None:
            return open_model(key, base, config.models.dir, options)
        return open_model(key, entry.spec(base), self.active.root / entry.directory, options)

    def _validate(self, name: str, package: Any, backend: InferenceBackend) -> None:
        if package.reference() is not None:
            check = package.check_backend(backend)
            if not check.ok:
                raise UpdateError(
                    "validation: the package's reference outputs are not reproduced: "
                    + "; ".join(check.problems)
                )
            logger.info(
                "update: %s reproduces the package's reference outputs (max |diff| %.3g, min cosine %.4f)",
                name,
                max(check.max_abs.values(), default=0.0),
                min(check.min_cosine.values(), default=1.0),
            )
        analyzer = self.host.analyzer
        current = analyzer.loaded.get(name) if analyzer is not None else None
        new_ms = _latency_ms(backend)
        if current is not None and not current.closed:
            old_ms = _latency_ms(current)
            budget = max(old_ms * self.settings.latency_factor, old_ms + self.settings.latency_floor_ms)
            if new_ms > budget:
                raise UpdateError(
                    f"validation: {name} takes {new_ms:.1f} ms per call, over the budget of {budget:.1f} ms "
                    f"(the active model takes {old_ms:.1f} ms)"
                )
            logger.info("update: %s latency %.1f ms (active model %.1f ms)", name, new_ms, old_ms)

    def _reembed_in_background(self, name: str, backend: InferenceBackend) -> Optional[Reembedding]:
        if get_model(name).kind != KIND_EMBEDDER or self.host.gallery is None:
            return None
        self._set_state(SwapState.REEMBEDDING, "re-embedding the gallery")
        embedder = Embedder(backend, self.host.config.embedder.batch_size)
        gallery = self.host.gallery

        def progress(done: int, total: int) -> None:
            with self._lock:
                self._progress = round(done / total, 3) if total else None

        result = reembed(gallery.store, gallery.model_version, embedder.embed, progress=progress)
        logger.info("update: %d template(s) re-embedded for %s", len(result.embeddings), embedder.version)
        return result

    def _switch(
        self,
        name: str,
        entry: Optional[InstalledModel],
        backend: InferenceBackend,
        reembedding: Optional[Reembedding],
        pointer: Any = None,
    ) -> None:
        self._set_state(SwapState.SWITCHING, "switching between two frames")
        pointer = pointer if pointer is not None else self.active.with_active(entry)  # type: ignore[arg-type]
        host = self.host

        def switch() -> None:
            analyzer, gallery = host.analyzer, host.gallery
            if analyzer is None:
                raise UpdateError("the pipeline has no models loaded")
            new_version = backend.spec.qualified_version
            dim = int(backend.spec.embedding_dim or 0)
            if reembedding is not None and gallery is not None:
                embedder = Embedder(backend, host.config.embedder.batch_size)
                reembed(gallery.store, reembedding.source_version, embedder.embed, done=reembedding)
                gallery.store.put_version(new_version, rows_for(gallery.store, reembedding))
            self.host.faults.maybe_kill("templates_written")
            self.active.commit(pointer)
            self.host.faults.maybe_kill("committed")
            host.analyzer_replaced(name, backend)
            if reembedding is not None and gallery is not None:
                gallery.switch_model(new_version, dim)

        host.run_between_frames(switch, self.settings.switch_timeout_s)
        logger.info("update: switched %s to %s", name, backend.spec.qualified_version)

    def _health_check(self, name: str) -> None:
        self._set_state(SwapState.HEALTH_CHECK, f"watching {self.settings.health_frames} frames")
        start_frames = self.host.frames_processed
        with self._lock:
            self._watching, self._health_error = True, None
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
                error = self._health_error
        if error is None and self.host.frames_processed == start_frames:
            error = self._self_test(name)
        if error is not None:
            logger.error("update: %s failed its health check (%s); rolling back", name, error)
            self._undo(name)
            raise UpdateError(f"health check failed: {error}; rolled back")
        self.host.run_between_frames(self._finish_commit, self.settings.switch_timeout_s)
        with self._lock:
            self._state = SwapState.DONE
            self._step = f"{name} active"
            self._progress = None
        logger.info("update: %s passed its health check; the swap is done", name)

    def _self_test(self, name: str) -> Optional[str]:
        """No frames came during the health window: run the new model once on a neutral input."""
        analyzer = self.host.analyzer
        backend = analyzer.loaded.get(name) if analyzer is not None else None
        if backend is None:
            return f"{name} is not loaded"
        try:
            output = backend.run(_neutral_feeds(backend))
        except Exception as err:
            return f"self-test: {type(err).__name__}: {err}"
        if not all(np.isfinite(np.asarray(value, np.float64)).all() for value in output.values()):
            return "self-test: non-finite outputs"
        logger.info("update: no frames during the health window; the self-test passed")
        return None

    def _finish_commit(self) -> None:
        """After a healthy switch: release the old back-end and the old version's templates."""
        self.host.release_replaced()
        gallery = self.host.gallery
        if gallery is not None:
            dropped = gallery.store.drop_versions(gallery.model_version)
            if dropped:
                logger.info("update: %d template(s) of the previous embedder deleted", dropped)

    def _undo(self, name: str) -> None:
        pointer = self.active.with_rollback(name)
        host = self.host

        def back() -> None:
            host.restore_replaced()
            self.active.commit(pointer)
            gallery, analyzer = host.gallery, host.analyzer
            if gallery is not None and analyzer is not None:
                gallery.switch_model(analyzer.embedder.version, analyzer.embedder.dim)

        host.run_between_frames(back, self.settings.switch_timeout_s)
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

    def close(self, timeout: float = 10.0) -> None:
        """Stop waiting in a health check and join the swap thread. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout)


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


def _latency_ms(backend: InferenceBackend) -> float:
    feeds = _neutral_feeds(backend)
    backend.run(feeds)  # warm
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        backend.run(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def _neutral_feeds(backend: InferenceBackend) -> Dict[str, np.ndarray]:
    """Zeros of each input's shape (batch 1; P-Net's free height/width at 48)."""
    feeds: Dict[str, np.ndarray] = {}
    for tensor in backend.inputs:
        shape = [
            1 if i == 0 and dim is None else (dim if dim is not None else 48)
            for i, dim in enumerate(tensor.shape)
        ]
        feeds[tensor.name] = np.zeros(shape, np.dtype(tensor.dtype))
    return feeds


__all__ = ["BUSY", "SwapHost", "SwapManager", "SwapSettings", "SwapState", "model_name"]
