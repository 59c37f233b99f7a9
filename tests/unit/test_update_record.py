"""One record of where updates stand (issue 12, finding 12): the UDS identifiers and ``…/model``.

The UDS protocol (:class:`appliance.updates.uds_server.UdsService`) is fed request by request in
front of the real swap manager (no models: its host has no runtime), so what FD02/FD06 answer and
what ``…/model`` would publish are compared after transfer refusals, a failed swap and a refused verify.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from appliance.config import ApplianceConfig
from appliance.updates.errors import UpdateError
from appliance.updates.swap import SwapManager
from appliance.updates.transfer import IncomingPackage
from appliance.updates.uds_protocol import compute_key
from appliance.updates.uds_server import UdsService
from appliance.updates.update_state import SwapState, UpdateState
from tests.uds_support import SECRET, make_config

DATA = b"model package bytes " * 100


class _Host:
    """What the daemon offers the swap manager, without models; keeps every published ``…/model``."""

    def __init__(self, config: ApplianceConfig) -> None:
        self.config = config
        self.runtime: Optional[Any] = None
        self.engines: Optional[Any] = None
        self.faults: Any = None
        self.stop_event = threading.Event()
        self.frames_processed = 0
        self.swap: Optional[SwapManager] = None
        self.published: List[Dict[str, Any]] = []

    def publish_model(self) -> None:
        assert self.swap is not None
        self.published.append(self.swap.document())


def _rig(tmp_path: Path) -> Tuple[UdsService, SwapManager, _Host]:
    config = make_config(tmp_path, max_package_mb=1)
    host = _Host(config)
    swap = SwapManager(host, {})
    host.swap = swap
    incoming = IncomingPackage(config.updates_staging_dir, reserve_bytes=0)
    service = UdsService(config, swap, incoming, SECRET.encode())
    assert service.handle(b"\x10\x02")[:2] == b"\x50\x02"
    seed = service.handle(b"\x27\x01")[2:]
    assert service.handle(b"\x27\x02" + compute_key(SECRET.encode(), seed)) == b"\x67\x02"
    return service, swap, host


def _did(service: UdsService, did: bytes) -> str:
    answer = service.handle(b"\x22" + did)
    assert answer is not None and answer[:3] == b"\x62" + did, answer
    return answer[3:].decode("utf-8")


def _wrong_sha256_transfer(service: UdsService) -> None:
    """A complete transfer whose bytes do not hash to the announced sha256 (refused at exit)."""
    assert service.handle(b"\x2e\xfd\x05" + hashlib.sha256(b"another package").digest()) == b"\x6e\xfd\x05"
    assert service.handle(b"\x34\x00\x44" + bytes(4) + len(DATA).to_bytes(4, "big"))[:2] == b"\x74\x20"
    assert service.handle(b"\x36\x01" + DATA) == b"\x76\x01"
    assert service.handle(b"\x37") == b"\x7f\x37\x72"


def test_a_transfer_refusal_reaches_the_model_document_as_fd06_shows_it(tmp_path: Path) -> None:
    service, swap, host = _rig(tmp_path)
    assert service.handle(b"\x2e\xfd\x05" + hashlib.sha256(DATA).digest()) == b"\x6e\xfd\x05"
    too_large = (2 * 2**20).to_bytes(4, "big")
    assert service.handle(b"\x34\x00\x44" + bytes(4) + too_large) == b"\x7f\x34\x31"

    fd06 = _did(service, b"\xfd\x06")
    assert fd06.startswith("too_large:")
    document = swap.document()
    assert document["last_error"] == fd06 and document["last_error_source"] == "transfer"
    assert document["last_error_at"]
    assert host.published and host.published[-1]["last_error"] == fd06  # …/model was republished

    # A download that starts ends the transfer's error, in both renderings.
    assert service.handle(b"\x34\x00\x44" + bytes(4) + len(DATA).to_bytes(4, "big"))[:2] == b"\x74\x20"
    assert _did(service, b"\xfd\x06") == "" and swap.document()["last_error"] is None


def test_a_transfer_refusal_does_not_hide_why_the_swap_failed(tmp_path: Path) -> None:
    service, swap, _host = _rig(tmp_path)
    swap._fail(UpdateError("reference outputs differ (max |diff| 0.4)"))
    assert _did(service, b"\xfd\x02") == "failed"
    assert _did(service, b"\xfd\x06") == "reference outputs differ (max |diff| 0.4)"

    _wrong_sha256_transfer(service)
    fd06 = _did(service, b"\xfd\x06")
    assert fd06.startswith("sha256_mismatch:"), fd06
    assert "the last swap failed: reference outputs differ" in fd06
    document = swap.document()
    assert document["swap"]["state"] == "failed"
    assert document["swap"]["error"] == "reference outputs differ (max |diff| 0.4)"
    assert document["last_error"] == fd06 and document["last_error_source"] == "transfer"


def test_a_swap_failing_after_a_transfer_refusal_is_the_last_error(tmp_path: Path) -> None:
    service, swap, _host = _rig(tmp_path)
    _wrong_sha256_transfer(service)
    swap._fail(UpdateError("the pipeline has no models loaded"))
    assert _did(service, b"\xfd\x06") == "the pipeline has no models loaded"
    assert swap.document()["last_error_source"] == "swap"


def test_an_activate_refusal_is_recorded_with_its_source(tmp_path: Path) -> None:
    service, swap, _host = _rig(tmp_path)
    assert service.handle(b"\x31\x01\xf0\x01") == b"\x7f\x31\x22"
    fd06 = _did(service, b"\xfd\x06")
    assert "no verified package" in fd06
    assert swap.document()["last_error"] == fd06 and swap.document()["last_error_source"] == "activate"
    assert _did(service, b"\xfd\x02") == "idle" and _did(service, b"\xfd\x01") == ""


def test_the_record_renders_one_event_at_a_time() -> None:
    state = UpdateState(clock=lambda: "2026-12-03T19:00:00.000Z")
    state.begin(SwapState.PREPARING, "loading the previous mobilefacenet", need_staged=False)
    state.advance(SwapState.VALIDATING, "reference outputs and latency")
    state.finish(SwapState.FAILED, "", "reference outputs differ")
    failed = state.snapshot()
    assert (failed.state, failed.step, failed.error_source) == (
        SwapState.FAILED,
        "reference outputs and latency",
        "swap",
    )
    # A refused verify is a new event: nothing staged, idle, not the failed swap's step.
    state.refused("verify", "unknown_key: signed by key 'x'", "nothing staged: the package was refused")
    refused = state.snapshot()
    assert refused.status("").swap_state == "idle" and refused.status("").staged_version == ""
    assert refused.document()["swap"] == {
        "state": "idle",
        "step": "nothing staged: the package was refused",
        "progress": None,
        "error": None,
    }
    assert (
        refused.status("").last_error == refused.document()["last_error"] == "unknown_key: signed by key 'x'"
    )
