"""Which model files are active: the registry's defaults, or packages installed over the CAN bus.

The pointer is one small JSON file, ``<storage.dir>/models/active.json``, replaced atomically and
fsync'd: after a power cut it names either the old set or the new one, never a mix. Each entry names
an installed package directory (``<storage.dir>/models/packages/…``) holding the model file, with its
size and sha256 so the file is verified again when it is opened. A model without an entry uses the
registry's file in ``models.dir``.

The pointer also keeps, per model, the highest release ever activated (anti-rollback: a package must
carry a higher release counter, unless it is signed as a rollback) and the entry that was active before
the last switch (what ``rollback`` returns to; ``None`` there means the registry's default).

The release counter is kept a second time in ``<storage.dir>/models/releases.json`` (checksummed,
written atomically after the pointer), so that a damaged or deleted pointer does not reset it: the
highest of both wins. A damaged pointer is copied aside (``active.json.damaged-<digest>``), logged
as an ERROR and replaced in memory by the registry's models, with :attr:`ActiveModels.damaged`
saying so (the daemon reports it as degraded); the next committed swap writes a good pointer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from engines.files import atomic_writer
from engines.registry import ModelSpec, get_model

from ..config import ApplianceConfig
from .errors import UpdateError

logger = logging.getLogger(__name__)

SCHEMA = 1
MODELS_DIR = "models"
POINTER_FILE = "active.json"
COUNTER_FILE = "releases.json"
PACKAGES_DIR = "packages"
#: Files read at most this large (a pointer holds a few entries; the counter one number per model).
MAX_POINTER_BYTES = 1024 * 1024
MAX_COUNTER_BYTES = 64 * 1024

#: damaged pointers already reported as ERROR in this process (one ERROR each, not one per reader)
_REPORTED: Set[str] = set()


@dataclass(frozen=True)
class InstalledModel:
    """One installed package's model, as the pointer records it."""

    name: str  # registry name, e.g. "mobilefacenet"
    version: str
    release: int
    directory: str  # relative to <storage>/models
    file: str  # relative to directory
    size: int
    sha256: str
    key_id: str = ""
    installed_at: str = ""
    #: the package's INT8 calibration cache (relative to directory), which its INT8 engine is built from
    calibration_file: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InstalledModel:
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        entry = cls(**data)
        if not isinstance(entry.release, int) or not isinstance(entry.size, int):
            raise ValueError("release and size must be integers")
        if Path(entry.directory).is_absolute() or ".." in Path(entry.directory).parts:
            raise ValueError(f"directory {entry.directory!r} leaves the models folder")
        for name in (entry.file, entry.calibration_file):
            if name is not None and (
                not isinstance(name, str) or Path(name).name != name or name in (".", "..")
            ):
                raise ValueError(f"file {name!r} is not a plain file name")
        return entry

    def spec(self, base: ModelSpec) -> ModelSpec:
        """The registry spec of this model with the package's version and file."""
        return dataclasses.replace(
            base, version=self.version, file=self.file, size=self.size, sha256=self.sha256
        )


@dataclass
class Pointer:
    """The content of ``active.json``."""

    active: Dict[str, InstalledModel] = dataclasses.field(default_factory=dict)
    previous: Dict[str, Optional[InstalledModel]] = dataclasses.field(default_factory=dict)
    max_release: Dict[str, int] = dataclasses.field(default_factory=dict)
    last: Optional[str] = None  # the model switched most recently (what `rollback` undoes)

    def to_json(self) -> Dict[str, Any]:
        return {
            "schema": SCHEMA,
            "active": {name: entry.to_json() for name, entry in sorted(self.active.items())},
            "previous": {
                name: (entry.to_json() if entry is not None else None)
                for name, entry in sorted(self.previous.items())
            },
            "max_release": dict(sorted(self.max_release.items())),
            "last": self.last,
        }

    @classmethod
    def from_json(cls, data: Any) -> Pointer:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"not a schema {SCHEMA} pointer")
        active = {name: InstalledModel.from_json(entry) for name, entry in dict(data["active"]).items()}
        previous = {
            name: (InstalledModel.from_json(entry) if entry is not None else None)
            for name, entry in dict(data["previous"]).items()
        }
        max_release = {str(name): int(value) for name, value in dict(data["max_release"]).items()}
        last = data.get("last")
        if last is not None and not isinstance(last, str):
            raise ValueError("last must be a model name")
        return cls(active, previous, max_release, last)


def _read_limited(path: Path, limit: int) -> Optional[bytes]:
    """A file's bytes (``None`` when it does not exist).

    Raises:
        OSError: unreadable, or ``ValueError``: not a regular file or larger than ``limit``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO is refused, not waited on
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise ValueError("not a regular file")
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


class ReleaseCounter:
    """The highest release ever activated per model, in a small checksummed file beside the pointer.

    ``{"schema": 1, "max_release": {model: release}, "sha256": <of the canonical max_release>}``,
    replaced atomically and fsync'd. A damaged counter reads as empty (logged as an ERROR); the
    pointer's own counter still counts, and the next commit writes the counter again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def _digest(releases: Mapping[str, int]) -> str:
        canonical = json.dumps(dict(sorted(releases.items())), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def read(self) -> Dict[str, int]:
        """The releases recorded (empty when the file is absent or damaged)."""
        try:
            data = _read_limited(self.path, MAX_COUNTER_BYTES)
            if data is None:
                return {}
            return self._parse(data)
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.error(
                "the release counter %s is damaged (%s); the active-model pointer's counter is used and "
                "the next model switch writes it again",
                self.path,
                err,
            )
            return {}

    def _parse(self, data: bytes) -> Dict[str, int]:
        document = json.loads(data.decode("utf-8"))
        if not isinstance(document, dict) or document.get("schema") != SCHEMA:
            raise ValueError(f"not a schema {SCHEMA} release counter")
        releases = dict(document["max_release"])
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in releases.values()):
            raise ValueError("releases must be non-negative integers")
        if document.get("sha256") != self._digest(releases):
            raise ValueError("its checksum does not match its content")
        return {str(name): int(value) for name, value in releases.items()}

    def write(self, releases: Mapping[str, int]) -> None:
        """Replace the file (atomically, fsync'd) with ``releases``."""
        document = {
            "schema": SCHEMA,
            "max_release": dict(sorted(releases.items())),
            "sha256": self._digest(releases),
        }
        with atomic_writer(self.path) as stream:
            stream.write(json.dumps(document, indent=2, sort_keys=True).encode("utf-8"))


def _highest(*counters: Mapping[str, int]) -> Dict[str, int]:
    """Per model, the highest release any of ``counters`` records."""
    merged: Dict[str, int] = {}
    for counter in counters:
        for name, release in counter.items():
            merged[name] = max(merged.get(name, 0), int(release))
    return merged


class ActiveModels:
    """The active-model pointer of one storage directory. Thread-safe.

    Args:
        storage_dir: ``storage.dir``.

    Attributes:
        damaged: why the pointer on disk could not be used (the registry's models are used
            instead), or ``None``.
    """

    def __init__(self, storage_dir: Path) -> None:
        self.root = Path(storage_dir) / MODELS_DIR
        self.path = self.root / POINTER_FILE
        self.counter = ReleaseCounter(self.root / COUNTER_FILE)
        self.damaged: Optional[str] = None
        self._lock = threading.Lock()
        self._pointer = self._load()

    @property
    def packages_dir(self) -> Path:
        return self.root / PACKAGES_DIR

    def _load(self) -> Pointer:
        """The pointer on disk, its counter raised to the separate counter's where that is higher.

        A missing pointer where the counter records activated releases and installed package folders
        remain is damage too (the pointer was deleted): the registry's models run, degraded, and the
        folders are kept for whoever restores the pointer.
        """
        pointer = self._read_pointer()
        counted = self.counter.read()
        if not self.path.exists() and counted and self._installed_folders():
            self._fall_back(FileNotFoundError(2, "it is missing although models were installed"))
        pointer.max_release = _highest(pointer.max_release, counted)
        return pointer

    def _installed_folders(self) -> List[Path]:
        try:
            return (
                sorted(p for p in self.packages_dir.iterdir() if p.is_dir())
                if self.packages_dir.is_dir()
                else []
            )
        except OSError:
            return []

    def _read_pointer(self) -> Pointer:
        try:
            data = _read_limited(self.path, MAX_POINTER_BYTES)
            if data is None:
                return Pointer()
            return Pointer.from_json(json.loads(data.decode("utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as err:
            # The file is only ever replaced whole, so this is damage from outside (or a failing disk).
            self._fall_back(err)
            return Pointer()

    def _fall_back(self, err: Exception) -> None:
        """Keep a damaged pointer aside, report it, and go on with the registry's models."""
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        aside = self._keep_aside()
        self.damaged = (
            f"the active-model pointer {self.path} is damaged ({reason}); running the registry's models"
            + (f" (the damaged file is kept as {aside.name})" if aside is not None else "")
        )
        key = f"{self.path}:{aside}"
        level = logging.DEBUG if key in _REPORTED else logging.ERROR
        _REPORTED.add(key)
        logger.log(
            level,
            "%s; the release counter is kept in %s. Restore the pointer from a backup, or push the model "
            "again: the next switch writes a good pointer",
            self.damaged,
            self.counter.path.name,
        )

    def _keep_aside(self) -> Optional[Path]:
        """Copy the damaged pointer to ``active.json.damaged-<digest>`` (once per content)."""
        try:
            data = _read_limited(self.path, MAX_POINTER_BYTES)
            if data is None:
                return None
            aside = self.path.with_name(f"{POINTER_FILE}.damaged-{hashlib.sha256(data).hexdigest()[:12]}")
            if not aside.exists():
                with atomic_writer(aside) as stream:
                    stream.write(data)
            return aside
        except (OSError, ValueError) as err:
            logger.warning("cannot keep the damaged pointer %s aside: %s", self.path, err)
            return None

    def snapshot(self) -> Pointer:
        """A copy of the pointer."""
        with self._lock:
            return Pointer(
                dict(self._pointer.active),
                dict(self._pointer.previous),
                dict(self._pointer.max_release),
                self._pointer.last,
            )

    def entry(self, name: str) -> Optional[InstalledModel]:
        """The installed package active for model ``name``, or ``None`` for the registry's default."""
        with self._lock:
            return self._pointer.active.get(name)

    def release(self, name: str) -> Optional[int]:
        """The highest release ever activated for ``name`` (``None``: only the registry's default so far)."""
        with self._lock:
            return self._pointer.max_release.get(name)

    def resolve(self, name: str, models_dir: Path) -> Tuple[ModelSpec, Path]:
        """The spec to load for ``name`` and the folder its ``spec.file`` is in."""
        base = get_model(name)
        entry = self.entry(name)
        if entry is None:
            return base, Path(models_dir)
        return entry.spec(base), self.root / entry.directory

    def commit(self, pointer: Pointer) -> None:
        """Replace the pointer on disk (atomically, fsync'd) and in memory, then the release counter.

        The counter is written after the pointer: a power cut in between leaves it one switch behind,
        and the pointer's own counter covers that (a counter ahead of the pointer would refuse the
        re-push of a release that never committed).
        """
        with self._lock:
            pointer.max_release = _highest(pointer.max_release, self._pointer.max_release)
            with atomic_writer(self.path) as stream:
                stream.write(json.dumps(pointer.to_json(), indent=2, sort_keys=True).encode("utf-8"))
            self._pointer = pointer
            self.damaged = None
            try:
                self.counter.write(pointer.max_release)
            except OSError as err:
                logger.error(
                    "cannot write the release counter %s: %s; the pointer keeps the counter meanwhile",
                    self.counter.path,
                    err.strerror or err,
                )
        logger.info(
            "active models committed: %s",
            ", ".join(f"{name}@{entry.version}" for name, entry in sorted(pointer.active.items()))
            or "registry defaults",
        )

    def prune(self) -> List[Path]:
        """Delete installed package folders the pointer names neither as active nor as previous.

        They are what an interrupted staging left behind. Nothing is removed while the pointer is
        damaged or missing (it would name what to keep). Returns the folders removed.
        """
        if self.damaged is not None:  # the pointer that names what to keep is lost: delete nothing
            logger.warning("not removing package folders: %s", self.damaged)
            return []
        pointer = self.snapshot()
        keep = {entry.directory for entry in pointer.active.values()}
        keep.update(entry.directory for entry in pointer.previous.values() if entry is not None)
        removed: List[Path] = []
        if not self.packages_dir.is_dir():
            return removed
        for folder in sorted(self.packages_dir.iterdir()):
            if f"{PACKAGES_DIR}/{folder.name}" in keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        if removed:
            logger.info("removed %d staged package folder(s) no model uses", len(removed))
        return removed

    def with_active(self, entry: InstalledModel) -> Pointer:
        """The pointer after activating ``entry`` (the current one becomes ``previous``)."""
        pointer = self.snapshot()
        pointer.previous[entry.name] = pointer.active.get(entry.name)
        pointer.active[entry.name] = entry
        pointer.max_release[entry.name] = max(pointer.max_release.get(entry.name, 0), entry.release)
        pointer.last = entry.name
        return pointer

    def with_rollback(self, name: str) -> Pointer:
        """The pointer after returning ``name`` to its previous entry.

        Raises:
            UpdateError: nothing to return to.
        """
        pointer = self.snapshot()
        if name not in pointer.previous:
            raise UpdateError(f"no previous model of {name} to roll back to")
        previous = pointer.previous.pop(name)
        current = pointer.active.pop(name, None)
        if previous is not None:
            pointer.active[name] = previous
        pointer.previous[name] = current
        pointer.last = name
        return pointer


def resolve_model(config: ApplianceConfig, name: str) -> Tuple[ModelSpec, Path]:
    """The spec and folder of model ``name`` under ``config`` (installed package or registry default)."""
    return ActiveModels(config.storage.dir).resolve(name, config.models.dir)


__all__ = ["ActiveModels", "InstalledModel", "Pointer", "resolve_model"]
