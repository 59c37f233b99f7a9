"""``bench.gallery`` and ``bench.enrol --index`` at a tiny size, so they cannot rot (no figure is
checked: only that every index kind is measured and the JSON carries what the README is built from)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import enrol as enrol_bench
from bench import gallery as gallery_bench


def test_the_gallery_bench_measures_every_kind_and_renders_its_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gallery.json"
    arguments = ["--sizes", "2000", "--queries", "30", "--approximate-from", "1000", "--ef-search", "16,32"]
    assert gallery_bench.main([*arguments, "--nprobe", "4,8", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    kinds = {row["kind"] for row in document["rows"]}
    assert kinds == {
        "numpy brute force",
        "exact float32",
        "exact float16",
        "exact float16 + prefilter",
        "exact 8-bit + float32 re-rank",
        "hnsw float16",
        "hnsw float16, 5 % detached",
        "hnsw float32",
        "ivf flat",
        "ivf 8-bit + float32 re-rank",
    }
    (default,) = [row for row in document["rows"] if row.get("default")]
    assert default["kind"] == "exact float16" and default["templates"] == 2000
    for row in document["rows"]:
        assert {"p50_ms", "p99_ms", "cpu_p99_ms", "recall_at_1", "bytes_per_template", "build_s"} <= set(row)
    (prefiltered,) = [row for row in document["rows"] if row["kind"] == "exact float16 + prefilter"]
    assert prefiltered["recall_at_1"] >= 0.99 and prefiltered["stranger_recall_at_1"] >= 0.99
    (detached,) = [row for row in document["rows"] if "removal_p50_ms" in row]
    assert (
        detached["detached"] == 33 * 3 and detached["recall_at_1"] >= 0.99
    )  # 5 % of 2 000, whole identities
    assert detached["searches_during_removals"] >= 1
    assert 0 < detached["search_during_removals_p50_ms"] <= detached["search_during_removals_max_ms"]
    capsys.readouterr()
    assert gallery_bench.main(["--render", str(out)]) == 0
    rendered = capsys.readouterr().out
    assert "| 2,000 | exact float16 **(default)** |" in rendered
    assert "| templates | removal p50 / max ms | searches meanwhile p50 / max ms | detached |" in rendered


def test_the_enrolment_bench_counts_the_index_bytes_of_each_setting() -> None:
    rows = {
        label: enrol_bench.index_cost(300, label, precision, ratio, enrolments=3, removals=1)
        for label, precision, ratio in enrol_bench.SETTINGS
    }
    record = 8 + 24 + 8 + 4 * enrol_bench.INDEX_DIM
    assert rows["before"]["enrol"]["index_bytes_mean"] > 100 * record  # the whole file, every time
    assert rows["after"]["enrol"]["index_bytes_mean"] < 2 * record  # one record (the first with a header)
    assert (
        rows["after"]["remove"]["index_bytes_mean"] > 250 * 2 * enrol_bench.INDEX_DIM
    )  # a removal: a snapshot
