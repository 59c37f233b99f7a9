"""INT8 (QDQ) against FP32 on the CPU back-end: per-model latency, and whole frames through the pipeline.

    python -m bench.int8 [--models-dir DIR] [--data-dir DIR] [--int8-dir DIR] [--runs N] [--frames N]
                         [--threads N] [--json OUT]

The INT8 models are the QDQ files ``face-appliance calibrate`` makes (``--int8-dir``: a folder laid
out like ``<calibrate --out>/int8`` or an installed ``{models.dir}/int8``). Without ``--int8-dir`` they
are made first, in a temporary folder, from a small calibration set built from ``--data-dir``
(multi-face photos, the videos and the anti-spoofing samples; 64 samples per model), with the
default method — quick, and what the figures below need, but not a calibration to install.

Per model: median and 90th percentile of ``--runs`` runs after a warm-up, FP32 and INT8 on the same
inputs (seeded uniform noise in the input's range: these networks have no data-dependent paths, so
the content does not change the time), and the FP32/INT8 ratio (above 1: INT8 is faster). Shapes:
P-Net at the first pyramid level of a 640×480 frame with a 40 px minimum face (192×144), R-Net a
batch of 64 candidates, O-Net a batch of 8, MobileFaceNet batch 1 and 8, each liveness model batch 1.

Whole frames: the same synthetic camera frames as ``bench.vision`` (one face a quarter of the frame
high, and a five-person TV still, at 640×480), ``analyze`` (detect + align + embed, no liveness) with
every model FP32, then with every model INT8.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from appliance.calibration_inputs import analyzer_from, vision_side
from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from calibration.report import open_backends
from calibration.sets import CALIBRATED_MODELS, build_sets, load_set
from engines.backends import InferenceBackend, open_model
from engines.backends.base import BackendOptions
from engines.backends.cpu import OnnxRuntimeBackend
from engines.int8 import int8_file
from engines.registry import get_model

from .machine import describe
from .vision import GROUP_PHOTO, SINGLE_FACE_PHOTOS, letterboxed_frame, noisy_copies, single_face_frame

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ROOT.parent / "shared" / "models"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
MIN_FACE_PX = 40
FRAME = (640, 480)
CALIBRATION_SOURCES = ("multi_face", "video", "antispoof")
CALIBRATION_COUNT = 64

#: (model, batch, input shape) — see the module docstring.
CASES: Tuple[Tuple[str, int, Tuple[int, ...]], ...] = (
    ("mtcnn-pnet", 1, (1, 192, 144, 3)),
    ("mtcnn-rnet", 64, (64, 24, 24, 3)),
    ("mtcnn-onet", 8, (8, 48, 48, 3)),
    ("mobilefacenet", 1, (1, 3, 112, 112)),
    ("mobilefacenet", 8, (8, 3, 112, 112)),
    ("minifasnet-v2", 1, (1, 3, 80, 80)),
    ("minifasnet-v1se", 1, (1, 3, 80, 80)),
)


def _stats_ms(samples: Sequence[float]) -> Dict[str, float]:
    values = np.asarray(samples, np.float64) * 1000
    return {"median": round(float(np.median(values)), 3), "p90": round(float(np.percentile(values, 90)), 3)}


def _time(call: Callable[[], object], runs: int) -> Dict[str, float]:
    call()  # warm-up: first-run allocations
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return _stats_ms(samples)


def _time_frames(analyzer: FaceAnalyzer, images: Sequence[np.ndarray], frames: int) -> Dict[str, float]:
    analyzer.analyze(images[0])  # warm-up at this frame size
    samples = []
    for index in range(frames):
        image = images[index % len(images)]
        started = time.perf_counter()
        analyzer.analyze(image)
        samples.append(time.perf_counter() - started)
    return _stats_ms(samples)


def _input_range(name: str) -> Tuple[float, float]:
    """The range the preprocessed input takes: MTCNN (x-127.5)/128, ImageNet-normalised, raw 0–255."""
    pre = get_model(name).preprocessing
    low = (0.0 * pre.input_scale - max(pre.mean)) / min(pre.std)
    high = (255.0 * pre.input_scale - min(pre.mean)) / min(pre.std)
    return low, high


def make_int8(config: ApplianceConfig, data_dir: Path, folder: Path) -> Dict[str, float]:
    """Build a small calibration set and quantize every model into ``folder``; seconds per model."""
    from calibration.quantize import fp32_model_bytes, quantize_model

    sets = folder / "sets"
    build_sets(
        vision_side(config),
        [data_dir / sub for sub in CALIBRATION_SOURCES],
        CALIBRATED_MODELS,
        sets,
        CALIBRATION_COUNT,
    )
    seconds: Dict[str, float] = {}
    for name in CALIBRATED_MODELS:
        spec = get_model(name)
        result = quantize_model(
            spec,
            fp32_model_bytes(spec, config.models.dir),
            load_set(sets, name),
            folder / int8_file(spec),
            threads=config.backend.threads,
        )
        seconds[name] = round(result.seconds, 1)
    return seconds


def bench_models(config: ApplianceConfig, int8_dir: Path, runs: int) -> List[Dict[str, Any]]:
    options = BackendOptions(threads=config.backend.threads)
    rows: List[Dict[str, Any]] = []
    for name, batch, shape in CASES:
        spec = get_model(name)
        low, high = _input_range(name)
        feeds = np.random.default_rng(0).uniform(low, high, shape).astype(np.float32)
        fp32: Optional[InferenceBackend] = None
        int8: Optional[InferenceBackend] = None
        try:
            fp32 = open_model("cpu", spec, config.models.dir, options)
            int8 = OnnxRuntimeBackend(spec, (int8_dir / int8_file(spec)).read_bytes(), options)
            before = _time(lambda backend=fp32, feeds=feeds: backend.run(feeds), runs)
            after = _time(lambda backend=int8, feeds=feeds: backend.run(feeds), runs)
        finally:
            for backend in (fp32, int8):
                if backend is not None:
                    backend.close()
        rows.append(
            {
                "model": name,
                "batch": batch,
                "input": "x".join(map(str, shape)),
                "fp32_ms": before,
                "int8_ms": after,
                "ratio": round(before["median"] / after["median"], 2),
            }
        )
    return rows


def bench_frames(
    config: ApplianceConfig, data_dir: Path, int8_dir: Path, frames: int
) -> List[Dict[str, Any]]:
    quantized = {name: (int8_dir / int8_file(get_model(name))).read_bytes() for name in CALIBRATED_MODELS}
    fp32_backends, int8_backends, backends = open_backends(
        config.models.dir, config.backend.threads, quantized, liveness=False
    )
    rows: List[Dict[str, Any]] = []
    try:
        fp32, int8 = analyzer_from(config, fp32_backends), analyzer_from(config, int8_backends)
        single = read_image(next(data_dir / p for p in SINGLE_FACE_PHOTOS if (data_dir / p).is_file()))
        scenes = [
            ("1 face", noisy_copies(single_face_frame(fp32, single, FRAME), 4, 0)),
            ("5 faces", noisy_copies(letterboxed_frame(read_image(data_dir / GROUP_PHOTO), FRAME), 4, 1)),
        ]
        for label, images in scenes:
            row: Dict[str, Any] = {"scene": label, "frame": f"{FRAME[0]}x{FRAME[1]}"}
            for precision, analyzer in (("fp32", fp32), ("int8", int8)):
                row[f"{precision}_faces"] = len(analyzer.detect(images[0]))
                row[f"{precision}_ms"] = _time_frames(analyzer, images, frames)
            row["ratio"] = round(row["fp32_ms"]["median"] / row["int8_ms"]["median"], 2)
            rows.append(row)
    finally:
        for backend in backends:
            backend.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--int8-dir", type=Path, default=None, help="QDQ models (default: make them now)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model and precision")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per scene and precision")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = one per core)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    config = validate_config(
        {
            "models": {"dir": str(args.models_dir)},
            "backend": {"type": "cpu", "threads": args.threads},
            "detector": {"min_face_px": MIN_FACE_PX},
        }
    )
    machine = describe()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    document: Dict[str, Any] = {"machine": machine, "runs": args.runs, "frames": args.frames}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as scratch:
        int8_dir = args.int8_dir
        if int8_dir is None:
            int8_dir = Path(scratch)
            print(f"making the INT8 models from {CALIBRATION_COUNT} samples per model of {args.data_dir} …")
            document["quantize_s"] = make_int8(config, args.data_dir, int8_dir)
        document["int8_dir"] = str(args.int8_dir) if args.int8_dir else "(made for this run)"
        models = bench_models(config, int8_dir, max(1, args.runs))
        frames = bench_frames(config, args.data_dir, int8_dir, max(1, args.frames))
    document["models"] = models
    document["frames_table"] = frames
    print(f"back-end cpu (ONNX Runtime), threads {args.threads} (0 = one per core); INT8 = QDQ models")
    print()
    print("| model | batch | input | FP32 ms median / p90 | INT8 ms median / p90 | FP32/INT8 |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for row in models:
        fp32, int8 = row["fp32_ms"], row["int8_ms"]
        print(
            f"| {row['model']} | {row['batch']} | {row['input']} | {fp32['median']:.2f} / {fp32['p90']:.2f} | "
            f"{int8['median']:.2f} / {int8['p90']:.2f} | {row['ratio']:.2f} |"
        )
    print()
    print("Whole frames, analyze (detect + align + embed, no liveness), min face 40 px:")
    print()
    print("| scene | frame | faces FP32 / INT8 | FP32 ms median / p90 | INT8 ms median / p90 | FP32/INT8 |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for row in frames:
        fp32, int8 = row["fp32_ms"], row["int8_ms"]
        print(
            f"| {row['scene']} | {row['frame']} | {row['fp32_faces']} / {row['int8_faces']} | "
            f"{fp32['median']:.2f} / {fp32['p90']:.2f} | {int8['median']:.2f} / {int8['p90']:.2f} | "
            f"{row['ratio']:.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
