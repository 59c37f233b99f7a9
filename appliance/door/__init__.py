"""The door's own I/O (relay, door contact, request-to-exit) behind one small interface.

Importing this package is cheap: the GPIO libraries are imported only by :func:`create_door`'s
controller when it starts (``gpiod`` 2.x, libgpiod v1's ``gpiod`` or ``Jetson.GPIO``).

Modules: :mod:`~appliance.door.settings` (``[door]``), :mod:`~appliance.door.lines` (the back-end
interface and choosing one), :mod:`~appliance.door.gpiod2`, :mod:`~appliance.door.gpiod1` and
:mod:`~appliance.door.jetson_gpio` (the back-ends), :mod:`~appliance.door.logic` (debounce, pulses,
forced and held doors), :mod:`~appliance.door.controller` (the owner thread and the
:class:`~appliance.peripherals.Peripheral`), :mod:`~appliance.door.doctor` (checks for ``doctor``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import DoorError
from .settings import DoorConfig

if TYPE_CHECKING:
    from ..peripherals import Peripheral


def create_door(config: DoorConfig, time_zone: str = "UTC") -> Peripheral:
    """The door controller ``config`` describes, not yet started (:meth:`Peripheral.start` opens the
    lines); ``time_zone`` is the one of ``door.unlock.schedule`` (``access.time_zone``)."""
    from .controller import DoorController

    return DoorController(config, time_zone=time_zone)


__all__ = ["DoorConfig", "DoorError", "create_door"]
