"""The CAN side of model updates: opening the python-can bus and setting up ISO-TP (ISO 15765-2).

Both ends use the same ``[updates.can]`` settings: the appliance (UDS server) receives on ``rx_id``
and answers on ``tx_id``; ``push-model`` (the tester) does the opposite.

ISO-TP settings from the configuration:

* ``block_size`` and ``st_min_ms`` go into *our* flow-control frames: they pace the other side's
  consecutive frames. The appliance receives the download, so its values matter; 0/0 lets the
  tester send back to back (the python stack keeps up with CAN FD at 5 Mbit/s on an x86 core; an
  MCP2515 on SPI may need an STmin).
* ``max_frame_data`` (8 classic, up to 64 with FD) is the data length of the frames *we* send.
* Frames are padded with 0xCC to 8 bytes on classic CAN (ISO 15765-2 recommends it; many ECUs and
  gateways drop shorter frames) and to the next valid length on CAN FD.
* Frames are CAN FD with bit-rate switching when ``fd`` is on.

Interfaces: ``socketcan`` on the device (bring the link up outside the daemon, e.g. a systemd
``ExecStartPre=`` of a privileged unit: ``ip link set can0 up type can bitrate 500000`` or
``… bitrate 500000 dbitrate 2000000 fd on``); ``virtual`` in tests and benchmarks; ``serial``
(python-can's own framing over a serial line, classic CAN only, 8 bytes) across processes in tests.
"""

from __future__ import annotations

import logging
from typing import Any, Dict

import can
import isotp

from ..config import UpdatesCanConfig
from .errors import UpdateError

logger = logging.getLogger(__name__)

#: ISO-TP padding byte (ISO 15765-2 recommends 0xCC; can-isotp's default too).
PADDING_BYTE = 0xCC
#: ISO-TP N_Bs / N_Cr: waiting for a flow control or the next consecutive frame, in ms.
ISOTP_TIMEOUT_MS = 1000


class CanLinkError(UpdateError):
    """The CAN bus cannot be opened.

    Example scenarios: ``can0`` does not exist or is down; the serial device of the ``serial``
    interface is absent; python-can does not know the interface name.
    """


def stmin_byte(st_min_ms: float) -> int:
    """The STmin byte of a flow-control frame: 0–127 ms, or 0xF1–0xF9 for 100–900 µs."""
    if 0 < st_min_ms < 1:
        return 0xF0 + round(st_min_ms * 10)
    return int(st_min_ms)


def isotp_address(can_config: UpdatesCanConfig, server: bool) -> isotp.Address:
    """The ISO-TP address of the appliance (``server``) or of the tester, normal addressing."""
    mode = (
        isotp.AddressingMode.Normal_29bits if can_config.extended_ids else isotp.AddressingMode.Normal_11bits
    )
    if server:
        return isotp.Address(mode, rxid=can_config.rx_id, txid=can_config.tx_id)
    return isotp.Address(mode, rxid=can_config.tx_id, txid=can_config.rx_id)


def isotp_params(
    can_config: UpdatesCanConfig, max_message_bytes: int, blocking_send: bool = False
) -> Dict[str, Any]:
    """can-isotp parameters for either end.

    Args:
        can_config: the ``[updates.can]`` settings.
        max_message_bytes: the largest ISO-TP message accepted; a longer one is refused with a
            flow-control overflow (``max_frame_size``).
        blocking_send: ``send`` returns once the message is on the bus (the tester uses it, so that
            its response timer starts after a long TransferData has gone out, not before).
    """
    return {
        "stmin": stmin_byte(can_config.st_min_ms),
        "blocksize": can_config.block_size,
        "tx_data_length": can_config.frame_data_bytes,
        "tx_padding": PADDING_BYTE,
        "can_fd": can_config.fd,
        "bitrate_switch": can_config.fd and can_config.data_bitrate is not None,
        "max_frame_size": max_message_bytes,
        "rx_flowcontrol_timeout": ISOTP_TIMEOUT_MS,
        "rx_consecutive_frame_timeout": ISOTP_TIMEOUT_MS,
        "blocking_send": blocking_send,
        "logger_name": "isotp",
    }


def open_bus(can_config: UpdatesCanConfig, server: bool) -> can.BusABC:
    """Open the python-can bus of ``[updates.can]``, filtered to the id this end receives on.

    Raises:
        CanLinkError: the interface or channel cannot be opened (with a hint what to check).
    """
    receive_id = can_config.rx_id if server else can_config.tx_id
    mask = 0x1FFFFFFF if can_config.extended_ids else 0x7FF
    kwargs: Dict[str, Any] = {
        "interface": can_config.interface,
        "channel": can_config.channel,
        "bitrate": can_config.bitrate,
        "can_filters": [{"can_id": receive_id, "can_mask": mask, "extended": can_config.extended_ids}],
    }
    if can_config.fd:
        kwargs["fd"] = True
        kwargs["data_bitrate"] = can_config.data_bitrate
    try:
        bus = can.Bus(**kwargs)
    except (can.CanError, OSError, ValueError, ImportError) as err:
        hint = ""
        if can_config.interface == "socketcan":
            hint = (
                f"; is {can_config.channel} present and up? (`ip -details link show {can_config.channel}`; "
                f"bring it up with `ip link set {can_config.channel} up type can bitrate {can_config.bitrate}`)"
            )
        elif can_config.interface == "serial":
            hint = f"; does the serial device {can_config.channel} exist, and is pyserial installed?"
        raise CanLinkError(
            f"cannot open CAN interface {can_config.interface!r} channel {can_config.channel!r}: {err}{hint}"
        ) from err
    logger.info(
        "CAN: %s %s open (%s, receiving id 0x%X)",
        can_config.interface,
        can_config.channel,
        "CAN FD" if can_config.fd else "classic CAN",
        receive_id,
    )
    return bus


__all__ = ["CanLinkError", "isotp_address", "isotp_params", "open_bus", "stmin_byte"]
