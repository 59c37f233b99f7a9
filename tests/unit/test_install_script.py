"""systemd/install.sh against a temporary root directory: dry run, install, re-run, old systemd."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import List

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL = REPO_ROOT / "systemd" / "install.sh"
GALLERY_KEY_LINE = 'key_file = "${CREDENTIALS_DIRECTORY}/gallery_key"'


def install(root: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *options],
        capture_output=True,
        text=True,
        check=False,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def everything_under(root: Path) -> List[Path]:
    return sorted(root.rglob("*"))


def test_the_dry_run_prints_the_plan_and_touches_nothing(tmp_path: Path) -> None:
    result = install(tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert everything_under(tmp_path) == []
    out = result.stdout
    planned = [line.split()[1] for line in out.splitlines() if line.startswith(("create ", "install "))]
    for path in (
        "etc/face-appliance/appliance.toml",
        "etc/face-appliance/credentials/gallery_key",
        "etc/face-appliance/credentials/mqtt_password",
        "etc/face-appliance/credentials/package_public_key",
        "etc/face-appliance/credentials/uds_secret",
        "var/lib/face-appliance/",
        "etc/systemd/system/face-appliance.service",
    ):
        assert f"{tmp_path}/{path}" in planned, path
    assert "[dry-run]" in out
    assert "Next steps:" in out and "journalctl -u face-appliance -f" in out


def test_an_install_lays_out_config_credentials_state_and_unit(tmp_path: Path) -> None:
    result = install(tmp_path, "--systemd-version", "252")
    assert result.returncode == 0, result.stderr
    etc = tmp_path / "etc" / "face-appliance"
    credentials = etc / "credentials"
    assert mode(etc) == 0o750
    assert mode(etc / "appliance.toml") == 0o640
    assert mode(credentials) == 0o700
    for name in (
        "gallery_key",
        "mqtt_password",
        "package_public_key",
        "uds_secret",
        "fleet_key",
        "osdp_scbk",
    ):
        assert mode(credentials / name) == 0o600, name
    assert re.fullmatch(r"[0-9a-f]{64}\n", (credentials / "gallery_key").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}\n", (credentials / "uds_secret").read_text())
    assert (credentials / "mqtt_password").read_bytes() == b""
    assert mode(tmp_path / "var" / "lib" / "face-appliance") == 0o700
    unit = tmp_path / "etc" / "systemd" / "system" / "face-appliance.service"
    assert unit.read_bytes() == (REPO_ROOT / "systemd" / "face-appliance.service").read_bytes()
    assert not (unit.parent / "face-appliance.service.d").exists()
    doc = tmp_path / "opt" / "face-appliance" / "share" / "doc" / "face-appliance" / "systemd.md"
    assert doc.read_bytes() == (REPO_ROOT / "systemd" / "README.md").read_bytes()

    # The shipped config, with the gallery key taken from the systemd credential.
    config = (etc / "appliance.toml").read_text(encoding="utf-8")
    shipped = (REPO_ROOT / "config" / "appliance.toml").read_text(encoding="utf-8")
    assert config == shipped.replace("# " + GALLERY_KEY_LINE, GALLERY_KEY_LINE)
    assert config.count(GALLERY_KEY_LINE) == 1
    assert "skip     virtualenv" in result.stdout and "skip     systemctl" in result.stdout


def test_a_second_run_keeps_the_config_and_never_replaces_the_gallery_key(tmp_path: Path) -> None:
    assert install(tmp_path, "--systemd-version", "252").returncode == 0
    etc = tmp_path / "etc" / "face-appliance"
    key = (etc / "credentials" / "gallery_key").read_bytes()
    edited = (etc / "appliance.toml").read_text(encoding="utf-8") + '\n[device]\nname = "door 7"\n'
    (etc / "appliance.toml").write_text(edited, encoding="utf-8")
    (etc / "credentials" / "mqtt_password").write_text("s3cret\n")

    again = install(tmp_path, "--systemd-version", "252")
    assert again.returncode == 0, again.stderr
    assert (etc / "credentials" / "gallery_key").read_bytes() == key
    assert (etc / "appliance.toml").read_text(encoding="utf-8") == edited
    assert (etc / "credentials" / "mqtt_password").read_text() == "s3cret\n"
    assert not re.search(r"^create ", again.stdout, re.M), again.stdout
    assert "gallery_key (exists; never overwritten" in again.stdout
    assert "face-appliance.service (unchanged)" in again.stdout


def test_an_existing_gallery_keeps_its_own_key(tmp_path: Path) -> None:
    state = tmp_path / "var" / "lib" / "face-appliance"
    state.mkdir(parents=True)
    (state / "gallery.key").write_bytes(os.urandom(32))
    result = install(tmp_path, "--systemd-version", "252")
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "etc" / "face-appliance" / "appliance.toml").read_text(encoding="utf-8")
    assert config == (REPO_ROOT / "config" / "appliance.toml").read_text(encoding="utf-8")
    assert "gallery keeps its key in" in result.stdout


def test_systemd_245_gets_a_credentials_drop_in_and_loses_it_after_an_upgrade(tmp_path: Path) -> None:
    """JetPack 5 has no LoadCredential=: the service reads the directory as its group instead."""
    assert install(tmp_path, "--systemd-version", "245").returncode == 0
    credentials = tmp_path / "etc" / "face-appliance" / "credentials"
    dropin = tmp_path / "etc/systemd/system/face-appliance.service.d/10-credentials-directory.conf"
    assert "Environment=CREDENTIALS_DIRECTORY=/etc/face-appliance/credentials" in dropin.read_text()
    assert mode(credentials) == 0o750
    assert mode(credentials / "gallery_key") == 0o640

    upgraded = install(tmp_path, "--systemd-version", "249")
    assert upgraded.returncode == 0, upgraded.stderr
    assert not dropin.exists()
    assert mode(credentials) == 0o700
    assert mode(credentials / "gallery_key") == 0o600


def test_unknown_options_are_a_usage_error(tmp_path: Path) -> None:
    result = install(tmp_path, "--frobnicate")
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr
    assert everything_under(tmp_path) == []


def test_a_missing_root_directory_is_refused(tmp_path: Path) -> None:
    result = install(tmp_path / "absent")
    assert result.returncode == 1
    assert "does not exist" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root here")
def test_a_live_install_needs_root() -> None:
    result = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "run as root" in result.stderr
