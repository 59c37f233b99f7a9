"""The appliance as an OSDP reader (peripheral device) on an access panel's bus, through libosdp.

On ``granted`` the reader reports the person's ``external_id`` to the panel as a card read (Wiegand
26 / 34 bits or raw, :mod:`.credential`), over OSDP Secure Channel with the key of ``osdp.scbk_file``
(:mod:`.keys`); the panel's LED, buzzer and text commands are logged and kept for ``…/state``, and its
green / red LED answer becomes a ``panel_granted`` / ``panel_denied`` door event (:mod:`.commands`).

The opposite role too: the appliance as the control panel of a card-and-keypad reader beside its
camera (``[credential_reader]``), whose cards and PINs complete a face (:mod:`.card_reader`); readers
sharing a serial port are polled by one control panel (:mod:`.card_reader_line`, OSDP multi-drop).

Modules: :mod:`.settings` (``[osdp]``), :mod:`.credential`, :mod:`.keys`, :mod:`.channel` (the serial
port), :mod:`.binding` (libosdp, imported on demand), :mod:`.commands`, :mod:`.reader` (the
:class:`~appliance.peripherals.Peripheral`), :mod:`.doctor`; :mod:`.card_reader_settings`
(``[credential_reader]``), :mod:`.card_reader_line` and :mod:`.card_reader`.

Importing this package is cheap: libosdp (``osdp_sys``) is imported only when the reader starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Sequence

from .card_reader_settings import CredentialReaderConfig
from .errors import OsdpError
from .settings import OsdpConfig

if TYPE_CHECKING:
    from ..access.credentials import PresentedCredential
    from ..peripherals import Peripheral


def create_reader(config: OsdpConfig) -> Peripheral:
    """The OSDP reader ``config`` describes, not yet started.

    Raises:
        OsdpError: ``osdp.port`` is not set.
    """
    from .reader import OsdpReader

    return OsdpReader(config)


def create_card_reader(
    config: CredentialReaderConfig, offer: Callable[[PresentedCredential], bool]
) -> Peripheral:
    """The credential reader ``config`` describes, alone on its line, not yet started; its cards and
    PINs go to ``offer``.

    Raises:
        OsdpError: ``credential_reader.port`` is not set.
    """
    from .card_reader import CardReader

    return CardReader(config, offer)


def create_card_readers(
    configs: Sequence[CredentialReaderConfig], offer: Callable[[PresentedCredential], bool]
) -> List[Peripheral]:
    """The credential readers ``configs`` describe, in order, not yet started: those naming one port
    share one control panel (OSDP multi-drop); their cards and PINs go to ``offer``.

    Raises:
        OsdpError: a reader's ``port`` is not set, or readers on one port do not fit together.
    """
    from .card_reader import create_card_readers as create

    return list(create(configs, offer))


__all__ = [
    "CredentialReaderConfig",
    "OsdpConfig",
    "OsdpError",
    "create_card_reader",
    "create_card_readers",
    "create_reader",
]
