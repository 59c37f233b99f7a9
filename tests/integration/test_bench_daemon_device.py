"""``bench.daemon --config`` on a faked Jetson: the daemon's figures (frame to event, fps per camera,
stage latencies) on the appliance's own models and back-end.

TensorRT and CUDA are hardware that does not exist here: the bench and its daemon run as
subprocesses on :mod:`tests.fake_tensorrt` (an Orin on JetPack 6, TensorRT 10.3), whose "engines"
execute the real ONNX models with ONNX Runtime. The figures are not the device's; what is checked is
that only the file's ``[models]`` and ``[backend]`` are taken (a section that names a systemd
credential does not stop it), that every model of the daemon runs from the engine cache the
appliance keeps (built once, by the bench's enrolment, as ``backend.fallback = "none"`` does), and
that the report says which back-end served each model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import fake_tensorrt
from tests.mqtt_broker import MosquittoMissingError, find_mosquitto

TIMEOUT_S = 600  # a bound for a hung run, never an expectation about speed


@pytest.mark.slow
def test_the_daemon_bench_runs_on_the_configured_tensorrt(
    tmp_path: Path, shared_models: Path, shared_data: Path
) -> None:
    try:
        find_mosquitto()
    except MosquittoMissingError as err:
        pytest.fail(str(err), pytrace=False)
    appliance = tmp_path / "etc"
    appliance.mkdir()
    config = appliance / "appliance.toml"
    config.write_text(
        # Relative paths are the file's, as the appliance reads them.
        f'[models]\ndir = "{os.path.relpath(shared_models, appliance)}"\n\n[storage]\ndir = "state"\n\n'
        '[backend]\ntype = "tensorrt"\nfallback = "none"\n\n[backend.tensorrt]\nprecision = "fp16"\n'
        "max_batch = 4\nworkspace_mb = 64\n\n"
        # Not read by the bench: a section that names a credential of the service.
        '[updates]\nenabled = true\nsecurity_secret_file = "${CREDENTIALS_DIRECTORY}/uds_secret"\n'
    )
    figures = tmp_path / "daemon.json"
    done = fake_tensorrt.run_python_on_fakes(
        [
            "-m",
            "bench.daemon",
            "--config",
            str(config),
            "--data-dir",
            str(shared_data),
            "--minutes",
            "0.2",
            "--sample-s",
            "2",
            "--json",
            str(figures),
        ],
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(figures.read_text())
    assert report["ready_s"] is not None and report["daemon_state"]["frames"] > 0
    backend = report["daemon_state"]["backend"]
    assert backend["type"] == "tensorrt" and backend["engines"], backend
    for name, state in backend["engines"].items():
        assert state == {"backend": "tensorrt", "state": "ready", "reason": None}, (name, backend)
        assert backend["precisions"][name]["precision"] == "fp16", (name, backend)
    assert "served by: mobilefacenet tensorrt (fp16)" in done.stdout, done.stdout[-3000:]
    # The engines are the appliance's cache (under the file's storage), built once for the enrolment
    # and loaded by the daemon: one engine per model.
    engines = appliance / "state" / "engines"
    assert all(len(list((engines / name).glob("*.engine"))) == 1 for name in backend["engines"])
