"""Errors of the door's I/O, and the messages that say which key, what was found and what to try."""

from __future__ import annotations

import errno
import glob
from typing import TYPE_CHECKING, List, Optional, Sequence

from ..errors import ApplianceError

if TYPE_CHECKING:
    from .lines import LineSpec


class DoorError(ApplianceError):
    """The door's GPIO cannot be used; the message names the configuration key and what to try.

    Example scenarios: the chosen back-end's library is not installed (``gpiod`` 2.x on Python 3.8),
    ``/dev/gpiochip9`` does not exist, the service user may not open the chip, a line name is not on
    the chip, another process holds the relay's line, a pull resistor is asked of libgpiod 1.4.
    """


class DoorLineBusyError(DoorError):
    """A line is held by another consumer (``consumer``: its name, ``None`` when it is not known)."""

    def __init__(self, message: str, consumer: Optional[str]) -> None:
        super().__init__(message)
        self.consumer = consumer


def gpio_chips() -> List[str]:
    """The GPIO chip devices of this machine (``/dev/gpiochip*``), sorted."""
    return sorted(glob.glob("/dev/gpiochip*"))


def chip_error(spec: LineSpec, err: OSError) -> DoorError:
    """``spec``'s chip cannot be opened."""
    path = spec.chip
    if err.errno == errno.ENOENT:
        chips = ", ".join(gpio_chips()) or "none (no GPIO driver loaded, or not a board with GPIO)"
        return DoorError(f"{spec.chip_key} = {path!r}: no such GPIO chip; chips here: {chips}")
    if err.errno in (errno.EACCES, errno.EPERM):
        return DoorError(
            f"{spec.chip_key} = {path!r}: permission denied; run the service as a user of the group that "
            f"owns {path} (`ls -l {path}`; Jetson.GPIO's udev rule 99-gpio.rules makes a `gpio` group)"
        )
    if err.errno in (errno.ENODEV, errno.ENOTTY):
        chips = ", ".join(gpio_chips()) or "none"
        return DoorError(f"{spec.chip_key} = {path!r}: not a GPIO chip device ({err}); chips here: {chips}")
    return DoorError(f"{spec.chip_key} = {path!r}: the GPIO chip cannot be opened: {err}")


def line_missing_error(spec: LineSpec, num_lines: int) -> DoorError:
    """``spec``'s line is not on its chip."""
    if isinstance(spec.line, str) and not spec.line.isdigit():
        return DoorError(
            f"{spec.key} = {spec.line!r}: no line of that name on {spec.chip} ({num_lines} lines); "
            f"`gpioinfo {spec.chip}` lists the names, or give the offset"
        )
    return DoorError(
        f"{spec.key} = {spec.line!r}: {spec.chip} has {num_lines} lines (offsets 0 to {num_lines - 1}); "
        f"`gpioinfo {spec.chip}` lists them"
    )


def line_busy_error(spec: LineSpec, consumer: Optional[str]) -> DoorLineBusyError:
    """``spec``'s line is held by someone else."""
    holder = repr(consumer) if consumer else "another consumer (or a kernel driver)"
    return DoorLineBusyError(
        f"{spec.key} = {spec.line!r}: {spec.describe()} is in use by {holder}; stop that program, free "
        f"it in the device tree, or pick another line (`gpioinfo {spec.chip}` shows who holds each)",
        consumer or None,
    )


def request_error(specs: Sequence[LineSpec], err: OSError, v2: bool) -> DoorError:
    """Requesting ``specs`` (one chip) failed at the kernel."""
    keys = ", ".join(spec.key for spec in specs)
    if err.errno == errno.EBUSY:
        return DoorError(
            f"{keys}: a line on {specs[0].chip} is in use by another program or a kernel driver; "
            f"`gpioinfo {specs[0].chip}` shows who holds it"
        )
    hint = ""
    if v2 and err.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
        hint = " (libgpiod v2 needs the GPIO uAPI v2 of Linux 5.10 or later: see `uname -r`; on an older kernel set door.backend = 'gpiod1')"
    return DoorError(f"{keys}: requesting the lines on {specs[0].chip} failed: {err}{hint}")


__all__ = [
    "DoorError",
    "DoorLineBusyError",
    "chip_error",
    "gpio_chips",
    "line_busy_error",
    "line_missing_error",
    "request_error",
]
