"""The scaling benchmark cannot rot: ``python -m bench.scaling`` at a tiny size (1 and 2 faces, one
frame) with the cameras and gallery axes read from small documents in the other benchmarks' JSON
shapes; its table, JSON and plot hold every axis. Asserted are outcomes, not speeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_scaling_benchmark(tmp_path: Path, shared_models: Path, shared_data: Path) -> None:
    pytest.importorskip("matplotlib")
    daemon = {
        "machine": {},
        "runs": {str(n): {"cameras": [{"id": f"cam{i}", "fps": 30.0 / n} for i in range(n)]} for n in (1, 2)},
    }
    (tmp_path / "daemon.json").write_text(json.dumps(daemon))
    out, plot = tmp_path / "scaling.json", tmp_path / "scaling.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scaling",
            "--faces",
            "1",
            "2",
            "--frames",
            "1",
            "--models-dir",
            str(shared_models),
            "--data-dir",
            str(shared_data),
            "--daemon-json",
            str(tmp_path / "daemon.json"),
            "--json",
            str(out),
            "--plot",
            str(plot),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert [row["expected_faces"] for row in report["faces"]] == [1, 2]
    for row in report["faces"]:
        assert set(row["found_faces"]) == {row["expected_faces"]}, row["found_faces"]
        plain = row["end_to_end"]["no_liveness"]
        assert plain["model_ms"] > 0 and plain["per_face_ms"] > 0
    assert [row["cameras"] for row in report["cameras"]] == [1, 2]
    assert (
        report["cameras"][1]["fps_per_camera"] == [15.0, 15.0] and report["cameras"][1]["fps_total"] == 30.0
    )
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| faces | found |" in done.stdout and "| cameras | fps per camera |" in done.stdout
