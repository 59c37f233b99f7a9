"""The UDS server and push-model over real ISO-TP (can-isotp) and udsoncan on python-can buses.

In-process tests use python-can's ``virtual`` bus; the cross-process test runs the server and
``face-appliance push-model`` as two processes joined by a pseudo-terminal pair (``socat``) with
python-can's ``serial`` interface. The update handler is :class:`tests.uds_support.RecordingHandler`
(the swap manager needs models, a gallery and a running pipeline; its own tests cover it).

Misuse tests check the negative response code *and* that nothing changed: the bytes received, the
transfer state, the session and the security state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple

import can
import pytest

from appliance.config import ApplianceConfig
from appliance.updates.push import PushClient, PushError, PushOptions, push_package
from appliance.updates.uds_protocol import (
    DID_BYTES_RECEIVED,
    DID_LAST_ERROR,
    DID_PACKAGE_SHA256,
    DID_PACKAGE_SIZE,
    DID_STAGED_VERSION,
    DID_SWAP_STATE,
    DID_TRANSFER_STATE,
    NRC_CONDITIONS_NOT_CORRECT,
    NRC_EXCEEDED_NUMBER_OF_ATTEMPTS,
    NRC_GENERAL_PROGRAMMING_FAILURE,
    NRC_INCORRECT_MESSAGE_LENGTH,
    NRC_INVALID_KEY,
    NRC_REQUEST_OUT_OF_RANGE,
    NRC_REQUEST_SEQUENCE_ERROR,
    NRC_REQUIRED_TIME_DELAY_NOT_EXPIRED,
    NRC_SECURITY_ACCESS_DENIED,
    NRC_SERVICE_NOT_SUPPORTED,
    NRC_SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION,
    NRC_SUB_FUNCTION_NOT_SUPPORTED,
    NRC_TRANSFER_DATA_SUSPENDED,
    NRC_UPLOAD_DOWNLOAD_NOT_ACCEPTED,
    NRC_WRONG_BLOCK_SEQUENCE_COUNTER,
    ROUTINE_ACTIVATE,
    ROUTINE_ROLLBACK,
    ROUTINE_VERIFY,
    SESSION_DEFAULT,
    SESSION_PROGRAMMING,
    compute_key,
)
from appliance.updates.uds_server import UdsServer
from tests.uds_support import SECRET, RawTester, RecordingHandler, make_config, virtual_bus

REPO = Path(__file__).resolve().parents[2]
PACKAGE_BYTES = 40_000  # ten blocks of 4093 bytes: enough for cuts, counters and resumes


class Rig(NamedTuple):
    config: ApplianceConfig
    server: UdsServer
    handler: RecordingHandler
    tester: RawTester
    package: bytes
    package_path: Path


def _package(folder: Path, size: int = PACKAGE_BYTES, seed: int = 7) -> Tuple[bytes, Path]:
    data = bytes((i * 131 + seed * 17 + (i >> 8)) & 0xFF for i in range(size))
    path = folder / f"model-{seed}.pkg"
    path.write_bytes(data)
    return data, path


class _Buses:
    def __init__(self) -> None:
        self.opened: list = []

    def open(self, config: ApplianceConfig) -> can.BusABC:
        bus = virtual_bus(config)
        self.opened.append(bus)
        return bus

    def close(self) -> None:
        for bus in self.opened:
            bus.shutdown()


@pytest.fixture
def buses() -> Iterator[_Buses]:
    opened = _Buses()
    yield opened
    opened.close()


def _start(
    tmp_path: Path,
    buses: _Buses,
    can_settings: Optional[Dict[str, Any]] = None,
    reserve_bytes: int = 0,
    max_package_mb: int = 64,
) -> Iterator[Rig]:
    config = make_config(tmp_path, can_settings, max_package_mb=max_package_mb)
    data, path = _package(tmp_path)
    handler = RecordingHandler(hashlib.sha256(data).digest())
    server = UdsServer(config, handler, buses.open(config), reserve_bytes=reserve_bytes)
    server.start()
    tester = RawTester(config, buses.open(config))
    try:
        yield Rig(config, server, handler, tester, data, path)
    finally:
        tester.close()
        server.close()
        handler.close()


@pytest.fixture
def rig(tmp_path: Path, buses: _Buses) -> Iterator[Rig]:
    yield from _start(tmp_path, buses)


def _nrc(service: int, code: int) -> bytes:
    return bytes((0x7F, service, code))


def _u32(value: Optional[bytes]) -> int:
    assert value is not None
    return int.from_bytes(value[3:], "big")


def _state(rig: Rig) -> Dict[str, Any]:
    """What a misuse must not change: staging, session and security."""
    tester = rig.tester
    return {
        "received": _u32(tester.exchange(b"\x22" + DID_BYTES_RECEIVED.to_bytes(2, "big"))),
        "size": _u32(tester.exchange(b"\x22" + DID_PACKAGE_SIZE.to_bytes(2, "big"))),
        "sha256": tester.exchange(b"\x22" + DID_PACKAGE_SHA256.to_bytes(2, "big")),
        "transfer": tester.exchange(b"\x22" + DID_TRANSFER_STATE.to_bytes(2, "big")),
        "session": rig.server.service.session,
        "unlocked": rig.server.service.unlocked,
        "writing": rig.server.incoming.writing,
    }


def _announce(rig: Rig, data: Optional[bytes] = None) -> None:
    digest = hashlib.sha256(rig.package if data is None else data).digest()
    assert rig.tester.exchange(b"\x2e" + DID_PACKAGE_SHA256.to_bytes(2, "big") + digest) == b"\x6e\xfd\x05"


def _request_download(offset: int, size: int) -> bytes:
    return b"\x34\x00\x44" + offset.to_bytes(4, "big") + size.to_bytes(4, "big")


def _begin(rig: Rig, offset: int = 0) -> int:
    """Unlock, announce, RequestDownload; returns the data bytes per block."""
    rig.tester.unlock()
    _announce(rig)
    answer = rig.tester.exchange(_request_download(offset, len(rig.package)))
    assert answer is not None and answer[:2] == b"\x74\x20"
    return int.from_bytes(answer[2:4], "big") - 2


def _send_blocks(rig: Rig, block: int, count: int, start_offset: int = 0, first_counter: int = 1) -> int:
    offset, counter = start_offset, first_counter
    for _ in range(count):
        chunk = rig.package[offset : offset + block]
        assert rig.tester.exchange(bytes((0x36, counter)) + chunk) == bytes((0x76, counter))
        offset += len(chunk)
        counter = (counter + 1) & 0xFF
    return offset


def _read_text(rig: Rig, identifier: int) -> str:
    answer = rig.tester.exchange(b"\x22" + identifier.to_bytes(2, "big"))
    assert answer is not None and answer[:3] == b"\x62" + identifier.to_bytes(2, "big")
    return answer[3:].decode("utf-8")


# -- the happy path -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "can_settings",
    [
        {},
        {"fd": True, "data_bitrate": 2_000_000},
        {"extended_ids": True, "rx_id": 0x18DA10F1, "tx_id": 0x18DAF110},
    ],
    ids=["classic", "fd", "29-bit"],
)
def test_push_transfers_verifies_and_activates(
    tmp_path: Path, buses: _Buses, can_settings: Dict[str, Any]
) -> None:
    for rig in _start(tmp_path, buses, can_settings):
        result = push_package(
            rig.config.updates.can,
            SECRET.encode(),
            rig.package_path,
            PushOptions(activate=True),
            bus=buses.open(rig.config),
        )
        assert result.resumed_from == 0
        assert result.sent_bytes == len(rig.package)
        assert result.sha256 == hashlib.sha256(rig.package).hexdigest()
        assert result.staged_version == rig.handler.version
        assert result.swap_state == "done"
        assert result.active_version == rig.handler.version
        received = rig.server.incoming.received_path
        assert received.read_bytes() == rig.package
        assert [call[0] for call in rig.handler.calls] == ["verify", "activate"]
        assert rig.handler.calls[0][1] == str(received)
        assert rig.server.service.session == SESSION_DEFAULT  # push-model left the programming session
        assert _read_text(rig, DID_TRANSFER_STATE) == "complete"
        assert _read_text(rig, DID_SWAP_STATE) == "done"


def test_identifiers_and_tester_present(rig: Rig) -> None:
    from appliance import __version__

    assert _read_text(rig, 0xF195) == __version__
    assert _read_text(rig, DID_TRANSFER_STATE) == "empty"
    assert _read_text(rig, DID_SWAP_STATE) == "idle"
    assert _read_text(rig, DID_STAGED_VERSION) == ""
    # several identifiers in one request, in the order asked
    answer = rig.tester.exchange(b"\x22\xfd\x03\xfd\x04")
    assert answer == b"\x62\xfd\x03\x00\x00\x00\x00\xfd\x04\x00\x00\x00\x00"
    assert rig.tester.exchange(b"\x3e\x00") == b"\x7e\x00"
    assert rig.tester.exchange(b"\x3e\x80", timeout=0.5) is None  # suppressPosRspMsgIndicationBit
    rig.tester.unlock()
    assert rig.tester.exchange(b"\x27\x01") == b"\x67\x01" + bytes(16)  # unlocked: zero seed
    assert rig.tester.exchange(b"\x3e\x80", timeout=0.5) is None
    assert rig.server.service.session == SESSION_PROGRAMMING


# -- resume ---------------------------------------------------------------------------------------------


def test_resume_after_the_tester_is_cut_mid_transfer(rig: Rig, buses: _Buses) -> None:
    block = _begin(rig)
    offset = _send_blocks(rig, block, 4)
    # The tester dies in the middle of the next block: a first frame, then nothing.
    raw = buses.open(rig.config)
    raw.send(
        can.Message(
            arbitration_id=0x7E0,
            is_extended_id=False,
            data=b"\x1f\xff\x36\x05" + rig.package[offset : offset + 4],
        )
    )
    rig.tester.close()

    progress: Dict[str, int] = {}

    def record(total: int, initial: int) -> Any:
        progress.update(total=total, initial=initial)
        import contextlib

        return contextlib.nullcontext(lambda n: progress.update(sent=progress.get("sent", 0) + n))

    result = push_package(
        rig.config.updates.can, SECRET.encode(), rig.package_path, progress=record, bus=buses.open(rig.config)
    )
    assert result.resumed_from == offset == 4 * block
    assert result.sent_bytes == len(rig.package) - offset
    assert progress == {"total": len(rig.package), "initial": offset, "sent": len(rig.package) - offset}
    assert rig.server.incoming.received_path.read_bytes() == rig.package
    assert [call[0] for call in rig.handler.calls] == ["verify"]


def test_resume_after_the_appliance_restarts(tmp_path: Path, buses: _Buses) -> None:
    for rig in _start(tmp_path, buses):
        block = _begin(rig)
        offset = _send_blocks(rig, block, 3)
    # The first server was closed (its download paused and synced); a new one reads the sidecar.
    config = rig.config
    handler = RecordingHandler(hashlib.sha256(rig.package).digest())
    with UdsServer(config, handler, buses.open(config)) as server:
        assert server.progress().received == offset
        result = push_package(config.updates.can, SECRET.encode(), rig.package_path, bus=buses.open(config))
    handler.close()
    assert result.resumed_from == offset
    assert result.sent_bytes == len(rig.package) - offset
    assert handler.calls[0][2] == hashlib.sha256(rig.package).hexdigest()


def test_another_package_starts_over_and_a_complete_one_is_not_sent_again(
    rig: Rig, buses: _Buses, tmp_path: Path
) -> None:
    block = _begin(rig)
    _send_blocks(rig, block, 2)
    rig.tester.close()
    other, other_path = _package(tmp_path, size=PACKAGE_BYTES + 5, seed=8)
    rig.handler.expected_sha256 = hashlib.sha256(other).digest()
    result = push_package(rig.config.updates.can, SECRET.encode(), other_path, bus=buses.open(rig.config))
    assert result.resumed_from == 0 and result.sent_bytes == len(other)
    again = push_package(rig.config.updates.can, SECRET.encode(), other_path, bus=buses.open(rig.config))
    assert again.sent_bytes == 0 and again.resumed_from == len(other)
    assert [call[0] for call in rig.handler.calls] == ["verify", "verify"]


def test_a_repeated_block_is_acknowledged_and_not_written_twice(rig: Rig) -> None:
    block = _begin(rig)
    offset = _send_blocks(rig, block, 2)
    # The response to block 2 was "lost": the tester sends it again.
    assert rig.tester.exchange(b"\x36\x02" + rig.package[block:offset]) == b"\x76\x02"
    assert rig.server.incoming.received == offset
    offset = _send_blocks(rig, block, 1, start_offset=offset, first_counter=3)
    assert rig.server.incoming.received == offset


def test_block_counter_wraps_from_ff_to_00(tmp_path: Path, buses: _Buses) -> None:
    # 300 blocks of 62 bytes: the counter runs 1 … 0xFF, 0x00, 0x01 …
    for rig in _start(tmp_path, buses, {"transfer_block_bytes": 64}):
        rig.tester.unlock()
        data = bytes(range(256)) * 73  # 18688 bytes = 301 blocks
        digest = hashlib.sha256(data).digest()
        rig.handler.expected_sha256 = digest
        _announce(rig, data)
        assert rig.tester.exchange(_request_download(0, len(data)))[:4] == b"\x74\x20\x00\x40"
        counter = 1
        for offset in range(0, len(data), 62):
            assert rig.tester.exchange(bytes((0x36, counter)) + data[offset : offset + 62]) == bytes(
                (0x76, counter)
            )
            counter = (counter + 1) & 0xFF
        assert rig.tester.exchange(b"\x37") == b"\x77"
        assert rig.tester.exchange(b"\x31\x01\xff\x01")[:4] == b"\x71\x01\xff\x01"


# -- misuse: each answer, and nothing changed -----------------------------------------------------------


def _refused(rig: Rig, request: bytes, code: int) -> None:
    before = _state(rig)
    assert rig.tester.exchange(request) == _nrc(request[0], code)
    assert _state(rig) == before


def test_services_outside_the_programming_session(rig: Rig) -> None:
    for request in (
        b"\x27\x01",
        _request_download(0, 10),
        b"\x36\x01\x00",
        b"\x37",
        b"\x31\x01\xff\x01",
        b"\x2e\xfd\x05" + bytes(32),
    ):
        _refused(rig, request, NRC_SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION)
    _refused(rig, b"\x11\x01", NRC_SERVICE_NOT_SUPPORTED)  # ECUReset: not offered
    _refused(rig, b"\x10\x03", NRC_SUB_FUNCTION_NOT_SUPPORTED)  # extended session: not offered
    _refused(rig, b"\x10", NRC_INCORRECT_MESSAGE_LENGTH)
    _refused(rig, b"\x10\x02\x00", NRC_INCORRECT_MESSAGE_LENGTH)
    _refused(rig, b"\x3e\x01", NRC_SUB_FUNCTION_NOT_SUPPORTED)
    _refused(rig, b"\x22\xfd", NRC_INCORRECT_MESSAGE_LENGTH)
    _refused(rig, b"\x22" + b"\xfd\x03" * 9, NRC_INCORRECT_MESSAGE_LENGTH)
    _refused(rig, b"\x22\x12\x34", NRC_REQUEST_OUT_OF_RANGE)  # unknown identifier


def test_locked_services_answer_security_access_denied(rig: Rig) -> None:
    assert rig.tester.exchange(b"\x10\x02")[:2] == b"\x50\x02"
    for request in (
        _request_download(0, 10),
        b"\x36\x01\x00",
        b"\x37",
        b"\x31\x01\xff\x01",
        b"\x2e\xfd\x05" + bytes(32),
    ):
        _refused(rig, request, NRC_SECURITY_ACCESS_DENIED)
    _refused(rig, b"\x31\x01\x12\x34", NRC_REQUEST_OUT_OF_RANGE)  # unknown routine, before security
    _refused(rig, b"\x2e\x12\x34\x00", NRC_REQUEST_OUT_OF_RANGE)  # not a writable identifier


def test_security_access_seed_key_and_attempts(tmp_path: Path, buses: _Buses) -> None:
    for rig in _start(tmp_path, buses, {"security_max_attempts": 3, "security_delay_s": 3.0}):
        tester = rig.tester
        assert tester.exchange(b"\x10\x02")[:2] == b"\x50\x02"
        _refused(rig, b"\x27\x02" + bytes(32), NRC_REQUEST_SEQUENCE_ERROR)  # a key before any seed
        _refused(rig, b"\x27\x03", NRC_SUB_FUNCTION_NOT_SUPPORTED)
        seed = tester.exchange(b"\x27\x01")[2:]
        assert len(seed) == 16 and seed != bytes(16)
        assert tester.exchange(b"\x27\x01")[2:] == seed  # asked twice: the same pending seed
        _refused(rig, b"\x27\x02" + bytes(31), NRC_INCORRECT_MESSAGE_LENGTH)
        for _ in range(2):
            wrong = compute_key(b"not-the-secret-0123456789", tester.exchange(b"\x27\x01")[2:])
            _refused(rig, b"\x27\x02" + wrong, NRC_INVALID_KEY)
        wrong = compute_key(b"not-the-secret-0123456789", tester.exchange(b"\x27\x01")[2:])
        _refused(rig, b"\x27\x02" + wrong, NRC_EXCEEDED_NUMBER_OF_ATTEMPTS)
        _refused(rig, b"\x27\x01", NRC_REQUIRED_TIME_DELAY_NOT_EXPIRED)
        # The delay survives a session change: it is not a way around it.
        assert tester.exchange(b"\x10\x02")[:2] == b"\x50\x02"
        _refused(rig, b"\x27\x01", NRC_REQUIRED_TIME_DELAY_NOT_EXPIRED)
        time.sleep(3.1)  # the configured delay: afterwards a seed is given again (no upper bound assumed)
        seed = tester.exchange(b"\x27\x01")[2:]
        assert tester.exchange(b"\x27\x02" + compute_key(SECRET.encode(), seed)) == b"\x67\x02"
        assert rig.server.service.unlocked


def test_wrong_order(rig: Rig) -> None:
    rig.tester.unlock()
    _refused(rig, b"\x36\x01" + rig.package[:10], NRC_REQUEST_SEQUENCE_ERROR)  # no download open
    _refused(rig, b"\x37", NRC_REQUEST_SEQUENCE_ERROR)
    _refused(rig, b"\x31\x01\xff\x01", NRC_REQUEST_SEQUENCE_ERROR)  # verify: nothing complete
    _refused(rig, _request_download(0, len(rig.package)), NRC_CONDITIONS_NOT_CORRECT)  # sha256 not announced
    _announce(rig)
    assert rig.tester.exchange(_request_download(0, len(rig.package)))[:2] == b"\x74\x20"
    _refused(rig, _request_download(0, len(rig.package)), NRC_CONDITIONS_NOT_CORRECT)  # already open
    _refused(rig, b"\x2e\xfd\x05" + bytes(32), NRC_CONDITIONS_NOT_CORRECT)
    _send_blocks(rig, 4093, 1)
    _refused(rig, b"\x37", NRC_REQUEST_SEQUENCE_ERROR)  # bytes missing
    _refused(rig, b"\x31\x01\xff\x01", NRC_REQUEST_SEQUENCE_ERROR)  # verify during the download


def test_block_counter_and_size_limits(rig: Rig) -> None:
    block = _begin(rig)
    offset = _send_blocks(rig, block, 1)
    _refused(rig, b"\x36\x03" + rig.package[offset : offset + block], NRC_WRONG_BLOCK_SEQUENCE_COUNTER)
    _refused(rig, b"\x36\x01" + rig.package[offset : offset + block], NRC_WRONG_BLOCK_SEQUENCE_COUNTER)
    _refused(rig, b"\x36\x01" + bytes(block), NRC_WRONG_BLOCK_SEQUENCE_COUNTER)  # "repeat" with other data
    _refused(rig, b"\x36\x02", NRC_INCORRECT_MESSAGE_LENGTH)  # no data
    offset = _send_blocks(rig, block, 8, start_offset=offset, first_counter=2)
    rest = len(rig.package) - offset
    _refused(
        rig, b"\x36\x0a" + rig.package[offset:] + b"\x00", NRC_TRANSFER_DATA_SUSPENDED
    )  # beyond memorySize
    assert rig.tester.exchange(b"\x36\x0a" + rig.package[offset:]) == b"\x76\x0a"
    _refused(rig, b"\x36\x0b\x00", NRC_TRANSFER_DATA_SUSPENDED)
    assert rest > 0
    _refused(rig, b"\x37\x00", NRC_INCORRECT_MESSAGE_LENGTH)
    assert rig.tester.exchange(b"\x37") == b"\x77"


def test_request_download_checks(tmp_path: Path, buses: _Buses) -> None:
    for rig in _start(tmp_path, buses, max_package_mb=1):
        size = len(rig.package)
        block = _begin(rig)
        offset = _send_blocks(rig, block, 2)
        assert rig.tester.exchange(b"\x10\x02")[:2] == b"\x50\x02"  # pauses the download, locks
        rig.tester.unlock()
        _announce(rig)
        _refused(
            rig, b"\x34\x11\x44" + bytes(4) + size.to_bytes(4, "big"), NRC_REQUEST_OUT_OF_RANGE
        )  # compressed
        _refused(rig, b"\x34\x00\x05" + bytes(5), NRC_REQUEST_OUT_OF_RANGE)  # no size bytes
        _refused(rig, b"\x34\x00\x44" + bytes(7), NRC_INCORRECT_MESSAGE_LENGTH)
        _refused(rig, _request_download(0, 0), NRC_REQUEST_OUT_OF_RANGE)
        _refused(rig, _request_download(0, 1024 * 1024 + 1), NRC_REQUEST_OUT_OF_RANGE)  # too large
        assert _read_text(rig, DID_LAST_ERROR).startswith("too_large:")
        _refused(rig, _request_download(offset - 1, size), NRC_REQUEST_OUT_OF_RANGE)  # not what was received
        _refused(rig, _request_download(offset + block, size), NRC_REQUEST_OUT_OF_RANGE)
        _refused(rig, _request_download(size + 1, size), NRC_REQUEST_OUT_OF_RANGE)
        _refused(rig, _request_download(offset, size + 1), NRC_REQUEST_OUT_OF_RANGE)  # another package
        assert _read_text(rig, DID_LAST_ERROR).startswith("bad_offset:")
        # the right offset resumes
        assert rig.tester.exchange(_request_download(offset, size))[:2] == b"\x74\x20"
        _send_blocks(rig, block, 1, start_offset=offset)
        assert rig.server.incoming.received == offset + block


def test_no_space_is_upload_download_not_accepted(tmp_path: Path, buses: _Buses) -> None:
    free = shutil.disk_usage(tmp_path).free
    for rig in _start(tmp_path, buses, reserve_bytes=free + (1 << 40)):
        rig.tester.unlock()
        _announce(rig)
        _refused(rig, _request_download(0, len(rig.package)), NRC_UPLOAD_DOWNLOAD_NOT_ACCEPTED)
        assert _read_text(rig, DID_LAST_ERROR).startswith("no_space:")


def test_corrupted_transfer_is_refused_at_exit_and_starts_over(rig: Rig) -> None:
    block = _begin(rig)
    corrupted = bytearray(rig.package)
    corrupted[5] ^= 0xFF
    counter, offset = 1, 0
    while offset < len(corrupted):
        chunk = bytes(corrupted[offset : offset + block])
        assert rig.tester.exchange(bytes((0x36, counter)) + chunk) == bytes((0x76, counter))
        offset += len(chunk)
        counter = (counter + 1) & 0xFF
    assert rig.tester.exchange(b"\x37") == _nrc(0x37, NRC_GENERAL_PROGRAMMING_FAILURE)
    assert _read_text(rig, DID_LAST_ERROR).startswith("sha256_mismatch:")
    assert _read_text(rig, DID_TRANSFER_STATE) == "empty"
    assert rig.handler.calls == []


def test_handler_refusals_reach_the_tester(rig: Rig, tmp_path: Path, buses: _Buses) -> None:
    rig.tester.unlock()
    _refused(rig, b"\x31\x01" + ROUTINE_ACTIVATE.to_bytes(2, "big"), NRC_CONDITIONS_NOT_CORRECT)
    assert "no verified package" in _read_text(rig, DID_LAST_ERROR)
    _refused(rig, b"\x31\x01" + ROUTINE_ROLLBACK.to_bytes(2, "big"), NRC_CONDITIONS_NOT_CORRECT)
    _refused(rig, b"\x31\x02" + ROUTINE_VERIFY.to_bytes(2, "big"), NRC_SUB_FUNCTION_NOT_SUPPORTED)
    _refused(rig, b"\x31\x01" + ROUTINE_VERIFY.to_bytes(2, "big") + b"\x00", NRC_INCORRECT_MESSAGE_LENGTH)
    rig.tester.close()
    # A package the handler refuses: push-model exits with the appliance's reason.
    rig.handler.expected_sha256 = bytes(32)
    with pytest.raises(PushError) as refused:
        push_package(rig.config.updates.can, SECRET.encode(), rig.package_path, bus=buses.open(rig.config))
    assert refused.value.step == "verify"
    assert refused.value.nrc == NRC_GENERAL_PROGRAMMING_FAILURE
    assert refused.value.reason.startswith("bad_signature:")
    assert "bad_signature" in str(refused.value)


def test_session_timeout_relocks_and_pauses_the_download(tmp_path: Path, buses: _Buses) -> None:
    for rig in _start(tmp_path, buses, {"session_timeout_s": 1.0}):
        block = _begin(rig)
        offset = _send_blocks(rig, block, 1)
        time.sleep(1.3)  # longer than S3: the next request finds the session over
        assert rig.tester.exchange(b"\x36\x02" + rig.package[offset : offset + block]) == _nrc(
            0x36, NRC_SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION
        )
        assert rig.server.service.session == SESSION_DEFAULT
        assert not rig.server.service.unlocked
        assert rig.tester.exchange(b"\x10\x02")[:2] == b"\x50\x02"
        _refused(rig, _request_download(offset, len(rig.package)), NRC_SECURITY_ACCESS_DENIED)
        assert _u32(rig.tester.exchange(b"\x22\xfd\x03")) == offset  # kept for a resume


def test_push_model_client_gives_up_on_a_silent_appliance(tmp_path: Path, buses: _Buses) -> None:
    config = make_config(tmp_path)
    _, path = _package(tmp_path)
    with pytest.raises(PushError) as silent:
        with PushClient(
            config.updates.can, SECRET.encode(), buses.open(config), PushOptions(request_timeout_s=2)
        ) as client:
            client.push(path)
    assert silent.value.step == "DiagnosticSessionControl"
    assert "no answer" in str(silent.value)


# -- two processes over a serial line (socat) -----------------------------------------------------------


def _wait_for_links(*paths: Path) -> None:
    deadline = time.monotonic() + 10
    while not all(path.exists() for path in paths):
        if time.monotonic() > deadline:
            pytest.fail(f"socat did not create {paths}")
        time.sleep(0.05)


def _serve(config_file: Path, digest: str) -> subprocess.Popen:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.uds_support",
            "serve",
            "--config",
            str(config_file),
            "--expect-sha256",
            digest,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        text=True,
    )
    assert server.stdout is not None
    if server.stdout.readline().strip() != "READY":
        server.kill()
        pytest.fail(f"the UDS server process did not start: {server.communicate()[1]}")
    return server


def _stop(server: subprocess.Popen) -> Dict[str, Any]:
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _push_model(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "push-model", *args, "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed (apt-get install socat)")
def test_push_model_to_a_server_process_over_a_serial_line(tmp_path: Path) -> None:
    appliance_end, tester_end = tmp_path / "appliance-tty", tmp_path / "tester-tty"
    socat = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={appliance_end}", f"pty,raw,echo=0,link={tester_end}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server: Optional[subprocess.Popen] = None
    try:
        _wait_for_links(appliance_end, tester_end)
        data, package = _package(tmp_path, size=20_000)
        digest = hashlib.sha256(data).hexdigest()
        config_file = tmp_path / "appliance.toml"
        (tmp_path / "uds_secret").write_text(SECRET + "\n")
        config_file.write_text(
            f'[storage]\ndir = "{tmp_path / "state"}"\n'
            f'[updates]\nenabled = true\nsecurity_secret_file = "uds_secret"\n'
            f'[updates.can]\ninterface = "serial"\nchannel = "{appliance_end}"\n'
        )
        common = (str(package), "--config", str(config_file), "--channel", str(tester_end))

        server = _serve(config_file, digest)
        push = _push_model(*common, "--activate")
        assert push.returncode == 0, push.stderr
        assert f"({len(data)} bytes, sha256 {digest})" in push.stdout
        assert "swap      done" in push.stdout
        report = _stop(server)
        server = None
        assert [call[0] for call in report["calls"]] == ["verify", "activate"]
        assert report["status"]["swap_state"] == "done"

        # A restarted appliance: a wrong secret is refused; the same package is not sent again.
        server = _serve(config_file, digest)
        wrong = tmp_path / "wrong_secret"
        wrong.write_text("another-secret-0123456789abcdef\n")
        refused = _push_model(*common, "--secret-file", str(wrong))
        assert refused.returncode == 1
        assert "SecurityAccess refused by the appliance: invalidKey (0x35)" in refused.stderr
        again = _push_model(*common)
        assert again.returncode == 0, again.stderr
        assert "nothing to send" in again.stdout
        report = _stop(server)
        server = None
        assert [call[0] for call in report["calls"]] == ["verify"]
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.communicate()
        socat.terminate()
        socat.wait(timeout=10)
