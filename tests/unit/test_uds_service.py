"""The UDS protocol state machine (appliance.updates.uds_server.UdsService) fed request by request.

The clock is a variable here, so the S3 timer and the security delay are checked exactly; the
integration tests run the same service over real ISO-TP.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import List, Optional

import pytest

from appliance.updates.handler import UpdateStatus
from appliance.updates.transfer import IncomingPackage
from appliance.updates.uds_protocol import compute_key
from appliance.updates.uds_server import UdsService
from tests.uds_support import SECRET, RecordingHandler, make_config

DATA = b"model package bytes " * 100


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _service(tmp_path: Path, handler: object, clock: Clock, pending: Optional[object] = None) -> UdsService:
    config = make_config(
        tmp_path, {"session_timeout_s": 5.0, "security_max_attempts": 2, "security_delay_s": 10.0}
    )
    incoming = IncomingPackage(config.updates_staging_dir, reserve_bytes=0)
    return UdsService(config, handler, incoming, SECRET.encode(), pending=pending, clock=clock)  # type: ignore[arg-type]


def _unlock(service: UdsService) -> None:
    assert service.handle(b"\x10\x02")[:2] == b"\x50\x02"
    seed = service.handle(b"\x27\x01")[2:]
    assert service.handle(b"\x27\x02" + compute_key(SECRET.encode(), seed)) == b"\x67\x02"


def _complete(service: UdsService) -> None:
    assert service.handle(b"\x2e\xfd\x05" + hashlib.sha256(DATA).digest()) == b"\x6e\xfd\x05"
    assert service.handle(b"\x34\x00\x44" + bytes(4) + len(DATA).to_bytes(4, "big"))[:2] == b"\x74\x20"
    assert service.handle(b"\x36\x01" + DATA) == b"\x76\x01"
    assert service.handle(b"\x37") == b"\x77"


def test_session_control_answer_carries_p2_and_p2_star(tmp_path: Path) -> None:
    service = _service(tmp_path, RecordingHandler(b""), Clock())
    assert service.handle(b"\x10\x02") == b"\x50\x02\x03\xe8\x01\xf4"  # P2 1000 ms, P2* 500 × 10 ms
    assert service.handle(b"\x10\x81") is None  # suppressed positive response, still switched
    assert service.session == 0x01


def test_s3_timer_tester_present_keeps_the_session(tmp_path: Path) -> None:
    clock = Clock()
    service = _service(tmp_path, RecordingHandler(b""), clock)
    _unlock(service)
    for _ in range(3):
        clock.now += 4.9
        assert service.handle(b"\x3e\x80") is None
    service.poll()
    assert service.session == 0x02 and service.unlocked
    clock.now += 5.01
    service.poll()
    assert service.session == 0x01 and not service.unlocked


def test_s3_timer_pauses_an_open_download(tmp_path: Path) -> None:
    clock = Clock()
    service = _service(tmp_path, RecordingHandler(b""), clock)
    _unlock(service)
    assert service.handle(b"\x2e\xfd\x05" + hashlib.sha256(DATA).digest()) == b"\x6e\xfd\x05"
    assert service.handle(b"\x34\x00\x44" + bytes(4) + len(DATA).to_bytes(4, "big"))[:2] == b"\x74\x20"
    assert service.handle(b"\x36\x01" + DATA[:100]) == b"\x76\x01"
    clock.now += 6
    assert service.handle(b"\x36\x02" + DATA[100:200]) == b"\x7f\x36\x7f"
    assert not service.incoming.writing and service.incoming.received == 100


def test_security_delay_is_exact(tmp_path: Path) -> None:
    clock = Clock()
    service = _service(tmp_path, RecordingHandler(b""), clock)
    assert service.handle(b"\x10\x02")[:2] == b"\x50\x02"
    service.handle(b"\x27\x01")
    assert service.handle(b"\x27\x02" + bytes(32)) == b"\x7f\x27\x35"
    service.handle(b"\x27\x01")
    assert service.handle(b"\x27\x02" + bytes(32)) == b"\x7f\x27\x36"
    for _ in range(2):  # 9.9 s, the session kept open (S3 is 5 s)
        clock.now += 4.9
        assert service.handle(b"\x3e\x80") is None
    clock.now += 0.1
    assert service.handle(b"\x27\x01") == b"\x7f\x27\x37"
    assert service.handle(b"\x27\x02" + bytes(32)) == b"\x7f\x27\x37"
    clock.now += 0.2
    seed = service.handle(b"\x27\x01")[2:]
    assert len(seed) == 16
    assert service.handle(b"\x27\x02" + compute_key(SECRET.encode(), seed)) == b"\x67\x02"


class _BrokenHandler(RecordingHandler):
    def verify(self, package_path: Path) -> str:
        raise RuntimeError("a bug")

    def status(self) -> UpdateStatus:
        raise RuntimeError("another bug")


def test_handler_bugs_become_negative_responses(tmp_path: Path) -> None:
    service = _service(tmp_path, _BrokenHandler(hashlib.sha256(DATA).digest()), Clock())
    _unlock(service)
    _complete(service)
    assert service.handle(b"\x31\x01\xff\x01") == b"\x7f\x31\x72"
    assert service.last_error == "internal_error: RuntimeError in verify"
    assert service.handle(b"\x22\xfd\x02") == b"\x7f\x22\x22"  # status() failed
    assert service.handle(b"\x22\xfd\x03") == b"\x62\xfd\x03" + len(DATA).to_bytes(4, "big")


def test_slow_verify_answers_response_pending(tmp_path: Path) -> None:
    pending: List[int] = []
    asked = threading.Event()

    class SlowHandler(RecordingHandler):
        def verify(self, package_path: Path) -> str:
            # Finishes only once the server has told the tester to wait.
            if not asked.wait(10):
                raise RuntimeError("no responsePending was sent")
            return super().verify(package_path)

    def send_pending(service_id: int) -> None:
        pending.append(service_id)
        asked.set()

    service = _service(tmp_path, SlowHandler(hashlib.sha256(DATA).digest()), Clock(), pending=send_pending)
    _unlock(service)
    _complete(service)
    assert service.handle(b"\x31\x01\xff\x01") == b"\x71\x01\xff\x01embedder@9.9.9"
    assert pending and set(pending) == {0x31}


@pytest.mark.parametrize("request_bytes", [b"\x36", b"\x37\x00", b"\x34\x00", b"\x27"], ids=str)
def test_too_short_or_long_requests(tmp_path: Path, request_bytes: bytes) -> None:
    service = _service(tmp_path, RecordingHandler(b""), Clock())
    _unlock(service)
    assert service.handle(request_bytes) == bytes((0x7F, request_bytes[0], 0x13))
    assert service.handle(b"") is None
