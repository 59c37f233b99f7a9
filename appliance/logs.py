"""Logging set-up for the command line and the daemon: stderr, or the journal's native protocol.

Under systemd (``JOURNAL_STREAM`` names stderr's device and inode, as ``systemd.exec(5)`` sets it
when stderr is connected to journald) and with ``systemd-python`` installed, records go to journald
through ``systemd.journal.JournalHandler`` with ``SYSLOG_IDENTIFIER=face-appliance``: each carries
``PRIORITY``, ``LOGGER``, ``THREAD_NAME``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC`` (the logging
call's location, taken from the record by the handler) and the UPPER_CASE fields a call passes in
``extra=`` (:func:`journal_fields`), e.g. ``DECISION``/``EVENT_ID`` of an access event, so that
``journalctl -u face-appliance DECISION=denied`` works. Elsewhere, or without the library, plain
text goes to stderr (without timestamps when journald stores it: it has its own).

Structured fields carry ids, decisions and versions only: never a face, an embedding, a name or a
secret.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from typing import IO, Any, Callable, Dict, Mapping, Optional

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

#: ``SYSLOG_IDENTIFIER`` of the journal records, as the unit's ``SyslogIdentifier=`` (``journalctl -t``).
JOURNAL_IDENTIFIER = "face-appliance"
#: Text of a record: with the time on a terminal or in a file, without it where journald stores it.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

#: A field name a client may send to journald: upper-case letters, digits and ``_``, not starting
#: with a digit or ``_`` (those are journald's own), at most 64 characters. journald drops others.
_JOURNAL_FIELD = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def stderr_is_journal(stream: Optional[IO[str]] = None, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether ``stream`` (default stderr) is the journald stream systemd connected the service to.

    systemd sets ``JOURNAL_STREAM=<device>:<inode>`` of that stream; a process whose stderr was
    redirected since (a shell started by a service, a test harness's pipe) has other numbers.
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat((sys.stderr if stream is None else stream).fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both of the first two
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def journal_field_name(name: str) -> str:
    """``name`` as a journal field: upper case, other characters as ``_`` (``anti-spoof`` → ``ANTI_SPOOF``).

    Raises:
        ValueError: nothing usable is left (it must start with a letter).
    """
    field = re.sub(r"[^A-Z0-9_]", "_", name.upper())[:64]
    if not _JOURNAL_FIELD.fullmatch(field):
        raise ValueError(f"{name!r} cannot be a journal field name")
    return field


def journal_fields(fields: Mapping[str, Any]) -> Dict[str, str]:
    """Structured journal fields for a logging call's ``extra=``; None values are left out.

    Names go through :func:`journal_field_name`; values become text. The stderr handler ignores them.
    Pass ids, decisions and versions, never a face, an embedding, a name or a secret.
    """
    return {journal_field_name(name): str(value) for name, value in fields.items() if value is not None}


def model_fields(models: Mapping[str, Optional[str]]) -> Dict[str, str]:
    """``MODEL_DETECTOR``, ``MODEL_EMBEDDER``, … fields from ``{"detector": version, …}``."""
    return journal_fields({f"MODEL_{name}": version for name, version in models.items()})


def _send_to_journal(text: str, /, **fields: Any) -> None:
    """``JournalHandler``'s sender: only valid field names, and stderr if journald cannot be reached.

    The handler passes every attribute of the record (``msg``, ``args``, …) besides its journal
    fields; journald would drop the lower-case ones, they are dropped here already.
    """
    from systemd import journal

    kept = {name: value for name, value in fields.items() if _JOURNAL_FIELD.fullmatch(name)}
    try:
        journal.send(text, **kept)
    except OSError:  # journald restarting or gone: the line is not lost
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def journal_handler() -> Optional[logging.Handler]:
    """A ``systemd.journal.JournalHandler`` for this appliance, or None without ``systemd-python``."""
    try:
        from systemd import journal
    except ImportError:
        return None
    handler: logging.Handler = journal.JournalHandler(
        sender_function=_send_to_journal, SYSLOG_IDENTIFIER=JOURNAL_IDENTIFIER
    )
    handler.setFormatter(logging.Formatter(JOURNAL_TEXT_FORMAT))
    return handler


def setup_logging(level: str = "INFO") -> None:
    """Send log records at ``level`` to journald (under systemd, with ``systemd-python``) or stderr."""
    under_journald = stderr_is_journal()
    handler = journal_handler() if under_journald else None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(JOURNAL_TEXT_FORMAT if under_journald else TEXT_FORMAT))
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
