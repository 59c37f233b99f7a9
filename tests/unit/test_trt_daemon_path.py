"""The daemon's TensorRT path and ``engines build``, TensorRT and CUDA faked (:mod:`tests.fake_tensorrt`): no GPU here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest

from tests import fake_tensorrt
from tests.unit.test_trt_faked_device import MAX_FRAME, options  # noqa: F401

# -- the daemon path and the command, TensorRT faked ---------------------------------------------------


def test_the_daemon_path_serves_on_the_cpu_then_on_the_built_engine(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    from appliance.config_load import validate_config
    from appliance.trt_engines import EngineService, EngineTarget, pipeline_targets, supervisor_for
    from appliance.vision.analyzer import backend_options

    config = validate_config(
        {
            "models": {"dir": str(shared_models)},
            "storage": {"dir": str(tmp_path)},
            "detector": {"max_side": 160},
            "backend": {"type": "tensorrt", "fallback": "cpu", "tensorrt": {"precision": "fp16"}},
        }
    )
    service = EngineService(backend_options(config, build_missing=False))
    supervisor = supervisor_for(config, service, backend_options(config))
    targets = pipeline_targets(config)
    assert [t.name for t in targets] == ["mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet", "mobilefacenet"]
    backends: Dict[str, Any] = {t.name: supervisor.open(t) for t in targets}
    assert {b.key for b in backends.values()} == {"cpu"}
    assert all(state["state"] == "queued" for state in supervisor.status().values())

    def switch(built: EngineTarget) -> bool:
        engine = service.open(built)
        backends[built.name].close()
        backends[built.name] = engine
        return True

    try:
        assert supervisor.start(switch)
        assert supervisor.wait(60.0)
    finally:
        supervisor.close()
    assert {b.key for b in backends.values()} == {"tensorrt"}
    assert all(state["state"] == "ready" for state in supervisor.status().values())
    assert supervisor.degraded() == []
    # A restart finds every engine in the cache: straight to TensorRT, nothing built.
    again = supervisor_for(config, service, backend_options(config))
    reopened = [again.open(t) for t in targets]
    assert {b.key for b in reopened} == {"tensorrt"} and again.pending == []
    assert trt8.names().count("build_serialized_network") == 4
    for backend in [*backends.values(), *reopened]:
        backend.close()
    again.close()


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


def test_the_daemon_switches_models_to_their_engines_between_frames(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path, shared_data: Path
) -> None:
    """The daemon's wiring (:class:`appliance.daemon.Appliance`), TensorRT faked: with no engine cached
    every model starts on the CPU, the state says so, and after the background builds the analyzer
    runs every model from its engine and still finds the faces the CPU pipeline finds."""
    from appliance.config_load import validate_config
    from appliance.daemon import Appliance
    from appliance.trt_parity import compare
    from appliance.vision.analyzer import FaceAnalyzer
    from appliance.vision.image import read_image

    settings = {
        "models": {"dir": str(shared_models)},
        "storage": {"dir": str(tmp_path)},
        "detector": {"max_side": 320},
        "backend": {"type": "tensorrt", "fallback": "cpu", "tensorrt": {"precision": "fp16"}},
    }
    app = Appliance(validate_config(settings))
    app.engines = app._engine_supervisor("tensorrt")
    assert app.engines is not None
    app.analyzer = FaceAnalyzer.from_config(app.config, opener=app.engines.opener())
    photo = [("couple", read_image(shared_data / "multi_face" / "deepface_couple.jpg"))]
    cpu_settings = {**settings, "backend": {"type": "cpu"}}
    try:
        assert {backend.key for backend in app.analyzer._backends} == {"cpu"}
        state = app.state()
        assert {e["state"] for e in state["backend"]["engines"].values()} == {"queued"}
        assert any("mobilefacenet runs on the CPU (queued)" in text for text in state["degraded"])
        assert app.engines.start(app._switch_engine)  # no pipeline thread: switches run at once
        assert app.engines.wait(120.0)
        assert {backend.key for backend in app.analyzer._backends} == {"tensorrt"}
        state = app.state()
        assert {e["state"] for e in state["backend"]["engines"].values()} == {"ready"}
        assert not any("runs on the CPU" in text for text in state["degraded"])
        with FaceAnalyzer.from_config(validate_config(cpu_settings)) as cpu:
            result = compare(cpu, app.analyzer, photo)
        assert result.ok and result.faces == 2, result.problems
    finally:
        app.engines.close()
        app.analyzer.close()
    assert trt8.pushes == trt8.pops and not trt8.memory
