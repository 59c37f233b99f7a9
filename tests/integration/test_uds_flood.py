"""A node flooding the update bus: the log stays short and the request queue stays bounded.

Real can-isotp and python-can ``virtual`` buses, as in ``test_uds.py``; the flood is raw CAN frames
sent on the server's request id from a bus of its own (no ISO-TP on the sending side).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Iterator, List

import can
import pytest

from appliance.config import ApplianceConfig
from appliance.updates.can_link import MAX_PENDING_REQUESTS
from appliance.updates.handler import UpdateStatus
from appliance.updates.uds_protocol import DID_SOFTWARE_VERSION, DID_SWAP_STATE
from appliance.updates.uds_server import UdsServer
from tests.uds_support import RawTester, RecordingHandler, make_config, virtual_bus


class _SlowStatusHandler(RecordingHandler):
    """Reading FD02 takes a few milliseconds: the server answers slower than a flood arrives."""

    def status(self) -> UpdateStatus:
        time.sleep(0.004)
        return super().status()


class _Rig:
    def __init__(self, tmp_path: Path, handler_class: type = RecordingHandler) -> None:
        self.config: ApplianceConfig = make_config(tmp_path)
        self.buses: List[can.BusABC] = []
        self.handler = handler_class(hashlib.sha256(b"x").digest())
        self.server = UdsServer(self.config, self.handler, self._bus())
        self.server.start()
        self.tester = RawTester(self.config, self._bus())
        self.flood_bus = self._bus()

    def _bus(self) -> can.BusABC:
        bus = virtual_bus(self.config)
        self.buses.append(bus)
        return bus

    def send_raw(self, data: bytes, count: int) -> None:
        """``count`` frames of ``data`` (padded to 8 bytes) on the server's request id."""
        can_config = self.config.updates.can
        frame = can.Message(
            arbitration_id=can_config.rx_id, data=data.ljust(8, b"\xcc"), is_extended_id=False
        )
        for _ in range(count):
            self.flood_bus.send(frame)

    def close(self) -> None:
        self.tester.close()
        self.server.close()
        self.handler.close()
        for bus in self.buses:
            bus.shutdown()


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[type]:
    made: List[_Rig] = []

    def make(handler_class: type = RecordingHandler) -> _Rig:
        rig = _Rig(tmp_path, handler_class)
        made.append(rig)
        return rig

    yield make  # type: ignore[misc]
    for rig in made:
        rig.close()


def _wait_idle(rig: _Rig, timeout: float = 20.0) -> None:
    """Until the server's ISO-TP stack has processed every frame and request it kept."""
    stack = rig.server._stack
    assert stack is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reader = stack.buffered_reader
        frames = (reader.buffer.qsize() if reader is not None else 0) + stack.rx_relay_queue.qsize()
        if frames == 0 and stack.rx_queue.qsize() == 0:
            return
        time.sleep(0.05)


def test_stray_consecutive_frames_do_not_flood_the_log(
    make_rig: type, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig()
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="isotp")  # as appliance.logs.setup_logging sets it
    caplog.clear()
    rig.send_raw(b"\x21\x01\x02\x03\x04\x05\x06\x07", 3000)  # consecutive frames nobody announced
    time.sleep(0.5)
    _wait_idle(rig)
    records = [r for r in caplog.records if r.name.startswith(("isotp", "appliance", "can", "udsoncan"))]
    assert len(records) <= 5, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records[:10]]
    assert any(r.levelno == logging.WARNING and "ISO-TP" in r.getMessage() for r in records)
    # the server still answers
    version = rig.tester.exchange(b"\x22" + DID_SOFTWARE_VERSION.to_bytes(2, "big"))
    assert version is not None and version[:3] == b"\x62" + DID_SOFTWARE_VERSION.to_bytes(2, "big")


def test_a_request_flood_is_dropped_not_queued(make_rig: type) -> None:
    rig = make_rig(_SlowStatusHandler)
    stack = rig.server._stack
    assert stack is not None
    request = b"\x03\x22" + DID_SWAP_STATE.to_bytes(2, "big")  # single frame: read FD02 (slow)
    peak = 0
    for _ in range(20):
        rig.send_raw(request, 100)
        peak = max(peak, stack.rx_queue.qsize())
    time.sleep(0.3)
    peak = max(peak, stack.rx_queue.qsize())
    assert peak <= MAX_PENDING_REQUESTS
    assert rig.server.dropped_requests > 1000
    # Unbounded, the 2 000 slow reads kept the server about 8 s behind: a legitimate read got the
    # flood's answers. Bounded, it gets its own answer at once.
    _wait_idle(rig, timeout=3.0)
    version = rig.tester.exchange(b"\x22" + DID_SOFTWARE_VERSION.to_bytes(2, "big"), timeout=2.0)
    assert version is not None and version[:3] == b"\x62" + DID_SOFTWARE_VERSION.to_bytes(2, "big")
    assert rig.server.drops()["dropped_requests"] == rig.server.dropped_requests
