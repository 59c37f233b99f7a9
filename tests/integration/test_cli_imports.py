"""What a process of the command line imports: ``--help`` and ``config check`` start without ONNX Runtime,
OpenCV, Faiss or onnx (``--help`` without NumPy or pydantic either), a ``detect`` or ``evaluate``
whose prepared model is cached loads no ``onnx``, and an ``enroll --no-face`` loads no model. Read
from ``python -X importtime``: every module the process imported, in a real process as a user starts
it. No timings are asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Set

from tests.conftest import REPO_ROOT

HEAVY = {"onnxruntime", "cv2", "faiss", "onnx"}


def imported(*args: str) -> Set[str]:
    """The top-level modules ``python -m appliance ARGS`` imports (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "appliance", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines: List[str] = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert len(lines) > 20, done.stderr[-2000:]  # -X importtime did report
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines[1:]}


def _config(tmp_path: Path, models: Path) -> str:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[models]\ndir = "{models}"\n[storage]\ndir = "{tmp_path / "state"}"\n')
    return str(path)


def test_help_imports_no_runtime_no_numpy_no_pydantic() -> None:
    modules = imported("--help")
    assert not modules & (HEAVY | {"numpy", "pydantic"}), sorted(modules & (HEAVY | {"numpy", "pydantic"}))
    assert "appliance" in modules


def test_a_command_s_help_imports_only_its_module() -> None:
    modules = imported("config", "--help")
    assert not modules & HEAVY, sorted(modules & HEAVY)


def test_config_check_imports_no_runtime(tmp_path: Path, shared_models: Path) -> None:
    for config in (_config(tmp_path, shared_models), str(REPO_ROOT / "config" / "demo.toml")):
        modules = imported("config", "check", "--config", config)
        assert not modules & HEAVY, (config, sorted(modules & HEAVY))
        assert "pydantic" in modules


def test_detect_and_a_cached_evaluate_load_no_onnx(
    tmp_path: Path, shared_models: Path, shared_data: Path
) -> None:
    config = _config(tmp_path, shared_models)
    modules = imported("detect", "--config", config, str(shared_data / "faces/fr_obama/obama.jpg"))
    assert {"onnxruntime", "cv2"} <= modules and not modules & {"onnx", "faiss"}
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,identity\nfaces/fr_obama/obama.jpg,obama\nfaces/fr_obama/obama2.jpg,obama\nfaces/fr_biden/biden.jpg,biden\n"
    )
    evaluate = ("evaluate", str(shared_data), "--labels", str(labels), "--config", config)
    assert "onnx" in imported(*evaluate)  # the first run prepares MobileFaceNet and caches it
    assert list((tmp_path / "state" / "engines" / "prepared").glob("mobilefacenet-*.onnx"))
    assert not imported(*evaluate) & {"onnx", "faiss"}


def test_an_enrolment_without_a_face_loads_no_model(tmp_path: Path, shared_models: Path) -> None:
    config = _config(tmp_path, shared_models)
    modules = imported(
        "enroll", "--no-face", "--name", "Ada Lovelace", "--card", "w26:7:12345", "--config", config
    )
    assert not modules & {"onnxruntime", "onnx"}, sorted(modules & {"onnxruntime", "onnx"})
    assert "faiss" in modules  # the gallery is opened: the identity is stored
