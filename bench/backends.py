"""Per-model inference latency on the CPU: our ONNX Runtime back-end next to OpenCV DNN (a peer
runtime many face projects use), on the same ONNX files, batch 1 and batch 8.

    python -m bench.backends [--models-dir DIR] [--runs N] [--json OUT]

Figures are medians over ``--runs`` runs after a warm-up; memory is the process's resident size
growth when the model was loaded. The table is what the README quotes, with the machine line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from engines.backends import open_model
from engines.prepare import load_model_bytes
from engines.registry import MODELS, ModelSpec
from engines.store import ModelStore

from .machine import describe, rss_mib

DEFAULT_MODELS = Path(__file__).resolve().parent.parent.parent / "shared" / "models"


def _median_ms(run: Callable[[], object], runs: int) -> float:
    run()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _opencv_runner(
    spec: ModelSpec, model: bytes, feeds: Dict[str, np.ndarray]
) -> Optional[Callable[[], object]]:
    """An OpenCV DNN forward pass over the same model and inputs, or None when OpenCV cannot load it."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        net = cv2.dnn.readNetFromONNX(np.frombuffer(model, np.uint8))
        (name,) = feeds
        net.setInput(feeds[name])
        names = [tensor.name for tensor in spec.outputs]
        net.forward(names)
    except cv2.error:
        return None

    def run() -> object:
        net.setInput(feeds[name])
        return net.forward(names)

    return run


def bench(models_dir: Path, runs: int) -> List[Dict[str, object]]:
    rows: List[Dict[str, object]] = []
    store = ModelStore(models_dir)
    for spec in MODELS:
        path = store.require(spec)
        for batch in (1, 8):
            rng = np.random.default_rng(0)
            feeds = {
                t.name: rng.uniform(-1, 1, t.concrete_shape(batch)).astype(np.float32) for t in spec.inputs
            }
            before = rss_mib()
            with open_model("cpu", spec, models_dir) as backend:
                loaded = rss_mib() - before
                ours = _median_ms(lambda backend=backend, feeds=feeds: backend.run(feeds), runs)
            opencv = _opencv_runner(spec, load_model_bytes(spec, path), feeds)
            peer = _median_ms(opencv, runs) if opencv is not None else None
            rows.append(
                {
                    "model": spec.name,
                    "batch": batch,
                    "input": "x".join(str(d) for d in spec.inputs[0].concrete_shape(batch)),
                    "onnxruntime_ms": round(ours, 2),
                    "opencv_dnn_ms": None if peer is None else round(peer, 2),
                    "rss_mib": round(loaded, 1),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    machine = describe()
    rows = bench(args.models_dir, args.runs)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    print()
    print("| model | batch | input | ONNX Runtime (ours) ms | OpenCV DNN ms | load RSS MiB |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for row in rows:
        peer = "cannot load" if row["opencv_dnn_ms"] is None else f"{row['opencv_dnn_ms']:.2f}"
        print(
            f"| {row['model']} | {row['batch']} | {row['input']} | {row['onnxruntime_ms']:.2f} | {peer} | {row['rss_mib']} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
