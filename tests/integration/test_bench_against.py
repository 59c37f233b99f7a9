"""``bench.vision --against REV``: another revision's pipeline imported beside the working tree's and
timed on the same frames, on the same loaded networks (real models, real images)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

from appliance.vision.align import align_faces
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from bench.against import RevisionError, compare_scene, import_revision, revision_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True, text=True).stdout


@pytest.fixture(scope="module")
def marked_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose one commit holds today's ``appliance`` with a marker in ``vision/boxes.py``."""
    repo = tmp_path_factory.mktemp("revision")
    shutil.copytree(ROOT / "appliance", repo / "appliance", ignore=shutil.ignore_patterns("__pycache__"))
    with (repo / "appliance" / "vision" / "boxes.py").open("a", encoding="utf-8") as stream:
        stream.write('\nREVISION_MARKER = "from the exported revision"\n')
    _git(repo, "init", "-q")
    _git(repo, "add", "appliance")
    _git(
        repo,
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@example.invalid",
        "commit",
        "-q",
        "-m",
        "marked",
    )
    return repo


class FakeClock:
    """ModelClock's interface, counting resets (the model time itself is not under test here)."""

    def __init__(self) -> None:
        self.resets = 0
        self.total = 0.001

    def reset(self) -> None:
        self.resets += 1


def test_the_revision_is_its_own_code_beside_the_working_tree(marked_repository: Path) -> None:
    sha, package = import_revision("HEAD", marked_repository)
    assert sha == _git(marked_repository, "rev-parse", "HEAD").strip()
    assert package.__name__ == f"appliance_at_{sha[:12]}"
    boxes = importlib.import_module(f"{package.__name__}.vision.boxes")
    assert boxes.REVISION_MARKER == "from the exported revision"
    assert not hasattr(importlib.import_module("appliance.vision.boxes"), "REVISION_MARKER")
    # Asked again, the same package (not a second export).
    assert import_revision(sha, marked_repository)[1] is package


def test_both_pipelines_find_the_same_faces_and_are_timed_in_turns(
    marked_repository: Path, analyzer: FaceAnalyzer, shared_data: Path
) -> None:
    _, package = import_revision("HEAD", marked_repository)
    detect, align = revision_pipeline(package, analyzer)
    assert type(detect.__self__).__module__ == f"{package.__name__}.vision.mtcnn"  # type: ignore[attr-defined]
    image = read_image(shared_data / "multi_face" / "fr_two_people.jpg")
    theirs, ours = detect(image), analyzer.detector.detect(image)
    assert len(theirs) == len(ours) == 2
    np.testing.assert_array_equal(theirs.boxes, ours.boxes)
    np.testing.assert_array_equal(align(image, theirs.landmarks), align(image, ours.landmarks))

    clock = FakeClock()
    pipelines: Dict[str, Any] = {
        "revision": (detect, align),
        "working_tree": (analyzer.detector.detect, align_faces),
    }
    result = compare_scene(analyzer, clock, [image], pipelines, count=3, liveness=False)
    assert clock.resets == 2 * (3 + 2)  # every frame of both pipelines, warm-up included
    for name in pipelines:
        row = result[name]
        assert row["model_ms"] == pytest.approx(1.0)  # 0.001 s per frame, as the fake clock says
        assert row["mean"] > row["model_ms"] and row["overhead_ms"] == pytest.approx(
            row["mean"] - 1.0, abs=0.02
        )


def test_a_name_that_is_no_commit_is_refused_with_the_reason(marked_repository: Path) -> None:
    with pytest.raises(RevisionError, match="--against no-such-branch: not a commit of"):
        import_revision("no-such-branch", marked_repository)
