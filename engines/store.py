"""A models directory: where each registry model lives in it, and whether it is the right file."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List

from .errors import ModelMissingError
from .files import PathLike, sha256_file
from .registry import ModelSpec


class ModelState(str, enum.Enum):
    """What :meth:`ModelStore.check` found for one model."""

    VERIFIED = "verified"
    MISSING = "missing"
    WRONG_SIZE = "wrong size"
    WRONG_DIGEST = "wrong sha256"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class ModelStatus:
    """The state of one model file, with a sentence that explains it."""

    spec: ModelSpec
    path: Path
    state: ModelState
    detail: str

    @property
    def ok(self) -> bool:
        return self.state is ModelState.VERIFIED


class ModelStore:
    """The models directory (``models.dir``), laid out like the mirror: ``<root>/<spec.file>``."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)

    def path(self, spec: ModelSpec) -> Path:
        """Where ``spec``'s file lives (present or not)."""
        return self.root / spec.file

    def check(self, spec: ModelSpec) -> ModelStatus:
        """Check presence, size and sha256 of one model file (reads the whole file)."""
        path = self.path(spec)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return ModelStatus(spec, path, ModelState.MISSING, f"{path} does not exist")
        except OSError as err:
            return ModelStatus(spec, path, ModelState.UNREADABLE, f"{path}: {err.strerror}")
        if size != spec.size:
            return ModelStatus(
                spec, path, ModelState.WRONG_SIZE, f"{path} has {size} bytes, expected {spec.size}"
            )
        try:
            digest = sha256_file(path)
        except OSError as err:
            return ModelStatus(spec, path, ModelState.UNREADABLE, f"{path}: {err.strerror}")
        if digest != spec.sha256:
            return ModelStatus(
                spec,
                path,
                ModelState.WRONG_DIGEST,
                f"{path} has sha256 {digest}, expected {spec.sha256}",
            )
        return ModelStatus(spec, path, ModelState.VERIFIED, f"{path} ({size} bytes, sha256 ok)")

    def check_all(self, specs: Iterable[ModelSpec]) -> List[ModelStatus]:
        return [self.check(spec) for spec in specs]

    def require(self, spec: ModelSpec) -> Path:
        """The verified path of ``spec``'s file.

        Raises:
            ModelMissingError: absent, truncated or altered; the message says how to fetch it.
        """
        status = self.check(spec)
        if not status.ok:
            raise ModelMissingError(
                f"model {spec.name} is not usable: {status.detail}. "
                f"Fetch it with: face-appliance models fetch {spec.name} --dest {os.fspath(self.root)}"
            )
        return status.path
