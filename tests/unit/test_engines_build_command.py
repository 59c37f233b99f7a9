"""``face-appliance engines build`` with TensorRT and CUDA faked (:mod:`tests.fake_tensorrt`): there is
no GPU here. The daemon's own TensorRT path (CPU first, engines built and switched in between
frames, a CAN-pushed model) is tests/integration/test_faked_devices.py."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests import fake_tensorrt


@pytest.fixture
def trt8(monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_tensorrt.Record]:
    record = fake_tensorrt.install(monkeypatch, "8.5.2.2")
    yield record
    fake_tensorrt.uninstall()


def test_the_engines_build_command(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path, capsys: pytest.CaptureFixture
) -> None:
    from appliance.cli import main

    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[models]\ndir = "{shared_models}"\n[storage]\ndir = "{tmp_path / "state"}"\n[detector]\nmax_side = 160\n'
    )
    args = [
        "engines",
        "build",
        "--config",
        str(config),
        "--models",
        "mtcnn-onet",
        "mobilefacenet",
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "device: TensorRT 8.5.2.2 on Orin (SM 8.7)" in out
    assert "mtcnn-onet       FP16  gpu    built in" in out
    assert "there is no INT8 calibration cache or calibrator" in out  # auto without data: FP16, and why
    assert main(args) == 0
    assert capsys.readouterr().out.count("cached") == 2
    assert main([*args, "--force", "--precision", "fp32"]) == 0
    assert "FP32 as requested" in capsys.readouterr().out
    assert main(["engines", "build", "--config", str(config), "--calibration", str(tmp_path / "absent")]) == 2
