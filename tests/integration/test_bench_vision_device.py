"""``bench.vision --config`` on a faked Jetson: the run that measures issue 16's part 1 on a device.

TensorRT and CUDA are hardware that does not exist here: the bench runs as a subprocess on
:mod:`tests.fake_tensorrt` (an Orin on JetPack 6, TensorRT 10.3), whose "engines" execute the real
ONNX models with ONNX Runtime. The figures are not the device's; what is checked is that the
appliance's configuration puts every model on TensorRT (engines built first, as
``backend.fallback = "none"`` does), that the bench says so, and that the part-1 keys are there.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests import fake_tensorrt

TIMEOUT_S = 600  # a bound for a hung run, never an expectation about speed


def test_the_bench_runs_every_model_on_the_configured_tensorrt(
    tmp_path: Path, shared_models: Path, shared_data: Path
) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[models]\ndir = "{shared_models}"\n\n[storage]\ndir = "{tmp_path / "state"}"\n\n'
        '[backend]\ntype = "tensorrt"\nfallback = "none"\n\n[backend.tensorrt]\nprecision = "fp16"\n'
        "max_batch = 16\n\n[detector]\nmin_face_px = 80\n\n[liveness]\nenabled = false\n"
    )
    figures = tmp_path / "vision.json"
    done = fake_tensorrt.run_python_on_fakes(
        [
            "-m",
            "bench.vision",
            "--config",
            str(config),
            "--data-dir",
            str(shared_data),
            "--no-peer",
            "--frames",
            "1",
            "--json",
            str(figures),
        ],
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads(figures.read_text())
    assert document["backend"] == "tensorrt" and document["config"] == str(config)
    assert set(document["served_by"].values()) == {"tensorrt"}, document["served_by"]
    assert sorted(document["served_by"]) == sorted(
        ["mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet", "mobilefacenet", "minifasnet-v2", "minifasnet-v1se"]
    )  # the bench's detector and liveness, whatever the file says
    assert "served by: mtcnn-pnet tensorrt" in done.stdout
    for scene in document["scenes"]:
        for mode in ("no_liveness", "liveness"):
            figures_of = scene["end_to_end"][mode]
            assert figures_of["model_ms"] > 0 and figures_of["overhead_pct"] is not None
    # The engines were built into the file's engine cache (under its storage), one per model.
    engines = tmp_path / "state" / "engines"
    assert all(list((engines / name).glob("*.engine")) for name in document["served_by"])
