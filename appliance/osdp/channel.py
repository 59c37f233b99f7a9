"""The serial line to the panel: a raw, non-blocking tty at the bus speed, as libosdp's channel.

libosdp calls :meth:`SerialChannel.read`, :meth:`~SerialChannel.write` and :meth:`~SerialChannel.flush`
from inside ``refresh()``; they never block for long and never raise (a Python exception inside the
C callback would be lost): an ``OSError`` (an unplugged USB adapter: ``EIO``) is kept in
:attr:`SerialChannel.error` and the owner thread reopens the port. The port is opened with
an exclusive ``flock`` (as pyserial's ``exclusive=True``) and ``TIOCEXCL``, so a second program
cannot use it by mistake while the reader runs.

RS-485 is half duplex: use an adapter or a transceiver that switches direction by itself (every USB
RS-485 adapter does); the kernel's RTS-driven RS-485 mode is not configured here.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import termios
import time
from typing import Optional

from .errors import OsdpError

logger = logging.getLogger(__name__)

#: Longest a packet write may wait for room in the output buffer (the panel waits 200 ms for a reply).
WRITE_TIMEOUT_S = 0.2

_SPEEDS = {
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
    230400: getattr(termios, "B230400", 0),
}


def _configure(fd: int, baud_rate: int) -> None:
    """Raw 8N1, no flow control, no echo, at ``baud_rate``; reads return at once (VMIN = VTIME = 0)."""
    speed = _SPEEDS.get(baud_rate)
    if not speed:
        raise ValueError(f"unsupported baud rate {baud_rate}")
    iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(fd)
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
        | termios.IXANY
        | termios.INPCK
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | getattr(termios, "CRTSCTS", 0))
    cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
    cc[termios.VMIN] = 0
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, speed, speed, cc])


def open_port(path: str, baud_rate: int, key: str = "osdp.port") -> int:
    """Open and configure the serial device; the file descriptor.

    Raises:
        OsdpError: the device is missing, busy, not permitted, or not a tty (the message names
            the configuration ``key`` and what to try).
    """
    flags = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise OsdpError(f"{key}: {_open_advice(path, err)}") from None
    try:
        if not os.isatty(fd):
            raise OsdpError(f"{key}: {path} is not a serial device (a tty); name the RS-485 adapter's device")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OsdpError(
                f"{key}: {path} is in use by another program (a second appliance, or a terminal program?)"
            ) from None
        try:
            fcntl.ioctl(fd, termios.TIOCEXCL)
            _configure(fd, baud_rate)
            termios.tcflush(fd, termios.TCIOFLUSH)
        except (OSError, termios.error) as err:
            raise OsdpError(f"{key}: cannot configure {path} at {baud_rate} baud ({err})") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_advice(path: str, err: OSError) -> str:
    """An ``open`` failure, with what to try (after the configuration key)."""
    if err.errno == errno.ENOENT:
        return (
            f"{path} does not exist; plug in the RS-485 adapter or name the right device "
            f"(ls /dev/ttyUSB* /dev/ttyTHS*)"
        )
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to open {path}; add the service user to the 'dialout' group"
    if err.errno == errno.EBUSY:
        return f"{path} is in use by another program (a getty or a second appliance?)"
    return f"cannot open {path}: {err.strerror or err}"


class SerialChannel:
    """libosdp's channel over a serial device (``read``/``write``/``flush`` and an ``id``).

    Args:
        path: the device (``osdp.port``).
        baud_rate: the bus speed (``osdp.baud_rate``).
        key: the configuration key that names the device, for the messages.
        channel_id: libosdp's channel id. A control panel whose readers share one channel object (one
            RS-485 line) takes turns on it by this id, and its lock reads 0 as "nobody's": such a
            channel needs an id other than 0. One device on a channel of its own: 0.
    """

    def __init__(self, path: str, baud_rate: int, key: str = "osdp.port", channel_id: int = 0) -> None:
        #: libosdp's channel id (read once, when libosdp's object is made).
        self.id = channel_id
        self.path = path
        self.baud_rate = baud_rate
        self.key = key
        self._fd: Optional[int] = None
        #: The last ``OSError`` of a read or a write (the port must be reopened), else ``None``.
        self.error: Optional[str] = None
        self.errors = 0

    def open(self) -> None:
        """Open the port (again); clears :attr:`error`.

        Raises:
            OsdpError: as :func:`open_port`.
        """
        self.close()
        self._fd = open_port(self.path, self.baud_rate, self.key)
        self.error = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def _failed(self, action: str, err: OSError) -> None:
        if self.error is None:
            logger.warning("OSDP serial port %s: %s failed: %s", self.path, action, err.strerror or err)
        self.error = f"{action}: {err.strerror or err}"
        self.errors += 1

    def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes already received; ``b""`` when none (or the port failed)."""
        if self._fd is None or self.error is not None:
            return b""
        try:
            return os.read(self._fd, max_bytes)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as err:
            self._failed("read", err)
            return b""

    def write(self, data: bytes) -> int:
        """Send all of ``data`` (waiting at most :data:`WRITE_TIMEOUT_S` for room); bytes sent, -1 on error."""
        if self._fd is None or self.error is not None:
            return -1
        view = memoryview(data)
        sent = 0
        deadline = time.monotonic() + WRITE_TIMEOUT_S
        try:
            while sent < len(view):
                try:
                    sent += os.write(self._fd, view[sent:])
                except (BlockingIOError, InterruptedError):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    select.select([], [self._fd], [], left)
        except OSError as err:
            self._failed("write", err)
            return -1
        return sent

    def flush(self) -> None:
        """Drop unread input (libosdp flushes before a reply and after a framing error)."""
        if self._fd is None or self.error is not None:
            return
        try:
            termios.tcflush(self._fd, termios.TCIFLUSH)
        except (OSError, termios.error):
            pass

    def check(self) -> None:
        """Notice a hang-up: a tty whose device went away reads as "no data", only ``poll`` tells.

        A USB adapter pulled out, or the far end of a pseudo-terminal closed, sets ``POLLHUP`` /
        ``POLLERR``; :attr:`error` is set and the owner thread reopens the port.
        """
        if self._fd is None or self.error is not None:
            return
        poller = select.poll()
        poller.register(self._fd, select.POLLHUP | select.POLLERR | select.POLLNVAL)
        try:
            ready = poller.poll(0)
        except OSError as err:
            self._failed("poll", err)
            return
        if any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, mask in ready):
            self._failed("poll", OSError(errno.EIO, "the device hung up (unplugged?)"))

    def close(self) -> None:
        """Close the port; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


__all__ = ["WRITE_TIMEOUT_S", "SerialChannel", "open_port"]
