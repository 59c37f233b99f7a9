"""Crash consistency: the writers of the gallery, the outbox and the active-model pointer killed at
every write point.

    python -m bench.reliability.crash [--only gallery outbox pointer] [--no-torn] [--json OUT]

A write point is a call that changes what is on disk: ``write``/``pwrite`` on a regular file,
``fsync``/``fdatasync``, ``ftruncate``, ``rename``, ``unlink``, ``mkdir``, an ``open`` that creates
or truncates (``crashpoint.c`` lists them all). The library ``crashpoint.c`` (built here with the C
compiler, preloaded with ``LD_PRELOAD`` into a worker process) counts them. For each writer
operation (:data:`OPERATIONS`), the worker

1. prepares the state *before* the operation in a folder, and observes what a restart would find
   there (the ``before`` state); runs the operation once to completion, counting and naming its
   write points (the trace), and observes the ``after`` state;
2. for every N from 1 to the number of points, forks a child that opens the store, arms the counter,
   runs the operation and is SIGKILLed by the library just before its N-th write point (and, for
   points that write bytes, a second time after writing only half of them: a torn write);
3. after each kill re-opens the folder as the daemon would at its next start and checks the
   invariant: it opens, passes its own checks, and holds exactly the before or the after state —
   never a mixture, never an empty store where there was data, never a damaged pointer.

A process kill keeps what reached the page cache; it is not a power cut (where writes not yet
fsync'd may be lost or reordered). The sweep shows the order and atomicity of the writes; the fsyncs
that make them durable are among the points listed in the trace.

The figures: per operation the number of write points (by call), the kill outcomes (``before``,
``after``, anything else is a finding), the first point from which the after state is seen (the
commit point) and temporary files a kill left behind. ``python -m bench.reliability`` runs this as
its third part.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("crashpoint.c")
REPO = Path(__file__).resolve().parent.parent.parent
#: The longest a child may take for one operation before it counts as a hang.
CHILD_TIMEOUT_S = 60.0
#: The embedder the gallery operations store templates of (any name@version and length will do).
MODEL, NEW_MODEL, DIM = "mobilefacenet@test", "mobilefacenet@next", 128
#: Temporary files a writer leaves while it works (a kill may leave them behind).
TEMPORARY_PATTERNS = (".*.tmp", "*.tmp", "*-journal")


class ShimError(RuntimeError):
    """The crash-point library cannot be built or loaded (no C compiler, no ``LD_PRELOAD``)."""


def build_shim(folder: Optional[Path] = None) -> Path:
    """Compile ``crashpoint.c`` into a shared library (cached by the source's digest); its path.

    Raises:
        ShimError: no C compiler, or it failed.
    """
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = (folder or Path(tempfile.gettempdir())) / f"face-appliance-crashpoint-{digest}.so"
    if target.is_file():
        return target
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise ShimError("the crash-consistency sweep needs a C compiler (cc or gcc) to build crashpoint.c")
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(partial), str(SOURCE), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ShimError(f"building {SOURCE.name} failed:\n{done.stderr}")
    os.replace(partial, target)
    return target


# -- the operations ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One writer operation and how to observe what it leaves.

    ``prepare(folder)`` writes the state before the operation (unarmed); ``open(folder)`` opens what
    the operation works on (unarmed, in the child) and returns a handle; ``act(handle)`` is the
    operation itself, closing included (armed: its write points are counted); ``observe(folder)``
    re-opens the folder as the daemon's next start would and returns its state (JSON-comparable),
    or raises :class:`InconsistentError`.
    """

    name: str
    store: str
    prepare: Callable[[Path], None]
    open: Callable[[Path], Any]
    act: Callable[[Any], None]
    observe: Callable[[Path], Any]


class InconsistentError(Exception):
    """What a restart found is unusable, damaged, or not a state the operation can leave."""


def _vectors(seed: int, count: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _crops(seed: int, count: int) -> Any:
    """Aligned-crop-sized images that compress like photos (a gradient with some noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, 112, dtype=np.float32)
    base = ramp[None, :, None] + ramp[:, None, None] * 0.2
    noise = rng.integers(0, 24, (count, 112, 112, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def _gallery(folder: Path, model: str = MODEL, compact_min_bytes: Optional[int] = None) -> Any:
    from appliance.config_load import validate_config
    from appliance.gallery.gallery import Gallery

    config = validate_config({"storage": {"dir": str(folder)}})
    if compact_min_bytes is None:
        return Gallery.open(config, model, DIM)
    return Gallery.open(config, model, DIM, compact_min_bytes=compact_min_bytes)


def _compacting_gallery(folder: Path) -> Any:
    """A gallery whose next enrolment folds the delta into a new snapshot (no 1 MiB floor)."""
    return _gallery(folder, compact_min_bytes=0)


def _fleet_record_saved_later(gallery: Any) -> None:
    """A fleet record applied without saving (as a catch-up batch does), then :meth:`save_index`:
    the pending record appended to the delta."""
    from appliance.access.policy import IdentityPolicy

    gallery.apply_fleet_identity(
        "fleet-a",
        1,
        "Fleet A",
        None,
        "2026-01-01T00:00:00Z",
        IdentityPolicy(),
        _vectors(50, 1),
        _crops(50, 1),
        [0.9],
        save=False,
    )
    gallery.save_index()


def _enrol(gallery: Any, identity: str, name: str, seed: int) -> None:
    gallery.add(identity, name, _vectors(seed, 2), _crops(seed, 2))


def _generic(name: str) -> str:
    """A file name with the random part of a temporary name replaced by ``*``."""
    return _RANDOM_PART.sub(r".*\1", name)


_RANDOM_PART = re.compile(r"\.[A-Za-z0-9_]{8}(\.tmp)$")


def _temporary_files(folder: Path) -> List[str]:
    found = {path for pattern in TEMPORARY_PATTERNS for path in folder.rglob(pattern)}
    return sorted(_generic(str(path.relative_to(folder))) for path in found)


def _reopen(opener: Callable[[Path], Any], folder: Path, errors: Any, what: str) -> Any:
    """``opener(folder)``, its documented error class (``errors``) becoming :class:`InconsistentError`."""
    try:
        return opener(folder)
    except errors as err:
        raise InconsistentError(f"the {what} does not open: {err}") from None


def _observe_gallery(folder: Path) -> Dict[str, Any]:
    from appliance.gallery.errors import GalleryError

    with _reopen(_gallery, folder, GalleryError, "gallery") as gallery:
        problems = gallery.store.check()
        if problems:
            raise InconsistentError(f"the gallery's own check: {problems}")
        identities = [[i.id, i.name, i.templates] for i in gallery.identities()]
        versions = sorted([version, count] for version, count in gallery.store.model_versions().items())
        if len(gallery) != dict(versions).get(MODEL, 0):
            raise InconsistentError(f"the index holds {len(gallery)} templates, the store {versions}")
        _check_index_matches_store(gallery)
        return {"identities": identities, "versions": versions, "generation": gallery.store.generation}


def _check_index_matches_store(gallery: Any) -> None:
    """The searchable templates are exactly the store's: every stored embedding of the active model
    finds its own identity first, at a cosine of ≈ 1 (a wrong id or a template removed from the
    store but still in the index, replayed from a delta for instance, would not)."""
    import numpy as np

    templates = list(gallery.store.templates(MODEL))
    if not templates:
        return
    queries = np.stack([template.embedding for template in templates]).astype(np.float32)
    for template, hits in zip(templates, gallery.search(queries, 1)):
        if not hits or hits[0].identity_id != template.identity_id or hits[0].score < 0.99:
            found = f"{hits[0].identity_id} at {hits[0].score:.3f}" if hits else "nothing"
            raise InconsistentError(
                f"template {template.id} of {template.identity_id} finds {found} in the index"
            )


def _gallery_with(*people: Tuple[str, str, int]) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        with _gallery(folder) as gallery:
            for identity, name, seed in people:
                _enrol(gallery, identity, name, seed)

    return prepare


def _re_embed(gallery: Any) -> None:
    rows = [
        (t.identity_id, _vectors(t.id + 100, 1)[0], t.crop, t.quality) for t in gallery.store.templates(MODEL)
    ]
    gallery.store.put_version(NEW_MODEL, rows)
    gallery.close()


def _with_new_version(folder: Path) -> None:
    _gallery_with(("obama", "Barack Obama", 1), ("ada", "Ada Lovelace", 2))(folder)
    with _gallery(folder) as gallery:
        _re_embed(gallery)


def _close_after(action: Callable[[Any], Any]) -> Callable[[Any], None]:
    def act(handle: Any) -> None:
        try:
            action(handle)
        finally:
            handle.close()

    return act


OUTBOX_FILE = "outbox.db"
#: The outbox's count bound in the operations (one over it drops the oldest).
OUTBOX_BOUND = 3


def _outbox(folder: Path) -> Any:
    from appliance.outbox import Outbox

    return Outbox.open(folder / OUTBOX_FILE, OUTBOX_BOUND, 10 * 365 * 86400.0)


def _outbox_with(count: int) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        with _outbox(folder) as outbox:
            for number in range(count):
                outbox.put(f"event-{number}", json.dumps({"n": number, "pad": "x" * 600}).encode())

    return prepare


def _observe_outbox(folder: Path) -> Dict[str, Any]:
    from appliance.outbox import OutboxError

    with _reopen(_outbox, folder, OutboxError, "outbox") as outbox:
        quarantined = sorted(path.name for path in folder.glob(f"{OUTBOX_FILE}.corrupt-*"))
        if quarantined:
            raise InconsistentError(f"the outbox was found corrupt and moved aside: {quarantined}")
        stats = outbox.stats()
        pending = [entry.event_id for entry in outbox.pending(1000)]
        if stats["depth"] != len(pending):
            raise InconsistentError(f"depth {stats['depth']} but {len(pending)} pending")
        counters = {
            key: stats[key] for key in ("put_total", "acked_total", "dropped_overflow", "dropped_age")
        }
        if counters["put_total"] - counters["acked_total"] - counters["dropped_overflow"] != len(pending):
            raise InconsistentError(f"counters {counters} do not add up to {len(pending)} pending")
        return {"pending": pending, "counters": counters}


PACKAGE_NAME = "mobilefacenet"


def _package(folder: Path, version: str, release: int) -> Any:
    """An installed package folder with a model file, and its pointer entry."""
    from appliance.updates.active import InstalledModel

    directory = f"packages/{PACKAGE_NAME}-{version}"
    data = f"model {version}".encode() * 64
    target = folder / "models" / directory
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.onnx").write_bytes(data)
    return InstalledModel(
        PACKAGE_NAME, version, release, directory, "model.onnx", len(data), hashlib.sha256(data).hexdigest()
    )


def _pointer_with(*versions: str) -> Callable[[Path], None]:
    """Packages 1.0, 2.0 and 3.0 (releases 1, 2, 3) installed; ``versions`` activated in turn."""

    def prepare(folder: Path) -> None:
        from appliance.updates.active import ActiveModels

        entries = {
            version: _package(folder, version, release)
            for version, release in (("1.0", 1), ("2.0", 2), ("3.0", 3))
        }
        models = ActiveModels(folder)
        for version in versions:
            models.commit(models.with_active(entries[version]))

    return prepare


def _activate(version: str, release: int) -> Callable[[Any], None]:
    def act(models: Any) -> None:
        from appliance.updates.active import InstalledModel

        directory = f"packages/{PACKAGE_NAME}-{version}"
        data = (models.root / directory / "model.onnx").read_bytes()
        entry = InstalledModel(
            PACKAGE_NAME,
            version,
            release,
            directory,
            "model.onnx",
            len(data),
            hashlib.sha256(data).hexdigest(),
        )
        models.commit(models.with_active(entry))

    return act


def _open_pointer(folder: Path) -> Any:
    from appliance.updates.active import ActiveModels

    return ActiveModels(folder)


def _observe_pointer(folder: Path) -> Dict[str, Any]:
    from appliance.updates.active import ActiveModels

    models = ActiveModels(folder)
    if models.damaged is not None:
        raise InconsistentError(f"fell back to the registry's models: {models.damaged}")
    pointer = models.snapshot()
    entry = pointer.active.get(PACKAGE_NAME)
    if entry is not None:
        model_file = models.root / entry.directory / entry.file
        if not model_file.is_file() or hashlib.sha256(model_file.read_bytes()).hexdigest() != entry.sha256:
            raise InconsistentError(
                f"the pointer names {entry.directory}/{entry.file}, which is missing or differs"
            )
        if (models.release(PACKAGE_NAME) or 0) < entry.release:
            raise InconsistentError(
                f"the release counter {models.release(PACKAGE_NAME)} is behind the active {entry.release}"
            )
    previous = pointer.previous.get(PACKAGE_NAME)
    return {
        "active": None if entry is None else entry.version,
        "previous": None if previous is None else previous.version,
        "max_release": models.release(PACKAGE_NAME),
        "last": pointer.last,
    }


OPERATIONS: List[Operation] = [
    Operation(
        "gallery: first start (key, schema, index)",
        "gallery",
        lambda folder: None,
        lambda folder: folder,
        lambda folder: _gallery(folder).close(),
        _observe_gallery,
    ),
    Operation(
        "gallery: enrol (2 templates with crops)",
        "gallery",
        _gallery_with(("obama", "Barack Obama", 1)),
        _gallery,
        _close_after(lambda g: _enrol(g, "ada", "Ada Lovelace", 2)),
        _observe_gallery,
    ),
    Operation(
        "gallery: enrol, the delta folded into a new snapshot",
        "gallery",
        _gallery_with(("obama", "Barack Obama", 1)),
        _compacting_gallery,
        _close_after(lambda g: _enrol(g, "ada", "Ada Lovelace", 2)),
        _observe_gallery,
    ),
    Operation(
        "gallery: fleet record applied, then save_index (a pending delta record)",
        "gallery",
        _gallery_with(("obama", "Barack Obama", 1)),
        _gallery,
        _close_after(_fleet_record_saved_later),
        _observe_gallery,
    ),
    Operation(
        "gallery: remove (secure delete, WAL truncated)",
        "gallery",
        _gallery_with(("obama", "Barack Obama", 1), ("ada", "Ada Lovelace", 2)),
        _gallery,
        _close_after(lambda g: g.remove("ada")),
        _observe_gallery,
    ),
    Operation(
        "gallery: re-embed for a new model (put_version)",
        "gallery",
        _gallery_with(("obama", "Barack Obama", 1), ("ada", "Ada Lovelace", 2)),
        _gallery,
        _re_embed,
        _observe_gallery,
    ),
    Operation(
        "gallery: drop the old model's templates",
        "gallery",
        _with_new_version,
        _gallery,
        _close_after(lambda g: g.store.drop_versions(NEW_MODEL)),
        _observe_gallery,
    ),
    Operation(
        "outbox: first start (schema)",
        "outbox",
        lambda folder: None,
        lambda folder: folder,
        lambda folder: _outbox(folder).close(),
        _observe_outbox,
    ),
    Operation(
        "outbox: put an event",
        "outbox",
        _outbox_with(2),
        _outbox,
        _close_after(lambda o: o.put("event-new", b'{"new": true}')),
        _observe_outbox,
    ),
    Operation(
        "outbox: put over the bound (oldest dropped, counted)",
        "outbox",
        _outbox_with(OUTBOX_BOUND),
        _outbox,
        _close_after(lambda o: o.put("event-new", b'{"new": true}')),
        _observe_outbox,
    ),
    Operation(
        "outbox: acknowledge all (drained, WAL truncated)",
        "outbox",
        _outbox_with(3),
        _outbox,
        _close_after(lambda o: o.ack_many([e.seq for e in o.pending(100)])),
        _observe_outbox,
    ),
    Operation(
        "pointer: first commit (pointer + release counter)",
        "pointer",
        _pointer_with(),
        _open_pointer,
        _activate("1.0", 1),
        _observe_pointer,
    ),
    Operation(
        "pointer: switch to a newer release",
        "pointer",
        _pointer_with("1.0"),
        _open_pointer,
        _activate("2.0", 2),
        _observe_pointer,
    ),
    Operation(
        "pointer: roll back",
        "pointer",
        _pointer_with("1.0", "2.0"),
        _open_pointer,
        lambda models: models.commit(models.with_rollback(PACKAGE_NAME)),
        _observe_pointer,
    ),
]


# -- the sweep (in the worker, which runs with the library preloaded) --------------------------------------


class _Counter:
    """The preloaded library's arm/disarm, through ctypes."""

    def __init__(self) -> None:
        program = ctypes.CDLL(None)
        try:
            self._arm = program.crashpoint_arm
            self._disarm = program.crashpoint_disarm
        except AttributeError:
            raise ShimError(
                "crashpoint is not preloaded (run through sweep(), which sets LD_PRELOAD)"
            ) from None
        self._arm.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_int]
        self._disarm.restype = ctypes.c_long

    def arm(self, at: int, torn: bool, trace_fd: int) -> None:
        self._arm(at, 1 if torn else 0, trace_fd)

    def disarm(self) -> int:
        return int(self._disarm())


def _child(
    counter: _Counter, operation: Operation, folder: Path, at: int, torn: bool, trace: Optional[Path]
) -> None:
    """In the forked child: open unarmed, run armed, exit 0 (or 3 with the error on stderr)."""
    code = 0
    try:
        handle = operation.open(folder)
        trace_fd = os.open(str(trace), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if trace else -1
        counter.arm(at, torn, trace_fd)
        operation.act(handle)
        counter.disarm()
    except BaseException:  # reported to the parent by the exit status; the sweep never raises in a child
        counter.disarm()
        traceback.print_exc()
        code = 3
    finally:
        os._exit(code)


def _run(
    counter: _Counter,
    operation: Operation,
    template: Path,
    folder: Path,
    at: int,
    torn: bool = False,
    trace: Optional[Path] = None,
) -> str:
    """Copy ``template`` to ``folder`` and run the operation there in a child; how the child ended."""
    shutil.copytree(template, folder, symlinks=True)
    pid = os.fork()
    if pid == 0:
        _child(counter, operation, folder, at, torn, trace)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung"
        time.sleep(0.002)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return "completed"
    return f"failed (status {status})"


def _observe(operation: Operation, folder: Path) -> Tuple[str, Any]:
    """``("state", state)`` or ``("inconsistent", why)``; anything else raised is a crash of the check."""
    try:
        return "state", operation.observe(folder)
    except InconsistentError as err:
        return "inconsistent", str(err)
    except Exception as err:  # an exception the daemon's next start would die of
        return "inconsistent", f"{type(err).__name__}: {err}"


def _trace(counter: _Counter, operation: Operation, template: Path, folder: Path) -> List[Tuple[str, str]]:
    """Run the operation unarmed in ``folder``: its write points, in order (call, file relative to it)."""
    trace_file = folder.with_suffix(".trace")
    ended = _run(counter, operation, template, folder, 0, trace=trace_file)
    if ended != "completed":
        raise RuntimeError(f"{operation.name}: the unarmed run {ended}")
    points = []
    for line in trace_file.read_text().splitlines():
        _, call, name = line.split(" ", 2)
        points.append((call, _generic(os.path.relpath(name, folder) if name.startswith("/") else name)))
    return points


def sweep_operation(counter: _Counter, operation: Operation, scratch: Path, torn: bool) -> Dict[str, Any]:
    """Every write point of one operation, killed (and torn, for writes); the outcomes and the findings."""
    started = time.monotonic()
    template = scratch / "before"
    template.mkdir()
    operation.prepare(template)
    _, before = _observe(operation, _copy(template, scratch / "before-observed"))
    points = _trace(counter, operation, template, scratch / "trace")
    _, after = _observe(operation, scratch / "trace")
    again = _trace(counter, operation, template, scratch / "again")
    outcomes: Counter = Counter()
    torn_outcomes: Counter = Counter()
    findings: List[Dict[str, Any]] = []
    commit_point: Optional[int] = None
    left_behind: Counter = Counter()
    plans = [(at, False) for at in range(1, len(points) + 1)]
    if torn:
        plans += [(at, True) for at, (call, _) in enumerate(points, 1) if "write" in call]
    for at, tear in plans:
        folder = scratch / f"kill-{at}{'-torn' if tear else ''}"
        ended = _run(counter, operation, template, folder, at, tear)
        temporary = _temporary_files(folder)
        kind, state = _observe(operation, folder)
        if ended != "killed":
            verdict = f"not killed: {ended}"
        elif kind != "state":
            verdict = "inconsistent"
        elif state == before and state == after:
            verdict = "before = after"
        elif state == before:
            verdict = "before"
        elif state == after:
            verdict = "after"
        else:
            verdict = "mixture"
        (torn_outcomes if tear else outcomes)[verdict] += 1
        if verdict == "after" and not tear and commit_point is None:
            commit_point = at
        if verdict not in ("before", "after", "before = after"):
            call, name = points[at - 1]
            findings.append(
                {"point": at, "call": call, "file": name, "torn": tear, "verdict": verdict, "found": state}
            )
        left_behind.update(temporary)
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "operation": operation.name,
        "store": operation.store,
        "write_points": len(points),
        "deterministic": len(again) == len(points),
        "calls": dict(Counter(call for call, _ in points)),
        "files": dict(Counter(name for _, name in points)),
        "points": [f"{call} {name}" for call, name in points],
        "kills": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "torn_kills": sum(torn_outcomes.values()),
        "torn_outcomes": dict(torn_outcomes),
        "commit_point": commit_point,
        "temporary_files_left": dict(left_behind),
        "findings": findings,
        "before": before,
        "after": after,
        "seconds": round(time.monotonic() - started, 1),
    }


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def _selected(names: Sequence[str], matching: Sequence[str]) -> List[Operation]:
    """The operations of the stores ``names`` whose name holds one of ``matching`` (all when empty)."""
    return [
        op
        for op in OPERATIONS
        if op.store in names and (not matching or any(text in op.name for text in matching))
    ]


def _worker(names: Sequence[str], torn: bool, out: Path, matching: Sequence[str] = ()) -> None:
    """The worker's body (``--worker``): sweep the operations of the named stores, write the results."""
    counter = _Counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="crash-sweep-") as folder:
        for number, operation in enumerate(_selected(names, matching)):
            scratch = Path(folder) / f"op{number}"
            scratch.mkdir()
            result = sweep_operation(counter, operation, scratch, torn)
            logger.info(
                "%s: %d write points, %s, torn %s, %d finding(s)",
                operation.name,
                result["write_points"],
                result["outcomes"],
                result["torn_outcomes"],
                len(result["findings"]),
            )
            results.append(result)
            shutil.rmtree(scratch, ignore_errors=True)
    out.write_text(json.dumps(results, indent=2))


def sweep(
    stores: Sequence[str] = ("gallery", "outbox", "pointer"),
    torn: bool = True,
    timeout_s: float = 3600,
    matching: Sequence[str] = (),
) -> Dict[str, Any]:
    """Run the sweep in a worker process with the crash-point library preloaded.

    ``matching``: only the operations whose name holds one of these strings (all when empty).

    Returns:
        ``{"operations": [per operation: write points, outcomes, findings, …], "seconds": …}``.

    Raises:
        ShimError: the library cannot be built; RuntimeError: the worker failed.
    """
    started = time.monotonic()
    library = build_shim()
    with tempfile.TemporaryDirectory(prefix="crash-sweep-out-") as folder:
        out = Path(folder) / "results.json"
        env = {
            **os.environ,
            "LD_PRELOAD": str(library),
            "PYTHONDONTWRITEBYTECODE": "1",  # a .pyc written by a lazy import would be a write point
            "OMP_NUM_THREADS": "1",  # the worker forks: no thread pools in it
            "OPENBLAS_NUM_THREADS": "1",
        }
        command = [sys.executable, "-m", "bench.reliability.crash", "--worker", str(out), "--only", *stores]
        if not torn:
            command.append("--no-torn")
        if matching:
            command += ["--matching", *matching]
        # stderr is a pipe, not a file: the worker's log lines are then no write points.
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the crash-sweep worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
        for line in done.stderr.splitlines():
            if " write points, " in line:
                logger.info("%s", line.split("] ", 1)[-1])
        operations = json.loads(out.read_text())
    return {
        "library": library.name,
        "operations": operations,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        nargs="+",
        default=["gallery", "outbox", "pointer"],
        choices=["gallery", "outbox", "pointer"],
    )
    parser.add_argument("--no-torn", action="store_true", help="kill before each point only (no torn writes)")
    parser.add_argument(
        "--matching", nargs="+", default=[], help="only the operations whose name holds one of these"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    if args.worker is not None:
        logging.getLogger("appliance").setLevel(logging.CRITICAL)  # a kill's aftermath is expected noise
        _worker(args.only, not args.no_torn, args.worker, args.matching)
        return 0
    report = sweep(args.only, not args.no_torn, matching=args.matching)
    for result in report["operations"]:
        print(
            f"{result['operation']}: {result['write_points']} write points {result['calls']}; "
            f"kills {result['outcomes']}, torn {result['torn_outcomes']}, commit point {result['commit_point']}, "
            f"findings {len(result['findings'])}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if any(result["findings"] for result in report["operations"]) else 0


if __name__ == "__main__":
    sys.exit(main())
