"""Which model files are active: the registry's defaults, or packages installed over the CAN bus.

The pointer is one small JSON file, ``<storage.dir>/models/active.json``, replaced atomically and
fsync'd: after a power cut it names either the old set or the new one, never a mix. Each entry names
an installed package directory (``<storage.dir>/models/packages/…``) holding the model file, with its
size and sha256 so the file is verified again when it is opened. A model without an entry uses the
registry's file in ``models.dir``.

The pointer also keeps, per model, the highest release ever activated (anti-rollback: a package must
carry a higher release counter, unless it is signed as a rollback) and the entry that was active before
the last switch (what ``rollback`` returns to; ``None`` there means the registry's default).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from engines.files import atomic_writer
from engines.registry import ModelSpec, get_model

from ..config import ApplianceConfig
from .errors import UpdateError

logger = logging.getLogger(__name__)

SCHEMA = 1
MODELS_DIR = "models"
POINTER_FILE = "active.json"
PACKAGES_DIR = "packages"


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


class ActiveModels:
    """The active-model pointer of one storage directory. Thread-safe.

    Args:
        storage_dir: ``storage.dir``.
    """

    def __init__(self, storage_dir: Path) -> None:
        self.root = Path(storage_dir) / MODELS_DIR
        self.path = self.root / POINTER_FILE
        self._lock = threading.Lock()
        self._pointer = self._load()

    @property
    def packages_dir(self) -> Path:
        return self.root / PACKAGES_DIR

    def _load(self) -> Pointer:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Pointer()
        except OSError as err:
            raise UpdateError(f"cannot read the active-model pointer {self.path}: {err.strerror}") from err
        try:
            return Pointer.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as err:
            # The file is only ever replaced whole, so this is damage from outside: refuse to guess.
            raise UpdateError(
                f"the active-model pointer {self.path} is damaged ({err}); restore it, or delete it to go "
                "back to the registry's models"
            ) from err

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
        """Replace the pointer on disk (atomically, fsync'd) and in memory."""
        with self._lock:
            with atomic_writer(self.path) as stream:
                stream.write(json.dumps(pointer.to_json(), indent=2, sort_keys=True).encode("utf-8"))
            self._pointer = pointer
        logger.info(
            "active models committed: %s",
            ", ".join(f"{name}@{entry.version}" for name, entry in sorted(pointer.active.items()))
            or "registry defaults",
        )

    def prune(self) -> List[Path]:
        """Delete installed package folders the pointer names neither as active nor as previous.

        They are what an interrupted staging left behind. Returns the folders removed.
        """
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
