"""CPU against TensorRT on the same images: do both back-ends find the same faces and embed them alike?

The same vision code runs on both back-ends, so differences come from the engines alone (FP16/INT8
arithmetic, kernel choice). For each image both analyzers detect faces; every face the CPU finds
must have a TensorRT face over it with IoU of at least :data:`MIN_IOU`, and the counts must agree.
The CPU's aligned crops are then embedded by both embedders; each pair of embeddings must have a
cosine of at least :data:`MIN_COSINE`. Without images, only the embedders are compared, on
synthetic crops. ``face-appliance doctor`` and the ``gpu`` test suite use it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .vision.align import align_faces
from .vision.analyzer import FaceAnalyzer
from .vision.boxes import iou_matrix

logger = logging.getLogger(__name__)

#: The parity bars of issue 6: embeddings within cosine 0.99, the same detections (IoU 0.8).
MIN_COSINE = 0.99
MIN_IOU = 0.8
CROP_SIZE = 112


@dataclass
class ParityResult:
    """What the comparison found.

    Attributes:
        images: images compared.
        faces: faces the CPU back-end found.
        matched: of those, faces TensorRT found too (IoU >= ``min_iou``).
        worst_iou: lowest IoU among matched faces, ``None`` without faces.
        embeddings: embedding pairs compared.
        worst_cosine: lowest cosine between CPU and TensorRT embeddings, ``None`` without any.
        problems: one sentence per disagreement; empty when the back-ends agree.
    """

    images: int = 0
    faces: int = 0
    matched: int = 0
    worst_iou: Optional[float] = None
    embeddings: int = 0
    worst_cosine: Optional[float] = None
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """``3 images, 4/4 faces matched (IoU >= 0.93), 6 embeddings (cosine >= 0.9987)``."""
        parts = [f"{self.images} image(s)"]
        if self.images:
            iou = f" (IoU >= {self.worst_iou:.2f})" if self.worst_iou is not None else ""
            parts.append(f"{self.matched}/{self.faces} faces matched{iou}")
        if self.embeddings:
            parts.append(f"{self.embeddings} embeddings (cosine >= {self.worst_cosine:.4f})")
        return ", ".join(parts)


def match_faces(
    reference: np.ndarray, candidate: np.ndarray, min_iou: float = MIN_IOU
) -> List[Tuple[int, int, float]]:
    """Pair boxes of ``reference`` ``(N, 4)`` with boxes of ``candidate`` ``(M, 4)``, best IoU first.

    Each box is used once; pairs below ``min_iou`` are not made. Returns ``(i, j, iou)`` triples.
    """
    if not len(reference) or not len(candidate):
        return []
    overlaps = iou_matrix(np.asarray(reference, np.float32), np.asarray(candidate, np.float32))
    pairs: List[Tuple[int, int, float]] = []
    used_i, used_j = set(), set()
    for flat in np.argsort(-overlaps, axis=None):
        i, j = divmod(int(flat), overlaps.shape[1])
        value = float(overlaps[i, j])
        if value < min_iou:
            break
        if i in used_i or j in used_j:
            continue
        used_i.add(i)
        used_j.add(j)
        pairs.append((i, j, value))
    return pairs


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(N, D)`` arrays → ``(N,)`` float64."""
    a = np.asarray(first, np.float64)
    b = np.asarray(second, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def synthetic_crops(count: int = 8, seed: int = 0) -> np.ndarray:
    """``(count, 112, 112, 3)`` uint8 crops: smooth gradients with noise, a stand-in without images."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, CROP_SIZE, dtype=np.float64)
    crops = []
    for _ in range(count):
        base = rng.uniform(40, 200, size=3)
        slope = rng.uniform(-60, 60, size=(2, 3))
        image = base + ramp[:, None, None] * slope[0] + ramp[None, :, None] * slope[1]
        image = image + rng.normal(0, 12, size=(CROP_SIZE, CROP_SIZE, 3))
        crops.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(crops)


def compare(
    cpu: FaceAnalyzer,
    accelerated: FaceAnalyzer,
    images: Sequence[Tuple[str, np.ndarray]],
    min_iou: float = MIN_IOU,
    min_cosine: float = MIN_COSINE,
    crops: Optional[np.ndarray] = None,
) -> ParityResult:
    """Compare two analyzers on ``images`` (``(label, (H, W, 3) uint8 BGR)``) and on ``crops``.

    Args:
        cpu: the reference (CPU back-end).
        accelerated: the analyzer under test (TensorRT).
        crops: extra ``(N, 112, 112, 3)`` uint8 aligned crops for the embedders; by default
            :func:`synthetic_crops` when there are no images.
    """
    result = ParityResult()
    for label, image in images:
        result.images += 1
        reference = cpu.detect(image, still=True)
        found = accelerated.detect(image, still=True)
        result.faces += len(reference)
        if len(reference) != len(found):
            result.problems.append(
                f"{label}: the CPU back-end finds {len(reference)} face(s), TensorRT {len(found)}"
            )
        pairs = match_faces(reference.boxes, found.boxes, min_iou)
        result.matched += len(pairs)
        if len(pairs) < len(reference):
            result.problems.append(
                f"{label}: {len(reference) - len(pairs)} face(s) of the CPU back-end have no TensorRT face "
                f"with IoU >= {min_iou}"
            )
        for _, _, value in pairs:
            result.worst_iou = value if result.worst_iou is None else min(result.worst_iou, value)
        if len(reference):
            aligned = align_faces(image, reference.landmarks)
            _compare_embeddings(cpu, accelerated, aligned, label, min_cosine, result)
    if crops is None and not images:
        crops = synthetic_crops()
    if crops is not None and len(crops):
        _compare_embeddings(cpu, accelerated, crops, "synthetic crops", min_cosine, result)
    return result


def _compare_embeddings(
    cpu: FaceAnalyzer,
    accelerated: FaceAnalyzer,
    crops: np.ndarray,
    label: str,
    min_cosine: float,
    result: ParityResult,
) -> None:
    values = cosines(cpu.embedder.embed(crops), accelerated.embedder.embed(crops))
    result.embeddings += len(values)
    worst = float(values.min())
    result.worst_cosine = worst if result.worst_cosine is None else min(result.worst_cosine, worst)
    if worst < min_cosine:
        result.problems.append(f"{label}: embedding cosine {worst:.4f} < {min_cosine}")


__all__ = ["MIN_COSINE", "MIN_IOU", "ParityResult", "compare", "cosines", "match_faces", "synthetic_crops"]
