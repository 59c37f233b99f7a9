"""push-model confirms a swap's ``done`` by re-reading the active version (0xFD00).

UDS on CAN has no sender address: any node can answer on the server's response id, and a spoofed
``done`` in 0xFD02 was taken for the outcome. Here the appliance's own swap state says ``done``
while the active model did not change (what a spoofed answer looks like to the tester).
Real can-isotp, udsoncan and python-can ``virtual`` buses, as in ``test_uds.py``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from appliance.updates.handler import SWAP_DONE
from appliance.updates.push import PushError, PushOptions, push_package
from appliance.updates.uds_server import UdsServer
from tests.uds_support import SECRET, RecordingHandler, make_config, virtual_bus


class _DoneWithoutSwitch(RecordingHandler):
    """Reports ``done`` but keeps the old model active."""

    def _swap(self) -> None:
        time.sleep(0.2)
        with self._lock:
            self._state = SWAP_DONE


def _push(tmp_path: Path, handler_class: type) -> object:
    config = make_config(tmp_path)
    data = bytes(range(256)) * 40
    package = tmp_path / "model.pkg"
    package.write_bytes(data)
    handler = handler_class(hashlib.sha256(data).digest())
    buses = [virtual_bus(config), virtual_bus(config)]
    server = UdsServer(config, handler, buses[0])
    server.start()
    try:
        return push_package(
            config.updates.can, SECRET.encode(), package, PushOptions(activate=True), bus=buses[1]
        )
    finally:
        server.close()
        handler.close()
        for bus in buses:
            bus.shutdown()


def test_a_done_without_the_pushed_version_active_is_not_success(tmp_path: Path) -> None:
    with pytest.raises(PushError) as refused:
        _push(tmp_path, _DoneWithoutSwitch)
    assert refused.value.step == "confirm"
    assert "embedder@9.9.9" in str(refused.value) and "embedder@1.0.0" in str(refused.value)


def test_a_real_done_is_confirmed(tmp_path: Path) -> None:
    result = _push(tmp_path, RecordingHandler)
    assert result.swap_state == SWAP_DONE
    assert result.active_version == "embedder@9.9.9"


def test_names_version_reads_the_appliance_s_format() -> None:
    from appliance.updates.push import names_version

    active = "detector=mtcnn@kpzhang93-v1,embedder=mobilefacenet@2.0.0"
    assert names_version(active, "2.0.0") and names_version(active, "mobilefacenet@2.0.0")
    assert not names_version(active, "2.0") and not names_version(active, "1.0.0")
    assert names_version("embedder@9.9.9", "embedder@9.9.9") and not names_version("", "2.0.0")
