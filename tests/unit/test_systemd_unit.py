"""The service unit: its contract with the daemon and install.sh, and systemd/check-unit.sh."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = REPO_ROOT / "systemd" / "face-appliance.service"
CHECK_UNIT = REPO_ROOT / "systemd" / "check-unit.sh"


def unit_lines() -> List[Tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (a key may repeat, as systemd allows)."""
    section = ""
    found = []
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key, value))
    return found


def settings(section: str) -> Dict[str, List[str]]:
    values: Dict[str, List[str]] = {}
    for where, key, value in unit_lines():
        if where == section:
            values.setdefault(key, []).append(value)
    return values


def test_the_daemon_is_started_as_a_notify_service_with_a_watchdog() -> None:
    service = settings("Service")
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [
        "/opt/face-appliance/bin/face-appliance run --config /etc/face-appliance/appliance.toml"
    ]
    assert service["ExecStartPre"] == [
        "/opt/face-appliance/bin/face-appliance config check --config /etc/face-appliance/appliance.toml"
    ]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["Restart"] == ["on-failure"]
    assert service["KillMode"] == ["mixed"]
    assert service["User"] == ["face-appliance"] and service["Group"] == ["face-appliance"]


def test_the_start_rate_limit_is_in_the_unit_section() -> None:
    """StartLimit*= in [Service] is reported as an unknown key by newer systemd and ignored."""
    assert "StartLimitIntervalSec" in settings("Unit") and "StartLimitBurst" in settings("Unit")
    assert "StartLimitIntervalSec" not in settings("Service")


def test_credentials_are_the_files_install_sh_creates() -> None:
    credentials = dict(value.split(":", 1) for value in settings("Service")["LoadCredential"])
    assert credentials == {
        name: f"/etc/face-appliance/credentials/{name}"
        for name in (
            "mqtt_password",
            "gallery_key",
            "package_public_key",
            "uds_secret",
            "fleet_key",
            "fleet_key_previous",
            "fleet_authority_key",
            "osdp_scbk",
        )
    }
    install = (REPO_ROOT / "systemd" / "install.sh").read_text(encoding="utf-8")
    for name in credentials:
        assert f'"$CRED_DIR/{name}"' in install, f"install.sh does not create the credential {name}"


def test_settings_that_would_hide_the_gpu_camera_or_can0_are_off() -> None:
    service = settings("Service")
    for key in ("PrivateDevices", "PrivateNetwork", "ProcSubset", "DynamicUser"):
        assert key not in service, f"{key}= hides what the appliance needs (see systemd/README.md)"
    families = service["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_CAN"} <= set(families)
    assert service["DevicePolicy"] == ["closed"]
    assert "char-video4linux rw" in service["DeviceAllow"]


def test_every_setting_is_explained_by_a_comment() -> None:
    """Each assignment sits in a block that starts with a comment (a repeated key may follow its kin)."""
    previous = ""
    unexplained = []
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            if previous == "" or previous.startswith("["):
                unexplained.append(line)
        previous = line
    assert not unexplained, f"settings without a comment: {unexplained}"


def _systemd_analyze_version() -> int:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return 0
    first = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.match(r"systemd (\d+)", first)
    return int(match.group(1)) if match else 0


needs_analyze = pytest.mark.skipif(
    _systemd_analyze_version() < 250, reason="needs systemd-analyze 250+ (--offline, --threshold)"
)


@needs_analyze
def test_check_unit_verifies_and_rates_the_exposure_at_most_3_5() -> None:
    result = subprocess.run(["bash", str(CHECK_UNIT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: no warnings" in result.stdout
    exposure = re.search(r"Overall exposure level for face-appliance\.service: (\d+\.\d)", result.stdout)
    assert exposure is not None, result.stdout
    assert float(exposure.group(1)) <= 3.5
    assert "systemd 245 (JetPack 5): LoadCredential (v247), ProtectProc (v247)" in result.stdout


@needs_analyze
def test_check_unit_fails_on_an_unknown_setting(tmp_path: Path) -> None:
    broken = tmp_path / "face-appliance.service"
    broken.write_text(
        UNIT.read_text(encoding="utf-8").replace("KillMode=mixed", "KillMode=mixed\nKilMode=mixed"),
        encoding="utf-8",
    )
    result = subprocess.run(
        ["bash", str(CHECK_UNIT), str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "KilMode" in result.stdout + result.stderr


@needs_analyze
def test_check_unit_fails_above_the_exposure_threshold() -> None:
    result = subprocess.run(
        ["bash", str(CHECK_UNIT)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "FACE_APPLIANCE_EXPOSURE_MAX": "5"},
    )
    assert result.returncode != 0
    assert "exposure above 0.5" in result.stderr
