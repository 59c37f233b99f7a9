"""``bench.unknowns`` on a few real photos, so that it cannot rot, and its scores on clusterings whose
answers are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import unknowns


def test_scores_count_merges_splits_and_pairs() -> None:
    merged = unknowns.scores(["ann", "ann", "bob"], ["x", "x", "x"])
    assert (merged["false_merges"], merged["clusters"]) == (1, 1)
    assert merged["pairwise_precision"] == pytest.approx(1 / 3) and merged["pairwise_recall"] == 1.0
    split = unknowns.scores(["ann", "ann", "bob", "bob"], ["x", "y", "z", "z"])
    assert (split["false_merges"], split["clusters"]) == (0, 3)
    assert split["pairwise_precision"] == 1.0 and split["pairwise_recall"] == 0.5
    assert split["clusters_per_person"] == 1.5  # ann in two, bob in one


def test_the_bench_clusters_real_faces_through_the_sighting_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "unknowns.json"
    assert (
        unknowns.main(["--photos", "24", "--orders", "2", "--thresholds", "0.3,0.95", "--json", str(out)])
        == 0
    )
    document = json.loads(out.read_text())
    loose, strict = document["rows"]
    assert document["faces"] >= 20 and document["people"]["with_two_or_more"] >= 2
    # At 0.95 no two photos of anyone are that alike: every face is a cluster of its own.
    assert strict["clusters"] == document["faces"] and strict["pairwise_precision"] == 1.0
    assert strict["false_merges_worst"] == 0 and strict["pairwise_recall"] == 0.0
    assert loose["clusters"] < strict["clusters"] and loose["pairwise_recall"] > 0.5
    capsys.readouterr()
    assert unknowns.main(["--render", str(out)]) == 0
    assert "| 0.95 | " in capsys.readouterr().out
