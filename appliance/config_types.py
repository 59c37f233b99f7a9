"""The building blocks every configuration section shares: the strict base model and the path type.

They live apart from :mod:`appliance.config` so that a package owning its own section (the door's
I/O, the OSDP link, the access policy) can define it without importing the whole configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

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


class StrictModel(BaseModel):
    """Base of every section: unknown keys and implicit type conversions are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


__all__ = ["CREDENTIALS_VARIABLE", "ConfigPath", "StrictModel"]
