"""The command line as a user runs it: a subprocess, its exit code, its output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from engines.registry import MODELS, get_model
from tests.conftest import REPO_ROOT
from tests.support import MirrorFaults, MirrorServer


def cli(*args: str, env_config: bool = False) -> subprocess.CompletedProcess:
    command: List[str] = [sys.executable, "-m", "appliance", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False)


def _write_config(tmp_path: Path, models_dir: Path, extra: str = "") -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[models]\ndir = "{models_dir}"\n[storage]\ndir = "{tmp_path / "state"}"\n{extra}')
    return path


def test_help_and_version() -> None:
    assert cli("--help").returncode == 0
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("face-appliance ")
    for command in (["config", "check"], ["models", "fetch"], ["models", "list"], ["doctor"]):
        assert cli(*command, "--help").returncode == 0


def test_config_check_reports_three_problems_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[mqtt]\nhots = "broker"\nport = "1883"\n[match]\nthreshold = -0.5\n')
    result = cli("config", "check", "--config", str(path))
    assert result.returncode == 2
    assert "3 problem(s)" in result.stderr
    for key in ("mqtt.hots", "mqtt.port", "match.threshold"):
        assert f"  {key}: " in result.stderr
    assert "-0.5" in result.stderr and "'1883'" in result.stderr


def test_config_check_ok_and_missing(tmp_path: Path, shared_models: Path) -> None:
    good = _write_config(tmp_path, shared_models)
    result = cli("config", "check", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert cli("config", "check", "--config", str(tmp_path / "absent.toml")).returncode == 2


def test_config_show_masks_secrets(tmp_path: Path, shared_models: Path) -> None:
    path = _write_config(tmp_path, shared_models, '[mqtt]\nusername = "u"\npassword = "very-secret-pw"\n')
    result = cli("config", "show", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "very-secret-pw" not in result.stdout + result.stderr
    assert json.loads(result.stdout)["mqtt"]["password"] == "**********"


def test_models_fetch_and_list_over_loopback_http(tmp_path: Path, shared_models: Path) -> None:
    dest = tmp_path / "models"
    with MirrorServer(shared_models) as server:
        result = cli("models", "fetch", "--from", server.url, "--dest", str(dest), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("downloaded") == len(MODELS)
    listing = cli("models", "list", "--dir", str(dest), "--json")
    assert listing.returncode == 0
    states = {row["name"]: row["state"] for row in json.loads(listing.stdout)["models"]}
    assert set(states.values()) == {"verified"}


def test_models_fetch_refuses_a_corrupt_mirror(tmp_path: Path, shared_models: Path) -> None:
    spec = get_model("mtcnn-onet")
    data = bytearray((shared_models / spec.file).read_bytes())
    data[-1] ^= 0xFF
    dest = tmp_path / "models"
    with MirrorServer(shared_models, MirrorFaults(replace_body={spec.file: bytes(data)})) as server:
        result = cli(
            "models", "fetch", spec.name, "--from", server.url, "--dest", str(dest), "--retries", "0"
        )
    assert result.returncode == 1
    assert spec.sha256 in result.stderr and spec.file in result.stderr
    assert not (dest / spec.file).exists()


def test_models_list_flags_a_damaged_file(tmp_path: Path) -> None:
    spec = get_model("mtcnn-pnet")
    (tmp_path / spec.file).parent.mkdir(parents=True)
    (tmp_path / spec.file).write_bytes(b"x" * spec.size)
    result = cli("models", "list", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert "wrong sha256" in result.stdout and "missing" in result.stdout


def test_unknown_model_name_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("models", "fetch", "arcface", "--dest", str(tmp_path))
    assert result.returncode == 2
    assert "unknown model 'arcface'" in result.stderr


def test_doctor_passes_on_a_complete_install(tmp_path: Path, shared_models: Path) -> None:
    result = cli("doctor", "--config", str(_write_config(tmp_path, shared_models)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    assert "[ ok ] inference mobilefacenet" in result.stdout
    assert "[ ok ] prepared mobilefacenet: dynamic batch" in result.stdout


@pytest.mark.parametrize("liveness", [False, True])
def test_doctor_says_what_is_missing_and_what_to_do(tmp_path: Path, liveness: bool) -> None:
    empty = tmp_path / "no-models"
    extra = "[liveness]\nenabled = true\n" if liveness else ""
    result = cli("doctor", "--config", str(_write_config(tmp_path, empty, extra)))
    assert result.returncode == 1
    assert "[FAIL] model mobilefacenet" in result.stdout
    assert f"face-appliance models fetch mobilefacenet --dest {empty}" in result.stdout
    assert ("[FAIL] model minifasnet-v2" in result.stdout) is liveness


def test_doctor_reports_an_invalid_config_and_continues(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[match]\nthreshold = 2.0\n")
    result = cli("doctor", "--no-smoke", "--config", str(path))
    assert result.returncode == 1
    assert "[FAIL] config: match.threshold" in result.stdout
    assert "[ ok ] python" in result.stdout
