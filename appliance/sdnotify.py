"""A dependency-free client of systemd's service notification protocol (``sd_notify(3)``).

Under ``Type=notify`` systemd passes the path of a datagram socket in ``$NOTIFY_SOCKET`` and reads
newline-separated ``KEY=VALUE`` assignments from it: ``READY=1`` when start-up is complete,
``STATUS=…`` for ``systemctl status``, ``WATCHDOG=1`` as the keep-alive ping, ``STOPPING=1`` and
``RELOADING=1`` for state changes, ``EXTEND_TIMEOUT_USEC=…`` to stretch the start or stop timeout.
A path starting with ``@`` names a Linux abstract-namespace socket. systemd attributes each
datagram to the unit by the sender's credentials, which the kernel attaches because systemd's end
has ``SO_PASSCRED`` set; nothing beyond the payload has to be sent.

The daemon must run the same without systemd (a shell, a container, the tests), so
:meth:`SystemdNotifier.notify` never raises: with no ``$NOTIFY_SOCKET`` it does nothing, and a
missing or broken socket is logged once at DEBUG and otherwise ignored.

Typical use by the supervisor::

    notifier = SystemdNotifier()
    notifier.ready(status="serving: 25 fps")
    interval = notifier.watchdog_interval()      # None: no watchdog asked for
    while not stop_event.wait(interval or 5.0):
        if interval is not None and pipeline_is_healthy():
            notifier.watchdog()
    notifier.stopping()
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Mapping, Optional, Union

logger = logging.getLogger(__name__)

#: Environment variables systemd sets for a supervised service.
NOTIFY_SOCKET_VARIABLE = "NOTIFY_SOCKET"
WATCHDOG_USEC_VARIABLE = "WATCHDOG_USEC"
WATCHDOG_PID_VARIABLE = "WATCHDOG_PID"

_USEC_PER_SECOND = 1_000_000


def _socket_address(value: str) -> Optional[Union[str, bytes]]:
    """The ``AF_UNIX`` address for a ``$NOTIFY_SOCKET`` value, or None when it is not one we can use.

    ``/run/systemd/notify`` is a file-system socket; ``@name`` is ``\\0name`` in the abstract
    namespace. Other forms (newer systemd also knows ``vsock:``) are not supported here.
    """
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8")
    return None


class SystemdNotifier:
    """Sends ``sd_notify`` messages to the service manager, if there is one.

    Thread-safe: the supervisor, the signal-driven stop path and the engine builder may all notify.
    The environment is read once, when the notifier is made.

    Args:
        environ: where to read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``;
            default :data:`os.environ`.
    """

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        env = os.environ if environ is None else environ
        self._socket_value = env.get(NOTIFY_SOCKET_VARIABLE, "")
        self._watchdog_usec = env.get(WATCHDOG_USEC_VARIABLE, "")
        self._watchdog_pid = env.get(WATCHDOG_PID_VARIABLE, "")
        self._address = _socket_address(self._socket_value) if self._socket_value else None
        self._socket: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._failing = False
        if self._socket_value and self._address is None:
            logger.debug(
                "%s=%r is neither a socket path nor an abstract socket (@name); systemd notifications are off",
                NOTIFY_SOCKET_VARIABLE,
                self._socket_value,
            )

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given (the process runs under ``Type=notify``)."""
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send ``message`` (newline-separated ``KEY=VALUE`` assignments) as one datagram.

        Returns:
            True if the datagram was handed to the socket; False when there is no socket, or it is
            missing or broken (logged once at DEBUG until a send succeeds again). Never raises.
        """
        if self._address is None:
            return False
        data = message.encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._socket is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.setblocking(False)
                    self._socket = sock
                self._socket.sendto(data, self._address)
            except OSError as err:
                if not self._failing:
                    logger.debug(
                        "cannot notify systemd through %s (%s); carrying on without it",
                        self._socket_value,
                        err,
                    )
                    self._failing = True
                self._close_locked()
                return False
            if self._failing:
                logger.debug("systemd notification socket %s works again", self._socket_value)
                self._failing = False
            return True

    def ready(self, status: Optional[str] = None) -> bool:
        """Start-up (or a reload) is complete: ``READY=1``, with an optional status line."""
        return self.notify(self._with_status("READY=1", status))

    def status(self, text: str) -> bool:
        """Show ``text`` in ``systemctl status``: ``STATUS=…`` (one line; newlines become spaces)."""
        return self.notify("STATUS=" + _one_line(text))

    def stopping(self, status: Optional[str] = None) -> bool:
        """The staged shutdown begins: ``STOPPING=1``."""
        return self.notify(self._with_status("STOPPING=1", status))

    def reloading(self, status: Optional[str] = None) -> bool:
        """A reload (SIGHUP: gallery and thresholds) begins; send :meth:`ready` when it is done.

        Carries ``MONOTONIC_USEC`` (``CLOCK_MONOTONIC`` in µs), which systemd 253 and later use to
        match the reload to its request (``Type=notify-reload``); older versions ignore it.
        """
        now_usec = time.monotonic_ns() // 1000
        return self.notify(self._with_status(f"RELOADING=1\nMONOTONIC_USEC={now_usec}", status))

    def watchdog(self) -> bool:
        """The keep-alive ping: ``WATCHDOG=1``. Send it only while the pipeline makes progress."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more of start-up or stop time: ``EXTEND_TIMEOUT_USEC=…``.

        Repeat it before the extension runs out (e.g. every half of it) while a long step goes
        on, such as the first TensorRT engine build before ``READY=1``.

        Raises:
            ValueError: ``seconds`` is not positive.
        """
        if not seconds > 0:
            raise ValueError(f"extend_timeout needs a positive number of seconds, got {seconds!r}")
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * _USEC_PER_SECOND))}")

    def watchdog_interval(self) -> Optional[float]:
        """How often to send :meth:`watchdog`, in seconds: half of ``WATCHDOG_USEC``.

        None when no watchdog is configured, when ``WATCHDOG_USEC`` is not a positive integer, or
        when ``WATCHDOG_PID`` is set to another process (the variables were inherited from a
        parent further up), as ``sd_watchdog_enabled(3)`` prescribes.
        """
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                watchdog_pid = int(self._watchdog_pid)
            except ValueError:
                logger.debug("ignoring %s=%r: not a PID", WATCHDOG_PID_VARIABLE, self._watchdog_pid)
                return None
            if watchdog_pid != os.getpid():
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            usec = 0
        if usec <= 0:
            logger.debug(
                "ignoring %s=%r: not a positive integer", WATCHDOG_USEC_VARIABLE, self._watchdog_usec
            )
            return None
        return usec / _USEC_PER_SECOND / 2

    def close(self) -> None:
        """Close the socket; a later :meth:`notify` opens a new one."""
        with self._lock:
            self._close_locked()

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _close_locked(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @staticmethod
    def _with_status(message: str, status: Optional[str]) -> str:
        return message if status is None else f"{message}\nSTATUS={_one_line(status)}"


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())
