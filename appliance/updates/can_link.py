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
import queue
import threading
from typing import Any, Dict, Optional

import can
import isotp

from ..config import UpdatesCanConfig
from .errors import UpdateError

logger = logging.getLogger(__name__)

#: ISO-TP padding byte (ISO 15765-2 recommends 0xCC; can-isotp's default too).
PADDING_BYTE = 0xCC
#: ISO-TP N_Bs / N_Cr: waiting for a flow control or the next consecutive frame, in ms.
ISOTP_TIMEOUT_MS = 1000
#: can-isotp's own logger (the tester's stacks).
ISOTP_LOGGER = "isotp"
#: The logger of the appliance's ISO-TP stack. can-isotp logs a WARNING for every bad frame, so any
#: node on the bus could fill the journal; the server reports those errors itself, rate-limited
#: (``error_handler``), and this logger passes ERROR records only.
ISOTP_SERVER_LOGGER = "isotp.uds-server"
logging.getLogger(ISOTP_SERVER_LOGGER).setLevel(logging.ERROR)
#: CAN frames waiting for the server's ISO-TP thread at most; more are dropped (and counted).
MAX_PENDING_FRAMES = 4096
#: Complete requests waiting for the UDS server at most; the oldest are dropped (and counted).
MAX_PENDING_REQUESTS = 32


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
    can_config: UpdatesCanConfig,
    max_message_bytes: int,
    blocking_send: bool = False,
    logger_name: str = ISOTP_LOGGER,
) -> Dict[str, Any]:
    """can-isotp parameters for either end.

    Args:
        can_config: the ``[updates.can]`` settings.
        max_message_bytes: the largest ISO-TP message accepted; a longer one is refused with a
            flow-control overflow (``max_frame_size``).
        blocking_send: ``send`` returns once the message is on the bus (the tester uses it, so that
            its response timer starts after a long TransferData has gone out, not before).
        logger_name: the logger can-isotp writes to (:data:`ISOTP_SERVER_LOGGER` on the appliance).
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
        "logger_name": logger_name,
    }


class DropOldestQueue(queue.Queue):  # type: ignore[type-arg]
    """A FIFO that keeps at most ``limit`` items: a put into a full queue drops the oldest one.

    It never blocks the producer (can-isotp's thread, which also sends the responses), and it keeps
    what waits recent, so a flood cannot put the server seconds behind the bus.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.dropped = 0

    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        with self.not_full:
            while self._qsize() >= self.limit:
                self._get()
                self.dropped += 1
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()


class BoundedNotifierStack(isotp.NotifierBasedCanStack):
    """can-isotp's ``NotifierBasedCanStack`` with bounded receive queues.

    can-isotp queues CAN frames and complete messages without a bound: a node sending requests
    faster than the server answers them made the daemon fall seconds behind (a legitimate tester
    then got the answers to the flood's requests) and grow by hundreds of MB. Here at most
    ``max_frames`` CAN frames wait for the ISO-TP thread (newer ones are dropped) and at most
    ``max_requests`` complete messages wait for :meth:`recv` (the oldest are dropped). Both drops
    are counted (:attr:`dropped_frames`, :attr:`dropped_requests`).
    """

    def __init__(
        self,
        bus: can.BusABC,
        notifier: can.Notifier,
        *args: Any,
        max_frames: int = MAX_PENDING_FRAMES,
        max_requests: int = MAX_PENDING_REQUESTS,
        **kwargs: Any,
    ) -> None:
        super().__init__(bus, notifier, *args, **kwargs)
        self.max_frames = max_frames
        self.rx_queue = DropOldestQueue(max_requests)
        self._dropped_frames = 0
        self._count_lock = threading.Lock()

    @property
    def dropped_frames(self) -> int:
        """CAN frames dropped because ``max_frames`` were waiting."""
        return self._dropped_frames

    @property
    def dropped_requests(self) -> int:
        """Complete requests dropped (the oldest) because ``max_requests`` were waiting."""
        rx_queue = self.rx_queue
        return rx_queue.dropped if isinstance(rx_queue, DropOldestQueue) else 0

    def pending_frames(self) -> int:
        """CAN frames received and not yet processed by the ISO-TP thread (approximate)."""
        reader = self.buffered_reader
        waiting = reader.buffer.qsize() if reader is not None else 0
        return waiting + self.rx_relay_queue.qsize()

    def _on_message_received(self, msg: can.Message) -> None:
        if self.buffered_reader is not None and self.pending_frames() >= self.max_frames:
            with self._count_lock:
                self._dropped_frames += 1
            return
        super()._on_message_received(msg)


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


__all__ = [
    "ISOTP_SERVER_LOGGER",
    "MAX_PENDING_FRAMES",
    "MAX_PENDING_REQUESTS",
    "BoundedNotifierStack",
    "CanLinkError",
    "DropOldestQueue",
    "isotp_address",
    "isotp_params",
    "open_bus",
    "stmin_byte",
]
