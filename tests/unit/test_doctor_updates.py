"""``doctor``'s check of model updates: trusted keys, the SecurityAccess secret, the CAN interface."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Dict

from appliance.config_load import secret_file_warnings, validate_config
from appliance.doctor import FAIL, OK, WARN, check_updates
from appliance.updates.keys import generate_keypair


def _config(tmp_path: Path, **updates: object) -> object:
    settings: Dict[str, object] = {
        "enabled": True,
        "trusted_keys_dir": str(tmp_path / "trusted"),
        "security_secret_file": str(tmp_path / "uds_secret"),
        "can": {"interface": "virtual", "channel": f"doctor-{uuid.uuid4().hex[:8]}"},
    }
    settings.update(updates)
    return validate_config({"storage": {"dir": str(tmp_path / "state")}, "updates": settings})


def _statuses(checks: list) -> Dict[str, str]:
    return {check.subject: check.status for check in checks}


def test_disabled_updates_are_fine(tmp_path: Path) -> None:
    config = validate_config({"storage": {"dir": str(tmp_path)}})
    assert _statuses(check_updates(config)) == {"updates": OK}  # type: ignore[arg-type]


def test_everything_in_place(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "trusted", "release")
    secret = tmp_path / "uds_secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    config = _config(tmp_path)
    assert _statuses(check_updates(config)) == {  # type: ignore[arg-type]
        "updates keys": OK,
        "updates secret": OK,
        "updates CAN": OK,
    }
    assert secret_file_warnings(config) == []  # type: ignore[arg-type]


def test_each_missing_part_is_named(tmp_path: Path) -> None:
    (tmp_path / "trusted").mkdir()
    secret = tmp_path / "uds_secret"
    secret.write_text("short\n")
    secret.chmod(0o644)
    config = _config(tmp_path, can={"interface": "no_such_interface", "channel": "can9"})
    checks = check_updates(config)  # type: ignore[arg-type]
    assert _statuses(checks) == {"updates keys": WARN, "updates secret": FAIL, "updates CAN": FAIL}
    details = {check.subject: check.detail for check in checks}
    assert "shorter than" in details["updates secret"] and "short" not in details["updates secret"].split()
    assert "no_such_interface" in details["updates CAN"]
    assert any("updates.security_secret_file" in w for w in secret_file_warnings(config))  # type: ignore[arg-type]
