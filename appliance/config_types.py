"""The building blocks every configuration section shares: the strict base model and the path type.

They live apart from :mod:`appliance.config` so that a package owning its own section (the door's
I/O, the OSDP link, the access policy) can define it without importing the whole configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo
from typing_extensions import Annotated

CREDENTIALS_VARIABLE = "${CREDENTIALS_DIRECTORY}"


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    text = os.fspath(value)
    if text.startswith(CREDENTIALS_VARIABLE):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError(
                "names a systemd credential but CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=, or give a plain path)"
            )
        value = Path(directory + text[len(CREDENTIALS_VARIABLE) :])
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return Path(os.path.normpath(value)) if value.is_absolute() else value


#: A filesystem path; relative paths are taken from the configuration file's folder.
ConfigPath = Annotated[Path, Field(strict=False), AfterValidator(_resolve_path)]

#: Ids of the configuration (cameras, doors, card readers): letters, digits, ``_ . -``, 1-64
#: characters, starting with a letter or a digit.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Not the id of a door or a card reader: the OSDP reader's key in ``…/state`` → ``door``, beside theirs.
RESERVED_PERIPHERAL_IDS = ("osdp",)


def check_peripheral_id(value: str) -> str:
    """``value`` when it is not a reserved key of ``…/state`` → ``door`` (a door's or a reader's id)."""
    if value in RESERVED_PERIPHERAL_IDS:
        raise ValueError(f"{value!r} is the OSDP reader's name in …/state; give it another id")
    return value


def _distinct_cameras(value: List[str]) -> List[str]:
    if len(set(value)) != len(value):
        raise ValueError("a camera is listed twice")
    return value


#: The cameras a door or a reader serves: camera ids, none listed twice.
CameraIds = Annotated[List[Annotated[str, Field(pattern=ID_PATTERN)]], AfterValidator(_distinct_cameras)]


class StrictModel(BaseModel):
    """Base of every section: unknown keys and implicit type conversions are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


__all__ = ["CREDENTIALS_VARIABLE", "ConfigPath", "StrictModel"]
