"""How the cost grows with the work: faces per frame, cameras, gallery size — one table and one plot.

    python -m bench.scaling [--faces 1 5 10 20] [--frames N] [--daemon-json FILE] [--gallery-json FILE...]
                            [--json OUT] [--plot OUT.png]

Faces per frame is measured here: 1280×720 synthetic camera frames holding 1, 5, 10 or 20 different
people from ``shared/data/faces``, each face cut from its photo with its surroundings and scaled to
the same width (:data:`FACE_WIDTH`), laid out on a grid over a grey background, with sensor noise per
frame (as :mod:`bench.vision` builds its frames). Each count runs through the same measurement as
``bench.vision`` (:func:`bench.vision.bench_scene`: per-stage medians, end to end with and without
liveness, model time and the pipeline's own overhead).

Cameras and gallery size come from the runs of the benchmarks that measure them, read from their
JSON (``python -m bench.daemon --cameras 1 2 --json FILE`` and ``python -m bench.gallery --json FILE``,
several gallery files allowed — e.g. a ``--large`` run for 10⁶ and a quieter run for the smaller sizes):
running those here would repeat minutes of set-up (a 10⁶-template index takes minutes to build).
Either may be left out; the table and the plot then show what was given.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from appliance.runtime.loading import load_analyzer
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image

from .machine import describe
from .vision import (
    BACKGROUND,
    DEFAULT_DATA,
    DEFAULT_MODELS,
    MIN_FACE_PX,
    ModelClock,
    Scene,
    bench_scene,
    make_config,
    noisy_copies,
)

FRAME = (1280, 720)
FACE_COUNTS = (1, 5, 10, 20)
#: the width every face is scaled to (px): a person about 1.5 m from a 1280×720 door camera
FACE_WIDTH = 96
#: how much of the photo around the face box goes with it (× the box side)
CONTEXT = 1.8
VARIANTS = 8


def face_tiles(analyzer: FaceAnalyzer, data_dir: Path, count: int) -> List[np.ndarray]:
    """``count`` face tiles of different people, ``(S, S, 3)`` uint8 BGR, the face ``FACE_WIDTH`` wide.

    One photo per person folder (the first with a detectable face), in sorted order, so every run
    uses the same people.
    """
    tiles: List[np.ndarray] = []
    folders = sorted(p for p in (data_dir / "faces").iterdir() if p.is_dir())
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in {".jpg", ".jpeg", ".png"}:
                continue
            image = read_image(path)
            faces = analyzer.detect(image, still=True)
            largest = faces.largest()
            if largest is None:
                continue
            x1, y1, x2, y2 = (float(v) for v in faces.boxes[largest])
            side = max(x2 - x1, y2 - y1) * CONTEXT
            centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
            left, top = round(centre_x - side / 2), round(centre_y - side / 2)
            pad = math.ceil(side)
            padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=BACKGROUND)
            crop = padded[top + pad : top + pad + round(side), left + pad : left + pad + round(side)]
            scale = FACE_WIDTH / (x2 - x1)
            size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
            tiles.append(
                cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            )
            break
        if len(tiles) == count:
            return tiles
    raise ValueError(
        f"only {len(tiles)} people with a detectable face under {data_dir / 'faces'}, need {count}"
    )


def grid_frame(tiles: Sequence[np.ndarray], size: Tuple[int, int]) -> np.ndarray:
    """The tiles on a near-square grid over a grey ``size`` (width, height) frame, each centred in its cell."""
    width, height = size
    columns = math.ceil(math.sqrt(len(tiles) * width / height))
    rows = math.ceil(len(tiles) / columns)
    cell_w, cell_h = width // columns, height // rows
    frame = np.full((height, width, 3), BACKGROUND, np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        fitted = tile[:cell_h, :cell_w]
        top = row * cell_h + (cell_h - fitted.shape[0]) // 2
        left = column * cell_w + (cell_w - fitted.shape[1]) // 2
        frame[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return frame


def bench_faces(
    analyzer: FaceAnalyzer, clock: ModelClock, data_dir: Path, counts: Sequence[int], frames: int
) -> List[Dict[str, Any]]:
    """One :func:`bench_scene` row per face count, with the per-face cost added."""
    tiles = face_tiles(analyzer, data_dir, max(counts))
    rows = []
    for count in counts:
        frame = grid_frame(tiles[:count], FRAME)
        scene = Scene(
            f"{FRAME[0]}x{FRAME[1]}", FRAME, count, f"{count} people", noisy_copies(frame, VARIANTS, count)
        )
        row = bench_scene(analyzer, clock, scene, frames)
        for mode in row["end_to_end"].values():
            mode["per_face_ms"] = round(mode["mean"] / count, 2)
        rows.append(row)
    return rows


# -- the other axes, from their own benchmarks' JSON ---------------------------------------------------


def cameras_from(document: Dict[str, Any]) -> List[Dict[str, Any]]:
    """``[{"cameras": n, "fps_per_camera": [...], "fps_total": x}]`` from ``bench.daemon --json``.

    A run of several camera counts (``--cameras 1 2``) keeps each under ``runs``; a run of one count
    is the document itself.
    """
    runs = document.get("runs") or {str(len(document.get("cameras") or [])): document}
    out = []
    for count, run in sorted(runs.items(), key=lambda item: int(item[0])):
        values = [
            float(camera["fps"]) for camera in run.get("cameras") or [] if camera.get("fps") is not None
        ]
        if not values:
            continue
        out.append(
            {
                "cameras": int(count),
                "fps_per_camera": [round(value, 1) for value in values],
                "fps_total": round(sum(values), 1),
            }
        )
    return out


def gallery_from(document: Dict[str, Any]) -> List[Dict[str, Any]]:
    """``[{"templates": n, "kind": …, "p50_ms": …, "p99_ms": …}]`` from ``bench.gallery --json``.

    Takes, per size, the rows the gallery bench marks as the defaults (``"default": true``), else
    every row it has.
    """
    rows = document.get("rows") or document.get("results") or []
    chosen = [row for row in rows if row.get("default")] or rows
    out = []
    for row in chosen:
        templates = row.get("templates") or row.get("n")
        p50, p99 = row.get("p50_ms"), row.get("p99_ms")
        if templates is None or p50 is None or p99 is None:
            continue
        out.append(
            {"templates": int(templates), "kind": str(row.get("kind", "")), "p50_ms": p50, "p99_ms": p99}
        )
    return sorted(out, key=lambda row: row["templates"])


# -- output --------------------------------------------------------------------------------------------


def print_tables(
    faces: List[Dict[str, Any]], cameras: List[Dict[str, Any]], gallery: List[Dict[str, Any]]
) -> None:
    print(f"Faces per frame ({FRAME[0]}x{FRAME[1]}, every face {FACE_WIDTH} px wide, CPU back-end):")
    print()
    print(
        "| faces | found | detect ms | embed ms | e2e ms | per face ms | fps | + liveness ms | fps | overhead % |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in faces:
        plain = row["end_to_end"]["no_liveness"]
        live = row["end_to_end"].get("liveness", {})
        found = sorted(set(row["found_faces"]))
        print(
            f"| {row['expected_faces']} | {','.join(map(str, found))} | {row['stages_ms']['detect']['median']} | "
            f"{row['stages_ms']['embed']['median']} | {plain['median']} | {plain['per_face_ms']} | {plain['fps']} | "
            f"{live.get('median', '–')} | {live.get('fps', '–')} | {plain['overhead_pct']} |"
        )
    if cameras:
        print()
        print("Cameras (bench.daemon):")
        print()
        print("| cameras | fps per camera | fps in all |")
        print("| ---: | --- | ---: |")
        for row in cameras:
            print(f"| {row['cameras']} | {', '.join(map(str, row['fps_per_camera']))} | {row['fps_total']} |")
    if gallery:
        print()
        print("Gallery size (bench.gallery, the default index per size):")
        print()
        print("| templates | index | p50 ms | p99 ms |")
        print("| ---: | --- | ---: | ---: |")
        for row in gallery:
            print(f"| {row['templates']} | {row['kind']} | {row['p50_ms']} | {row['p99_ms']} |")


def plot(
    faces: List[Dict[str, Any]], cameras: List[Dict[str, Any]], gallery: List[Dict[str, Any]], path: Path
) -> None:
    """Three panels: frame time against faces, fps against cameras, search time against gallery size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + bool(cameras) + bool(gallery)
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    axes = np.atleast_1d(axes)
    counts = [row["expected_faces"] for row in faces]
    for mode, label in (("no_liveness", "detect + align + embed"), ("liveness", "with liveness")):
        values = [row["end_to_end"].get(mode, {}).get("mean") for row in faces]
        if all(v is not None for v in values):
            axes[0].plot(counts, values, "o-", label=label)
    model = [row["end_to_end"]["no_liveness"]["model_ms"] for row in faces]
    axes[0].plot(counts, model, "s--", label="of which in the models")
    axes[0].set(
        xlabel="faces per frame",
        ylabel="ms per frame (mean)",
        title=f"{FRAME[0]}×{FRAME[1]}, CPU",
        xticks=counts,
    )
    axes[0].grid(alpha=0.3)
    axes[0].legend()
    index = 1
    if cameras:
        axis = axes[index]
        index += 1
        numbers = [row["cameras"] for row in cameras]
        axis.plot(numbers, [row["fps_total"] for row in cameras], "o-", label="frames/s, all cameras")
        axis.plot(
            numbers, [min(row["fps_per_camera"]) for row in cameras], "s--", label="frames/s, slowest camera"
        )
        axis.set(xlabel="cameras", ylabel="frames per second", title="the daemon", xticks=numbers)
        axis.grid(alpha=0.3)
        axis.legend()
    if gallery:
        axis = axes[index]
        sizes = [row["templates"] for row in gallery]
        axis.plot(sizes, [row["p50_ms"] for row in gallery], "o-", label="p50")
        axis.plot(sizes, [row["p99_ms"] for row in gallery], "s--", label="p99")
        axis.set(
            xscale="log", yscale="log", xlabel="templates", ylabel="ms per query", title="gallery search"
        )
        axis.grid(alpha=0.3, which="both")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--faces", type=int, nargs="+", default=list(FACE_COUNTS))
    parser.add_argument("--frames", type=int, default=30, help="timed frames per face count and mode")
    parser.add_argument("--daemon-json", type=Path, help="bench.daemon --cameras 1 2 --json output")
    parser.add_argument(
        "--gallery-json",
        type=Path,
        nargs="+",
        default=[],
        help="bench.gallery --json output(s); a later file's row replaces an earlier one's of the same size",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--plot", type=Path, help="write the plot here (PNG; needs matplotlib)")
    args = parser.parse_args()
    if any(count < 1 for count in args.faces):
        parser.error("--faces takes counts of at least 1")

    machine = describe()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print(f"detector mtcnn, min face {MIN_FACE_PX} px, {args.frames} timed frames per count")
    print()
    with load_analyzer(make_config(args.models_dir, 0)) as analyzer:
        clock = ModelClock(analyzer._backends)
        try:
            faces = bench_faces(analyzer, clock, args.data_dir, sorted(set(args.faces)), max(1, args.frames))
        finally:
            clock.remove()
    cameras = cameras_from(json.loads(args.daemon_json.read_text())) if args.daemon_json else []
    by_size: Dict[int, Dict[str, Any]] = {}
    for path in args.gallery_json:
        by_size.update({row["templates"]: row for row in gallery_from(json.loads(path.read_text()))})
    gallery = [by_size[size] for size in sorted(by_size)]
    print_tables(faces, cameras, gallery)
    document: Dict[str, Any] = {"machine": machine, "faces": faces, "cameras": cameras, "gallery": gallery}
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(faces, cameras, gallery, args.plot)
        print()
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
