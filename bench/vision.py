"""The vision pipeline on the CPU back-end: per-stage latency, frames per second, the pipeline's own
overhead over the model calls and where it goes step by step (:mod:`bench.own_work`), peak memory,
and a side-by-side with the ``face_recognition`` library (dlib) on the same labelled photos.

    python -m bench.vision [--models-dir DIR] [--threads N | --config FILE] [--data-dir DIR]
                           [--frames N] [--json OUT] [--no-peer] [--against REV]

``--config FILE`` takes the models and the back-end from an appliance configuration instead: on a
Jetson, ``backend.type = "tensorrt"`` after ``face-appliance engines build``, which is how the
pipeline's own work over TensorRT's model time is measured (``served by`` names each model's
back-end: with ``backend.fallback = "cpu"`` a model whose engine is missing runs on the CPU).

Camera frames are synthetic but built from real photos: a single-identity photo scaled so the face is
a door-camera size (a quarter of the frame height) on a plain grey background, and a five-person TV
still letterboxed into the frame; each frame gets its own sensor noise. Stage latencies are medians
and 90th percentiles over ``--frames`` frames after a warm-up; frames per second are frames over the
wall time of the whole loop. Model time is measured by wrapping every loaded back-end's ``run``
(so it includes the back-end's input checks), and the overhead is the rest of the end-to-end time.
``--against REV`` also times git revision REV's detector and alignment against the working tree's in
this process, taking turns frame by frame (:mod:`bench.against`): the way to see a change to the
pipeline's own work on a machine whose separate runs differ by more than the change.

The peer (optional) is installed with::

    pip install 'face-appliance[peer]' && pip install --no-deps face_recognition

``face_recognition`` needs ``--no-deps``: it depends on ``dlib``, which pip would compile from
source; the ``peer`` extra brings the prebuilt ``dlib-bin`` and the rest of its dependencies, with
``setuptools<82`` because ``face_recognition_models`` imports ``pkg_resources``. Without the extra::

    pip install dlib-bin face_recognition_models Click Pillow 'setuptools<82'
    pip install --no-deps face_recognition
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.errors import ConfigError
from appliance.evaluation import VerificationReport, far_key, pair_scores, verification_report
from appliance.runtime.loading import load_analyzer
from appliance.vision.align import align_faces
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import ImageError, read_image

from .against import RevisionError, bench_against, import_revision, print_against
from .appliance_file import appliance_config
from .figures import fmt, overhead
from .machine import describe, rss_mib
from .own_work import STEPS, input_shape, own_work_by_step

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ROOT.parent / "shared" / "models"
DEFAULT_DATA = ROOT.parent / "shared" / "data"

FRAME_SIZES: Tuple[Tuple[int, int], ...] = ((640, 480), (1280, 720))
MIN_FACE_PX = 40
#: the single face's box width as a share of the frame height (120 px at 480, 180 px at 720)
FACE_SHARE = 0.25
BACKGROUND = (128, 128, 128)
NOISE_SIGMA = 2.0
#: distinct noisy copies of each scene (frames cycle through them)
VARIANTS = 8
SINGLE_FACE_PHOTOS = ("faces/fr_obama/obama.jpg", "faces/fr_obama/obama2.jpg", "faces/fr_biden/biden.jpg")
GROUP_PHOTO = "multi_face/faceapi_bbt5.jpg"
GROUP_FACES = 5
LABELS = "faces_identities.csv"
FARS = (1e-1, 1e-2, 1e-3)
PEER_INSTALL = "pip install 'face-appliance[peer]' && pip install --no-deps face_recognition"


# -- measuring ---------------------------------------------------------------------------------------


class ModelClock:
    """Time spent inside every back-end's ``run``, by model name, while installed."""

    def __init__(self, backends: Sequence[Any]) -> None:
        self.backends = list(backends)
        self.seconds: Dict[str, float] = {backend.spec.name: 0.0 for backend in self.backends}
        self.calls: Dict[str, int] = {backend.spec.name: 0 for backend in self.backends}
        self.rows: Dict[str, int] = {backend.spec.name: 0 for backend in self.backends}
        for backend in self.backends:
            backend.run = self._wrap(backend.spec.name, backend.run)

    def _wrap(self, name: str, run: Callable[..., Any]) -> Callable[..., Any]:
        def timed(feeds: Any) -> Any:
            started = time.perf_counter()
            try:
                return run(feeds)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1
                self.rows[name] += input_shape(feeds)[0]

        return timed

    def reset(self) -> None:
        for name in self.seconds:
            self.seconds[name] = 0.0
            self.calls[name] = 0
            self.rows[name] = 0

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def remove(self) -> None:
        for backend in self.backends:
            if "run" in vars(backend):
                del backend.run


def _stats_ms(samples: Sequence[float]) -> Dict[str, float]:
    values = np.asarray(samples, np.float64) * 1000
    if not len(values):
        return {"median": float("nan"), "p90": float("nan"), "mean": float("nan")}
    return {
        "median": round(float(np.median(values)), 2),
        "p90": round(float(np.percentile(values, 90)), 2),
        "mean": round(float(values.mean()), 2),
    }


def _timed(call: Callable[[], Any]) -> Tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def peak_rss_mib() -> float:
    """The process's peak resident size so far (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# -- synthetic camera frames ---------------------------------------------------------------------------


@dataclass
class Scene:
    name: str
    size: Tuple[int, int]  # (width, height)
    expected: int
    source: str
    frames: List[np.ndarray]


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _paste(canvas: np.ndarray, image: np.ndarray, left: int, top: int) -> None:
    """Copy ``image`` onto ``canvas`` with its top-left corner at (left, top), clipped to the canvas."""
    height, width = canvas.shape[:2]
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(width, left + image.shape[1]), min(height, top + image.shape[0])
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = image[y0 - top : y1 - top, x0 - left : x1 - left]


def _blank(size: Tuple[int, int]) -> np.ndarray:
    width, height = size
    return np.full((height, width, 3), BACKGROUND, np.uint8)


def single_face_frame(analyzer: FaceAnalyzer, photo: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """The photo scaled so its largest face is ``FACE_SHARE`` of the frame height wide, face centred."""
    faces = analyzer.detect(photo, still=True)
    largest = faces.largest()
    if largest is None:
        raise ValueError("no face in the single-face photo")
    x1, y1, x2, y2 = (float(v) for v in faces.boxes[largest])
    scale = FACE_SHARE * size[1] / (x2 - x1)
    scaled = _resize(photo, scale)
    centre_x, centre_y = (x1 + x2) / 2 * scale, (y1 + y2) / 2 * scale
    frame = _blank(size)
    _paste(frame, scaled, round(size[0] / 2 - centre_x), round(size[1] * 0.45 - centre_y))
    return frame


def letterboxed_frame(photo: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """The whole photo scaled to fit the frame, centred, grey bars around it."""
    scale = min(size[0] / photo.shape[1], size[1] / photo.shape[0])
    scaled = _resize(photo, scale)
    frame = _blank(size)
    _paste(frame, scaled, (size[0] - scaled.shape[1]) // 2, (size[1] - scaled.shape[0]) // 2)
    return frame


def noisy_copies(frame: np.ndarray, count: int, seed: int) -> List[np.ndarray]:
    """``count`` copies of ``frame`` with independent Gaussian sensor noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        noise = rng.normal(0.0, NOISE_SIGMA, frame.shape)
        out.append(np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8))
    return out


def build_scenes(analyzer: FaceAnalyzer, data_dir: Path, variants: int) -> List[Scene]:
    single_path = next((data_dir / p for p in SINGLE_FACE_PHOTOS if (data_dir / p).is_file()), None)
    if single_path is None:
        raise FileNotFoundError(f"none of {', '.join(SINGLE_FACE_PHOTOS)} under {data_dir}")
    single = read_image(single_path)
    group = read_image(data_dir / GROUP_PHOTO)
    scenes = []
    for index, size in enumerate(FRAME_SIZES):
        label = f"{size[0]}x{size[1]}"
        one = single_face_frame(analyzer, single, size)
        five = letterboxed_frame(group, size)
        rel_single = single_path.relative_to(data_dir).as_posix()
        scenes.append(Scene(label, size, 1, rel_single, noisy_copies(one, variants, 2 * index)))
        scenes.append(
            Scene(label, size, GROUP_FACES, GROUP_PHOTO, noisy_copies(five, variants, 2 * index + 1))
        )
    return scenes


# -- the pipeline on frames ----------------------------------------------------------------------------


def bench_scene(analyzer: FaceAnalyzer, clock: ModelClock, scene: Scene, frames: int) -> Dict[str, Any]:
    checker = analyzer.liveness
    detected = [analyzer.detect(frame) for frame in scene.frames]
    counts = [len(faces) for faces in detected]
    widths = sorted(float(w) for w in detected[0].boxes[:, 2] - detected[0].boxes[:, 0])
    for frame in scene.frames[:2]:  # warm-up: first runs at this frame size
        analyzer.analyze(frame)

    stages: Dict[str, List[float]] = {"detect": [], "align": [], "liveness": [], "embed": []}
    for index in range(frames):
        frame = scene.frames[index % len(scene.frames)]
        faces, seconds = _timed(lambda frame=frame: analyzer.detect(frame))
        stages["detect"].append(seconds)
        if not len(faces):
            continue
        crops, seconds = _timed(lambda frame=frame, faces=faces: align_faces(frame, faces.landmarks))
        stages["align"].append(seconds)
        if checker is not None:
            _, seconds = _timed(lambda frame=frame, faces=faces: checker.check(frame, faces.boxes))
            stages["liveness"].append(seconds)
        _, seconds = _timed(lambda crops=crops: analyzer.embedder.embed(crops))
        stages["embed"].append(seconds)

    end_to_end: Dict[str, Dict[str, Any]] = {}
    modes = [("no_liveness", None)] + ([("liveness", checker)] if checker is not None else [])
    try:
        for mode, liveness in modes:
            analyzer.liveness = liveness
            samples = []
            clock.reset()
            started = time.perf_counter()
            for index in range(frames):
                frame = scene.frames[index % len(scene.frames)]
                _, seconds = _timed(lambda frame=frame: analyzer.analyze(frame))
                samples.append(seconds)
            wall = time.perf_counter() - started
            total_ms = sum(samples) * 1000 / frames
            model_ms = clock.total * 1000 / frames
            end_to_end[mode] = {
                **_stats_ms(samples),
                "fps": round(frames / wall, 2),
                **overhead(total_ms, model_ms),
                "by_model_ms": {
                    name: round(seconds * 1000 / frames, 2) for name, seconds in clock.seconds.items()
                },
                "calls_per_frame": {name: round(calls / frames, 1) for name, calls in clock.calls.items()},
                "batch_rows_per_frame": {name: round(rows / frames, 1) for name, rows in clock.rows.items()},
            }
    finally:
        analyzer.liveness = checker
    return {
        "frame": scene.name,
        "source": scene.source,
        "expected_faces": scene.expected,
        "found_faces": counts,
        "face_width_px": [round(w) for w in widths],
        "stages_ms": {name: _stats_ms(samples) for name, samples in stages.items()},
        "end_to_end": end_to_end,
        # Separate passes (timers around each step; then the networks replayed), so the figures above
        # carry no timers.
        "own_work_by_step_ms": own_work_by_step(analyzer, clock, scene.frames, frames),
    }


# -- side by side with face_recognition -----------------------------------------------------------------


def read_labels(path: Path) -> List[Dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as stream:
        return [row for row in csv.DictReader(stream) if row.get("path") and row.get("identity")]


def distance_pair_scores(encodings: np.ndarray, labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Like :func:`pair_scores`, with similarity = −euclidean distance (face_recognition's metric)."""
    labels_array = np.asarray(labels)
    vectors = encodings.astype(np.float64)
    first, second = np.triu_indices(len(labels_array), k=1)
    scores = -np.linalg.norm(vectors[first] - vectors[second], axis=1)
    same = labels_array[first] == labels_array[second]
    return scores[same], scores[~same]


def _report(genuine: np.ndarray, impostor: np.ndarray) -> Optional[VerificationReport]:
    try:
        return verification_report(genuine, impostor, FARS)
    except ValueError:
        return None


def _ours_on_photo(analyzer: FaceAnalyzer, image: np.ndarray) -> Optional[np.ndarray]:
    faces = analyzer.detect(image, still=True)
    largest = faces.largest()
    if largest is None:
        return None
    crops = align_faces(image, faces.landmarks[largest : largest + 1])
    return analyzer.embedder.embed(crops)[0]


def _peer_on_photo(face_recognition: Any, image: np.ndarray) -> Optional[np.ndarray]:
    locations = face_recognition.face_locations(image)
    if not locations:
        return None
    largest = max(locations, key=lambda box: (box[2] - box[0]) * (box[1] - box[3]))
    return np.asarray(face_recognition.face_encodings(image, [largest])[0], np.float64)


def bench_photos(analyzer: FaceAnalyzer, data_dir: Path, peer: Any) -> Dict[str, Any]:
    """Both systems on every labelled photo; decoding is outside both timings."""
    rows = read_labels(data_dir / LABELS)
    systems = ["ours"] + (["face_recognition"] if peer is not None else [])
    times: Dict[str, List[float]] = {name: [] for name in systems}
    vectors: Dict[str, List[Optional[np.ndarray]]] = {name: [] for name in systems}
    labels: List[str] = []
    paths: List[str] = []
    unreadable: List[str] = []
    pixels_differ: List[str] = []
    warm = read_image(data_dir / rows[0]["path"])
    _ours_on_photo(analyzer, warm)
    if peer is not None:
        _peer_on_photo(peer, np.ascontiguousarray(peer.load_image_file(str(data_dir / rows[0]["path"]))))
    for row in rows:
        path = data_dir / row["path"]
        try:
            image = read_image(path)
        except ImageError:
            unreadable.append(row["path"])
            continue
        labels.append(row["identity"])
        paths.append(row["path"])
        vector, seconds = _timed(lambda image=image: _ours_on_photo(analyzer, image))
        times["ours"].append(seconds)
        vectors["ours"].append(vector)
        if peer is not None:
            rgb = peer.load_image_file(str(path))  # PIL, RGB; not timed, like read_image for ours
            if rgb.shape != image.shape or not np.array_equal(rgb, image[:, :, ::-1]):
                pixels_differ.append(row["path"])
            vector, seconds = _timed(lambda rgb=rgb: _peer_on_photo(peer, rgb))
            times["face_recognition"].append(seconds)
            vectors["face_recognition"].append(vector)

    found = {name: [v is not None for v in vectors[name]] for name in systems}
    common = [all(found[name][i] for name in systems) for i in range(len(labels))]
    result: Dict[str, Any] = {
        "images": len(labels),
        "unreadable": unreadable,
        "pixels_differ": pixels_differ if peer is not None else None,
        "systems": {},
    }
    for name in systems:
        scores = pair_scores if name == "ours" else distance_pair_scores
        accuracy: Dict[str, Any] = {}
        for subset, mask in (("own", found[name]), ("common", common)):
            kept = [i for i, keep in enumerate(mask) if keep]
            if len(kept) < 2:
                accuracy[subset] = None
                continue
            matrix = np.stack([vectors[name][i] for i in kept])  # type: ignore[misc]
            report = _report(*scores(matrix, [labels[i] for i in kept]))
            accuracy[subset] = None if report is None else {"images": len(kept), **report.to_json()}
        result["systems"][name] = {
            "time_ms": _stats_ms(times[name]),
            "total_s": round(sum(times[name]), 2),
            "no_face": [paths[i] for i, ok in enumerate(found[name]) if not ok],
            "accuracy": accuracy,
        }
    if peer is not None:
        ours, theirs = result["systems"]["ours"]["time_ms"], result["systems"]["face_recognition"]["time_ms"]
        result["ratio_peer_over_ours"] = {
            "mean": round(theirs["mean"] / ours["mean"], 2),
            "median": round(theirs["median"] / ours["median"], 2),
        }
    return result


def import_peer() -> Tuple[Any, Optional[str]]:
    """``(face_recognition module or None, why not)``."""
    try:
        with warnings.catch_warnings():  # face_recognition_models: "pkg_resources is deprecated"
            warnings.simplefilter("ignore")
            import face_recognition
    except (ImportError, SystemExit) as err:  # it calls quit() when face_recognition_models is missing
        return None, f"{type(err).__name__}: {err}"
    return face_recognition, None


# -- printing ------------------------------------------------------------------------------------------


def print_scenes(rows: List[Dict[str, Any]]) -> None:
    print("Synthetic camera frames (faces found by analyzer.detect on each distinct frame):")
    print()
    print("| frame | source | faces expected | faces found per frame | face widths px |")
    print("| --- | --- | ---: | --- | --- |")
    for row in rows:
        found = row["found_faces"]
        flag = "" if all(c == row["expected_faces"] for c in found) else " **MISMATCH**"
        counts = f"{found[0]} on all {len(found)}" if len(set(found)) == 1 else ",".join(map(str, found))
        print(
            f"| {row['frame']} | {row['source']} | {row['expected_faces']} | {counts}{flag} | "
            f"{', '.join(map(str, row['face_width_px']))} |"
        )
    print()
    print("Per-stage latency, ms, median / p90:")
    print()
    print("| frame | faces | detect | align | liveness | embed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        cells = [
            f"{row['stages_ms'][stage]['median']:.2f} / {row['stages_ms'][stage]['p90']:.2f}"
            for stage in ("detect", "align", "liveness", "embed")
        ]
        print(f"| {row['frame']} | {row['expected_faces']} | {' | '.join(cells)} |")
    print()
    print("End to end (analyzer.analyze per frame), ms median / p90 and frames per second:")
    print()
    print("| frame | faces | detect+align+embed ms | fps | + liveness ms | fps |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        cells = []
        for mode in ("no_liveness", "liveness"):
            e2e = row["end_to_end"].get(mode)
            cells += (
                ["–", "–"]
                if e2e is None
                else [f"{e2e['median']:.2f} / {e2e['p90']:.2f}", f"{e2e['fps']:.1f}"]
            )
        print(f"| {row['frame']} | {row['expected_faces']} | {' | '.join(cells)} |")
    print()
    print("Pipeline overhead (end-to-end time minus time inside the back-ends' run), per frame, mean:")
    print()
    print("| frame | faces | liveness | end to end ms | model ms | overhead ms | overhead % of model |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        for mode, e2e in row["end_to_end"].items():
            print(
                f"| {row['frame']} | {row['expected_faces']} | {'yes' if mode == 'liveness' else 'no'} | "
                f"{e2e['mean']:.2f} | {e2e['model_ms']:.2f} | {e2e['overhead_ms']:.2f} | "
                f"{fmt(e2e['overhead_pct'], 1)} |"
            )
    print()
    names = list(
        rows[0]["end_to_end"]["liveness" if "liveness" in rows[0]["end_to_end"] else "no_liveness"][
            "by_model_ms"
        ]
    )
    print("Model time per frame by model, ms (calls / batch rows per frame), end to end with liveness:")
    print()
    print("| frame | faces | " + " | ".join(names) + " |")
    print("| --- | ---: |" + " ---: |" * len(names))
    for row in rows:
        e2e = row["end_to_end"].get("liveness") or row["end_to_end"]["no_liveness"]
        cells = [
            f"{e2e['by_model_ms'][n]:.2f} ({e2e['calls_per_frame'][n]:g} / {e2e['batch_rows_per_frame'][n]:g})"
            for n in names
        ]
        print(f"| {row['frame']} | {row['expected_faces']} | {' | '.join(cells)} |")
    print_own_work(rows)


def print_own_work(rows: List[Dict[str, Any]]) -> None:
    """Where the pipeline's own work goes (:mod:`bench.own_work`), when the detector is MTCNN."""
    timed = [row for row in rows if row.get("own_work_by_step_ms")]
    if not timed:
        return
    print()
    print(
        "Where the pipeline's own work goes, no liveness, ms per frame (mean; a second pass with a timer "
        "around each step, model calls taken out; then a third with every network call answered from a "
        "recording of it, so that no network runs between the steps):"
    )
    print()
    print("| frame | faces | networks | own work | " + " | ".join(n.replace("_", " ") for n in STEPS) + " |")
    print("| --- | ---: | --- | ---: |" + " ---: |" * len(STEPS))
    for row in timed:
        for mode, label in (("with_networks", "run"), ("networks_replayed", "replayed")):
            steps = row["own_work_by_step_ms"][mode]
            cells = [label, f"{steps['total']:.2f}"] + [f"{steps[name]:.2f}" for name in STEPS]
            print(f"| {row['frame']} | {row['expected_faces']} | {' | '.join(cells)} |")


def print_photos(result: Dict[str, Any], backend: str) -> None:
    systems = result["systems"]
    print(
        f"Labelled photos ({LABELS}): {result['images']} images; per image, the largest face is detected, "
        "aligned and embedded; image decoding is not timed."
    )
    print(
        f"ours: read_image, then timed: analyzer.detect(still=True) + align + MobileFaceNet, "
        f"{backend}, no liveness."
    )
    differ = result["pixels_differ"]
    if differ is not None:
        print(
            "face_recognition: load_image_file, then timed: face_locations (HOG, upsample 1) + "
            "face_encodings (dlib ResNet, 1 jitter) of the largest face. Both decoders give identical "
            + (
                "pixels on every image."
                if not differ
                else f"pixels except on {len(differ)}: {', '.join(differ)}."
            )
        )
    print()
    print("| system | mean ms/image | median ms/image | p90 ms/image | total s | images with no face |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, figures in systems.items():
        t = figures["time_ms"]
        print(
            f"| {name} | {t['mean']:.1f} | {t['median']:.1f} | {t['p90']:.1f} | {figures['total_s']:.1f} | "
            f"{len(figures['no_face'])} |"
        )
    ratio = result.get("ratio_peer_over_ours")
    if ratio:
        print()
        print(f"time ratio face_recognition / ours: mean {ratio['mean']:.2f}x, median {ratio['median']:.2f}x")
    print()
    print("Verification (all pairs; ours: cosine, face_recognition: −euclidean distance):")
    print()
    far_cols = [far_key(far) for far in FARS]
    print(
        "| system | images | genuine | impostor | ROC AUC | EER | "
        + " | ".join(f"TAR@FAR {k}" for k in far_cols)
        + " |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(far_cols))
    missed = len(systems) > 1 and any(figures["no_face"] for figures in systems.values())
    for name, figures in systems.items():
        for subset, report in figures["accuracy"].items():
            if subset == "common" and not missed:
                continue  # the same images as "own detections"
            label = "own detections" if subset == "own" else "found by both"
            if report is None:
                print(f"| {name} | {label}: too few | | | | |" + " |" * len(far_cols))
                continue
            tars = [fmt(report["tar_at_far"][k], 4) for k in far_cols]
            print(
                f"| {name} | {label}: {report['images']} | {report['pairs']['genuine']} | "
                f"{report['pairs']['impostor']} | {report['auc']:.5f} | {report['eer']:.4f} | "
                + " | ".join(tars)
                + " |"
            )
    for name, figures in systems.items():
        for path in figures["no_face"]:
            print(f"no face ({name}): {path}")
    for path in result["unreadable"]:
        print(f"unreadable: {path}")


# -- main ----------------------------------------------------------------------------------------------


def make_config(models_dir: Path, threads: int) -> ApplianceConfig:
    """The CPU back-end on ``models_dir`` with the bench's detector and liveness."""
    data = {"models": {"dir": str(models_dir)}, "backend": {"type": "cpu", "threads": threads}}
    return validate_config(_with_bench_settings(data))


def config_from_file(path: Path) -> ApplianceConfig:
    """The appliance's configuration file, for its models and back-end (TensorRT on a Jetson; only
    those tables, :mod:`bench.appliance_file`), with the bench's detector and liveness, so that its
    figures compare with the CPU back-end's.

    Raises:
        ConfigError: the file is missing, not TOML, or its models or back-end are invalid.
    """
    return appliance_config(path, _with_bench_settings)


def _with_bench_settings(data: Dict[str, Any]) -> Dict[str, Any]:
    """``data`` (a configuration as TOML gives it) with MTCNN at :data:`MIN_FACE_PX` and liveness on,
    what every scene of the bench is measured with."""
    detector = data.setdefault("detector", {})
    liveness = data.setdefault("liveness", {})
    if isinstance(detector, dict):  # anything else is refused by the validation, with its key path
        detector.update(type="mtcnn", min_face_px=MIN_FACE_PX)
    if isinstance(liveness, dict):
        liveness["enabled"] = True
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=None, help=f"default {DEFAULT_MODELS}")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--frames", type=int, default=40, help="timed frames per scene and mode")
    parser.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime threads (default 0 = one per core)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the appliance's configuration file instead of the CPU back-end: its models and back-end "
        "(TensorRT on a Jetson, after `face-appliance engines build`), with MTCNN at a 40 px minimum "
        "face and liveness on",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--no-peer", action="store_true", help="skip the labelled photos and the peer")
    parser.add_argument(
        "--against",
        metavar="REV",
        default=None,
        help="also time the pipeline's own work against git revision REV, in this process (bench.against)",
    )
    args = parser.parse_args()
    if args.config is not None and (args.models_dir is not None or args.threads is not None):
        parser.error(
            "--config takes the models and the back-end from the file: drop --models-dir and --threads"
        )
    frames = max(1, args.frames)
    if args.config is not None:
        try:
            config = config_from_file(args.config)
        except ConfigError as err:
            parser.error(str(err))
    else:
        config = make_config(args.models_dir or DEFAULT_MODELS, args.threads or 0)
    against = None
    if args.against:  # before anything is timed: a wrong revision is refused at once
        try:
            against = import_revision(args.against, ROOT)
        except RevisionError as err:
            parser.error(str(err))

    machine = describe()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    backend = config.backend
    backend_words = (
        f"ONNX Runtime threads={backend.threads} (0 = one per core)"
        if backend.type == "cpu"
        else f"TensorRT, precision {backend.tensorrt.precision}, fallback {backend.fallback}"
    )
    print(
        f"back-end {backend.type} ({backend_words}{', from ' + str(args.config) if args.config else ''}), "
        f"detector mtcnn, min face {MIN_FACE_PX} px, {frames} timed frames per scene"
    )
    document: Dict[str, Any] = {
        "machine": machine,
        "frames": frames,
        "threads": backend.threads,
        "backend": backend.type,
        "config": None if args.config is None else str(args.config),
    }
    rss_before = rss_mib()
    with load_analyzer(config) as analyzer:
        document["models"] = analyzer.model_versions
        # Per model, the back-end that serves it: with TensorRT's CPU fallback a model whose engine
        # is not built yet runs on the CPU, and its figures are not the device's.
        document["served_by"] = {b.spec.name: b.key for b in analyzer._backends}
        print("models: " + ", ".join(f"{k} {v}" for k, v in analyzer.model_versions.items()))
        print("served by: " + ", ".join(f"{k} {v}" for k, v in document["served_by"].items()))
        print()
        clock = ModelClock(analyzer._backends)
        try:
            scenes = build_scenes(analyzer, args.data_dir, min(VARIANTS, frames))
            rows = [bench_scene(analyzer, clock, scene, frames) for scene in scenes]
            memory = {
                "rss_before_load_mib": round(rss_before, 1),
                "rss_mib": round(rss_mib(), 1),
                "peak_rss_mib": round(peak_rss_mib(), 1),
            }
            if against is not None:
                document["against"] = bench_against(analyzer, clock, scenes, args.against, against, frames)
        finally:
            clock.remove()
        document["scenes"] = rows
        document["memory"] = memory
        print_scenes(rows)
        if against is not None:
            print()
            print_against(document["against"])
        print()
        print(
            f"memory after the frames: RSS {memory['rss_mib']:.1f} MiB, peak RSS (ru_maxrss) "
            f"{memory['peak_rss_mib']:.1f} MiB (RSS before loading the models {rss_before:.1f} MiB)"
        )

        if not args.no_peer:
            print()
            peer, why = import_peer()
            if peer is None:
                print(f"face_recognition is not importable ({why}); install it with:")
                print(f"    {PEER_INSTALL}")
                print("figures for ours only:")
                print()
            photos = bench_photos(analyzer, args.data_dir, peer)
            document["photos"] = photos
            print_photos(photos, backend_words)
            print()
            document["memory"]["peak_rss_after_photos_mib"] = round(peak_rss_mib(), 1)
            print(
                f"memory after the photos{' (both libraries loaded)' if peer is not None else ''}: "
                f"RSS {rss_mib():.1f} MiB, peak RSS {peak_rss_mib():.1f} MiB"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
