"""The long-run reliability campaign (``python -m bench.reliability``) at a tiny size, so it cannot rot.

The campaign itself is not run in CI (it takes most of an hour); here each of its parts runs through
the real command: the crash-consistency sweep on the active-model pointer (every write point,
killed and torn), every fuzz lane on a few hundred inputs, and one broker outage and one daemon
SIGKILL. Its figures must add up and report nothing lost, crashed or inconsistent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from bench.reliability.fuzz import LANES, TARGETS, atheris_available, run_atheris
from tests.conftest import REPO_ROOT


def _campaign(tmp_path: Path, *args: str, timeout: float = 240) -> Dict[str, Any]:
    out = tmp_path / "reliability.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.reliability", "--json", str(out), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "| check | long run |" in done.stdout
    report: Dict[str, Any] = json.loads(out.read_text())
    return report


def _checks(report: Dict[str, Any]) -> List[str]:
    return [row["check"] for row in report["table"]]


@pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")),
    reason="the crash sweep builds its library with a C compiler",
)
def test_crash_sweep_and_fuzz_at_a_tiny_size(tmp_path: Path) -> None:
    report = _campaign(
        tmp_path, "--only", "crash", "fuzz", "--stores", "pointer", "--inputs", "300", "--atheris-s", "0"
    )
    assert report["problems"] == []
    operations = report["crash"]["operations"]
    assert [op["store"] for op in operations] == ["pointer"] * 3
    for op in operations:
        assert op["write_points"] >= 6 and op["kills"] == op["write_points"] and op["deterministic"]
        assert set(op["outcomes"]) <= {"before", "after"} and op["findings"] == []
        assert op["calls"].get("rename") == 2, op["points"]  # the pointer, then the release counter
    targets = report["fuzz"]["targets"]
    assert set(targets) == set(TARGETS)
    for target, entry in targets.items():
        assert entry["inputs"] >= 300 / 2, (target, entry)  # UDS sequences vary in length
        assert set(entry["lanes"]) == {lane.name for lane in LANES if lane.target == target}
        assert entry["crashes"] == entry["violations"] == entry["hangs"] == 0
    assert "crash consistency (every write point)" in _checks(report)


@pytest.mark.skipif(not atheris_available(), reason="atheris is not installed (pip install atheris)")
def test_coverage_guided_phase_runs(tmp_path: Path) -> None:
    result = run_atheris("uds", 1.0, tmp_path)
    assert result["exit"] == 0 and result["failures"] == [], result
    assert result["inputs"] > 0 and result["corpus"] > 0


def test_faults_at_a_tiny_size(tmp_path: Path) -> None:
    report = _campaign(
        tmp_path, "--only", "faults", "--broker-kills", "1", "--daemon-kills", "1", timeout=280
    )
    assert report["problems"] == []
    outages, kills = report["faults"]["broker_outages"], report["faults"]["daemon_sigkills"]
    assert outages["kills"] == 1 and kills["kills"] == 1
    for part in (outages, kills):
        assert part["lost_by_appliance"] == [] and part["failures"] == []
        assert part["events_received"] >= part["events_written"] > 0
    assert {"broker SIGKILL + restart", "daemon SIGKILL at random"} <= set(_checks(report))
