"""Enrolling a folder: photos per second on the CPU back-end, as `face-appliance enroll --from-dir` does.

    python -m bench.enrol [--rounds 3] [--json OUT]

Every photo of ``../shared/data/faces`` (one folder per person), scaled down to at most 1 MP (the
issue's condition), is enrolled into a fresh encrypted gallery through :class:`Enroller` — detection,
quality checks, alignment, embedding, the duplicate check, the encrypted write and the index update.
Reported with and without reading the files (decoding JPEG/PNG is part of a real enrolment).
Target: ≥ 20 photos/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np

from appliance.config_load import validate_config
from appliance.enrollment import Enroller
from appliance.gallery.gallery import Gallery
from appliance.gallery.store import slugify
from appliance.runtime.loading import load_analyzer
from appliance.vision.image import read_image

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    machine = describe()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
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
