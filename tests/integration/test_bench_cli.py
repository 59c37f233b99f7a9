"""The command-line benchmark cannot rot: ``python -m bench.cli --runs 1 --photos 4`` times every case
as a whole process (``--help``, ``config check``, ``detect``, ``evaluate`` and, when it is installed,
the ``face_recognition`` peer) and reports them. Asserted are outcomes, not speeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_cli_benchmark(tmp_path: Path, shared_models: Path, shared_data: Path) -> None:
    out = tmp_path / "cli.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.cli", "--runs", "1", "--photos", "4", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] and report["runs"] == 1 and report["photos"] == 4
    assert report["photo_paths"] == sorted(report["photo_paths"])
    cases = report["cases"]
    for name in ("--help", "config check", "detect (1 photo)", "evaluate"):
        row = cases[name]
        assert row["runs"] == 1 and row["median_s"] > 0 and row["min_s"] <= row["median_s"]
    heavy = {"onnxruntime", "cv2", "faiss", "onnx"}
    assert not heavy & set(cases["--help"]["heavy_imports"])
    assert not heavy & set(cases["config check"]["heavy_imports"])
    assert "onnxruntime" in cases["evaluate"]["heavy_imports"]
    if report["peer_note"] is None:
        assert (
            cases["face_recognition"]["runs"] == 1
            and report["ratio_peer_over_evaluate"]["evaluate"]["median"] > 0
        )
        assert "face_recognition / evaluate" in done.stdout
    else:
        assert "face_recognition" not in cases and "pip install" in report["peer_note"]
        assert "face_recognition: not run" in done.stdout
    assert "| case | median | min |" in done.stdout
