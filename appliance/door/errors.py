"""Errors of the door's own I/O."""

from __future__ import annotations

from typing import Optional

from ..errors import ApplianceError


class DoorError(ApplianceError):
    """The door's GPIO cannot be used; the message names the configuration key and what to try.

    Example scenarios: the chosen back-end's library is not installed (``gpiod`` 2.x on Python 3.8),
    ``/dev/gpiochip9`` does not exist, the service user may not open the chip, a line name is not on
    the chip, another process holds the relay's line, a pull resistor is asked of libgpiod 1.4.
    """


class DoorLineBusyError(DoorError):
    """A line is held by another consumer (``consumer``: its name, ``None`` when the kernel gave none)."""

    def __init__(self, message: str, consumer: Optional[str]) -> None:
        super().__init__(message)
        self.consumer = consumer


__all__ = ["DoorError", "DoorLineBusyError"]
