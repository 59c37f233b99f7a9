"""``face-appliance calibrate``: INT8 calibration sets, QDQ INT8 models, the INT8-vs-FP32 report and gate.

Steps (each with a progress bar):

1. with ``--images``: build the calibration sets from face images and videos into ``--out``
   (``<model>.npy`` + ``sets.json``; without ``--images`` the sets already there are used). The
   TensorRT engine builder reads the same sets (``backend.tensorrt.calibration_dir``, the default
   ``--out``);
2. quantize each model to a QDQ INT8 ONNX model (``<out>/int8/…``);
3. with ``--labelled``: compare INT8 with FP32 on the labelled folder (``<out>/report.json`` and
   ``report.png``), apply the ``[calibration]`` limits, and install the models of the groups that
   passed into ``calibration.int8_dir`` (unless ``--no-install``), where ``backend.int8 = true``
   makes the CPU back-end use them.

The calibration code takes the configuration and the vision pipeline as
:class:`calibration.interfaces.VisionSide` (:func:`appliance.calibration_inputs.vision_side`):
:mod:`calibration` itself imports only :mod:`engines` (DESIGN §3). This command is where both meet.

Exit codes: 0 every group passed (or nothing to gate with ``--no-install``), 1 a group failed the gate
(the limits it failed are printed; that group is not installed) or the work failed, 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_config_option, load_cli_config


def add_parser(subparsers: Any) -> None:
    from calibration.quantize import DEFAULT_METHOD, METHODS
    from calibration.sets import CALIBRATED_MODELS, DEFAULT_MAX_COUNT, MODEL_ALIASES

    parser = subparsers.add_parser(
        "calibrate",
        help="INT8: calibration sets, QDQ models, INT8-vs-FP32 report and gate, install",
        description="Build INT8 calibration sets from face images and videos, quantize the models to "
        "QDQ INT8 ONNX (ONNX Runtime's static quantizer), compare INT8 with FP32 on a labelled folder "
        "and install the models that pass the [calibration] limits. Exit 1 when a model fails them.",
    )
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        default=None,
        metavar="DIR",
        help="image and video files or folders to build the calibration sets from "
        "(default: reuse the sets in --out)",
    )
    parser.add_argument(
        "--labelled",
        type=Path,
        default=None,
        metavar="DIR",
        help="labelled folder to compare INT8 with FP32 on: one sub-folder per identity, or with --labels",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="CSV with columns path, identity (paths relative to --labelled), as `evaluate` reads",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="calibration sets, QDQ models and report (default: backend.tensorrt.calibration_dir)",
    )
    parser.add_argument(
        "--models",
        default=",".join(CALIBRATED_MODELS),
        metavar="LIST",
        help="comma-separated models to calibrate (default: all); short names: "
        + ", ".join(sorted(MODEL_ALIASES)),
    )
    parser.add_argument("--no-install", action="store_true", help="report and gate only, install nothing")
    parser.add_argument(
        "--max-count",
        type=int,
        default=DEFAULT_MAX_COUNT,
        metavar="N",
        help=f"most samples per calibration set (default {DEFAULT_MAX_COUNT})",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help=f"activation-range calibration method (default {DEFAULT_METHOD}: the best parity measured)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_option(parser)
    parser.set_defaults(handler=_calibrate)


def _calibrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from calibration.errors import CalibrationDataError
    from calibration.quantize import fp32_model_bytes, quantize_model
    from calibration.report import (
        PLOT_FILE,
        REPORT_FILE,
        REPORT_SCHEMA,
        compare,
        gate,
        install,
        open_pipelines,
        plot_comparison,
        write_report,
    )
    from calibration.sets import LIVENESS_MODELS, build_sets, load_set, read_sets, resolve_models, utc_now
    from engines.int8 import int8_file
    from engines.registry import get_model

    from ..calibration_inputs import labelled_items, vision_side

    if args.max_count < 1:
        sys.stderr.write(f"error: --max-count must be at least 1, got {args.max_count}\n")
        return EXIT_CONFIG
    if args.labelled is None and not args.no_install:
        sys.stderr.write(
            "error: installing needs the gate, and the gate needs a labelled folder: give --labelled DIR "
            "(or --no-install to only make the sets and the INT8 models)\n"
        )
        return EXIT_CONFIG
    if args.labels is not None and args.labelled is None:
        sys.stderr.write("error: --labels needs --labelled (the folder its paths are relative to)\n")
        return EXIT_CONFIG
    config = load_cli_config(args)
    try:
        models = resolve_models(args.models.split(","))
        items = labelled_items(args.labelled, args.labels) if args.labelled is not None else []
    except CalibrationDataError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_CONFIG
    out: Path = args.out or config.calibration_dir
    bars = not args.no_progress
    vision = vision_side(config)

    # 1. calibration sets
    if args.images:
        with tqdm(desc="calibration frames", unit="frame", disable=not bars or None) as bar:
            summary = build_sets(vision, args.images, models, out, args.max_count, progress=bar.update)
        print(
            f"calibration sets in {out}: "
            + ", ".join(f"{name} {s.count}" for name, s in summary.sets.items())
            + f" (from {sum(1 for n in summary.frame_counts if n)} sources, {len(summary.skipped)} skipped)"
        )
        for item in summary.skipped:
            print(f"skipped: {item.path}: {item.reason}")
        set_warnings = summary.warnings
    else:
        index = read_sets(out)
        print(f"using the calibration sets in {out} (made {index.get('created')})")
        set_warnings = list(index.get("warnings", []))
    for warning in set_warnings:
        print(f"warning: {warning}")

    # 2. QDQ models
    made: Dict[str, Tuple[bytes, Dict[str, Any]]] = {}
    skipped_models: List[str] = []
    for name in tqdm(models, desc="quantizing", unit="model", disable=not bars or None):
        spec = get_model(name)
        try:
            data = load_set(out, name)
        except CalibrationDataError as err:
            print(f"not quantized: {name}: {err}")
            skipped_models.append(name)
            continue
        result = quantize_model(
            spec,
            fp32_model_bytes(spec, config.models.dir),
            data,
            out / "int8" / int8_file(spec),
            method=args.method,
            threads=config.backend.threads,
        )
        made[name] = (result.path.read_bytes(), {"method": result.method, "samples": result.samples})
        print(f"{name}: {result.path} ({result.method}, {result.samples} samples, {result.seconds:.0f} s)")
    if not made:
        sys.stderr.write("error: no model could be quantized (no calibration samples)\n")
        return EXIT_FAILURE
    if not items:
        print(f"no labelled folder: the INT8 models are in {out / 'int8'}, not compared and not installed")
        return EXIT_FAILURE if skipped_models else EXIT_OK

    # 3. report, gate, install
    quantized = list(made)
    liveness = any(name in LIVENESS_MODELS for name in quantized)
    fp32, int8, backends = open_pipelines(vision, {name: qdq for name, (qdq, _) in made.items()}, liveness)
    try:
        with tqdm(total=len(items), desc="INT8 vs FP32", unit="image", disable=not bars or None) as bar:
            comparison = compare(vision, fp32, int8, items, quantized, progress=bar.update)
    finally:
        for backend in backends:
            backend.close()
    results = gate(comparison.document, config.calibration, quantized)

    document = {
        "schema": REPORT_SCHEMA,
        "created": utc_now(),
        "labelled_dir": str(args.labelled),
        "calibration_sets": str(out),
        "method": args.method,
        "models": {name: details for name, (_, details) in made.items()},
        "calibration_set_warnings": set_warnings,
        **comparison.document,
        "gate": {
            "limits": config.calibration.model_dump(exclude={"int8_dir"}),
            "groups": {result.group: result.to_json() for result in results},
        },
    }
    report_path, plot_path = out / REPORT_FILE, out / PLOT_FILE
    write_report(report_path, document)
    _print_report(document)
    plotted = True
    try:
        plot_comparison(comparison, plot_path)
    except ImportError:
        plotted = False
        print("note: no plot (matplotlib is not installed: pip install 'face-appliance[plot]')")
    print(f"report: {report_path}" + (f", plot: {plot_path}" if plotted else ""))
    for result in results:
        verdict = "passed" if result.passed else "FAILED"
        print(f"gate {result.group} ({', '.join(result.models)}): {verdict}")
        for failure in result.failures:
            print(f"  limit failed: {failure}")
        for note in result.notes:
            print(f"  note: {note}")
    if args.no_install:
        print("--no-install: nothing installed")
    else:
        installed = install(config.int8_dir, results, made, report_path, plot_path if plotted else None)
        for path in installed:
            print(f"installed: {path}")
        if installed:
            print(f"set backend.int8 = true to run them on the CPU back-end (models in {config.int8_dir})")
    if skipped_models:
        return EXIT_FAILURE
    return EXIT_OK if all(result.passed for result in results) else EXIT_FAILURE


def _print_report(document: Dict[str, Any]) -> None:
    labelled = document["labelled"]
    print(
        f"labelled: {labelled['images']} images, {labelled['identities']} identities, "
        f"{labelled['with_face']} with a face, {len(labelled['unreadable'])} unreadable"
    )
    detection = document.get("detection")
    if detection:
        agreement, mean_iou = detection["agreement"], detection["mean_iou"]
        print(
            f"MTCNN: {detection['matched']} of {detection['fp32_faces']} FP32 faces found by INT8 "
            f"(IoU >= {detection['iou_threshold']})"
            + (f": agreement {agreement:.4f}, mean IoU {mean_iou:.4f}" if agreement is not None else "")
            + f"; INT8 found {detection['int8_faces']} faces"
        )
    embedder = document.get("embedder")
    if embedder and embedder.get("faces"):
        cosine = embedder["cosine"]
        print(
            f"embedder: {embedder['faces']} faces, cosine INT8 vs FP32 mean {cosine['mean']:.5f} min {cosine['min']:.5f}"
        )
        for precision in ("fp32", "int8"):
            figures = embedder.get(precision) or {}
            tars = figures.get("tar_at_far") or {}
            cells = [
                f"TAR@FAR {key} {'–' if value is None else f'{value:.4f}'}" for key, value in tars.items()
            ]
            print(
                f"  {precision.upper()}: ROC AUC {figures.get('auc', float('nan')):.5f}  " + "  ".join(cells)
            )
    liveness = document.get("liveness")
    if liveness and liveness.get("faces"):
        diff = liveness["score_abs_diff"]
        print(
            f"liveness: {liveness['faces']} faces, same decision on {liveness['decision_agreement']:.4f}, "
            f"|score difference| mean {diff['mean']:.4f} max {diff['max']:.4f}"
        )
