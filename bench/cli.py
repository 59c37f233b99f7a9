"""The command line as whole processes: ``--help``, ``config check``, ``detect`` on one photo, ``evaluate``
on a folder of labelled photos, and the ``face_recognition`` library (dlib) doing ``evaluate``'s job.

    python -m bench.cli [--runs N] [--json OUT] [--photos N] [--no-peer]
                        [--data-dir DIR] [--models-dir DIR] [--repo DIR] [--baseline DIR]

Each case is a fresh ``python`` process timed from start to exit (wall clock, and the CPU time it
used, user + system): what a user waits for, imports and model loading included. The cases take
turns, run after run, so a change in the machine's load falls on all of them alike; the table gives
the median and the minimum of ``--runs`` runs after one untimed first run per case (reported apart:
it also fills the page cache, the bytecode cache and the cache of prepared models). Bytecode is
written and reused as on an installed appliance, even where ``PYTHONDONTWRITEBYTECODE`` is set.

* ``--help`` and ``config check`` (on ``config/demo.toml``, the README's sample configuration); a
  further run under ``python -X importtime`` lists which heavy modules (ONNX Runtime, OpenCV, Faiss,
  onnx, NumPy, pydantic) each of our cases imports.
* ``detect`` on ``faces/fr_obama/obama.jpg`` (910×1137).
* ``evaluate`` on every third photo of ``faces/`` in path order in ``faces_identities.csv`` (33
  photos of 22 identities, 150×150 to 4600×3061 pixels); ``--photos N`` keeps the first ``N`` of them.
* the peer, :mod:`bench.peer_evaluate` on the same photos: read, detect (HOG), encode the largest
  face, score every pair. Skipped, with a note, when ``face_recognition`` is not installed.

The models run on the CPU back-end with the default detector settings (MTCNN, ``max_side`` 1920,
``min_face_px`` 40). ``--repo`` times another checkout's ``python -m appliance`` (e.g. an older
commit extracted with ``git archive``); ``--baseline DIR`` times one more checkout's four cases in the
same rounds, for before/after figures under the same load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .machine import describe

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ROOT.parent / "shared" / "models"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
LABELS = "faces_identities.csv"
SAMPLE_CONFIG = Path("config") / "demo.toml"
DETECT_PHOTO = "faces/fr_obama/obama.jpg"
#: every ``EVERY``-th photo of ``faces/`` (in path order) is in the evaluate set
EVERY = 3
#: what ``-X importtime`` is searched for (top-level modules)
HEAVY_MODULES = ("onnxruntime", "cv2", "faiss", "onnx", "numpy", "pydantic")
PEER_INSTALL = "pip install 'face-appliance[peer]' && pip install --no-deps face_recognition"
#: a hang guard per process, not a timing limit
PROCESS_TIMEOUT_S = 900


@dataclass(frozen=True)
class Case:
    """One command line to time: its label in the table, the arguments after ``python``, the folder it
    runs in (the checkout whose ``appliance`` it runs), and whether it is one of ours."""

    name: str
    args: Sequence[str]
    cwd: Path
    ours: bool = True


@dataclass
class Timing:
    """The runs of one case: wall and CPU seconds per timed run, and the untimed first run."""

    first_wall_s: float = 0.0
    wall_s: Optional[List[float]] = None
    cpu_s: Optional[List[float]] = None
    heavy: Optional[List[str]] = None

    def summary(self) -> Dict[str, Any]:
        wall, cpu = self.wall_s or [], self.cpu_s or []
        return {
            "runs": len(wall),
            "first_wall_s": round(self.first_wall_s, 3),
            "median_s": round(statistics.median(wall), 3) if wall else None,
            "min_s": round(min(wall), 3) if wall else None,
            "cpu_median_s": round(statistics.median(cpu), 3) if cpu else None,
            "wall_s": [round(value, 3) for value in wall],
            "heavy_imports": self.heavy,
        }


def select_photos(data_dir: Path, limit: Optional[int] = None) -> List[Dict[str, str]]:
    """``evaluate``'s photos: every :data:`EVERY`-th labelled photo under ``faces/`` in path order, the
    first ``limit`` of them.

    Raises:
        SystemExit: the labels file is missing, or the photos chosen show fewer than two identities.
    """
    labels = data_dir / LABELS
    if not labels.is_file():
        raise SystemExit(f"error: {labels} not found; pass --data-dir (the shared data folder)")
    with labels.open(newline="", encoding="utf-8") as stream:
        rows = [
            {"path": row["path"], "identity": row["identity"]}
            for row in csv.DictReader(stream)
            if row.get("path", "").startswith("faces/") and row.get("identity")
        ]
    chosen = sorted(rows, key=lambda row: row["path"])[::EVERY][:limit]
    if len({row["identity"] for row in chosen}) < 2:
        raise SystemExit(
            f"error: {len(chosen)} photo(s) of {len({row['identity'] for row in chosen})} identity chosen from "
            f"{labels}; evaluate needs two identities at least (the first 4 photos have two)"
        )
    return chosen


def write_inputs(folder: Path, models_dir: Path, photos: Sequence[Dict[str, str]]) -> Dict[str, Path]:
    """The configuration (CPU back-end, state in ``folder``) and the labels CSV the cases use."""
    config = folder / "appliance.toml"
    config.write_text(
        f"[models]\ndir = {json.dumps(str(models_dir))}\n"
        f"[storage]\ndir = {json.dumps(str(folder / 'state'))}\n"
        '[backend]\ntype = "cpu"\n[logging]\nlevel = "WARNING"\n',
        encoding="utf-8",
    )
    labels = folder / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["path", "identity"])
        writer.writeheader()
        writer.writerows(photos)
    return {"config": config, "labels": labels}


def build_cases(
    data_dir: Path, inputs: Dict[str, Path], repo: Path, peer: bool, baseline: Optional[Path] = None
) -> List[Case]:
    """Our four cases in ``repo`` (and in ``baseline``, named with `` (baseline)``), then the peer's."""
    config, labels = str(inputs["config"]), str(inputs["labels"])
    ours = [
        ("--help", ["--help"]),
        ("config check", ["config", "check", "--config", str(SAMPLE_CONFIG)]),
        ("detect (1 photo)", ["detect", "--config", config, str(data_dir / DETECT_PHOTO)]),
        ("evaluate", ["evaluate", str(data_dir), "--labels", labels, "--config", config]),
    ]
    cases = [Case(name, ["-m", "appliance", *args], repo) for name, args in ours]
    if baseline is not None:
        cases += [Case(f"{name} (baseline)", ["-m", "appliance", *args], baseline) for name, args in ours]
    if peer:
        peer_args = ["-m", "bench.peer_evaluate", str(data_dir), "--labels", labels]
        cases.append(Case("face_recognition", peer_args, ROOT, ours=False))
    return cases


def peer_missing() -> Optional[str]:
    """Why the peer cannot run (``face_recognition`` not importable), or ``None``."""
    probe = subprocess.run(
        [sys.executable, "-c", "import warnings; warnings.simplefilter('ignore'); import face_recognition"],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    if probe.returncode == 0:
        return None
    lines = (probe.stderr or probe.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {probe.returncode}"


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed appliance has its bytecode compiled
    return env


def run_once(case: Case, env: Dict[str, str]) -> Dict[str, float]:
    """Run ``case`` once; its wall and CPU seconds.

    Raises:
        RuntimeError: the process failed (its output's tail is in the message).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *case.args],
        cwd=case.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{case.name} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def heavy_imports(case: Case, env: Dict[str, str]) -> List[str]:
    """The :data:`HEAVY_MODULES` a run of ``case`` imports (``python -X importtime``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *case.args],
        cwd=case.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    found = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") >= 2:
            found.add(line.rsplit("|", 1)[1].strip())
    return [module for module in HEAVY_MODULES if module in found]


def measure(cases: Sequence[Case], runs: int) -> Dict[str, Timing]:
    """Every case once untimed, then ``runs`` rounds in which each case runs once, in turn."""
    env = child_env()
    timings = {case.name: Timing(wall_s=[], cpu_s=[]) for case in cases}
    for case in cases:
        timings[case.name].first_wall_s = run_once(case, env)["wall_s"]
        if case.ours:
            timings[case.name].heavy = heavy_imports(case, env)
    for _ in range(runs):
        for case in cases:
            result = run_once(case, env)
            timings[case.name].wall_s.append(result["wall_s"])  # type: ignore[union-attr]
            timings[case.name].cpu_s.append(result["cpu_s"])  # type: ignore[union-attr]
    return timings


def _fmt(value: Optional[float], unit: str = " s") -> str:
    return "–" if value is None else f"{value:.2f}{unit}"


def render(document: Dict[str, Any]) -> str:
    """The report: the machine, the inputs, one row per case, and the peer's ratio."""
    lines = ["machine: " + ", ".join(f"{key} {value}" for key, value in document["machine"].items())]
    lines.append(
        f"evaluate set: {document['photos']} photos of {document['identities']} identities (1 photo in "
        f"{EVERY} of faces/, in path order); detect: {DETECT_PHOTO}; config check: {SAMPLE_CONFIG}"
    )
    lines.append(
        f"{document['runs']} timed runs per case after one untimed first run; whole processes, wall "
        "clock (CPU = user + system of the process)"
    )
    lines.append("")
    lines.append("| case | median | min | CPU (median) | first run | heavy modules imported |")
    lines.append("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, row in document["cases"].items():
        heavy = row["heavy_imports"]
        imported = "–" if heavy is None else (", ".join(heavy) or "none")
        lines.append(
            f"| {name} | {_fmt(row['median_s'])} | {_fmt(row['min_s'])} | {_fmt(row['cpu_median_s'])} | "
            f"{_fmt(row['first_wall_s'])} | {imported} |"
        )
    lines.append("")
    if document.get("baseline"):
        lines.append(f"(baseline): {document['baseline']}, timed in the same rounds")
    ratios = document.get("ratio_peer_over_evaluate")
    if ratios is None:
        lines.append(f"face_recognition: not run ({document['peer_note']})")
    for name, ratio in (ratios or {}).items():
        lines.append(
            f"face_recognition / {name}, whole processes: median {ratio['median']:.1f}×, "
            f"min {ratio['min']:.1f}×, CPU {ratio['cpu_median']:.1f}×"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case (default 5)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the figures here")
    parser.add_argument(
        "--photos", type=int, default=None, metavar="N", help="evaluate the first N photos only (4 or more)"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip face_recognition")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose appliance is timed")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="another checkout, timed in the same rounds",
    )
    args = parser.parse_args(argv)
    runs = max(1, args.runs)
    data_dir, models_dir, repo = args.data_dir.resolve(), args.models_dir.resolve(), args.repo.resolve()
    baseline = args.baseline.resolve() if args.baseline is not None else None
    photos = select_photos(data_dir, args.photos)
    peer_note = "--no-peer" if args.no_peer else peer_missing()
    if peer_note is not None and not args.no_peer:
        peer_note = f"face_recognition is not importable ({peer_note}); install it with: {PEER_INSTALL}"
        print(f"note: {peer_note}", file=sys.stderr)
    document: Dict[str, Any] = {
        "machine": describe(),
        "repo": str(repo),
        "baseline": str(baseline) if baseline is not None else None,
        "runs": runs,
        "photos": len(photos),
        "identities": len({row["identity"] for row in photos}),
        "photo_paths": [row["path"] for row in photos],
        "detect_photo": DETECT_PHOTO,
        "sample_config": str(SAMPLE_CONFIG),
        "peer_note": peer_note,
    }
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as folder:
        inputs = write_inputs(Path(folder), models_dir, photos)
        cases = build_cases(data_dir, inputs, repo, peer_note is None, baseline)
        timings = measure(cases, runs)
    document["cases"] = {name: timing.summary() for name, timing in timings.items()}
    if "face_recognition" in timings:
        peer = document["cases"]["face_recognition"]
        document["ratio_peer_over_evaluate"] = {
            name: {
                "median": round(peer["median_s"] / ours["median_s"], 2),
                "min": round(peer["min_s"] / ours["min_s"], 2),
                "cpu_median": round(peer["cpu_median_s"] / ours["cpu_median_s"], 2),
            }
            for name, ours in document["cases"].items()
            if name.startswith("evaluate")
        }
    print(render(document))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
