"""The one owner of the loaded models: :class:`ModelRuntime`, driven by the pipeline thread.

DESIGN §4: the pipeline thread owns the back-ends (and, with TensorRT, the CUDA context). Every
model call — opening, warming up, running a frame, validating a new model, re-embedding the gallery
with it, switching, rolling back, closing — happens on that thread. Other threads (the background
engine builder, the CAN model swap, a reload) produce files and **submit jobs**: :meth:`ModelRuntime.
submit` queues a callable and returns a :class:`concurrent.futures.Future`; the pipeline thread runs
the queued jobs between two frames (:meth:`ModelRuntime.run_jobs`) with the runtime as argument.

What the runtime holds, all touched only by its owner thread:

* the live back-ends by registry model name, and the :class:`FaceAnalyzer` assembled from them (a
  fresh analyzer at every switch: the pipeline reads :attr:`ModelRuntime.analyzer` once per frame);
* a **candidate** per model being updated (opened and validated before it serves);
* the back-end a switch took out, kept until the switch is committed or undone;
* the gallery, whose templates follow the embedder (re-embedded from the encrypted enrolment crops,
  batch by batch between frames, before an embedder switch).

Other threads read only thread-safe snapshots: :attr:`model_versions`, :attr:`degraded`,
:meth:`backend_keys`. A call from any other thread to an owner-only method raises
:class:`ModelOwnershipError` — the rule is enforced, not only documented.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np

from engines.backends import InferenceBackend
from engines.registry import KIND_EMBEDDER
from engines.tensorrt.service import EngineTarget

from ..config import ApplianceConfig
from ..errors import ApplianceError
from ..gallery.gallery import Gallery
from ..gallery.reembed import BATCH, Reembedding, reembed, reembed_impostors, rows_for
from ..vision.analyzer import FaceAnalyzer
from ..vision.embedder import Embedder
from .engines import model_of
from .loading import ModelLoader, open_all

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: A job for the owner thread: called with the runtime, its result goes to the submitter's future.
Job = Callable[["ModelRuntime"], Any]

#: Runs of the latency comparison between a candidate and the live model.
LATENCY_RUNS = 5


class RuntimeJobError(ApplianceError):
    """A job could not be carried out by the pipeline thread: it did not get to it in time, the
    daemon is stopping, or the runtime is closed."""


class ModelOwnershipError(ApplianceError, RuntimeError):
    """A model was touched from a thread that does not own it (a bug: submit a job instead)."""


class ValidationError(ApplianceError):
    """A candidate model failed its validation (reference outputs, shapes, latency)."""


@dataclass
class _Job:
    action: Job
    what: str
    future: Future  # of Any (unsubscripted: Python 3.8)


@dataclass
class _Candidate:
    target: EngineTarget
    backend: InferenceBackend


@dataclass
class _Reembedding:
    """Re-embedding the gallery for a candidate embedder, one batch per job."""

    name: str
    result: Reembedding
    pending: List[Any] = field(default_factory=list)  # templates with crops still to embed
    total: int = 0
    #: template id → (identity id, the live embedder's ``(D,)`` embedding), for the discrimination check
    known: Dict[int, Tuple[str, np.ndarray]] = field(default_factory=dict)


class ModelRuntime:
    """The loaded models of the daemon and the jobs that change them.

    Args:
        config: the configuration (detector and embedder settings for :meth:`FaceAnalyzer.assemble`).
        loader: opens a model on the configured back-end (the owner thread calls it).
    """

    def __init__(self, config: ApplianceConfig, loader: ModelLoader) -> None:
        self.config = config
        self.loader = loader
        self._jobs: queue.Queue = queue.Queue()  # of _Job
        self._owner: Optional[threading.Thread] = None
        self._loaded: Dict[str, InferenceBackend] = {}
        self._analyzer: Optional[FaceAnalyzer] = None
        self._candidates: Dict[str, _Candidate] = {}
        self._taken_out: Dict[str, InferenceBackend] = {}
        self._reembedding: Optional[_Reembedding] = None
        self._gallery: Optional[Gallery] = None
        self._lock = threading.Lock()  # guards the snapshots and the closed flag
        self._versions: Dict[str, str] = {}
        self._keys: Dict[str, str] = {}
        self._live_models: Dict[str, str] = {}
        self._precisions: Dict[str, Dict[str, str]] = {}
        self._embedder: Tuple[str, int] = ("", 0)
        self._closed = False

    # -- ownership --------------------------------------------------------------------------------------

    def own(self) -> None:
        """Make the calling thread the owner (the pipeline thread, before it loads anything)."""
        self._owner = threading.current_thread()

    def on_owner_thread(self) -> bool:
        return self._owner is not None and threading.current_thread() is self._owner

    def _require_owner(self, what: str) -> None:
        if not self.on_owner_thread():
            owner = self._owner.name if self._owner is not None else "no thread yet"
            raise ModelOwnershipError(
                f"{what} must run on the thread that owns the models ({owner}), not on "
                f"{threading.current_thread().name}; submit it as a job (ModelRuntime.submit)"
            )

    # -- loading (owner) ------------------------------------------------------------------------------

    def load(self, targets: Sequence[EngineTarget], notes: Sequence[str] = ()) -> None:
        """Open and warm up every model of the pipeline.

        Raises:
            EngineError: a model cannot be opened (the ones already open are closed again).
        """
        self._require_owner("loading the models")
        for note in notes:
            self.loader.note(note)
        loaded = open_all(self.loader, targets)
        try:
            for backend in loaded.values():
                backend.warmup(iterations=1)
        except BaseException:
            for backend in loaded.values():
                backend.close()
            raise
        self._install(loaded)

    def _install(
        self, loaded: Dict[str, InferenceBackend], in_place: Optional[Callable[[], None]] = None
    ) -> None:
        """Make ``loaded`` the live models; ``in_place()`` runs under the snapshot lock, so a reader of
        :meth:`engine_report` sees what it records together with the new snapshots."""
        analyzer = FaceAnalyzer.assemble(self.config, loaded, self.loader.max_batch, self.loader.degraded)
        self._loaded = loaded
        self._analyzer = analyzer
        with self._lock:
            self._versions = analyzer.model_versions
            self._keys = {name: backend.key for name, backend in loaded.items()}
            self._live_models = {name: model_of(backend.spec) for name, backend in loaded.items()}
            self._precisions = {
                name: {"precision": manifest.precision, "reason": manifest.precision_reason}
                for name, manifest in ((n, getattr(b, "manifest", None)) for n, b in loaded.items())
                if manifest is not None
            }
            self._embedder = (analyzer.embedder.version, analyzer.embedder.dim)
            if in_place is not None:
                in_place()

    @property
    def analyzer(self) -> FaceAnalyzer:
        """The live models (owner thread only; read it once per frame)."""
        self._require_owner("using the models")
        if self._analyzer is None:
            raise RuntimeJobError("the models are not loaded")
        return self._analyzer

    # -- snapshots (any thread) -----------------------------------------------------------------------

    @property
    def model_versions(self) -> Dict[str, str]:
        """``{"detector": …, "embedder": …, "liveness": …}`` of the live models."""
        with self._lock:
            return dict(self._versions)

    @property
    def embedder(self) -> Tuple[str, int]:
        """``(version, dimension)`` of the live embedder."""
        with self._lock:
            return self._embedder

    def backend_keys(self) -> Dict[str, str]:
        """Registry model name → the back-end it runs on (``cpu``, ``tensorrt``)."""
        with self._lock:
            return dict(self._keys)

    def engine_precisions(self) -> Dict[str, Dict[str, str]]:
        """Model → ``{"precision", "reason"}`` of each model that runs from a TensorRT engine (from the
        engine's manifest: what was built, and why that precision)."""
        return self.engine_report(lambda live: None)[1]

    def engine_report(
        self, engine_states: Callable[[Mapping[str, str]], T]
    ) -> Tuple[T, Dict[str, Dict[str, str]]]:
        """``(engine_states(live models), engine_precisions())`` as of one moment.

        ``engine_states`` is the engine supervisor's :meth:`~appliance.runtime.engines.
        EngineSupervisor.status` or ``degraded``, given which model serves under each name (name →
        :func:`~appliance.runtime.engines.model_of` its spec) so that it reports the models that
        serve, not an update's candidate. A switch to a freshly built engine marks the model ready
        under the lock this reads under (:meth:`adopt_engine`'s ``in_place``), so the two never
        disagree about a model that has just switched.
        """
        with self._lock:
            states = engine_states(dict(self._live_models))
            return states, {name: dict(value) for name, value in self._precisions.items()}

    @property
    def degraded(self) -> Optional[str]:
        return self.loader.degraded

    # -- the gallery (owner) --------------------------------------------------------------------------

    def attach_gallery(self, gallery: Gallery) -> None:
        """The gallery whose templates follow the embedder; re-embedded at start-up when it holds
        templates of other embedder versions only (a switch that did not complete here)."""
        self._require_owner("attaching the gallery")
        self._gallery = gallery
        if len(gallery):
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
        result = reembed(gallery.store, source, self.analyzer.embedder.embed)
        gallery.store.put_version(gallery.model_version, rows_for(gallery.store, result))
        reembed_impostors(gallery.store, gallery.model_version, self.analyzer.embedder.embed)
        gallery.refresh()

    @property
    def gallery(self) -> Optional[Gallery]:
        return self._gallery

    # -- jobs -----------------------------------------------------------------------------------------

    def submit(self, action: Job, what: str) -> Future:
        """Queue ``action(runtime)`` for the owner thread; its result or exception go to the future."""
        future: Future = Future()
        with self._lock:
            closed = self._closed
        if closed:
            future.set_exception(RuntimeJobError(f"{what}: the model runtime is closed"))
            return future
        self._jobs.put(_Job(action, what, future))
        return future

    def call(
        self,
        action: Callable[[ModelRuntime], T],
        what: str,
        timeout: float,
        stop: Optional[threading.Event] = None,
    ) -> T:
        """Run ``action`` on the owner thread and return its result (inline when called there).

        Raises:
            whatever ``action`` raised; RuntimeJobError when it was not run within ``timeout`` seconds
            or ``stop`` was set while waiting (the job is cancelled if it had not started).
        """
        if self.on_owner_thread():
            return action(self)
        return self.wait(self.submit(action, what), what, timeout, stop)

    def wait(self, future: Future, what: str, timeout: float, stop: Optional[threading.Event] = None) -> Any:
        """The result of a :meth:`submit`-ted job, waited for as :meth:`call` does (same errors)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return future.result(timeout=min(0.1, max(0.0, deadline - time.monotonic())))  # type: ignore[no-any-return]
            except FutureTimeout:
                pass
            except CancelledError:
                raise RuntimeJobError(f"{what}: cancelled (the daemon is stopping)") from None
            stopping = stop is not None and stop.is_set()
            if stopping or time.monotonic() >= deadline:
                if future.cancel():
                    reason = "the daemon is stopping" if stopping else f"not reached within {timeout:.0f} s"
                    raise RuntimeJobError(f"{what}: {reason}")
                # It is running now: wait for it (a job is one bounded step between two frames).
                return future.result()  # type: ignore[no-any-return]

    def run_jobs(self) -> int:
        """Run the jobs queued when it is called (owner thread, between two frames); one queued
        meanwhile, by another thread or by one of these jobs (the rest of a fleet embedding cut for
        someone in view), waits for the next call: the next frame comes first. Returns how many ran."""
        self._require_owner("running model jobs")
        count = 0
        for _ in range(self._jobs.qsize()):
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:  # only this thread takes jobs out; kept against a surprise
                break
            if not job.future.set_running_or_notify_cancel():
                continue
            count += 1
            try:
                outcome = job.action(self)
            except BaseException as err:  # handed to the submitter
                job.future.set_exception(err)
            else:
                job.future.set_result(outcome)
        return count

    def close(self) -> None:
        """Refuse new jobs, cancel the queued ones and release every back-end (the owner thread, or any
        thread once the owner has ended). Idempotent."""
        owner = self._owner
        if owner is not None and owner.is_alive() and threading.current_thread() is not owner:
            raise ModelOwnershipError("the model runtime is closed by its owner thread")
        with self._lock:
            self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeJobError(f"{job.what}: the daemon is stopping"))
        backends = [
            *self._loaded.values(),
            *(candidate.backend for candidate in self._candidates.values()),
            *self._taken_out.values(),
        ]
        self._loaded, self._candidates, self._taken_out, self._analyzer = {}, {}, {}, None
        for backend in backends:
            try:
                backend.close()
            except Exception:
                logger.exception("closing the %s back-end failed", backend.spec.name)

    # -- model updates (owner; reached through jobs) --------------------------------------------------

    def open_candidate(self, target: EngineTarget) -> Dict[str, Any]:
        """Open ``target`` beside the live model of the same name (not serving yet)."""
        self._require_owner("opening a candidate model")
        self.discard_candidate(target.name)
        backend = self.loader.open(target)
        self._candidates[target.name] = _Candidate(target, backend)
        return {"model": target.name, "version": target.spec.version, "backend": backend.key}

    def discard_candidate(self, name: str) -> None:
        """Close the candidate of ``name``, if any (a failed or abandoned update)."""
        self._require_owner("discarding a candidate model")
        candidate = self._candidates.pop(name, None)
        if self._reembedding is not None and self._reembedding.name == name:
            self._reembedding = None
        if candidate is not None:
            candidate.backend.close()

    def _candidate(self, name: str) -> _Candidate:
        candidate = self._candidates.get(name)
        if candidate is None:
            raise RuntimeJobError(f"no candidate {name} is open")
        return candidate

    def validate_candidate(
        self,
        name: str,
        reference_check: Optional[Callable[[InferenceBackend], Any]],
        latency_factor: float,
        latency_floor_ms: float,
    ) -> Dict[str, Any]:
        """Check the candidate: the package's reference outputs (``reference_check(backend)`` returns an
        object with ``ok``, ``problems``, ``max_abs``, ``min_cosine``), finite outputs, and its latency
        at batch 1 against the live model's (at most ``latency_factor`` times, or ``latency_floor_ms``
        more).

        Raises:
            ValidationError: what failed.
        """
        self._require_owner("validating a candidate model")
        backend = self._candidate(name).backend
        report: Dict[str, Any] = {"model": name}
        if reference_check is not None:
            check = reference_check(backend)
            if not check.ok:
                raise ValidationError(
                    "validation: the package's reference outputs are not reproduced: "
                    + "; ".join(check.problems)
                )
            report["max_abs"] = max(check.max_abs.values(), default=0.0)
            report["min_cosine"] = min(check.min_cosine.values(), default=1.0)
        problem = _self_test(backend)
        if problem is not None:
            raise ValidationError(f"validation: {problem}")
        new_ms = _latency_ms(backend)
        report["latency_ms"] = new_ms
        live = self._loaded.get(name)
        if live is not None and not live.closed:
            old_ms = _latency_ms(live)
            budget = max(old_ms * latency_factor, old_ms + latency_floor_ms)
            report["active_latency_ms"] = old_ms
            if new_ms > budget:
                raise ValidationError(
                    f"validation: {name} takes {new_ms:.1f} ms per call, over the budget of {budget:.1f} ms "
                    f"(the active model takes {old_ms:.1f} ms)"
                )
        return report

    def begin_reembedding(self, name: str) -> int:
        """Plan the gallery's re-embedding for candidate embedder ``name``; returns the templates to do
        (0 when ``name`` is not an embedder or there is no gallery)."""
        self._require_owner("re-embedding the gallery")
        candidate = self._candidate(name)
        gallery = self._gallery
        if candidate.target.spec.kind != KIND_EMBEDDER or gallery is None:
            self._reembedding = None
            return 0
        result = Reembedding(gallery.model_version)
        templates = list(gallery.store.templates(gallery.model_version))
        pending = [t for t in templates if t.crop is not None]
        result.without_crop.extend(t.id for t in templates if t.crop is None)
        known = {t.id: (t.identity_id, np.asarray(t.embedding, np.float32)) for t in pending}
        self._reembedding = _Reembedding(name, result, pending, len(pending), known)
        return len(pending)

    def reembed_step(self, name: str) -> Tuple[int, int]:
        """Embed the next batch of planned templates with the candidate; ``(done, total)``."""
        self._require_owner("re-embedding the gallery")
        plan = self._reembedding
        if plan is None or plan.name != name:
            return (0, 0)
        batch, plan.pending = plan.pending[:BATCH], plan.pending[BATCH:]
        if batch:
            embedder = Embedder(self._candidate(name).backend, self.config.embedder.batch_size)
            vectors = np.asarray(embedder.embed(np.stack([t.crop for t in batch])), np.float32)
            for template, vector in zip(batch, vectors):
                plan.result.embeddings[template.id] = vector
        return (plan.total - len(plan.pending), plan.total)

    def check_discrimination(
        self, name: str, threshold: float, samples: Optional[Dict[str, np.ndarray]] = None
    ) -> Dict[str, Any]:
        """Does candidate embedder ``name`` still tell people apart? Checked before the switch.

        Reference outputs alone cannot show it: a package's references are its own outputs, so a
        model that maps every face to one vector reproduces them. Compared with the live embedder on
        the same faces — the enrolled crops (re-embedded by the plan; the live embeddings are the
        stored templates) and the package's reference inputs ``samples`` (``{input name: (N, …)}``):

        * **collapse**: the mean cosine between different faces must not approach 1;
        * **impostors**: no larger share of pairs of different enrolled identities at or above the
          match ``threshold`` than the live embedder has (it would grant strangers);
        * **identification**: each enrolled crop's nearest other crop must belong to its own identity
          as often as with the live embedder.

        Raises:
            ValidationError: what failed, with the figures.
        """
        self._require_owner("checking a candidate embedder")
        candidate = self._candidate(name)
        if candidate.target.spec.kind != KIND_EMBEDDER:
            return {}
        plan = self._reembedding if self._reembedding is not None and self._reembedding.name == name else None
        new_rows: List[np.ndarray] = []
        old_rows: List[np.ndarray] = []
        labels: List[str] = []
        if plan is not None:
            for template_id, (identity, old) in plan.known.items():
                vector = plan.result.embeddings.get(template_id)
                if vector is not None:
                    new_rows.append(vector)
                    old_rows.append(old)
                    labels.append(identity)
        if samples:
            live = self._loaded.get(name)
            output = candidate.backend.spec.outputs[0].name
            new_rows.extend(candidate.backend.run(samples)[output])
            if live is not None:
                old_rows.extend(live.run(samples)[output])
        new = _unit(np.asarray(new_rows, np.float32))
        old = _unit(np.asarray(old_rows, np.float32)) if len(old_rows) == len(new_rows) else None
        report = discrimination(new, labels, threshold)
        if old is not None:
            report["live"] = discrimination(old, labels, threshold)
        problem = _discrimination_problem(report)
        if problem is not None:
            raise ValidationError(f"validation: {name} does not tell faces apart: {problem}")
        return report

    def switch_to_candidate(self, name: str, commit: Callable[[], None], step: Callable[[str], None]) -> str:
        """Put the candidate in place of the live model, between two frames.

        For an embedder, templates enrolled since the plan are re-embedded too and the new templates
        written in one transaction; then ``commit()`` (the active pointer, replaced atomically) makes
        it final on disk; then the analyzer and the gallery switch. ``step(name)`` marks the points a
        fault injection may stop at (``templates_written``, ``committed``). The model taken out is kept
        until :meth:`finish_switch` or :meth:`undo_switch`. Returns the new qualified version.
        """
        self._require_owner("switching models")
        candidate = self._candidate(name)
        backend = candidate.backend
        new_version = backend.spec.qualified_version
        gallery = self._gallery
        plan = self._reembedding if self._reembedding is not None and self._reembedding.name == name else None
        # No other gallery change (a removal on its own thread, a re-reading) may come between the
        # templates read for the new model, their rows written and the switch: a template removed
        # in between would come back under the new model.
        hold = gallery.changing() if plan is not None and gallery is not None else nullcontext()
        with hold:
            if plan is not None and gallery is not None:
                embedder = Embedder(backend, self.config.embedder.batch_size)
                reembed(gallery.store, plan.result.source_version, embedder.embed, done=plan.result)
                gallery.store.put_version(new_version, rows_for(gallery.store, plan.result))
                reembed_impostors(gallery.store, new_version, embedder.embed)
            step("templates_written")
            commit()
            step("committed")
            loaded = dict(self._loaded)
            old = loaded.get(name)
            loaded[name] = backend
            self._install(loaded)
            del self._candidates[name]
            self._reembedding = None
            if old is not None:
                previous = self._taken_out.pop(name, None)
                if previous is not None:
                    previous.close()
                self._taken_out[name] = old
            if plan is not None and gallery is not None:
                gallery.switch_model(new_version, int(backend.spec.embedding_dim or 0))
            return new_version

    def finish_switch(self, name: str) -> int:
        """The switch of ``name`` passed its health check: release the model it took out and the old
        embedder's templates. Returns the templates deleted."""
        self._require_owner("finishing a switch")
        old = self._taken_out.pop(name, None)
        if old is not None:
            old.close()
        gallery = self._gallery
        if gallery is None:
            return 0
        return int(gallery.store.drop_versions(gallery.model_version))

    def undo_switch(self, name: str, commit: Callable[[], None]) -> None:
        """Put back the model the last switch of ``name`` took out; ``commit()`` restores the pointer."""
        self._require_owner("undoing a switch")
        old = self._taken_out.pop(name, None)
        if old is None:
            raise RuntimeJobError(f"no switch of {name} to undo")
        loaded = dict(self._loaded)
        fresh = loaded[name]
        loaded[name] = old
        commit()
        self._install(loaded)
        fresh.close()
        gallery = self._gallery
        if gallery is not None and self._analyzer is not None:
            gallery.switch_model(self._analyzer.embedder.version, self._analyzer.embedder.dim)

    def self_test(self, name: str) -> Optional[str]:
        """Run live model ``name`` once on a neutral input; ``None`` when it answers with finite outputs."""
        self._require_owner("testing a model")
        backend = self._loaded.get(name)
        if backend is None:
            return f"{name} is not loaded"
        return _self_test(backend)

    # -- TensorRT engines built in the background (owner; reached through jobs) ------------------------

    def adopt_engine(
        self,
        target: EngineTarget,
        open_engine: Callable[[EngineTarget], InferenceBackend],
        in_place: Optional[Callable[[], None]] = None,
    ) -> bool:
        """Put ``target``'s freshly built engine in place of its CPU back-end, between two frames;
        ``in_place()`` (the engine supervisor marking the model ready) runs as it takes its place.

        ``False`` when the model no longer runs on the CPU with that spec (replaced by an update
        meanwhile): the engine is not wanted any more.
        """
        self._require_owner("switching a model to its engine")
        current = self._loaded.get(target.name)
        if current is None or current.key != "cpu" or current.spec != target.spec:
            return False
        backend = open_engine(target)
        try:
            backend.warmup(iterations=1)
        except BaseException:
            backend.close()
            raise
        loaded = dict(self._loaded)
        loaded[target.name] = backend
        self._install(loaded, in_place)
        current.close()
        return True


#: Mean cosine between different faces above which an embedder has collapsed (live models: ≈ 0.0–0.3).
COLLAPSE_COSINE = 0.9
#: How much worse than the live embedder a candidate may be on the enrolled faces.
IMPOSTOR_SLACK = 0.05
RANK1_SLACK = 0.1


def _unit(vectors: np.ndarray) -> np.ndarray:
    """``(N, D)`` rows scaled to unit length (an empty array stays empty)."""
    if vectors.size == 0:
        return vectors.reshape(0, 0)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def discrimination(vectors: np.ndarray, labels: Sequence[str], threshold: float) -> Dict[str, Any]:
    """How well ``(N, D)`` unit embeddings separate faces; the first ``len(labels)`` rows are labelled
    by identity (the rest are other faces, used for the collapse figure only).

    Returns ``faces``, ``mean_cosine`` (over all pairs of rows), ``impostor_pairs`` and
    ``impostor_above`` (share of pairs of different identities at or above ``threshold``),
    ``rank1_faces`` and ``rank1`` (share of labelled rows of identities with two or more rows whose
    nearest other labelled row has their identity).
    """
    count = len(vectors)
    report: Dict[str, Any] = {"faces": count}
    if count >= 2:
        cosines = vectors @ vectors.T
        upper = np.triu_indices(count, 1)
        report["mean_cosine"] = round(float(cosines[upper].mean()), 4)
    labelled = len(labels)
    if labelled >= 2:
        names = np.asarray(labels)
        cosines = vectors[:labelled] @ vectors[:labelled].T
        different = names[:, None] != names[None, :]
        pairs = np.triu(different, 1)
        if pairs.any():
            report["impostor_pairs"] = int(pairs.sum())
            report["impostor_above"] = round(float((cosines[pairs] >= threshold).mean()), 4)
        np.fill_diagonal(cosines, -np.inf)
        repeated = [i for i in range(labelled) if (names == names[i]).sum() >= 2]
        if repeated:
            nearest = np.argmax(cosines[repeated], axis=1)
            report["rank1_faces"] = len(repeated)
            report["rank1"] = round(float((names[nearest] == names[repeated]).mean()), 4)
    return report


def _discrimination_problem(report: Dict[str, Any]) -> Optional[str]:
    """Why a candidate's :func:`discrimination` report fails against the live embedder's, or ``None``."""
    live = report.get("live", {})
    mean = report.get("mean_cosine")
    if mean is not None and mean > max(COLLAPSE_COSINE, live.get("mean_cosine", 0.0) + 0.3):
        return (
            f"different faces have a mean cosine of {mean:.3f} (the live embedder: "
            f"{live.get('mean_cosine', float('nan')):.3f}) — its embeddings have collapsed"
        )
    above = report.get("impostor_above")
    if above is not None and above > live.get("impostor_above", 0.0) + IMPOSTOR_SLACK:
        return (
            f"{above:.1%} of pairs of different enrolled people score at or above the threshold "
            f"(the live embedder: {live.get('impostor_above', 0.0):.1%}) — it would grant strangers"
        )
    rank1 = report.get("rank1")
    if rank1 is not None and rank1 < live.get("rank1", 0.0) - RANK1_SLACK:
        return (
            f"{rank1:.1%} of enrolled faces have their own identity nearest (the live embedder: "
            f"{live.get('rank1', 0.0):.1%}) — it confuses enrolled people"
        )
    return None


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


def _self_test(backend: InferenceBackend) -> Optional[str]:
    try:
        output = backend.run(_neutral_feeds(backend))
    except Exception as err:
        return f"self-test: {type(err).__name__}: {err}"
    if not all(np.isfinite(np.asarray(value, np.float64)).all() for value in output.values()):
        return "self-test: non-finite outputs"
    return None


def _latency_ms(backend: InferenceBackend) -> float:
    feeds = _neutral_feeds(backend)
    backend.run(feeds)  # warm
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        backend.run(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


__all__ = ["ModelOwnershipError", "ModelRuntime", "RuntimeJobError", "ValidationError", "discrimination"]
