"""Logging set-up for the command line and the daemon: stderr, and no timestamps under journald."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Dict

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


class RateLimitedLog:
    """WARNING records that input from outside can cause, at most one per key and interval.

    A node on a bus or a broker can repeat the same fault thousands of times a second; each repeat
    within ``interval_s`` of the last WARNING of its key goes to TRACE and is counted, and the next
    WARNING of the key says how many were held back. Thread-safe.

    Args:
        logger: where the records go.
        interval_s: the shortest time between two WARNINGs of one key.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Dict[str, float] = {}
        self._held: Dict[str, int] = {}

    def report(self, key: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` as a WARNING unless one of ``key`` went out recently (then TRACE).

        Returns:
            Whether the WARNING went out.
        """
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                held = -1
            else:
                held = self._held.pop(key, 0)
                self._last[key] = now
        if held < 0:
            self.logger.log(TRACE, message, *args)
            return False
        if held and last is not None:
            text = message % args if args else message
            self.logger.warning("%s (%d more like it in the last %.0f s)", text, held, now - last)
        else:
            self.logger.warning(message, *args)
        return True
