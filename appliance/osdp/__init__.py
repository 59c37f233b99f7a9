"""The appliance as an OSDP reader (peripheral device) on an access panel's bus, through libosdp.

On ``granted`` the reader reports the person's ``external_id`` to the panel as a card read (Wiegand
26 / 34 bits or raw, :mod:`.credential`), over OSDP Secure Channel with the key of ``osdp.scbk_file``
(:mod:`.keys`); the panel's LED, buzzer and text commands are logged and kept for ``…/state``, and its
green / red LED answer becomes a ``panel_granted`` / ``panel_denied`` door event (:mod:`.commands`).

Modules: :mod:`.settings` (``[osdp]``), :mod:`.credential`, :mod:`.keys`, :mod:`.channel` (the serial
port), :mod:`.binding` (libosdp, imported on demand), :mod:`.commands`, :mod:`.reader` (the
:class:`~appliance.peripherals.Peripheral`), :mod:`.doctor`.

Importing this package is cheap: libosdp (``osdp_sys``) is imported only when the reader starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import OsdpError
from .settings import OsdpConfig

if TYPE_CHECKING:
    from ..peripherals import Peripheral


def create_reader(config: OsdpConfig) -> Peripheral:
    """The OSDP reader ``config`` describes, not yet started.

    Raises:
        OsdpError: ``osdp.port`` is not set.
    """
    from .reader import OsdpReader

    return OsdpReader(config)


__all__ = ["OsdpConfig", "OsdpError", "create_reader"]
