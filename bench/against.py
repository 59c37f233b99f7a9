"""The pipeline's own work against another git revision, in one process (``bench.vision --against REV``).

Separate benchmark runs on a shared machine differ by more than most changes to the pipeline's own
work: on the development VM the model time swung by up to 40 % from one run to the next, and the
overhead's share of it with it. So REV's ``appliance`` package is exported beside the working tree's
(``git archive``, imported under another name) and both pipelines run on the same frames, taking
turns frame by frame, on the same loaded back-ends: what differs between the two columns is the code,
not the moment.

What is compared is the part that is the pipeline's own: REV's and the working tree's MTCNN detector
(pyramid, P-Net inputs and candidates, suppression, R-/O-Net patches) and alignment. The embedder and
liveness wrappers are the working tree's on both sides (they are thin: one blob and one call each).
"""

from __future__ import annotations

import atexit
import importlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from appliance.vision.align import align_faces
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.mtcnn import MtcnnDetector

from .figures import fmt, overhead

#: A pipeline under test: the detector's ``detect`` and the alignment function.
Pipeline = Tuple[Callable[[np.ndarray], Any], Callable[[np.ndarray, np.ndarray], np.ndarray]]


class RevisionError(RuntimeError):
    """REV cannot be compared: not a commit of this repository, or its detector cannot be built."""


def import_revision(revision: str, repo: Path) -> Tuple[str, ModuleType]:
    """REV's ``appliance`` package, exported to a temporary folder and imported as ``appliance_at_<sha>``.

    Returns:
        The full commit hash and the package (its modules load on first import, relative imports
        resolving inside it; ``engines`` is the working tree's).

    Raises:
        RevisionError: ``revision`` names no commit, or it has no ``appliance`` package.
    """
    try:
        sha = _git(repo, "rev-parse", "--verify", f"{revision}^{{commit}}").decode().strip()
        name = f"appliance_at_{sha[:12]}"
        if name in sys.modules:
            return sha, sys.modules[name]
        archive = _git(repo, "archive", "--format=tar", sha, "appliance")
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", b"") or str(err).encode()
        raise RevisionError(
            f"--against {revision}: not a commit of {repo} ({detail.decode(errors='replace').strip()})"
        ) from err
    folder = Path(tempfile.mkdtemp(prefix="bench-against-"))
    atexit.register(shutil.rmtree, folder, True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]  # no links from the archive
        if hasattr(tarfile, "data_filter"):  # Python 3.12+ (and back-ports): refuse paths outside folder
            tar.extractall(folder, members=members, filter="data")
        else:
            tar.extractall(folder, members=members)  # our own repository's archive, links dropped
    (folder / "appliance").rename(folder / name)
    sys.path.insert(0, str(folder))
    try:
        return sha, importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


def _git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=True).stdout


def revision_pipeline(package: ModuleType, analyzer: FaceAnalyzer) -> Pipeline:
    """REV's MTCNN detector on ``analyzer``'s loaded networks, and REV's alignment."""
    current = analyzer.detector
    if not isinstance(current, MtcnnDetector):
        raise RevisionError(
            f"--against compares MTCNN detectors; this configuration runs {type(current).__name__}"
        )
    try:
        mtcnn = importlib.import_module(f"{package.__name__}.vision.mtcnn")
        align = importlib.import_module(f"{package.__name__}.vision.align")
        detector = mtcnn.MtcnnDetector(
            current.pnet, current.rnet, current.onet, current.settings, current.max_batch
        )
    except (ImportError, AttributeError, TypeError) as err:
        raise RevisionError(
            f"{package.__name__}: its MTCNN detector cannot be built on today's back-ends ({err}); "
            f"--against compares revisions whose detector takes (pnet, rnet, onet, settings, max_batch)"
        ) from err
    return detector.detect, align.align_faces


def compare_scene(
    analyzer: FaceAnalyzer,
    clock: Any,
    frames: List[np.ndarray],
    pipelines: Dict[str, Pipeline],
    count: int,
    liveness: bool,
) -> Dict[str, Dict[str, float]]:
    """Per pipeline: end-to-end mean, model time and overhead per frame, the pipelines taking turns.

    Each frame runs detect → align → (liveness) → embed with that pipeline's detector and alignment;
    which pipeline goes first alternates, so neither always finds the caches warm.
    """
    names = list(pipelines)
    total = {name: 0.0 for name in names}
    model = {name: 0.0 for name in names}
    warm_up = 2
    for index in range(count + warm_up):
        frame = frames[index % len(frames)]
        for name in names if index % 2 else names[::-1]:
            detect, align = pipelines[name]
            clock.reset()
            started = time.perf_counter()
            faces = detect(frame)
            if len(faces):
                crops = align(frame, faces.landmarks)
                if liveness and analyzer.liveness is not None:
                    analyzer.liveness.check(frame, faces.boxes)
                analyzer.embedder.embed(crops)
            if index >= warm_up:
                total[name] += time.perf_counter() - started
                model[name] += clock.total
    result = {}
    for name in names:
        e2e_ms, model_ms = total[name] * 1000 / count, model[name] * 1000 / count
        result[name] = {"mean": round(e2e_ms, 2), **overhead(e2e_ms, model_ms)}
    return result


def bench_against(
    analyzer: FaceAnalyzer,
    clock: Any,
    scenes: List[Any],
    revision: str,
    imported: Tuple[str, ModuleType],
    count: int,
) -> Dict[str, Any]:
    """REV (as :func:`import_revision` returned it) against the working tree on every scene, with and
    without liveness."""
    sha, package = imported
    pipelines: Dict[str, Pipeline] = {
        "revision": revision_pipeline(package, analyzer),
        "working_tree": (analyzer.detector.detect, align_faces),
    }
    rows = []
    for scene in scenes:
        for liveness in (False, True) if analyzer.liveness is not None else (False,):
            rows.append(
                {
                    "frame": scene.name,
                    "faces": scene.expected,
                    "liveness": liveness,
                    **compare_scene(analyzer, clock, scene.frames, pipelines, count, liveness),
                }
            )
    return {"revision": revision, "commit": sha, "frames": count, "scenes": rows}


def print_against(result: Dict[str, Any]) -> None:
    print(
        f"The pipeline's own work, {result['revision']} ({result['commit'][:12]}) → working tree, "
        f"in one process taking turns frame by frame, {result['frames']} frames each, mean per frame:"
    )
    print()
    print("| frame | faces | liveness | end to end ms | model ms | overhead ms | overhead % of model |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for row in result["scenes"]:
        before, after = row["revision"], row["working_tree"]
        cells = [
            f"{fmt(before[key], digits)} → **{fmt(after[key], digits)}**"
            for key, digits in (("mean", 2), ("model_ms", 2), ("overhead_ms", 2), ("overhead_pct", 1))
        ]
        print(
            f"| {row['frame']} | {row['faces']} | {'yes' if row['liveness'] else 'no'} | {' | '.join(cells)} |"
        )
