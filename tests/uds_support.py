"""Helpers of the UDS tests: a recording update handler, a raw ISO-TP tester, configurations, and a
UDS server runnable in a subprocess (``python -m tests.uds_support serve …``).

Nothing here is a mock of the CAN stack: the server, ISO-TP (can-isotp) and the buses (python-can
``virtual`` or ``serial``) are the real ones. :class:`RecordingHandler` stands in for the swap
manager (which needs models, a gallery and a running pipeline): it records the calls, verifies a
package by a sha256 chosen by the test, and runs a short "swap" on a thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import can
import isotp

from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.updates.can_link import isotp_address, isotp_params
from appliance.updates.errors import PackageError, UpdateError
from appliance.updates.handler import SWAP_DONE, SWAP_IDLE, UpdateStatus
from appliance.updates.uds_protocol import (
    NEGATIVE_RESPONSE,
    NRC_RESPONSE_PENDING,
    SECURITY_LEVEL,
    SESSION_PROGRAMMING,
    compute_key,
)

SECRET = "test-secret-0123456789abcdef-uds"


class RecordingHandler:
    """An update handler that records its calls.

    ``verify`` accepts a file whose sha256 is ``expected_sha256`` and returns ``version``; any
    other file is refused with ``PackageError(reason="bad_signature")``. ``activate`` runs a short
    swap on a thread (``switching`` → ``done``); ``rollback`` is refused until a swap is done.
    """

    def __init__(self, expected_sha256: bytes, version: str = "embedder@9.9.9") -> None:
        self.expected_sha256 = expected_sha256
        self.version = version
        self.calls: List[Any] = []
        self._lock = threading.Lock()
        self._active = "embedder@1.0.0"
        self._staged = ""
        self._state = SWAP_IDLE
        self._error = ""
        self._previous: Optional[str] = None
        self._thread: Optional[threading.Thread] = None

    def verify(self, package_path: Path) -> str:
        digest = hashlib.sha256(Path(package_path).read_bytes()).digest()
        with self._lock:
            self.calls.append(("verify", str(package_path), digest.hex()))
            if digest != self.expected_sha256:
                self._staged = ""
                self._error = "bad_signature: the test handler expected another package"
                raise PackageError("the test handler expected another package", reason="bad_signature")
            self._staged = self.version
            self._error = ""
            return self.version

    def activate(self) -> None:
        with self._lock:
            self.calls.append(("activate",))
            if not self._staged:
                raise UpdateError("no verified package to activate; transfer and verify one first")
            self._state = "switching"
            self._thread = threading.Thread(target=self._swap, name="test-swap")
            self._thread.start()

    def rollback(self) -> None:
        with self._lock:
            self.calls.append(("rollback",))
            if self._previous is None:
                raise UpdateError("no previous model to roll back to")
            self._active, self._previous = self._previous, None
            self._state = SWAP_DONE

    def status(self) -> UpdateStatus:
        with self._lock:
            return UpdateStatus(self._active, self._staged, self._state, self._error)

    def close(self) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(5.0)

    def _swap(self) -> None:
        time.sleep(0.2)  # a swap takes a moment: push-model must poll
        with self._lock:
            self._previous, self._active = self._active, self._staged
            self._staged = ""
            self._state = SWAP_DONE


def make_config(
    folder: Path, can: Optional[Dict[str, Any]] = None, max_package_mb: int = 64
) -> ApplianceConfig:
    """A configuration with updates enabled on a fresh ``virtual`` channel (unless ``can`` names one)."""
    secret = folder / "uds_secret"
    if not secret.exists():
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
    can_settings: Dict[str, Any] = {"interface": "virtual", "channel": f"uds-{uuid.uuid4().hex[:12]}"}
    can_settings.update(can or {})
    return validate_config(
        {
            "storage": {"dir": str(folder / "state")},
            "updates": {
                "enabled": True,
                "security_secret_file": str(secret),
                "max_package_mb": max_package_mb,
                "can": can_settings,
            },
        }
    )


def virtual_bus(config: ApplianceConfig) -> can.BusABC:
    """A python-can ``virtual`` bus on the configuration's channel."""
    return can.Bus(interface="virtual", channel=config.updates.can.channel)


class RawTester:
    """A tester that sends raw UDS requests over real ISO-TP and returns the raw answers.

    Responses pending (``7F xx 78``) are skipped. ``exchange`` returns ``None`` when no answer
    comes within ``timeout`` (a suppressed positive response).
    """

    def __init__(self, config: ApplianceConfig, bus: can.BusABC) -> None:
        can_config = config.updates.can
        self.notifier = can.Notifier(bus, [], timeout=0.1)
        self.stack = isotp.NotifierBasedCanStack(
            bus,
            self.notifier,
            address=isotp_address(can_config, server=False),
            params=isotp_params(can_config, max_message_bytes=4095, blocking_send=True),
        )
        self.stack.start()
        self._closed = False

    def exchange(self, payload: bytes, timeout: float = 3.0) -> Optional[bytes]:
        self.stack.clear_rx_queue()
        self.stack.send(payload)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            answer = self.stack.recv(block=True, timeout=remaining)
            if answer is None:
                return None
            answer = bytes(answer)
            if len(answer) == 3 and answer[0] == NEGATIVE_RESPONSE and answer[2] == NRC_RESPONSE_PENDING:
                deadline = time.monotonic() + timeout
                continue
            return answer

    def unlock(self) -> None:
        """Programming session and SecurityAccess with the test secret."""
        assert self.exchange(bytes((0x10, SESSION_PROGRAMMING)))[:2] == b"\x50\x02"
        seed = self.exchange(bytes((0x27, SECURITY_LEVEL)))[2:]
        key = compute_key(SECRET.encode(), seed)
        assert self.exchange(bytes((0x27, SECURITY_LEVEL + 1)) + key) == b"\x67\x02"

    def close(self) -> None:
        """Stop ISO-TP and the reader (the bus stays open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stack.stop()
        self.notifier.stop(timeout=1.0)


# -- the server as a process (the cross-process test) ---------------------------------------------------


def serve(argv: Optional[List[str]] = None) -> int:
    """Run a UDS server with a RecordingHandler until SIGTERM; print READY, then the calls as JSON."""
    from appliance.config_load import load_config
    from appliance.logs import setup_logging
    from appliance.updates.uds_server import open_uds_server

    parser = argparse.ArgumentParser(prog="python -m tests.uds_support serve")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--expect-sha256", required=True)
    args = parser.parse_args(argv)
    setup_logging("INFO")
    config = load_config(args.config)
    handler = RecordingHandler(bytes.fromhex(args.expect_sha256))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    server = open_uds_server(config, handler)
    server.start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.close()
        handler.close()
    sys.stdout.write(json.dumps({"calls": handler.calls, "status": handler.status().__dict__}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2:]))
    sys.stderr.write("usage: python -m tests.uds_support serve --config FILE --expect-sha256 HEX\n")
    sys.exit(2)
