"""Passive liveness (presentation-attack detection): the two MiniFASNet models of Silent-Face-Anti-Spoofing.

As upstream does: each model sees the face box scaled about its centre by its own factor (2.7 and
4.0, capped so the box fits the image, shifted inside it), resized to 80×80, BGR 0–255; the two
softmax outputs are summed; class 1 is "live". The live score is that sum's class-1 value / 2, in
[0, 1]; a face passes when it reaches the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np

from engines.backends import InferenceBackend

from .boxes import sample_patches

LIVE_CLASS = 1


@dataclass(frozen=True)
class LivenessResult:
    """Per face: ``scores`` ``(N,)`` float32 live probability, ``passed`` ``(N,)`` bool."""

    scores: np.ndarray
    passed: np.ndarray


def context_regions(boxes: np.ndarray, image_size: tuple, scale: float) -> np.ndarray:
    """Upstream's crop boxes: each face box scaled about its centre, capped and shifted into the image.

    Args:
        boxes: ``(N, 4)`` ``[x1, y1, x2, y2]``.
        image_size: ``(height, width)``.
        scale: the model's context factor (2.7, 4.0).

    Returns:
        ``(N, 4)`` continuous regions ``[left, top, right, bottom)`` in pixels.
    """
    height, width = image_size
    x, y = boxes[:, 0], boxes[:, 1]
    box_w = np.maximum(boxes[:, 2] - boxes[:, 0], 1.0)
    box_h = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    factor = np.minimum(np.minimum((height - 1) / box_h, (width - 1) / box_w), scale)
    new_w, new_h = box_w * factor, box_h * factor
    centre_x, centre_y = x + box_w / 2, y + box_h / 2
    left, right = centre_x - new_w / 2, centre_x + new_w / 2
    top, bottom = centre_y - new_h / 2, centre_y + new_h / 2
    # Shift into the image (upstream moves the box rather than cropping it).
    shift = np.where(left < 0, -left, 0.0)
    left, right = left + shift, right + shift
    shift = np.where(top < 0, -top, 0.0)
    top, bottom = top + shift, bottom + shift
    shift = np.where(right > width - 1, right - (width - 1), 0.0)
    left, right = left - shift, right - shift
    shift = np.where(bottom > height - 1, bottom - (height - 1), 0.0)
    top, bottom = top - shift, bottom - shift
    # Upstream takes integer corners and the pixels between them inclusively.
    left, top, right, bottom = (np.trunc(v) for v in (left, top, right, bottom))
    return np.stack([left, top, right + 1, bottom + 1], axis=1)


class LivenessChecker:
    """The fused MiniFASNet pair on loaded back-ends (registry kind ``liveness``)."""

    def __init__(self, backends: Sequence[InferenceBackend], threshold: float = 0.5) -> None:
        if not backends:
            raise ValueError("liveness needs at least one model")
        self.backends = list(backends)
        self.threshold = threshold

    def check(self, image: np.ndarray, boxes: np.ndarray) -> LivenessResult:
        """Live scores for the faces at ``boxes`` ``(N, 4)`` in ``image`` ``(H, W, 3)`` uint8 BGR."""
        return self.check_many([(image, boxes)])

    def check_many(self, faces: Sequence[Tuple[np.ndarray, np.ndarray]]) -> LivenessResult:
        """Live scores for the faces of several images (the frames of several cameras) in one model
        call per network.

        Args:
            faces: ``(image, boxes)`` pairs: ``(H, W, 3)`` uint8 BGR and its ``(N_i, 4)`` face boxes.

        Returns:
            one score per face, in the order of ``faces`` and of their boxes.
        """
        count = sum(len(boxes) for _, boxes in faces)
        if count == 0:
            return LivenessResult(np.zeros((0,), np.float32), np.zeros((0,), bool))
        total = np.zeros((count, 3), np.float64)
        for backend in self.backends:
            pre = backend.spec.preprocessing
            size = pre.input_size or (80, 80)
            patches = np.concatenate(
                [
                    sample_patches(
                        [(image, 1.0, 1.0)],
                        context_regions(boxes, image.shape[:2], pre.crop_scale or 1.0),
                        size,
                    )
                    for image, boxes in faces
                ]
            )
            logits = backend.run(pre.to_blob(patches))[backend.spec.outputs[0].name].astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            probabilities = np.exp(logits)
            total += probabilities / probabilities.sum(axis=1, keepdims=True)
        scores = (total[:, LIVE_CLASS] / len(self.backends)).astype(np.float32)
        return LivenessResult(scores, scores >= self.threshold)
