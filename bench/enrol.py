"""Enrolling: photos per second on the CPU back-end, and what one enrolment costs in a large gallery.

    python -m bench.enrol [--rounds 3] [--json OUT]
    python -m bench.enrol --index [--sizes 1000,10000,100000] [--enrolments 40] [--removals 5]
                          [--json OUT]

Photos per second (the default): every photo of ``../shared/data/faces`` (one folder per person),
scaled down to at most 1 MP (the issue's condition), is enrolled into a fresh encrypted gallery
through :class:`Enroller` — detection, quality checks, alignment, embedding, the duplicate check, the
encrypted write and the index update. Reported with and without reading the files (decoding
JPEG/PNG is part of a real enrolment). Target: ≥ 20 photos/s.

Index cost (``--index``, issue 16 part 5): per gallery size, a store is pre-filled with synthetic
identities (3 templates each, in one transaction, sealed like any other), the gallery opened (the
index built and saved), then ``--enrolments`` real :meth:`Gallery.add` calls (one template and its
crop each) and ``--removals`` :meth:`Gallery.remove` calls are timed one by one. Bytes written per
call: the index files' (counted by :class:`~appliance.gallery.delta.SavedIndex`) and the whole
process's (``wchar`` of ``/proc/self/io``: the store's SQLite writes included). Meanwhile a second
thread searches the gallery as the door's pipeline does (one query, then 1 ms of pause, over and
over): the longest search that overlapped each kind of change is how long a change can keep the
door waiting. Three settings:

* ``before``: float32, ``index_delta_ratio = 0`` — the whole index file rewritten at every change,
  as before deltas (the same code path as the old ``Gallery._save_index``);
* ``float32 + delta``: the delta alone;
* ``after``: the defaults (float16, ``index_delta_ratio = 0.1``).

With a delta, the few enrolments timed rarely reach a compaction; the amortised bytes per enrolment
including compactions is computed as record + snapshot × record / threshold (one snapshot per
threshold / record enrolments).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from appliance.access.policy import IdentityPolicy
from appliance.config_load import validate_config
from appliance.gallery.gallery import Gallery
from appliance.gallery.store import TemplateStore, slugify, utc_now
from appliance.vision.image import read_image

from .arguments import positive_int_list
from .machine import describe

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
TARGET_PER_S = 20.0
MAX_PIXELS = 1_000_000


def _photos(faces: Path) -> List[Tuple[str, Path]]:
    suffixes = {".jpg", ".jpeg", ".png"}
    return [
        (folder.name, path)
        for folder in sorted(p for p in faces.iterdir() if p.is_dir())
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in suffixes
    ]


def _at_most_1mp(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    if height * width <= MAX_PIXELS:
        return image
    scale = (MAX_PIXELS / (height * width)) ** 0.5
    return cv2.resize(image, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_AREA)


def run(rounds: int) -> Dict[str, Any]:
    from appliance.enrollment import Enroller
    from appliance.runtime.loading import load_analyzer

    photos = _photos(SHARED / "data" / "faces")
    with tempfile.TemporaryDirectory() as folder:
        small = Path(folder) / "photos"
        small.mkdir()
        files: List[Tuple[str, Path]] = []
        for index, (person, path) in enumerate(photos):
            target = small / f"{index:04d}.jpg"
            cv2.imwrite(str(target), _at_most_1mp(read_image(path)), [cv2.IMWRITE_JPEG_QUALITY, 92])
            files.append((person, target))
        config = validate_config({"models": {"dir": str(SHARED / "models")}, "storage": {"dir": folder}})
        results: Dict[str, Any] = {"photos": len(files), "rounds": []}
        with load_analyzer(config, liveness=False) as analyzer:
            analyzer.embedder.embed(np.zeros((1, 112, 112, 3), np.uint8))  # warm
            for round_index in range(rounds):
                storage = Path(folder) / f"state{round_index}"
                round_config = validate_config(
                    {"models": {"dir": str(SHARED / "models")}, "storage": {"dir": str(storage)}}
                )
                with Gallery.open(round_config, analyzer.embedder.version, analyzer.embedder.dim) as gallery:
                    enroller = Enroller(analyzer, gallery, round_config.gallery)
                    accepted = 0
                    started = time.perf_counter()
                    decode_s = 0.0
                    for person, path in files:
                        t0 = time.perf_counter()
                        image = read_image(path)
                        decode_s += time.perf_counter() - t0
                        outcome = enroller.enroll(slugify(person), person, [(path.name, image)], largest=True)
                        accepted += len(outcome.template_ids)
                    total_s = time.perf_counter() - started
                results["rounds"].append(
                    {
                        "seconds": round(total_s, 2),
                        "photos_per_s": round(len(files) / total_s, 1),
                        "photos_per_s_without_decoding": round(len(files) / (total_s - decode_s), 1),
                        "accepted": accepted,
                    }
                )
    best = max(results["rounds"], key=lambda r: r["photos_per_s"])
    results["median_photos_per_s"] = float(np.median([r["photos_per_s"] for r in results["rounds"]]))
    results["best"] = best
    return results


# -- index cost per enrolment (issue 16, part 5) ----------------------------------------------------

INDEX_VERSION = "mobilefacenet@bench"
INDEX_DIM = 128
PER_IDENTITY = 3
#: (label, gallery.index_precision, gallery.index_delta_ratio)
SETTINGS = (("before", "float32", 0.0), ("float32 + delta", "float32", 0.1), ("after", "float16", 0.1))


def _unit(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, INDEX_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _crops(rng: np.random.Generator, count: int) -> np.ndarray:
    """Aligned-crop-sized images that compress about like photos (a gradient and some noise)."""
    ramp = np.linspace(0, 200, 112, dtype=np.float32)
    base = ramp[None, :, None] + ramp[:, None, None] * 0.2
    return np.clip(base[None] + rng.integers(0, 24, (count, 112, 112, 3)), 0, 255).astype(np.uint8)


def prefill(folder: Path, templates: int, seed: int = 0) -> None:
    """A store of ``templates`` synthetic templates (``PER_IDENTITY`` per identity, no crops) written
    in one transaction (an enrolment per transaction would take minutes at 10⁵ with fsyncs)."""
    rng = np.random.default_rng(seed)
    vectors = _unit(rng, templates)
    now = utc_now()
    with TemplateStore.open(folder / "gallery.db", folder / "gallery.key") as store:
        with store._transaction() as db:  # the store's own sealing and policy rows, in bulk
            for start in range(0, templates, PER_IDENTITY):
                identity = f"bench-{start // PER_IDENTITY}"
                db.execute(
                    "INSERT INTO identities (id, name, external_id, consent_at, created_at) VALUES (?, ?, NULL, ?, ?)",
                    (identity, f"Bench {start // PER_IDENTITY}", now, now),
                )
                store._write_policy(db, identity, IdentityPolicy())
                db.executemany(
                    "INSERT INTO templates (identity_id, model_version, embedding, crop, quality, created_at) "
                    "VALUES (?, ?, ?, NULL, 0.9, ?)",
                    [
                        (identity, INDEX_VERSION, store._seal_embedding(identity, INDEX_VERSION, vector), now)
                        for vector in vectors[start : start + PER_IDENTITY]
                    ],
                )
            store._bump(db)


def _process_written() -> int:
    """Bytes this process has passed to write(2) so far (``wchar``); -1 where /proc/self/io is absent."""
    try:
        with open("/proc/self/io", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _summary(times_s: List[float], index_bytes: List[int], process_bytes: List[int]) -> Dict[str, Any]:
    times = np.array(times_s) * 1000
    return {
        "calls": len(times_s),
        "ms_p50": round(float(np.percentile(times, 50)), 2),
        "ms_mean": round(float(np.mean(times)), 2),
        "ms_max": round(float(np.max(times)), 2),
        "index_bytes_mean": int(np.mean(index_bytes)),
        "process_bytes_mean": int(np.mean(process_bytes)) if min(process_bytes) >= 0 else None,
    }


class _DoorSearches:
    """A thread searching the gallery while changes run, as the pipeline does: one query, a 1 ms
    pause, again. :meth:`longest_during` is the longest search that overlapped a window, in ms."""

    PAUSE_S = 0.001

    def __init__(self, gallery: Gallery, query: np.ndarray) -> None:
        self.gallery, self.query = gallery, query
        self.spans: List[Tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="door-searches", daemon=True)

    def __enter__(self) -> _DoorSearches:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.gallery.search(self.query)
            self.spans.append((started, time.perf_counter()))
            time.sleep(self.PAUSE_S)

    def longest_during(self, windows: List[Tuple[float, float]]) -> float:
        longest = 0.0
        for start, end in list(self.spans):
            if any(start < window_end and end > window_start for window_start, window_end in windows):
                longest = max(longest, end - start)
        return round(longest * 1000, 2)


def index_cost(
    size: int, label: str, precision: str, ratio: float, enrolments: int, removals: int
) -> Dict[str, Any]:
    """Time ``enrolments`` adds and ``removals`` removes on a gallery pre-filled with ``size`` templates."""
    rng = np.random.default_rng(size)
    with tempfile.TemporaryDirectory(prefix="bench-enrol-") as folder:
        state = Path(folder)
        prefill(state, size)
        config = validate_config(
            {
                "storage": {"dir": folder},
                "gallery": {"index_precision": precision, "index_delta_ratio": ratio},
            }
        )
        started = time.perf_counter()
        with Gallery.open(config, INDEX_VERSION, INDEX_DIM) as gallery:
            open_s = time.perf_counter() - started
            snapshot_bytes = (state / "gallery.index").stat().st_size
            crops = _crops(rng, enrolments)
            vectors = _unit(rng, enrolments)
            added: Dict[str, List[Any]] = {"times": [], "index": [], "process": [], "windows": []}
            removed: Dict[str, List[Any]] = {"times": [], "index": [], "process": [], "windows": []}
            with _DoorSearches(gallery, _unit(rng, 1)) as door:
                for number in range(enrolments):
                    one = slice(number, number + 1)
                    enrolment = partial(
                        gallery.add, f"new-{number}", f"New {number}", vectors[one], crops[one]
                    )
                    _timed(gallery, added, enrolment)
                for number in range(removals):
                    _timed(gallery, removed, partial(gallery.remove, f"bench-{number}"))
            threshold = gallery.saved.compact_above
    enrol = _summary(added["times"], added["index"], added["process"])
    enrol["search_wait_ms_max"] = door.longest_during(added["windows"])
    remove = _summary(removed["times"], removed["index"], removed["process"]) if removals else None
    if remove is not None:
        remove["search_wait_ms_max"] = door.longest_during(removed["windows"])
    record = min(added["index"]) if ratio > 0 else None
    amortised: Optional[int] = None
    if record is not None and record > 0:
        amortised = int(record + snapshot_bytes * record / max(threshold, record))
    return {
        "templates": size,
        "setting": label,
        "precision": precision,
        "index_delta_ratio": ratio,
        "open_s": round(open_s, 2),
        "snapshot_bytes": snapshot_bytes,
        "compact_above_bytes": threshold if ratio > 0 else None,
        "enrol": enrol,
        "enrol_amortised_index_bytes": amortised if ratio > 0 else enrol["index_bytes_mean"],
        "remove": remove,
    }


def _timed(gallery: Gallery, into: Dict[str, List[Any]], change: Callable[[], object]) -> None:
    """Run one gallery change, noting its time, the bytes it wrote and its window."""
    before_index, before_process = gallery.saved.bytes_written, _process_written()
    started = time.perf_counter()
    change()
    ended = time.perf_counter()
    into["times"].append(ended - started)
    into["windows"].append((started, ended))
    into["index"].append(gallery.saved.bytes_written - before_index)
    into["process"].append(_process_written() - before_process if before_process >= 0 else -1)


def run_index(sizes: List[int], enrolments: int, removals: int) -> List[Dict[str, Any]]:
    results = []
    for size in sizes:
        for label, precision, ratio in SETTINGS:
            result = index_cost(size, label, precision, ratio, enrolments, removals)
            print(
                f"  {size:,} templates, {label}: enrol p50 {result['enrol']['ms_p50']} ms, "
                f"{result['enrol']['index_bytes_mean']:,} index bytes",
                flush=True,
            )
            results.append(result)
    return results


def _print_index(results: List[Dict[str, Any]]) -> None:
    print(
        "\n| templates | setting | enrol ms p50 / mean / max | index bytes per enrolment (amortised) "
        "| process bytes per enrolment | remove ms p50 | index bytes per removal "
        "| longest search during an enrolment / a removal, ms |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results:
        enrol, remove = row["enrol"], row["remove"]
        process = f"{enrol['process_bytes_mean']:,}" if enrol["process_bytes_mean"] is not None else "n/a"
        removal = (
            f"| {remove['ms_p50']} | {remove['index_bytes_mean']:,} "
            f"| {enrol['search_wait_ms_max']} / {remove['search_wait_ms_max']} |"
            if remove is not None
            else f"| – | – | {enrol['search_wait_ms_max']} / – |"
        )
        print(
            f"| {row['templates']:,} | {row['setting']} | {enrol['ms_p50']} / {enrol['ms_mean']} / {enrol['ms_max']} "
            f"| {enrol['index_bytes_mean']:,} ({row['enrol_amortised_index_bytes']:,}) | {process} {removal}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--index", action="store_true", help="the index cost per enrolment and removal instead"
    )
    parser.add_argument("--sizes", type=positive_int_list, default=[1000, 10_000, 100_000])
    parser.add_argument("--enrolments", type=int, default=40, help="enrolments timed per size and setting")
    parser.add_argument("--removals", type=int, default=5, help="removals timed per size and setting")
    args = parser.parse_args()
    machine = describe()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    if args.index:
        if args.enrolments < 1 or args.removals < 0:
            parser.error("--enrolments must be ≥ 1 and --removals ≥ 0")
        rows = run_index(args.sizes, args.enrolments, args.removals)
        _print_index(rows)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"machine": machine, "index_cost": rows}, indent=2))
        return 0
    result = run(args.rounds)
    print(f"{result['photos']} photos (≤ 1 MP) enrolled per round, CPU back-end\n")
    print("| round | s | photos/s | photos/s without decoding | accepted |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for index, row in enumerate(result["rounds"], 1):
        print(
            f"| {index} | {row['seconds']} | {row['photos_per_s']} | {row['photos_per_s_without_decoding']} "
            f"| {row['accepted']} |"
        )
    median = result["median_photos_per_s"]
    verdict = "MET" if median >= TARGET_PER_S else "NOT MET"
    print(f"\ntarget: enrolling a folder ≥ {TARGET_PER_S:.0f} photos/s: median {median:.1f} → {verdict}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
