"""The fleet benchmark cannot rot: ``python -m bench.fleet --quick`` (20 identities, two doors, one round)
runs end to end — a real Mosquitto, the daemons as subprocesses, the authority's command line — and
its report holds every figure. Asserted are outcomes, not speeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mqtt_broker import MosquittoMissingError, find_mosquitto

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_fleet_benchmark(tmp_path: Path, shared_models: Path, shared_data: Path) -> None:
    try:
        find_mosquitto()
    except MosquittoMissingError as err:
        pytest.fail(str(err), pytrace=False)
    out = tmp_path / "fleet.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.fleet", "--quick", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["machine"]["cores"] and report["findings"] == []
    (catch_up,) = report["catch_up"]
    assert catch_up["identities"] == catch_up["applied"] == 20 and catch_up["complete"]
    assert catch_up["in_view_job_ms"] == 10.0  # the configuration's default
    assert catch_up["joined_s"] <= catch_up["all_applied_s"] and catch_up["per_identity_ms"] > 0
    # One face under 20 ids: record k finds the min(k, 4) applied before it (the search's depth).
    assert catch_up["look_alikes"] == sum(min(k, 4) for k in range(20))
    costs = catch_up["costs"]
    assert all(costs[k] > 0 for k in ("verify_ms", "embed_ms_per_crop", "store_ms", "sum_ms"))
    assert 20_000 < catch_up["record_bytes_mean"] <= catch_up["record_bytes_max"] < 200_000
    assert catch_up["manifest_bytes"] > 20 * len("p-000000000000")
    convergence = report["convergence"]
    assert convergence["status_in_step"] and len(convergence["rounds"]) == 1
    (round_,) = convergence["rounds"]
    for change in ("enrol", "remove"):
        assert set(round_[change]) == {"door-1", "door-2"} and all(v >= 0 for v in round_[change].values())
    roster = convergence["roster"]  # every person folder of the shared faces, through enroll-batch
    assert roster["published"] == roster["people"] > 20 and roster["photos"] > roster["people"]
    assert set(roster["in_step_s"]) == {"door-1", "door-2"} and 0 < roster["per_person_s"] < roster["cli_s"]
    assert "with `fleet enroll-batch`:" in done.stdout
    for heading in (
        "| identities | in view job (ms) | broker |",
        "| identities | verify |",
        "| change | round |",
    ):
        assert heading in done.stdout, done.stdout
