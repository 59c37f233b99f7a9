"""INT8 against FP32 on a labelled folder, the gate that decides what is installed, and the install.

Both pipelines run on the CPU back-end through the same vision code — the appliance's, built by
``vision.build`` (:class:`calibration.interfaces.VisionSide`; this package does not reach the
vision code directly, DESIGN §3): FP32 with the registry models, INT8 with the QDQ models in place
of the FP32 ones that were quantized. On every labelled image:

* **detection** (when an MTCNN stage is INT8): both detect (``still=True``, as ``evaluate`` does);
  each FP32 face is matched one-to-one to an INT8 face, best overlap first; the agreement is the
  share of FP32 faces with a match of IoU ≥ :data:`MATCH_IOU`, and the mean IoU is over FP32 faces
  (0 for an unmatched one);
* **embeddings** (when the embedder is INT8): the largest FP32 face is aligned once and the *same*
  crop is embedded by both; the cosine between the two embeddings of each face, and the
  verification figures of each (all genuine and impostor pairs: ROC AUC, EER, TAR at FAR 1e-1, 1e-2,
  1e-3, the figures ``evaluate`` reports, through ``vision.measures``) — also, for information,
  those of the INT8 pipeline end to end (INT8 detection, alignment and embedding);
* **liveness** (when a liveness model is INT8): both score every FP32 face; the score difference and
  the share of faces given the same decision at ``liveness.threshold``.

The gate (:func:`gate`) applies the ``[calibration]`` limits per group of models — MTCNN (its three
stages go together), the embedder, the liveness pair — and :func:`install` installs the QDQ models of
the groups that passed (:mod:`engines.int8`), with the report.

The labelled images come as :class:`Labelled` items: the folder's layouts (``evaluate``'s CSV, or
one sub-folder per identity) are the appliance's to read (``appliance.calibration_inputs``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from engines.backends import InferenceBackend, open_model
from engines.backends.base import BackendOptions
from engines.files import atomic_writer
from engines.int8 import install as install_int8
from engines.registry import LIVENESS_MODELS, get_model

from .errors import SourceError
from .interfaces import FacePipeline, GateLimits, Measures, Verification, VisionSide
from .sets import EMBEDDER_MODEL, MTCNN_MODELS, utc_now

logger = logging.getLogger(__name__)

REPORT_SCHEMA = 1
REPORT_FILE = "report.json"
PLOT_FILE = "report.png"
#: An INT8 face "is" an FP32 face when their boxes overlap at least this much.
MATCH_IOU = 0.8
#: The FARs whose TAR the gate compares, as the report's keys (those of ``Verification.tar_at_far``:
#: 1e-2 and 1e-3); a folder too small to measure the first fails the gate.
GATED_FARS: Tuple[str, ...] = ("0.01", "0.001")

#: Models gated (and installed) together.
GROUPS: Dict[str, Tuple[str, ...]] = {
    "mtcnn": MTCNN_MODELS,
    "embedder": (EMBEDDER_MODEL,),
    "liveness": LIVENESS_MODELS,
}


# -- the labelled images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """One labelled image: its path and its identity."""

    path: Path
    identity: str


# -- pure comparisons ----------------------------------------------------------------------------------


def match_overlaps(overlaps: np.ndarray) -> np.ndarray:
    """One-to-one matching of boxes from their overlaps, best overlap first.

    Args:
        overlaps: ``(N, M)`` IoU of each reference box (FP32 faces) with each candidate (INT8 faces).

    Returns:
        ``(N,)`` float32: the IoU of each reference box with the candidate matched to it, 0 when none
        overlaps (each candidate is matched at most once).
    """
    best = np.zeros((overlaps.shape[0],), np.float32)
    if not overlaps.size:
        return best
    order = np.argsort(-overlaps, axis=None, kind="stable")
    used_reference, used_candidate = set(), set()
    for flat in order:
        row, col = divmod(int(flat), overlaps.shape[1])
        value = float(overlaps[row, col])
        if value <= 0:
            break
        if row in used_reference or col in used_candidate:
            continue
        used_reference.add(row)
        used_candidate.add(col)
        best[row] = value
    return best


def cosine_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``(N, D)`` arrays → ``(N,)`` float64."""
    a = first.astype(np.float64)
    b = second.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(axis=1) / norms


def _summary(values: np.ndarray) -> Dict[str, Optional[float]]:
    if not len(values):
        return {"mean": None, "min": None, "p01": None, "p05": None, "max": None}
    return {
        "mean": float(values.mean()),
        "min": float(values.min()),
        "p01": float(np.percentile(values, 1)),
        "p05": float(np.percentile(values, 5)),
        "max": float(values.max()),
    }


# -- running both pipelines ----------------------------------------------------------------------------


@dataclass
class Comparison:
    """What :func:`compare` measured: the JSON document and the arrays the plot draws.

    Attributes:
        document: the report (see :func:`compare`).
        cosines: ``(F,)`` INT8-vs-FP32 cosine per embedded face (empty when the embedder is FP32).
        scores: per precision (``"fp32"``, ``"int8"``), the ``(genuine, impostor)`` pair scores.
        ious: ``(K,)`` matched IoU per FP32 face (detection).
        live: ``(L, 2)`` FP32 and INT8 live scores per face.
    """

    document: Dict[str, Any]
    cosines: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    scores: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    ious: np.ndarray = field(default_factory=lambda: np.zeros((0,)))
    live: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))


def open_backends(
    models_dir: Path, threads: int, int8: Mapping[str, bytes], liveness: bool
) -> Tuple[Dict[str, InferenceBackend], Dict[str, InferenceBackend], List[InferenceBackend]]:
    """The FP32 and the INT8 models on the CPU back-end, and every back-end to close afterwards.

    Args:
        models_dir: the registry's FP32 model files.
        threads: ONNX Runtime threads (0: one per core).
        int8: QDQ model bytes by registry name; the other models are FP32 in both sets.
        liveness: load the liveness models.

    Returns:
        ``(fp32, int8, opened)``: back-ends by registry name (the MTCNN stages, the embedder, and the
        liveness models when asked for) — a model not in ``int8`` is the same back-end in both —
        and the list of every back-end opened.

    Raises:
        EngineError: a model is missing or does not load.
    """
    from engines.backends.cpu import OnnxRuntimeBackend

    options = BackendOptions(threads=threads)
    names = [*MTCNN_MODELS, EMBEDDER_MODEL, *(LIVENESS_MODELS if liveness else ())]
    opened: List[InferenceBackend] = []
    try:
        fp32: Dict[str, InferenceBackend] = {}
        quantized: Dict[str, InferenceBackend] = {}
        for name in names:
            spec = get_model(name)
            fp32[name] = open_model("cpu", spec, models_dir, options)
            opened.append(fp32[name])
            if name in int8:
                quantized[name] = OnnxRuntimeBackend(spec, int8[name], options)
                opened.append(quantized[name])
            else:
                quantized[name] = fp32[name]
    except BaseException:
        for backend in opened:
            backend.close()
        raise
    return fp32, quantized, opened


def open_pipelines(
    vision: VisionSide, int8: Mapping[str, bytes], liveness: bool
) -> Tuple[FacePipeline, FacePipeline, List[InferenceBackend]]:
    """The FP32 and the INT8 pipeline on the CPU back-end, and every back-end to close afterwards.

    Args:
        vision: the models folder, the CPU threads and the pipeline builder.
        int8: QDQ model bytes by registry name; the other models are FP32 in both pipelines.
        liveness: load the liveness models.

    Raises:
        EngineError: a model is missing or does not load.
    """
    fp32, quantized, opened = open_backends(vision.models_dir, vision.threads, int8, liveness)
    try:
        return vision.build(fp32), vision.build(quantized), opened
    except BaseException:
        for backend in opened:
            backend.close()
        raise


def compare(
    vision: VisionSide,
    fp32: FacePipeline,
    int8: FacePipeline,
    items: Sequence[Labelled],
    quantized: Sequence[str],
    progress: Optional[Callable[[int], None]] = None,
) -> Comparison:
    """Measure INT8 against FP32 on the labelled images (see the module docstring).

    Args:
        vision: the decoder the images are read with and the measures.
        fp32, int8: the two pipelines (:func:`open_pipelines`).
        items: the labelled images.
        quantized: registry names of the models that are INT8 in ``int8``; a section is measured
            only when one of its models is.
        progress: called with 1 after each image.

    Returns:
        The comparison; its document has ``labelled`` (counts, unreadable images, images without
        a face), ``detection``, ``embedder`` and ``liveness`` (``None`` when not measured).
    """
    check_detection = any(name in quantized for name in MTCNN_MODELS)
    check_embedder = EMBEDDER_MODEL in quantized
    threshold = fp32.liveness_threshold
    check_liveness = any(name in quantized for name in LIVENESS_MODELS) and threshold is not None
    unreadable: List[Dict[str, str]] = []
    no_face: List[str] = []
    crops: List[np.ndarray] = []
    labels: List[str] = []
    pipeline_crops: List[np.ndarray] = []
    pipeline_labels: List[str] = []
    ious: List[np.ndarray] = []
    int8_faces = 0
    live: List[np.ndarray] = []
    for item in items:
        try:
            image = vision.decoder.read_image(item.path)
        except SourceError as err:
            unreadable.append({"path": str(item.path), "reason": str(err)})
            if progress is not None:
                progress(1)
            continue
        faces = fp32.find(image)
        if check_detection or check_embedder:
            found = int8.find(image) if check_detection else faces
            if check_detection:
                ious.append(match_overlaps(vision.measures.iou_matrix(faces.boxes, found.boxes)))
                int8_faces += len(found)
            if check_embedder and found.largest is not None:
                pipeline_crops.append(found.largest)
                pipeline_labels.append(item.identity)
        if faces.largest is None:
            no_face.append(str(item.path))
        else:
            crops.append(faces.largest)
            labels.append(item.identity)
            if check_liveness:
                reference = fp32.live_scores(image, faces.boxes)
                candidate = int8.live_scores(image, faces.boxes)
                live.append(np.stack([reference, candidate], axis=1))
        if progress is not None:
            progress(1)

    comparison = Comparison(
        {
            "labelled": {
                "images": len(items),
                "identities": len({item.identity for item in items}),
                "with_face": len(crops),
                "unreadable": unreadable,
                "no_face": no_face,
            },
            "detection": None,
            "embedder": None,
            "liveness": None,
        }
    )
    if check_detection:
        matched = np.concatenate(ious) if ious else np.zeros((0,), np.float32)
        comparison.ious = matched
        comparison.document["detection"] = {
            "iou_threshold": MATCH_IOU,
            "fp32_faces": len(matched),
            "int8_faces": int8_faces,
            "matched": int((matched >= MATCH_IOU).sum()),
            "agreement": float((matched >= MATCH_IOU).mean()) if len(matched) else None,
            "mean_iou": float(matched.mean()) if len(matched) else None,
        }
    if check_embedder:
        measures = vision.measures
        comparison.document["embedder"] = _embedder_section(measures, fp32, int8, crops, labels, comparison)
        if len(pipeline_crops) >= 2:
            embeddings = int8.embed(np.stack(pipeline_crops))
            section = comparison.document["embedder"]
            try:
                report = measures.verification_report(*measures.pair_scores(embeddings, pipeline_labels))
                section["int8_pipeline"] = {"faces": len(pipeline_crops), **report.to_json()}
            except ValueError as err:
                section["int8_pipeline"] = {"faces": len(pipeline_crops), "error": str(err)}
    if check_liveness and threshold is not None:
        pairs = np.concatenate(live) if live else np.zeros((0, 2), np.float32)
        comparison.live = pairs
        same = (pairs[:, 0] >= threshold) == (pairs[:, 1] >= threshold)
        difference = np.abs(pairs[:, 0] - pairs[:, 1]).astype(np.float64)
        comparison.document["liveness"] = {
            "faces": len(pairs),
            "threshold": threshold,
            "decision_agreement": float(same.mean()) if len(pairs) else None,
            "score_abs_diff": _summary(difference),
            "fp32_live": int((pairs[:, 0] >= threshold).sum()),
            "int8_live": int((pairs[:, 1] >= threshold).sum()),
        }
    return comparison


def _embedder_section(
    measures: Measures,
    fp32: FacePipeline,
    int8: FacePipeline,
    crops: Sequence[np.ndarray],
    labels: Sequence[str],
    comparison: Comparison,
) -> Dict[str, Any]:
    if not crops:
        return {"faces": 0, "cosine": _summary(np.zeros((0,))), "fp32": None, "int8": None, "tar_drop": {}}
    batch = np.stack(crops)
    reference = fp32.embed(batch)
    candidate = int8.embed(batch)
    cosines = cosine_rows(reference, candidate)
    comparison.cosines = cosines
    section: Dict[str, Any] = {"faces": len(crops), "cosine": _summary(cosines)}
    reports: Dict[str, Verification] = {}
    for precision, embeddings in (("fp32", reference), ("int8", candidate)):
        genuine, impostor = measures.pair_scores(embeddings, labels)
        comparison.scores[precision] = (genuine, impostor)
        try:
            reports[precision] = measures.verification_report(genuine, impostor)
            section[precision] = reports[precision].to_json()
        except ValueError as err:
            section[precision] = {"error": str(err)}
    drops: Dict[str, Optional[float]] = {}
    for key in GATED_FARS:
        before = reports["fp32"].tar_at_far.get(key) if "fp32" in reports else None
        after = reports["int8"].tar_at_far.get(key) if "int8" in reports else None
        drops[key] = None if before is None or after is None else float(before - after)
    section["tar_drop"] = drops
    return section


# -- the gate ------------------------------------------------------------------------------------------


@dataclass
class GateResult:
    """The verdict on one group of models.

    Attributes:
        group: ``"mtcnn"``, ``"embedder"`` or ``"liveness"``.
        models: the group's quantized models.
        failures: one sentence per limit not met (empty when it passed).
        checks: one sentence per limit checked, met or not.
        notes: what could not be checked and did not count.
    """

    group: str
    models: Tuple[str, ...]
    failures: List[str] = field(default_factory=list)
    checks: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> Dict[str, Any]:
        return {
            "models": list(self.models),
            "passed": self.passed,
            "failures": self.failures,
            "checks": self.checks,
            "notes": self.notes,
        }


def _limit(
    result: GateResult, what: str, value: Optional[float], limit: float, at_least: bool, key: str
) -> None:
    if value is None:
        result.failures.append(f"{what} not measured (no data); calibration.{key} {limit} cannot be checked")
        return
    ok = value >= limit if at_least else value <= limit
    sign = ">=" if at_least else "<="
    sentence = f"{what} {value:.4f} {'meets' if ok else 'fails'} calibration.{key} {sign} {limit}"
    result.checks.append(sentence)
    if not ok:
        result.failures.append(sentence)


def gate(document: Mapping[str, Any], limits: GateLimits, quantized: Sequence[str]) -> List[GateResult]:
    """Apply the limits (the configuration's ``[calibration]``) to each group that has a quantized model;
    see the module docstring."""
    results: List[GateResult] = []
    for group, members in GROUPS.items():
        models = tuple(name for name in members if name in quantized)
        if not models:
            continue
        result = GateResult(group, models)
        if group == "mtcnn":
            section = document.get("detection") or {}
            _limit(
                result,
                f"detection agreement (IoU >= {MATCH_IOU})",
                section.get("agreement"),
                limits.min_detection_agreement,
                True,
                "min_detection_agreement",
            )
        elif group == "embedder":
            section = document.get("embedder") or {}
            cosine = (section.get("cosine") or {}).get("mean")
            _limit(
                result, "mean cosine INT8 vs FP32", cosine, limits.min_cosine_mean, True, "min_cosine_mean"
            )
            drops = section.get("tar_drop") or {}
            for index, key in enumerate(GATED_FARS):
                drop = drops.get(key)
                if drop is None and index > 0:
                    result.notes.append(
                        f"TAR at FAR {key} not measurable on this labelled folder (too few impostor pairs); "
                        "not gated"
                    )
                    continue
                _limit(result, f"TAR drop at FAR {key}", drop, limits.max_tar_drop, False, "max_tar_drop")
        else:
            section = document.get("liveness") or {}
            _limit(
                result,
                "liveness decision agreement",
                section.get("decision_agreement"),
                limits.min_liveness_agreement,
                True,
                "min_liveness_agreement",
            )
        results.append(result)
    return results


# -- files ---------------------------------------------------------------------------------------------


def write_report(path: Path, document: Mapping[str, Any]) -> None:
    """Write the report as JSON, atomically."""
    with atomic_writer(path) as stream:
        stream.write(json.dumps(document, indent=2).encode("utf-8"))


def plot_comparison(comparison: Comparison, path: Path) -> None:
    """Cosine histogram, ROC of both precisions, detection IoU and liveness scores, in one PNG.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'face-appliance[plot]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ((cosine, roc), (iou, live)) = plt.subplots(2, 2, figsize=(12, 9))
    if len(comparison.cosines):
        cosine.hist(comparison.cosines, bins=50, color="tab:blue")
        cosine.axvline(float(comparison.cosines.mean()), color="k", linestyle="--", label="mean")
        cosine.legend()
    cosine.set(xlabel="cosine, INT8 vs FP32 embedding of the same crop", ylabel="faces", title="embedder")
    for precision, (genuine, impostor) in comparison.scores.items():
        if not len(genuine) or not len(impostor):
            continue
        thresholds = np.unique(np.concatenate([genuine, impostor]))
        far = 1.0 - np.searchsorted(np.sort(impostor), thresholds, side="left") / len(impostor)
        tar = 1.0 - np.searchsorted(np.sort(genuine), thresholds, side="left") / len(genuine)
        roc.semilogx(np.maximum(far, 0.5 / len(impostor)), tar, label=precision.upper())
    roc.set(xlabel="false accept rate", ylabel="true accept rate", title="ROC, FP32 and INT8")
    roc.grid(True, which="both", alpha=0.3)
    if comparison.scores:
        roc.legend(loc="lower right")
    if len(comparison.ious):
        iou.hist(comparison.ious, bins=np.linspace(0, 1, 41), color="tab:green")
        iou.axvline(MATCH_IOU, color="k", linestyle="--", label=f"match IoU {MATCH_IOU}")
        iou.legend()
    iou.set(xlabel="IoU of each FP32 face with its INT8 match", ylabel="faces", title="MTCNN")
    if len(comparison.live):
        live.scatter(comparison.live[:, 0], comparison.live[:, 1], s=8)
        live.plot([0, 1], [0, 1], "k--", linewidth=1)
    live.set(xlabel="FP32 live score", ylabel="INT8 live score", title="liveness", xlim=(0, 1), ylim=(0, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def install(
    folder: Path,
    results: Sequence[GateResult],
    models: Mapping[str, Tuple[bytes, Mapping[str, Any]]],
    report: Path,
    plot: Optional[Path] = None,
) -> List[Path]:
    """Install the QDQ models of the groups that passed into ``folder``, with the report.

    Args:
        folder: the INT8 folder the CPU back-end reads with ``backend.int8`` (the configuration's
            ``int8_dir``).
        results: the gate's verdicts.
        models: per registry name, the QDQ bytes and what the index records about it (method, samples…).
        report, plot: the report (and plot) copied next to the models.

    Returns:
        The installed model files. Nothing is installed for a group that failed.
    """
    installed: List[Path] = []
    passed = [result for result in results if result.passed]
    if not passed:
        return installed
    for result in passed:
        for name in result.models:
            qdq, details = models[name]
            entry = {**dict(details), "gate_passed": True, "installed": utc_now(), "report": REPORT_FILE}
            installed.append(install_int8(folder, get_model(name), qdq, entry))
    with atomic_writer(folder / REPORT_FILE) as stream:
        stream.write(report.read_bytes())
    if plot is not None and plot.is_file():
        with atomic_writer(folder / PLOT_FILE) as stream:
            stream.write(plot.read_bytes())
    return installed
