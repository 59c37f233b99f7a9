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
    regions = np.empty((len(boxes), 4), left.dtype)
    regions[:, 0], regions[:, 1], regions[:, 2], regions[:, 3] = left, top, right, bottom
    np.trunc(regions, out=regions)
    regions[:, 2:] += 1
    return regions


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


#: A sample "has colour" when two of its channels differ by more than this (0–255): skin differs by
#: tens of levels between red and blue; a greyscale picture stored as BGR (an infrared / night-mode
#: camera, a grey photo) by a few at most, from compression.
COLOUR_LEVELS = 8
#: A face region is colourless when at most this share of its samples has colour.
COLOURLESS_SHARE = 0.05


def colourless(image: np.ndarray, boxes: np.ndarray) -> bool:
    """Whether every face region is without colour — what MiniFASNet cannot judge: it refuses nearly
    every live face in greyscale (``evaluate --liveness``: 3 of 71 colour photos turned grey pass,
    against 66 of 71 in colour).

    Args:
        image: ``(H, W, 3)`` uint8 BGR.
        boxes: ``(N, 4)`` ``[x1, y1, x2, y2]`` face boxes, N ≥ 1 (``False`` for none).

    Each region is sampled on a grid of at most 16 × 16 pixels, so the cost does not grow with the face.
    """
    height, width = image.shape[:2]
    if not len(boxes):
        return False
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64):
        left, top = int(np.clip(x1, 0, width - 1)), int(np.clip(y1, 0, height - 1))
        right, bottom = int(np.clip(np.ceil(x2), left + 1, width)), int(np.clip(np.ceil(y2), top + 1, height))
        step_x, step_y = max(1, (right - left) // 16), max(1, (bottom - top) // 16)
        samples = image[top:bottom:step_y, left:right:step_x].reshape(-1, 3).astype(np.int16)
        spread = samples.max(axis=1) - samples.min(axis=1)
        if np.mean(spread > COLOUR_LEVELS) > COLOURLESS_SHARE:
            return False
    return True
