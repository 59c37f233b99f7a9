"""Model transfer over CAN: goodput of the Python UDS/ISO-TP stack, the receiver's frame rate, and a link
paced like a real classic CAN bus, against the theoretical figures.

    python -m bench.can [--size-kb 512] [--paced-kb 64] [--serial-kb 128] [--pdus 40] [--json OUT]

Everything runs the real code: the appliance's :class:`~appliance.updates.uds_server.UdsServer`
(can-isotp ``NotifierBasedCanStack``, the staging file with its fsyncs) and ``push-model``'s
:func:`~appliance.updates.push.push_package` (udsoncan). The update handler only accepts the
package (no signature check: that is the swap's cost, not the link's). It reports:

* **goodput** (package bytes/s during TransferData) on python-can's ``virtual`` bus, classic and
  CAN FD (64-byte frames), where nothing limits the rate but the two Python stacks in one process;
  and across a pseudo-terminal pair made by ``socat`` with python-can's ``serial`` interface
  (classic CAN, 8 bytes; python-can's own framing), when socat is installed;
* **receiver frame rate**: how many consecutive frames per second the appliance's ISO-TP receiver
  takes in — 4095-byte messages whose frames a raw sender puts on the ``virtual`` bus back to back
  after the one flow control (block size 0, STmin 0: no flow-control stalls inside a message) —
  against what each real bus can carry at most (1 / frame time without stuffing). The sender shares
  the process (and the GIL), so the figure is a lower bound;
* **paced classic CAN 500 kbit/s**: the same push over a "wire" that carries one frame at a time and
  delivers it after its transmission time (bits from the frame length, no stuffing, both directions
  sharing the bus, a transmit queue of 32 frames), so turnaround and flow-control overheads cost
  what they cost on a real bus; goodput as a % of the theoretical ISO-TP goodput;
* a table of theoretical figures from the frame bit counts of
  ``shared/guides/reliability-security-performance.md`` §A2.4 (Linux ``can/length.h``): classic
  11-bit frames 47 + 8·n bits (+ worst-case stuffing ⌊(34 + 8·n − 1)/4⌋); CAN FD with bit-rate
  switching 30 bits at the nominal rate and 1 + 4 + 8·n + 4 + CRC(17 | 21) + fixed stuff (6 | 7)
  bits at the data rate (+ worst-case stuffing). "ISO-TP goodput" is payload per consecutive frame
  over its frame time; "4 MiB" is the UDS-level time with blocks of 4093 data bytes (first frame,
  consecutive frames, one flow control and one positive response per block, each a full frame), no
  turnaround.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import can
import isotp

from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.updates.can_link import isotp_address, isotp_params
from appliance.updates.handler import UpdateStatus
from appliance.updates.push import PushOptions, push_package
from appliance.updates.uds_server import UdsServer

from .machine import describe

SECRET = "bench-secret-0123456789abcdef"
BLOCK_DATA = 4093  # TransferData data bytes per block (maxNumberOfBlockLength 4095)
MODEL_BYTES = 4 * 1024 * 1024
_FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)

#: (name, nominal bit/s, data bit/s or None for classic CAN)
BUSES: List[Tuple[str, int, Optional[int]]] = [
    ("classic 500k", 500_000, None),
    ("classic 1M", 1_000_000, None),
    ("CAN FD 500k/2M", 500_000, 2_000_000),
    ("CAN FD 500k/5M", 500_000, 5_000_000),
]


# -- frame arithmetic ---------------------------------------------------------------------------------


def fd_length(data_bytes: int) -> int:
    """The CAN FD data field that holds ``data_bytes`` (the next valid DLC length)."""
    for length in _FD_LENGTHS:
        if length >= data_bytes:
            return length
    raise ValueError(f"{data_bytes} bytes do not fit a CAN FD frame")


def frame_bits(data_bytes: int, fd: bool, worst: bool = False, extended: bool = False) -> Tuple[int, int]:
    """Bits of one frame (intermission included): (bits at the nominal rate, bits at the data rate).

    Classic frames have no data-rate bits; CAN FD frames switch the bit rate from ESI to the CRC.
    """
    if not fd:
        stuffed = (54 if extended else 34) + 8 * data_bytes  # SOF … CRC: the stuffed region
        stuff = (stuffed - 1) // 4 if worst else 0
        return stuffed + stuff + 13, 0  # + CRC delimiter, ACK slot and delimiter, EOF, intermission
    length = fd_length(data_bytes)
    arbitration = 36 if extended else 17  # SOF … BRS
    crc = 17 if length <= 16 else 21
    data_phase = 1 + 4 + 8 * length + 4 + crc + (6 if crc == 17 else 7)  # ESI DLC data SBC CRC fixed-stuff
    nominal_stuff = data_stuff = 0
    if worst:
        region = arbitration + 1 + 4 + 8 * length  # SOF … end of data
        nominal_stuff = (arbitration - 1) // 4
        data_stuff = (region - 1) // 4 - nominal_stuff
    return arbitration + nominal_stuff + 13, data_phase + data_stuff


def frame_time_s(data_bytes: int, nominal: int, data: Optional[int], worst: bool = False) -> float:
    """Seconds one frame occupies the bus."""
    nominal_bits, data_bits = frame_bits(data_bytes, fd=data is not None, worst=worst)
    return nominal_bits / nominal + (data_bits / data if data else 0.0)


def theoretical(nominal: int, data: Optional[int], worst: bool) -> Dict[str, float]:
    """ISO-TP goodput (bytes/s) and the UDS-level time of a 4 MiB model on one bus."""
    frame_bytes = 64 if data else 8
    per_cf = frame_bytes - 1
    cf_time = frame_time_s(frame_bytes, nominal, data, worst)
    pdu = BLOCK_DATA + 2
    first = frame_bytes - 2
    consecutive = -(-(pdu - first) // per_cf)
    block_time = (1 + consecutive + 2) * cf_time  # FF, CFs, FC, positive response
    blocks = -(-MODEL_BYTES // BLOCK_DATA)
    return {
        "frame_us": cf_time * 1e6,
        "frames_per_s": 1.0 / cf_time,
        "isotp_goodput": per_cf / cf_time,
        "model_s": blocks * block_time,
    }


# -- a paced wire ---------------------------------------------------------------------------------------


class PacedWire:
    """One CAN bus of given bit rates between bench endpoints: a frame at a time, each delivered when
    its last bit would have been sent; a transmit queue of ``queue_frames`` frames blocks senders."""

    def __init__(self, nominal: int, data: Optional[int] = None, queue_frames: int = 32) -> None:
        self.nominal, self.data = nominal, data
        self._queue = queue.Queue(queue_frames)  # (queued at, message, channel)
        self._injectors: Dict[str, can.BusABC] = {}
        self._stop = threading.Event()
        self.frames = 0
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="paced-wire", daemon=True)
        self._thread.start()

    def endpoint(self, rx_channel: str, peer_channel: str) -> can.BusABC:
        """A bus that receives on ``rx_channel`` and sends through the wire to ``peer_channel``."""
        if peer_channel not in self._injectors:
            self._injectors[peer_channel] = can.Bus(interface="virtual", channel=peer_channel)
        return _PacedBus(self, rx_channel, peer_channel)

    def submit(self, message: can.Message, channel: str) -> None:
        self._queue.put((time.perf_counter(), message, channel))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for injector in self._injectors.values():
            injector.shutdown()

    def _run(self) -> None:
        free_at = 0.0
        while not self._stop.is_set():
            try:
                queued_at, message, channel = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            duration = frame_time_s(len(message.data), self.nominal, self.data if message.is_fd else None)
            # A frame queued while the bus was busy starts when the previous one ended, even if this
            # thread wakes a little late: lateness does not add up.
            end = max(queued_at, free_at) + duration
            delay = end - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self._injectors[channel].send(message)
            free_at = end
            self.frames += 1
            self.busy_s += duration


class _PacedBus(can.BusABC):
    """A python-can bus whose frames go through a :class:`PacedWire`."""

    def __init__(self, wire: PacedWire, rx_channel: str, peer_channel: str) -> None:
        self._wire = wire
        self._peer = peer_channel
        self._rx = can.Bus(interface="virtual", channel=rx_channel)
        super().__init__(channel=rx_channel)

    def send(self, msg: can.Message, timeout: Optional[float] = None) -> None:
        self._wire.submit(msg, self._peer)

    def _recv_internal(self, timeout: Optional[float]) -> Tuple[Optional[can.Message], bool]:
        return self._rx.recv(timeout), False

    def shutdown(self) -> None:
        self._rx.shutdown()
        super().shutdown()


# -- the pushes -----------------------------------------------------------------------------------------


class _AcceptingHandler:
    def verify(self, package_path: Path) -> str:
        return "bench"

    def activate(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def status(self) -> UpdateStatus:
        return UpdateStatus("bench", "", "idle", "")


def _config(folder: Path, can_settings: Dict[str, Any]) -> ApplianceConfig:
    secret = folder / "secret"
    secret.write_text(SECRET + "\n")
    return validate_config(
        {
            "storage": {"dir": str(folder / "state")},
            "updates": {"enabled": True, "security_secret_file": str(secret), "can": can_settings},
        }
    )


def _push(
    folder: Path, config: ApplianceConfig, server_bus: can.BusABC, client_bus: can.BusABC, size: int
) -> Dict[str, Any]:
    package = folder / "package.bin"
    package.write_bytes(os.urandom(size))
    with UdsServer(config, _AcceptingHandler(), server_bus):
        result = push_package(
            config.updates.can, SECRET.encode(), package, PushOptions(request_timeout_s=30), bus=client_bus
        )
    return {
        "bytes": result.sent_bytes,
        "seconds": round(result.transfer_s, 3),
        "goodput": result.goodput_bytes_per_s,
    }


def virtual_push(size: int, fd: bool) -> Dict[str, Any]:
    settings: Dict[str, Any] = {"interface": "virtual", "channel": f"bench-{os.getpid()}-{fd}"}
    if fd:
        settings.update(fd=True, data_bitrate=5_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-can-") as name:
        folder = Path(name)
        config = _config(folder, settings)
        server_bus = can.Bus(interface="virtual", channel=settings["channel"])
        client_bus = can.Bus(interface="virtual", channel=settings["channel"])
        try:
            return _push(folder, config, server_bus, client_bus, size)
        finally:
            server_bus.shutdown()
            client_bus.shutdown()


def paced_push(size: int, nominal: int) -> Dict[str, Any]:
    wire = PacedWire(nominal)
    with tempfile.TemporaryDirectory(prefix="bench-can-") as name:
        folder = Path(name)
        appliance_side, tester_side = f"paced-a-{os.getpid()}", f"paced-t-{os.getpid()}"
        config = _config(folder, {"interface": "virtual", "channel": appliance_side, "bitrate": nominal})
        server_bus = wire.endpoint(appliance_side, tester_side)
        client_bus = wire.endpoint(tester_side, appliance_side)
        started = time.perf_counter()
        try:
            figures = _push(folder, config, server_bus, client_bus, size)
        finally:
            server_bus.shutdown()
            client_bus.shutdown()
            wire.close()
        elapsed = time.perf_counter() - started
    ideal = theoretical(nominal, None, worst=False)["isotp_goodput"]
    figures.update(
        theoretical_goodput=ideal,
        percent_of_theoretical=100.0 * figures["goodput"] / ideal,
        bus_load_percent=100.0 * wire.busy_s / elapsed,
        frames=wire.frames,
    )
    return figures


def serial_push(size: int) -> Optional[Dict[str, Any]]:
    if shutil.which("socat") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bench-can-") as name:
        folder = Path(name)
        ends = folder / "appliance-tty", folder / "tester-tty"
        socat = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={ends[0]}", f"pty,raw,echo=0,link={ends[1]}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not all(end.exists() for end in ends) and time.monotonic() < deadline:
                time.sleep(0.05)
            config = _config(folder, {"interface": "serial", "channel": str(ends[0])})
            server_bus = can.Bus(interface="serial", channel=str(ends[0]))
            client_bus = can.Bus(interface="serial", channel=str(ends[1]))
            try:
                return _push(folder, config, server_bus, client_bus, size)
            finally:
                server_bus.shutdown()
                client_bus.shutdown()
        finally:
            socat.terminate()
            socat.wait(timeout=10)


# -- the receiver's frame rate --------------------------------------------------------------------------


def _message_frames(fd: bool, arbitration_id: int) -> List[can.Message]:
    """First frame and consecutive frames of one 4095-byte ISO-TP message (normal addressing)."""
    size = 4095
    payload = bytes((i * 7) & 0xFF for i in range(size))
    frame_bytes = 64 if fd else 8
    first = frame_bytes - 2
    frames = [bytes((0x10 | (size >> 8), size & 0xFF)) + payload[:first]]
    sequence, offset = 1, first
    while offset < size:
        chunk = payload[offset : offset + frame_bytes - 1]
        data = bytes((0x20 | sequence,)) + chunk
        wanted = fd_length(len(data)) if fd else 8
        frames.append(data + b"\xcc" * (wanted - len(data)))
        sequence = (sequence + 1) & 0x0F
        offset += len(chunk)
    return [
        can.Message(
            arbitration_id=arbitration_id, is_extended_id=False, data=data, is_fd=fd, bitrate_switch=fd
        )
        for data in frames
    ]


def receiver_rate(fd: bool, messages: int) -> Dict[str, Any]:
    settings: Dict[str, Any] = {"interface": "virtual", "channel": f"rx-rate-{os.getpid()}-{fd}"}
    if fd:
        settings.update(fd=True, data_bitrate=5_000_000)
    config = validate_config({"updates": {"can": settings}})
    can_config = config.updates.can
    receiver_bus = can.Bus(interface="virtual", channel=can_config.channel)
    sender = can.Bus(
        interface="virtual",
        channel=can_config.channel,
        can_filters=[{"can_id": can_config.tx_id, "can_mask": 0x7FF, "extended": False}],
    )
    notifier = can.Notifier(receiver_bus, [], timeout=0.1)
    # The appliance's receive path: NotifierBasedCanStack with the UDS server's parameters.
    stack = isotp.NotifierBasedCanStack(
        receiver_bus,
        notifier,
        address=isotp_address(can_config, server=True),
        params=isotp_params(can_config, max_message_bytes=can_config.transfer_block_bytes),
    )
    stack.start()
    frames = _message_frames(fd, can_config.rx_id)
    flow_controls = 0
    try:
        started = time.perf_counter()
        for _ in range(messages):
            sender.send(frames[0])
            flow_control = sender.recv(timeout=2.0)
            if flow_control is None or flow_control.data[0] & 0xF0 != 0x30:
                raise RuntimeError("the receiver sent no flow control")
            flow_controls += 1
            for frame in frames[1:]:
                sender.send(frame)
            if stack.recv(block=True, timeout=10.0) is None:
                raise RuntimeError("the receiver did not deliver the message")
        elapsed = time.perf_counter() - started
    finally:
        stack.stop()
        notifier.stop()
        receiver_bus.shutdown()
        sender.shutdown()
    total = messages * len(frames)
    return {
        "frames": total,
        "messages": messages,
        "flow_controls": flow_controls,
        "seconds": round(elapsed, 3),
        "frames_per_s": total / elapsed,
    }


# -- the report -----------------------------------------------------------------------------------------


def run(size_kb: int, paced_kb: int, serial_kb: int, messages: int) -> Dict[str, Any]:
    report: Dict[str, Any] = {"theory": {}}
    for name, nominal, data in BUSES:
        report["theory"][name] = {
            "no_stuffing": theoretical(nominal, data, worst=False),
            "worst_stuffing": theoretical(nominal, data, worst=True),
        }
    report["receiver"] = {"fd64": receiver_rate(True, messages), "classic8": receiver_rate(False, messages)}
    report["goodput"] = {
        "virtual classic": virtual_push(size_kb * 1024, fd=False),
        "virtual CAN FD 64 B": virtual_push(size_kb * 1024 * 4, fd=True),
    }
    serial = serial_push(serial_kb * 1024)
    if serial is not None:
        report["goodput"]["serial (socat pty)"] = serial
    report["paced_classic_500k"] = paced_push(paced_kb * 1024, 500_000)
    return report


def _print(report: Dict[str, Any], machine: Dict[str, str]) -> None:
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print(
        "\n| bus | CF time µs (no stuff / worst) | ISO-TP goodput kB/s | 4 MiB model s | frames/s needed "
        "| receiver keeps up |\n| --- | ---: | ---: | ---: | ---: | --- |"
    )
    receiver = report["receiver"]
    for name, _nominal, data in BUSES:
        best, worst = report["theory"][name]["no_stuffing"], report["theory"][name]["worst_stuffing"]
        measured = receiver["fd64" if data else "classic8"]["frames_per_s"]
        keeps_up = "yes" if measured >= best["frames_per_s"] else "NO"
        print(
            f"| {name} | {best['frame_us']:.1f} / {worst['frame_us']:.1f} | "
            f"{best['isotp_goodput'] / 1000:.1f} / {worst['isotp_goodput'] / 1000:.1f} | "
            f"{best['model_s']:.1f} / {worst['model_s']:.1f} | {best['frames_per_s']:.0f} | "
            f"{keeps_up} ({measured:.0f}/s measured) |"
        )
    print("\n| receiver (ISO-TP, BS 0, STmin 0) | frames | messages | flow controls | frames/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, label in (("fd64", "CAN FD, 64-byte frames"), ("classic8", "classic, 8-byte frames")):
        figures = receiver[name]
        print(
            f"| {label} | {figures['frames']} | {figures['messages']} | {figures['flow_controls']} | "
            f"{figures['frames_per_s']:.0f} |"
        )
    print(
        "\n| push (UDS over ISO-TP, package data) | bytes | s | goodput kB/s |\n| --- | ---: | ---: | ---: |"
    )
    for name, figures in report["goodput"].items():
        print(f"| {name} | {figures['bytes']} | {figures['seconds']} | {figures['goodput'] / 1000:.1f} |")
    paced = report["paced_classic_500k"]
    print(
        f"| paced classic 500 kbit/s | {paced['bytes']} | {paced['seconds']} | {paced['goodput'] / 1000:.1f} |"
    )
    print(
        f"\npaced classic 500 kbit/s: {paced['percent_of_theoretical']:.1f} % of the theoretical ISO-TP "
        f"goodput ({paced['theoretical_goodput'] / 1000:.1f} kB/s, target ≥ 90 %); bus load "
        f"{paced['bus_load_percent']:.0f} % over {paced['frames']} frames"
    )
    fd_rate = receiver["fd64"]["frames_per_s"]
    print(
        f"receiver, CAN FD 64-byte frames: {fd_rate:.0f} frames/s (target ≥ 5000, CAN FD 500k/5M needs ≈ 5900)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-kb", type=int, default=512, help="package on the virtual bus (FD: 4×)")
    parser.add_argument("--paced-kb", type=int, default=64, help="package on the paced classic link")
    parser.add_argument("--serial-kb", type=int, default=128, help="package over socat/serial")
    parser.add_argument("--pdus", type=int, default=40, help="4095-byte messages for the receiver rate")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    machine = describe()
    for module in ("can", "isotp", "udsoncan"):
        try:
            machine[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            machine[module] = "?"
    report = run(args.size_kb, args.paced_kb, args.serial_kb, args.pdus)
    _print(report, machine)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, **report}, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
