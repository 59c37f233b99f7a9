"""``face-appliance detect`` and ``face-appliance evaluate``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, Deque, Dict, Generator, List, Sequence, Union

import numpy as np

from engines.errors import FileReadError
from engines.files import read_bounded_text

from ..config import ApplianceConfig
from ..evaluation import plot_report, verification_report
from ..runtime.loading import load_analyzer
from ..vision.analyzer import Analysis
from ..vision.image import ImageError, read_image
from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_config_option, load_cli_config

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    detect = subparsers.add_parser(
        "detect",
        help="find faces in images: box, score, landmarks (and liveness when enabled)",
        description="Detect faces in each image. Exit 1 if an image could not be read.",
    )
    detect.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    detect.add_argument("--json", action="store_true", help="one JSON document on stdout")
    detect.add_argument("--liveness", action="store_true", help="check liveness even if the config does not")
    detect.add_argument("--min-face", type=int, default=None, help="override detector.min_face_px")
    add_config_option(detect)
    detect.set_defaults(handler=_detect)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="verification accuracy on a labelled folder: ROC AUC, EER, TAR at FAR; --liveness: APCER, BPCER",
        description="Embed the largest face of every labelled image, form all genuine and impostor "
        "pairs, and report ROC AUC, EER and TAR at FAR 0.1, 0.01, 0.001 with the threshold at each. "
        "Set match.threshold from the threshold at the FAR you need. With --liveness: score the "
        "largest face of every image labelled bona_fide or with an attack type (print, replay, mask, "
        "cutout, other) and report, per ISO/IEC 30107-3, APCER per attack type and their maximum, "
        "BPCER at liveness.threshold, BPCER20 and BPCER10 (at APCER 5 % and 10 %) with the threshold "
        "at each, and the images in which no face was found.",
    )
    evaluate.add_argument("dir", type=Path, metavar="DIR", help="folder the CSV's paths are relative to")
    evaluate.add_argument(
        "--labels",
        type=Path,
        required=True,
        metavar="CSV",
        help="CSV with columns path, identity (with --liveness: exactly path, label)",
    )
    evaluate.add_argument(
        "--liveness",
        action="store_true",
        help="evaluate liveness (presentation-attack detection) instead of recognition",
    )
    evaluate.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the figures as JSON")
    evaluate.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="ROC/DET curves and histograms (with --liveness: live scores per class and the DET)",
    )
    evaluate.add_argument("--min-face", type=int, default=None, help="override detector.min_face_px")
    evaluate.add_argument(
        "--enroll-per-identity",
        type=int,
        default=None,
        metavar="N",
        help="also the door's protocol: enrol N photos of each person, identify the rest "
        "at match.threshold (granted rate, rank-1, strangers granted)",
    )
    evaluate.add_argument(
        "--enroll-choice",
        choices=("first", "quality"),
        default="quality",
        help="with --enroll-per-identity: enrol each person's N best photos by face quality, as enrolment "
        "keeps them (default), or the first N in the CSV's order",
    )
    add_config_option(evaluate)
    evaluate.set_defaults(handler=_evaluate)


def _config(args: argparse.Namespace) -> ApplianceConfig:
    config = load_cli_config(args)
    if args.min_face is not None:
        config.detector.min_face_px = max(12, args.min_face)
    return config


def _face_json(analysis: Analysis, index: int) -> Dict[str, Any]:
    faces = analysis.faces
    item: Dict[str, Any] = {
        "box": [round(float(v), 1) for v in faces.xywh()[index]],
        "score": round(float(faces.scores[index]), 4),
        "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in faces.landmarks[index]],
        "liveness": None,
    }
    if analysis.liveness is not None:
        item["liveness"] = {
            "score": round(float(analysis.liveness.scores[index]), 4),
            "passed": bool(analysis.liveness.passed[index]),
        }
    return item


def _detect(args: argparse.Namespace) -> int:
    config = _config(args)
    results: List[Dict[str, Any]] = []
    failed = False
    with load_analyzer(config, liveness=True if args.liveness else None, embedder=False) as analyzer:
        for path in args.images:
            try:
                image = read_image(path)
            except ImageError as err:
                failed = True
                results.append({"image": str(path), "error": str(err), "faces": []})
                if not args.json:
                    sys.stderr.write(f"{err}\n")
                continue
            analysis = analyzer.analyze(image, still=True, embed=False)
            faces = [_face_json(analysis, i) for i in range(len(analysis.faces))]
            results.append(
                {"image": str(path), "width": image.shape[1], "height": image.shape[0], "faces": faces}
            )
            if not args.json:
                print(f"{path}: {len(faces)} face(s)")
                for number, face in enumerate(faces, 1):
                    x, y, w, h = face["box"]
                    live = ""
                    if face["liveness"] is not None:
                        verdict = "live" if face["liveness"]["passed"] else "SPOOF"
                        live = f"  liveness {face['liveness']['score']:.3f} {verdict}"
                    print(f"  {number}. box x={x} y={y} w={w} h={h}  score {face['score']:.3f}{live}")
        if args.json:
            print(json.dumps({"models": analyzer.model_versions, "images": results}, indent=2))
    return EXIT_FAILURE if failed else EXIT_OK


#: Largest labels CSV read (a million rows of short paths and names).
MAX_LABELS_BYTES = 64 * 1024 * 1024


def read_labels(path: Path) -> List[Dict[str, str]]:
    """Rows of a labels CSV with at least the columns ``path`` and ``identity``.

    Raises:
        ValueError: the file is not a readable regular file of at most :data:`MAX_LABELS_BYTES`, lacks
            those columns or has no rows.
    """
    try:
        text = read_bounded_text(path, MAX_LABELS_BYTES)
    except FileReadError as err:
        raise ValueError(f"the labels file {err}") from None
    with io.StringIO(text, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = {"path", "identity"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {', '.join(sorted(missing))}; found {reader.fieldnames}"
            )
        rows = [row for row in reader if row.get("path") and row.get("identity")]
    if not rows:
        raise ValueError(f"{path}: no labelled rows")
    return rows


#: Images ``evaluate`` decodes ahead of the one being analysed.
READ_AHEAD = 2


def _read_or_error(path: Path) -> Union[np.ndarray, ImageError]:
    try:
        return read_image(path)
    except ImageError as err:
        return err


def read_ahead(
    paths: Sequence[Path], ahead: int = READ_AHEAD
) -> Generator[Union[np.ndarray, ImageError], None, None]:
    """The image at each of ``paths`` (as :func:`read_image` returns it), or the :class:`ImageError`
    reading it raised, in order.

    A helper thread reads and decodes up to ``ahead`` images beyond the one the caller holds. OpenCV
    decodes with the GIL released, so where a core is free a photo is decoded while the one before is
    analysed: decoding is a fifth to a quarter of ``evaluate``'s work on photos of up to 12 MP. Only
    when the images are decoded changes, not what they are. Close the iterator to stop early.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending: Deque[Future] = deque()
        for path in paths:
            pending.append(pool.submit(_read_or_error, path))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _evaluate(args: argparse.Namespace) -> int:
    if args.liveness:
        return _evaluate_liveness(args)
    try:
        rows = read_labels(args.labels)
    except (OSError, ValueError) as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_CONFIG
    if args.enroll_per_identity is not None and args.enroll_per_identity < 1:
        sys.stderr.write(f"error: --enroll-per-identity must be at least 1, got {args.enroll_per_identity}\n")
        return EXIT_CONFIG
    config = _config(args)
    from ..vision.quality import assess

    crops: List[np.ndarray] = []
    qualities: List[float] = []
    labels: List[str] = []
    failed: List[Dict[str, str]] = []
    with load_analyzer(config, liveness=False) as analyzer:
        from tqdm import tqdm

        with closing(read_ahead([args.dir / row["path"] for row in rows])) as images:
            for row, image in tqdm(
                zip(rows, images), total=len(rows), desc="embedding", unit="image", disable=None
            ):
                if isinstance(image, ImageError):
                    failed.append({"path": row["path"], "reason": str(image)})
                    continue
                faces = analyzer.detect(image, still=True)
                largest = faces.largest()
                if largest is None:
                    failed.append({"path": row["path"], "reason": "no face found"})
                    continue
                analysis = analyzer.analyze(image, embed=False, faces=faces.take([largest]))
                assert analysis.crops is not None
                crops.append(analysis.crops[0])
                (quality,) = assess(analysis.faces.boxes, analysis.faces.landmarks, analysis.crops)
                qualities.append(quality.score)
                labels.append(row["identity"])
        if len(crops) < 2:
            sys.stderr.write(f"error: only {len(crops)} image(s) with a face; nothing to compare\n")
            return EXIT_FAILURE
        embeddings = analyzer.embedder.embed(np.stack(crops))
        models = analyzer.model_versions
    from ..evaluation import pair_scores

    genuine, impostor = pair_scores(embeddings, labels)
    try:
        report = verification_report(genuine, impostor)
    except ValueError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_FAILURE
    document = {
        **report.to_json(),
        "failed": failed,
        "images": {"labelled": len(rows), "embedded": len(crops), "identities": len(set(labels))},
        "models": models,
        "min_face_px": config.detector.min_face_px,
    }
    print(f"images: {len(rows)} labelled, {len(crops)} embedded, {len(set(labels))} identities")
    print(f"pairs: {report.genuine} genuine, {report.impostor} impostor")
    print(f"ROC AUC {report.auc:.5f}   EER {report.eer:.4f} at threshold {report.eer_threshold:.3f}")
    for key, tar in report.tar_at_far.items():
        if tar is None:
            print(f"TAR @ FAR {key}: not measurable")
        else:
            print(f"TAR @ FAR {key}: {tar:.4f}   threshold {report.thresholds[key]:.4f}")
    for note in report.notes:
        print(f"note: {note}")
    if args.enroll_per_identity is not None:
        from ..evaluation import door_protocol

        door = door_protocol(
            embeddings,
            labels,
            args.enroll_per_identity,
            config.match.threshold,
            qualities if args.enroll_choice == "quality" else None,
        ).to_json()
        document["door"] = door
        _print_door(door)
    for item in failed:
        print(f"failed: {item['path']}: {item['reason']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
    if args.plot:
        try:
            plot_report(genuine, impostor, report, str(args.plot))
        except ImportError:
            sys.stderr.write("error: --plot needs matplotlib: pip install 'face-appliance[plot]'\n")
            return EXIT_FAILURE
    return EXIT_OK


def _print_door(door: Dict[str, Any]) -> None:
    """The door's protocol in a few lines (see :class:`appliance.evaluation.DoorReport`)."""
    print(
        f"door: {door['per_identity']} photo(s) enrolled per person ({door['choice']}), "
        f"{door['enrolled_identities']} people, "
        f"threshold {door['threshold']:g}"
    )
    if door["genuine_probes"]:
        print(
            f"  granted {door['granted']} of {door['genuine_probes']} photos of enrolled people "
            f"({100 * door['granted_rate']:.1f} %), rank-1 {100 * door['rank1']:.1f} %, "
            f"granted as someone else {door['granted_as_someone_else']}"
        )
    else:
        print("  no enrolled person has another photo to identify")
    print(
        f"  strangers granted {door['strangers_granted']} of {door['stranger_probes']} photos of people not enrolled"
    )


def _evaluate_liveness(args: argparse.Namespace) -> int:
    """``evaluate --liveness``: the figures of :mod:`appliance.liveness_evaluation`."""
    from ..liveness_evaluation import (
        LivenessEvaluationError,
        LivenessLabelsError,
        evaluate_presentations,
        pad_report,
        plot_pad_report,
        read_presentations,
        report_lines,
    )

    if args.enroll_per_identity is not None:
        sys.stderr.write("error: --enroll-per-identity is for recognition; it does not go with --liveness\n")
        return EXIT_CONFIG
    try:
        presentations = read_presentations(args.labels, args.dir)
    except LivenessLabelsError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_CONFIG
    config = _config(args)
    with load_analyzer(config, liveness=True, embedder=False) as analyzer:
        from tqdm import tqdm

        with closing(read_ahead([item.file for item in presentations])) as images:
            progress = tqdm(images, total=len(presentations), desc="liveness", unit="image", disable=None)
            results, unreadable = evaluate_presentations(analyzer, presentations, progress)
        models = analyzer.model_versions
    try:
        report = pad_report(results, config.liveness.threshold)
    except LivenessEvaluationError as err:
        sys.stderr.write(f"error: {err}\n")
        for item in unreadable:
            sys.stderr.write(f"unreadable: {item['path']}: {item['reason']}\n")
        return EXIT_FAILURE
    for line in report_lines(report):
        print(line)
    for item in unreadable:
        print(f"unreadable: {item['path']} ({item['label']}): {item['reason']}")
    if args.json:
        document = {
            **report.to_json(),
            "unreadable": unreadable,
            "models": models,
            "min_face_px": config.detector.min_face_px,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
    if args.plot:
        try:
            plot_pad_report(report, args.plot)
        except ImportError:
            sys.stderr.write("error: --plot needs matplotlib: pip install 'face-appliance[plot]'\n")
            return EXIT_FAILURE
    return EXIT_FAILURE if unreadable else EXIT_OK
