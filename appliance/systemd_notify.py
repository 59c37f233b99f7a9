"""The daemon's side of systemd's service notification protocol, through ``systemd.daemon.notify``.

Under ``Type=notify`` systemd passes a datagram socket in ``$NOTIFY_SOCKET`` and reads
newline-separated ``KEY=VALUE`` assignments from it (``sd_notify(3)``): ``READY=1`` when start-up is
complete, ``STATUS=…`` for ``systemctl status``, ``WATCHDOG=1`` as the keep-alive ping,
``RELOADING=1`` and ``STOPPING=1`` for state changes, ``EXTEND_TIMEOUT_USEC=…`` to stretch the start
or stop timeout. The sending is libsystemd's ``sd_notify()``, wrapped by ``systemd-python``
(``systemd.daemon.notify(status, unset_environment=False, pid=0, fds=None)``): it reads
``$NOTIFY_SOCKET`` itself (a path, ``@abstract``, and on systemd ≥ 253 ``vsock:``), returns False
when it is unset, and raises :class:`OSError` when the socket cannot be reached.

The library comes from Debian/Ubuntu's ``python3-systemd`` on a Jetson (a virtualenv made with
``--system-site-packages`` sees it) and from PyPI's ``systemd-python`` elsewhere
(``pip install 'face-appliance[systemd]'``). The daemon must run the same without it or without
systemd (a laptop, a container, the tests), so nothing here raises: without the library, or
without ``$NOTIFY_SOCKET``, every notification is a no-op that returns False; a socket that fails is
logged once at DEBUG. ``$NOTIFY_SOCKET`` set while the library is missing is an ERROR at start-up:
systemd then never hears ``READY=1`` and ends the start at ``TimeoutStartSec``.

libsystemd has ``sd_watchdog_enabled(3)`` but ``systemd-python`` does not wrap it, so
:meth:`SystemdNotifier.watchdog_interval` applies its rules to ``$WATCHDOG_USEC`` and
``$WATCHDOG_PID`` here.

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
import threading
import time
from types import ModuleType
from typing import Optional

logger = logging.getLogger(__name__)

#: Environment variables systemd sets for a supervised service.
NOTIFY_SOCKET_VARIABLE = "NOTIFY_SOCKET"
WATCHDOG_USEC_VARIABLE = "WATCHDOG_USEC"
WATCHDOG_PID_VARIABLE = "WATCHDOG_PID"

_USEC_PER_SECOND = 1_000_000


def systemd_daemon() -> Optional[ModuleType]:
    """``systemd.daemon`` from ``systemd-python``, or None where it is not installed."""
    try:
        from systemd import daemon
    except ImportError:
        return None
    return daemon


class SystemdNotifier:
    """Sends ``sd_notify`` messages to the service manager, if there is one.

    Thread-safe: the supervisor, the signal-driven stop path and the engine builder may all notify
    (``sd_notify()`` opens a socket per call). ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and
    ``$WATCHDOG_PID`` are read from :data:`os.environ` when the notifier is made.

    """

    def __init__(self) -> None:
        self._daemon = systemd_daemon()
        self._socket_value = os.environ.get(NOTIFY_SOCKET_VARIABLE, "")
        self._watchdog_usec = os.environ.get(WATCHDOG_USEC_VARIABLE, "")
        self._watchdog_pid = os.environ.get(WATCHDOG_PID_VARIABLE, "")
        self._lock = threading.Lock()
        self._failing = False
        if self._socket_value and self._daemon is None:
            logger.error(
                "%s is set (a Type=notify service) but systemd-python is not installed: systemd will "
                "not hear READY=1 and ends the start at TimeoutStartSec; install python3-systemd "
                "(Debian/Ubuntu, Jetson) or pip install 'face-appliance[systemd]'",
                NOTIFY_SOCKET_VARIABLE,
            )

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere: the library is present and ``$NOTIFY_SOCKET`` is set."""
        return self._daemon is not None and bool(self._socket_value)

    def notify(self, message: str) -> bool:
        """Send ``message`` (newline-separated ``KEY=VALUE`` assignments) as one datagram.

        Returns:
            True if the datagram was sent; False when notification is off (no library, no
            ``$NOTIFY_SOCKET``) or the socket is missing or broken (logged once at DEBUG until a
            send succeeds again). Never raises.
        """
        daemon = self._daemon
        if daemon is None or not self._socket_value:
            return False
        text = message.replace("\0", " ")  # libsystemd takes a C string
        with self._lock:
            try:
                sent = bool(daemon.notify(text))
            except OSError as err:
                if not self._failing:
                    logger.debug(
                        "cannot notify systemd through %s (%s); carrying on without it",
                        self._socket_value,
                        err,
                    )
                    self._failing = True
                return False
            if sent and self._failing:
                logger.debug("systemd notification socket %s works again", self._socket_value)
                self._failing = False
            return sent

    def ready(self, status: Optional[str] = None) -> bool:
        """Start-up (or a reload) is complete: ``READY=1``, with an optional status line."""
        return self.notify(_with_status("READY=1", status))

    def status(self, text: str) -> bool:
        """Show ``text`` in ``systemctl status``: ``STATUS=…`` (one line; newlines become spaces)."""
        return self.notify("STATUS=" + _one_line(text))

    def stopping(self, status: Optional[str] = None) -> bool:
        """The staged shutdown begins: ``STOPPING=1``."""
        return self.notify(_with_status("STOPPING=1", status))

    def reloading(self, status: Optional[str] = None) -> bool:
        """A reload (SIGHUP: gallery and thresholds) begins; send :meth:`ready` when it is done.

        Carries ``MONOTONIC_USEC`` (``CLOCK_MONOTONIC`` in µs), which ``sd_notify(3)`` asks for with
        ``RELOADING=1`` since systemd 253 (it matches the reload to its request under
        ``Type=notify-reload``); the unit is ``Type=notify`` and older versions ignore the field.
        """
        now_usec = time.monotonic_ns() // 1000
        return self.notify(_with_status(f"RELOADING=1\nMONOTONIC_USEC={now_usec}", status))

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
        parent further up), as ``sd_watchdog_enabled(3)`` prescribes. Also None without the
        library: pings that cannot be sent need no schedule.
        """
        if self._daemon is None or not self._watchdog_usec:
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


def _with_status(message: str, status: Optional[str]) -> str:
    return message if status is None else f"{message}\nSTATUS={_one_line(status)}"


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


__all__ = ["SystemdNotifier", "systemd_daemon"]
