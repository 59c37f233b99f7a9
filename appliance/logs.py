"""Logging set-up for the command line and the daemon: stderr, and no timestamps under journald."""

from __future__ import annotations

import logging
import os
import sys
from typing import Dict

#: Below DEBUG: per-frame and per-CAN-frame chatter, so that DEBUG stays readable on a device.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

#: Third-party loggers that are too talkative at our level.
QUIET_LOGGERS: Dict[str, int] = {
    "urllib3": logging.WARNING,
    "can": logging.WARNING,
    "isotp": logging.WARNING,
    "udsoncan": logging.WARNING,
    "UdsClient": logging.CRITICAL,  # udsoncan's client: push-model raises and reports its errors
    "Connection": logging.WARNING,  # udsoncan's connection logger
    "paho": logging.WARNING,
    "PIL": logging.WARNING,
}


def setup_logging(level: str = "INFO") -> None:
    """Send log records to stderr at ``level``; journald (``JOURNAL_STREAM``) adds its own timestamps."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = (
        "%(levelname)s %(name)s: %(message)s"
        if under_journald
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, quiet_level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet_level, root.level))
