"""The [updates] and [updates.can] configuration: defaults, ranges and cross-field rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest

from appliance.config_load import validate_config
from appliance.errors import ConfigError
from appliance.updates.can_link import isotp_address, isotp_params, stmin_byte
from appliance.updates.errors import UpdateError
from appliance.updates.uds_protocol import read_security_secret


def _issues(data: Dict[str, Any]) -> Dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        validate_config(data)
    return {issue.path: issue.message for issue in caught.value.issues}


def test_defaults() -> None:
    config = validate_config({"storage": {"dir": "/srv/fa"}})
    updates = config.updates
    assert not updates.enabled
    assert updates.max_package_bytes == 64 * 1024 * 1024
    assert config.updates_staging_dir == Path("/srv/fa/updates")
    can = updates.can
    assert (can.interface, can.channel, can.bitrate, can.fd) == ("socketcan", "can0", 500_000, False)
    assert (can.rx_id, can.tx_id, can.extended_ids) == (0x7E0, 0x7E8, False)
    assert (can.block_size, can.st_min_ms, can.frame_data_bytes) == (0, 0.0, 8)
    assert (can.session_timeout_s, can.security_max_attempts, can.security_delay_s) == (5.0, 3, 10.0)
    assert can.transfer_block_bytes == 4095


def test_fd_settings() -> None:
    can = validate_config({"updates": {"can": {"fd": True, "data_bitrate": 5_000_000}}}).updates.can
    assert can.frame_data_bytes == 64
    params = isotp_params(can, max_message_bytes=4095)
    assert params["can_fd"] and params["bitrate_switch"] and params["tx_data_length"] == 64
    can = validate_config(
        {"updates": {"can": {"fd": True, "data_bitrate": 2_000_000, "max_frame_data": 32}}}
    ).updates.can
    assert can.frame_data_bytes == 32


@pytest.mark.parametrize(
    ("can", "path", "words"),
    [
        ({"fd": True}, "updates.can", "needs updates.can.data_bitrate"),
        ({"data_bitrate": 2_000_000}, "updates.can", "updates.can.fd is false"),
        ({"fd": True, "data_bitrate": 250_000}, "updates.can", "below updates.can.bitrate"),
        ({"max_frame_data": 64}, "updates.can", "needs updates.can.fd"),
        ({"max_frame_data": 63}, "updates.can.max_frame_data", "not allowed"),
        ({"rx_id": 0x800}, "updates.can", "does not fit an 11-bit CAN id"),
        ({"extended_ids": True, "tx_id": 0x20000000}, "updates.can.tx_id", "≤ 536870911"),
        ({"tx_id": 0x7E0}, "updates.can", "must differ"),
        ({"st_min_ms": 0.25}, "updates.can", "multiple of 0.1 ms"),
        ({"st_min_ms": 2.5}, "updates.can", "whole milliseconds"),
        ({"st_min_ms": 128}, "updates.can.st_min_ms", "≤ 127"),
        ({"block_size": 256}, "updates.can.block_size", "≤ 255"),
        ({"bitrate": 2_000_000}, "updates.can.bitrate", "≤ 1000000"),
        ({"interface": "Sock CAN"}, "updates.can.interface", "pattern"),
        ({"session_timeout_s": 0}, "updates.can.session_timeout_s", "≥ 0.2"),
        ({"security_max_attempts": 0}, "updates.can.security_max_attempts", "≥ 1"),
        ({"bitrat": 500_000}, "updates.can.bitrat", "did you mean 'bitrate'"),
        ({"rx_id": "0x7E0"}, "updates.can.rx_id", "expected an integer"),
    ],
)
def test_invalid_can_settings(can: Dict[str, Any], path: str, words: str) -> None:
    issues = _issues({"updates": {"can": can}})
    assert words in issues[path], issues


def test_enabled_needs_the_secret_file() -> None:
    issues = _issues({"updates": {"enabled": True}})
    assert "updates.security_secret_file" in issues["updates"]
    issues = _issues({"updates": {"max_package_mb": 0}})
    assert "≥ 1" in issues["updates.max_package_mb"]


def test_29_bit_ids_and_stmin_encoding() -> None:
    can = validate_config(
        {"updates": {"can": {"extended_ids": True, "rx_id": 0x18DA10F1, "tx_id": 0x18DAF110}}}
    ).updates.can
    server, tester = isotp_address(can, server=True), isotp_address(can, server=False)
    assert (
        server.is_rx_29bits()
        and server.get_rx_arbitration_id() == tester.get_tx_arbitration_id() == 0x18DA10F1
    )
    assert [stmin_byte(value) for value in (0, 0.1, 0.9, 1, 127)] == [0, 0xF1, 0xF9, 1, 127]


def test_secret_file(tmp_path: Path) -> None:
    good = tmp_path / "secret"
    good.write_text("0123456789abcdef0123\n")
    assert read_security_secret(good) == b"0123456789abcdef0123"
    short = tmp_path / "short"
    short.write_text("hunter2\n")
    with pytest.raises(UpdateError, match="shorter than 16") as caught:
        read_security_secret(short)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(UpdateError, match="does not exist"):
        read_security_secret(tmp_path / "absent")
