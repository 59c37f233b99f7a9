"""Fuzzing the UDS server's protocol core with arbitrary ISO-TP payloads and service sequences.

:class:`UdsService` is the server without its threads and bus (the same object the CAN server runs),
so thousands of requests take seconds. Properties: no request raises; every answer is a positive
response to the request's service or a negative response ``7F <sid> <nrc>``; a sequence that never
unlocks SecurityAccess never receives data, never calls the update handler, and leaves the staging
folder empty.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List

from hypothesis import given
from hypothesis import strategies as st

from appliance.updates.transfer import IncomingPackage
from appliance.updates.uds_server import UdsService
from tests.fuzz.conftest import fuzz_settings
from tests.uds_support import SECRET, RecordingHandler, make_config

SERVICES = [0x10, 0x11, 0x22, 0x27, 0x2E, 0x31, 0x34, 0x36, 0x37, 0x3E, 0x85, 0x19]

request = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda sid, body: bytes([sid]) + body,
        st.sampled_from(SERVICES),
        st.binary(max_size=40),
    ),
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _check(request_bytes: bytes, answer: object) -> None:
    if answer is None:
        return
    assert isinstance(answer, bytes) and answer, answer
    if answer[0] == 0x7F:
        assert len(answer) == 3 and request_bytes and answer[1] == request_bytes[0], answer
    else:
        assert request_bytes and answer[0] == request_bytes[0] + 0x40, (request_bytes, answer)


@fuzz_settings(400)
@given(st.lists(st.tuples(request, st.floats(min_value=0.0, max_value=8.0)), max_size=30))
def test_arbitrary_requests_never_crash_or_change_state_while_locked(steps: List[tuple]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = make_config(Path(folder), {"session_timeout_s": 5.0})
        incoming = IncomingPackage(config.updates_staging_dir, reserve_bytes=0)
        handler = RecordingHandler(b"\x00" * 32)
        clock = Clock()
        service = UdsService(config, handler, incoming, SECRET.encode(), clock=clock)  # type: ignore[arg-type]
        for payload, advance in steps:
            clock.now += advance
            answer = service.handle(payload)
            _check(payload, answer)
        assert handler.calls == []
        assert incoming.progress().received == 0
