"""The gallery's index write paths killed at every write point (issue 16, part 5).

The enrolment appends a delta record; an enrolment past the compaction threshold writes a new
snapshot and deletes the delta; a fleet record applied with ``save=False`` is appended by
``save_index``; a removal writes a snapshot and deletes the delta. ``bench.reliability.crash`` kills
each of them before every write point; each restart must see the store's state before or after the
operation, with an index holding exactly the store's templates (each stored embedding finds its
own identity first).
"""

from __future__ import annotations

import shutil

import pytest

from bench.reliability.crash import sweep

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not (shutil.which("cc") or shutil.which("gcc")),
        reason="the crash sweep builds its library with a C compiler",
    ),
]


def test_every_write_point_of_the_index_delta_and_compaction() -> None:
    report = sweep(
        ["gallery"],
        torn=False,
        timeout_s=850,
        matching=["enrol (2 templates", "delta folded", "save_index", "remove ("],
    )
    operations = {op["operation"]: op for op in report["operations"]}
    assert len(operations) == 4, sorted(operations)
    for name, op in operations.items():
        assert op["findings"] == [] and op["deterministic"], (name, op["findings"][:3])
        assert set(op["outcomes"]) <= {"before", "after"} and op["kills"] == op["write_points"], name
    appended = [op for name, op in operations.items() if "delta folded" not in name and "remove" not in name]
    for op in appended:  # the index is written by one append and its fdatasync, no snapshot
        assert "write gallery.index.delta" in op["points"] and "rename gallery.index" not in " ".join(
            op["points"]
        )
    for name in ("delta folded", "remove ("):
        (op,) = [op for key, op in operations.items() if name in key]
        assert any(point.startswith("rename") and point.endswith("gallery.index") for point in op["points"])
        assert "unlink gallery.index.delta" in op["points"], op["points"]
