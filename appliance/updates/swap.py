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
templates of a version that is not active) are harmless and cleared by the next attempt. Every end of
a swap (done, failed, rolled back) removes the extracted package folders that the pointer names
neither as active nor as previous, so they do not pile up until a restart.

Where updates stand (state, step, staged package, the latest error with its source and time) is one
record, :class:`~appliance.updates.update_state.UpdateState`, owned here and rendered from one
snapshot for the UDS identifiers and for ``…/model``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

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
from .manifest import release_problem
from .update_state import (
    BUSY,
    SOURCE_ACTIVATE,
    SOURCE_ROLLBACK,
    SOURCE_VERIFY,
    Staged,
    SwapState,
    UpdateState,
)

logger = logging.getLogger(__name__)


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


#: The verified package's own file (``<storage>/models/verified.pkg``), what ``activate`` installs.
VERIFIED_NAME = "verified.pkg"


class _RolledBackError(UpdateError):
    """The health check failed and the switch was undone (the swap ends ``rolled_back``)."""


class SwapManager:
    """Carries out verify → … → health check for packages received over the CAN bus (or a file).

    Implements :class:`appliance.updates.handler.UpdateHandler`. Thread-safe; the swap runs on its own
    thread, the switch on the pipeline thread. Where updates stand is one record,
    :attr:`state` (:class:`~appliance.updates.update_state.UpdateState`), from which both the UDS
    identifiers (:meth:`status`) and ``…/model`` (:meth:`document`) are rendered.

    What was verified is what is activated: :meth:`verify` first gives the received file a name of
    its own (``<storage>/models/verified.pkg``, a hard link — no copy — or a copy where the staging
    folder is on another file system) and verifies *that* file, which nothing else writes. The UDS
    server replaces ``received.pkg`` when the next transfer completes (``os.replace``): the kept
    file still holds the verified bytes, so a second push that completes its transfer but not its
    verify, or a transfer completing during a swap, changes neither FD01 nor what the swap installs.
    Keeping rather than refusing transfers lets an operator send the next package while a swap runs;
    the kept file is removed when the staged package is dropped or its swap ends.
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
        self.state = UpdateState(on_change=host.publish_model)
        self._lock = threading.Lock()  # the health check's fields
        self._verify_lock = threading.Lock()  # one verify at a time (they share the kept file)
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._watching = False  # a switch is under its health check
        self._health_error: Optional[str] = None  # the first frame error seen while watching
        self._health_scores: List[float] = []  # best match scores seen while watching
        self._remove_kept()  # left by a run that stopped with a package staged

    @property
    def kept_path(self) -> Path:
        """The verified package's own file (see the class notes)."""
        return self.active.root / VERIFIED_NAME

    # -- the handler interface -----------------------------------------------------------------------

    def verify(self, package_path: Path) -> str:
        """Verify a received package and keep it as the staged one; returns its version.

        The file is first kept under its own name (see the class notes); what is verified is that file.

        Raises:
            PackageError: refused (``reason`` says why); the staged package, if any, is dropped.
            UpdateError: a swap is under way, or the file cannot be kept.
        """
        with self._verify_lock:
            try:
                self.state.start_verify(f"verifying {Path(package_path).name}")
            except UpdateError as err:
                self.state.record_error(SOURCE_VERIFY, str(err))
                raise
            self._remove_kept()
            try:
                package, name = self._verified(self._keep(Path(package_path)))
                manifest = package.manifest
                staged = Staged(name, str(manifest.version), int(manifest.release), package)
                self.state.verified(
                    staged, f"{name} {manifest.version} (release {manifest.release}) verified"
                )
            except Exception as err:
                self._remove_kept()
                reason = f"{err.reason}: {err}" if isinstance(err, PackageError) else str(err)
                self.state.refused(SOURCE_VERIFY, reason, "nothing staged: the package was refused")
                raise
        logger.info("update: package %s %s release %d verified", name, manifest.version, manifest.release)
        return staged.version

    def activate(self) -> None:
        """Start the swap to the verified package in the background.

        Raises:
            UpdateError: nothing verified, or a swap is under way.
        """
        try:
            staged = self.state.begin(SwapState.STAGING, "starting the swap", need_staged=True)
        except UpdateError as err:
            self.state.record_error(SOURCE_ACTIVATE, str(err))
            raise
        assert staged is not None
        self._thread = threading.Thread(target=self._run, args=(staged,), name="model-swap", daemon=True)
        self._thread.start()

    def rollback(self) -> None:
        """Return the most recently switched model to what was active before it (in the background).

        Raises:
            UpdateError: no previous model, or a swap is under way.
        """
        pointer = self.active.snapshot()
        name = pointer.last
        try:
            if name is None or name not in pointer.previous:
                raise UpdateError("no previous model to roll back to")
            self.state.begin(SwapState.PREPARING, f"loading the previous {name}", need_staged=False)
        except UpdateError as err:
            self.state.record_error(SOURCE_ROLLBACK, str(err))
            raise
        self._thread = threading.Thread(
            target=self._run_rollback, args=(name,), name="model-rollback", daemon=True
        )
        self._thread.start()

    def status(self) -> UpdateStatus:
        return self.state.snapshot().status(self._active_text())

    def record_error(self, source: str, text: str) -> None:
        """A refusal of the transport (the UDS server's ``transfer`` refusals) joins the update record."""
        self.state.record_error(source, text)

    def clear_error(self, source: str) -> None:
        """The transport's error is over (a new download started)."""
        self.state.clear_error(source)

    # -- documents -----------------------------------------------------------------------------------

    def document(self) -> Dict[str, Any]:
        """The swap part of ``…/model``, rendered from the same record as the UDS identifiers."""
        document = self.state.snapshot().document()
        document["releases"] = self.active.snapshot().max_release
        return document

    # -- the kept package ----------------------------------------------------------------------------

    def _keep(self, received: Path) -> Path:
        """Give ``received`` a name of its own (hard link, else copy); returns that path."""
        kept = self.kept_path
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(received, kept)
            except OSError:  # another file system, or one without hard links
                shutil.copyfile(received, kept)
        except OSError as err:
            raise UpdateError(f"cannot keep the received package as {kept}: {err.strerror or err}") from err
        return kept

    def _remove_kept(self) -> None:
        try:
            self.kept_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.warning("update: cannot remove %s: %s", self.kept_path, err.strerror)

    def _verified(self, path: Path) -> Tuple[Any, str]:
        from .package import verify_package

        package = verify_package(
            path,
            self.trusted_keys,
            active_release=None,
            firmware_version=__version__,
            max_size=self.max_package_bytes,
        )
        name = model_name(package.manifest)
        self._check_release(name, package.manifest)
        return package, name

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

    def _run(self, staged: Staged) -> None:
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
        else:
            self._end(SwapState.DONE, f"{name} active")
            logger.info("update: %s passed its health check; the swap is done", name)

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
        except Exception as err:
            if opened:
                self._discard(name)
            self._fail(err, keep_staged=True)
        else:
            step = f"{name} rolled back to {entry.version if entry else 'the registry default'}"
            self._end(SwapState.ROLLED_BACK, step, keep_staged=True)
            logger.info("update: %s", step)

    def _stage(self, staged: Staged) -> InstalledModel:
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
            self.state.set_progress(round(done / total, 3) if total else None)
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
            raise _RolledBackError(f"health check failed: {error}; rolled back")
        dropped = self._call(lambda rt: rt.finish_switch(name), f"releasing the previous {name}")
        if dropped:
            logger.info("update: %d template(s) of the previous embedder deleted", dropped)

    def _undo(self, name: str) -> None:
        pointer = self.active.with_rollback(name)
        self._call(lambda rt: rt.undo_switch(name, lambda: self.active.commit(pointer)), f"undoing {name}")

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _check_release(self, name: str, manifest: Any) -> None:
        # the rule of package verification (a rollback is bounded), against the counter of ``name``
        problem = release_problem(manifest, self.active.release(name))
        if problem is not None:
            raise PackageError(problem, reason="not_newer")

    def _set_state(self, state: SwapState, step: str) -> None:
        self.state.advance(state, step)
        logger.info("update: %s — %s", state.value, step)

    def _fail(self, err: BaseException, keep_staged: bool = False) -> None:
        state = SwapState.ROLLED_BACK if isinstance(err, _RolledBackError) else SwapState.FAILED
        logger.error("update: the swap failed: %s", err)
        logger.debug("swap failure", exc_info=err)
        self._end(state, "", str(err) or type(err).__name__, keep_staged)

    def _end(self, state: SwapState, step: str, error: str = "", keep_staged: bool = False) -> None:
        """A terminal state (done, failed, rolled back).

        First the leftovers go — the extracted package folders that the pointer names neither as
        active nor as previous, and the kept verified package unless ``keep_staged`` (a rollback
        leaves a staged package staged) — while the swap still counts as under way, so that a new
        swap cannot start staging into a folder being removed; then the end is recorded and published.
        """
        self._clean_up(keep_staged)
        self.state.finish(state, step, error, keep_staged)

    def _clean_up(self, keep_staged: bool) -> None:
        try:
            self.active.prune()  # logs what it removed
        except OSError as err:
            logger.warning("update: cannot clean %s: %s", self.active.packages_dir, err.strerror or err)
        if not keep_staged:
            self._remove_kept()

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
