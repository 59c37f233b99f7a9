"""libosdp's Python binding, imported on demand, and the names of it this package uses.

The reader drives ``osdp_sys`` — the C extension of PyPI ``libosdp`` — rather than its ``osdp``
wrapper, for two reasons:

* ``osdp`` does not import on Python 3.8 (its ``control_panel.py`` annotates ``list[PDInfo]``), and
  3.2.0, the last release with Python 3.8 wheels, is what a JetPack 5 board installs; ``osdp_sys`` is
  the same C API on every release and Python version.
* ``osdp.PeripheralDevice`` runs its own refresh thread and prints callback errors to stdout; the
  reader owns its one thread (:class:`appliance.osdp.reader.OsdpReader`).

The names below are pinned against the installed module by ``tests/unit/test_osdp_binding.py``.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any, Dict, List, Optional

from .errors import OsdpError
from .settings import OsdpConfig

#: The import name of libosdp's C extension.
MODULE = "osdp_sys"
INSTALL_HINT = "install it with `pip install 'face-appliance[osdp]'` (PyPI libosdp)"

#: Module attributes the reader uses.
CONSTANTS = (
    "FLAG_ENFORCE_SECURE",
    "FLAG_INSTALL_MODE",
    "CAP_READER_LED_CONTROL",
    "CAP_READER_AUDIBLE_OUTPUT",
    "CAP_READER_TEXT_OUTPUT",
    "CAP_CARD_DATA_FORMAT",
    "CMD_OUTPUT",
    "CMD_LED",
    "CMD_BUZZER",
    "CMD_TEXT",
    "CMD_KEYSET",
    "CMD_COMSET",
    "CMD_COMSET_DONE",
    "CMD_MFG",
    "CMD_FILE_TX",
    "CMD_STATUS",
    "EVENT_CARDREAD",
    "EVENT_STATUS",
    "STATUS_REPORT_LOCAL",
    "CARD_FMT_RAW_UNSPECIFIED",
    "CARD_FMT_RAW_WIEGAND",
    "COMPLETION_OK",
    "COMPLETION_FLUSHED",
    "LOG_CRIT",
)
#: Methods of ``osdp_sys.PeripheralDevice`` the reader calls.
PD_METHODS = (
    "refresh",
    "set_command_callback",
    "set_event_completion_callback",
    "submit_event",
    "flush_events",
    "is_online",
    "is_sc_active",
)

#: libosdp's command ids → the names used in logs, ``…/state`` and door events.
_COMMAND_NAMES = (
    ("CMD_OUTPUT", "output"),
    ("CMD_LED", "led"),
    ("CMD_BUZZER", "buzzer"),
    ("CMD_TEXT", "text"),
    ("CMD_KEYSET", "keyset"),
    ("CMD_COMSET", "comset"),
    ("CMD_COMSET_DONE", "comset_done"),
    ("CMD_MFG", "manufacturer"),
    ("CMD_FILE_TX", "file_transfer"),
    ("CMD_STATUS", "status"),
)


@functools.lru_cache(maxsize=None)
def load() -> ModuleType:
    """``osdp_sys``, imported once, with every name the reader uses.

    Raises:
        OsdpError: libosdp is not installed, or lacks a name the reader needs (an incompatible release).
    """
    try:
        module = importlib.import_module(MODULE)
    except ImportError as err:
        raise OsdpError(
            f"osdp.enabled needs libosdp, which cannot be imported ({err}); {INSTALL_HINT}"
        ) from None
    missing = [name for name in CONSTANTS if not hasattr(module, name)]
    missing += [
        f"PeripheralDevice.{name}" for name in PD_METHODS if not hasattr(module.PeripheralDevice, name)
    ]
    if missing:
        raise OsdpError(
            f"the installed libosdp lacks {', '.join(missing)}; install a 3.x release ({INSTALL_HINT})"
        )
    return module


def command_names(lib: Any) -> Dict[int, str]:
    """libosdp command id → command name (``led``, ``buzzer``, …)."""
    return {getattr(lib, constant): name for constant, name in _COMMAND_NAMES}


def capabilities(lib: Any) -> List[Dict[str, int]]:
    """What the reader tells the panel it has (``osdp_PDCAP``): one LED, a buzzer, a text line, card data.

    libosdp adds CRC-16, AES-128 Secure Channel and its buffer sizes itself. No outputs and no inputs
    are announced, so the panel does not send ``osdp_OUT`` (the door's relay is :mod:`appliance.door`).
    """
    return [
        {"function_code": lib.CAP_CARD_DATA_FORMAT, "compliance_level": 1, "num_items": 0},
        {"function_code": lib.CAP_READER_LED_CONTROL, "compliance_level": 1, "num_items": 1},
        {"function_code": lib.CAP_READER_AUDIBLE_OUTPUT, "compliance_level": 1, "num_items": 1},
        {"function_code": lib.CAP_READER_TEXT_OUTPUT, "compliance_level": 1, "num_items": 1},
    ]


def pd_info(lib: Any, config: OsdpConfig, channel: Any, scbk: Optional[bytes]) -> Dict[str, Any]:
    """The ``pd_info`` dict of ``osdp_sys.PeripheralDevice``.

    ``scbk`` ``None`` leaves libosdp in install mode (SCBK-D), which only ``osdp.install_mode`` allows.
    Secure Channel is enforced whenever a key is given and ``osdp.secure_channel`` is on: every command
    but the handshake is refused in the clear.
    """
    flags = 0
    if config.secure_channel and scbk is not None:
        flags |= lib.FLAG_ENFORCE_SECURE
    if config.install_mode:
        flags |= lib.FLAG_INSTALL_MODE
    identity = config.identity
    info: Dict[str, Any] = {
        "name": "face-appliance",
        "address": config.address,
        "flags": flags,
        "channel": channel,
        "version": identity.version,
        "model": identity.model,
        "vendor_code": identity.vendor_code,
        "serial_number": identity.serial_number,
        "firmware_version": identity.firmware_number(),
    }
    if scbk is not None:
        info["scbk"] = scbk
    return info


__all__ = [
    "CONSTANTS",
    "INSTALL_HINT",
    "MODULE",
    "PD_METHODS",
    "capabilities",
    "command_names",
    "load",
    "pd_info",
]
