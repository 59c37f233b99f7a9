"""The card-lookup benchmark cannot rot: ``python -m bench.cards`` at tiny sizes prints its table and
writes its JSON, and both lookups named the right holder for every card (it exits non-zero otherwise).
Asserted are outcomes, not speeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tiny_card_lookup_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "cards.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.cards", "--sizes", "50,200", "--lookups", "20", "--json", str(out)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| identities (2 cards each) |" in done.stdout
    rows = json.loads(out.read_text())["card_lookup"]
    assert [row["identities"] for row in rows] == [50, 200] and [row["cards"] for row in rows] == [100, 400]
    assert all(row[kind]["ms_max"] >= row[kind]["ms_p50"] > 0 for row in rows for kind in ("index", "scan"))
