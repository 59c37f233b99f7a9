"""Errors raised by :mod:`appliance`, grouped by phase.

::

    ApplianceError
     +-- ConfigError    the configuration file is missing, not TOML, or invalid (all issues listed)

Errors from models and back-ends are :class:`engines.errors.EngineError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:
    from .config_load import ConfigIssue


class ApplianceError(Exception):
    """Base class of the appliance's own errors."""


class ConfigError(ApplianceError):
    """A configuration that cannot be used.

    Attributes:
        path: the file, when the configuration came from one.
        issues: every problem found, each with its key path.
    """

    def __init__(self, path: Optional[Path], issues: Sequence[ConfigIssue]) -> None:
        self.path = path
        self.issues = list(issues)
        where = f"{path}" if path else "configuration"
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{where}: {len(self.issues)} problem(s)\n{lines}")
