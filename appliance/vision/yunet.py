"""YuNet (libfacedetection): a single-shot face detector, faster than MTCNN, with the same five points.

The network takes BGR pixels in 0–255, NCHW, with height and width multiples of 32. For each stride
8, 16 and 32 it scores every grid cell (``sqrt(cls · obj)``) and regresses a box (centre offset and
log size in cells) and five landmarks (offsets in cells); boxes above the score threshold go through
NMS. Frames are scaled so their longer side is at most ``input_side`` and padded (bottom, right).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import cv2
import numpy as np

from engines.backends import InferenceBackend

from .boxes import nms
from .faces import Faces

STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class YunetSettings:
    """Detection parameters."""

    score_threshold: float = 0.6
    nms_threshold: float = 0.3
    input_side: int = 640
    min_face: int = 12


class YunetDetector:
    """YuNet on one loaded back-end (registry model ``yunet``)."""

    def __init__(self, backend: InferenceBackend, settings: YunetSettings = YunetSettings()) -> None:
        self.backend = backend
        self.settings = settings
        self._multiple = backend.spec.preprocessing.size_multiple

    def detect(self, image: np.ndarray) -> Faces:
        """Find faces in one ``(H, W, 3)`` uint8 BGR image."""
        height, width = image.shape[:2]
        scale = min(1.0, self.settings.input_side / max(height, width))
        if scale < 1.0:
            resized = cv2.resize(
                image,
                (max(1, round(width * scale)), max(1, round(height * scale))),
                interpolation=cv2.INTER_AREA,
            )
        else:
            resized = image
        rows, cols = resized.shape[:2]
        padded_rows = -(-rows // self._multiple) * self._multiple
        padded_cols = -(-cols // self._multiple) * self._multiple
        padded = cv2.copyMakeBorder(
            resized, 0, padded_rows - rows, 0, padded_cols - cols, cv2.BORDER_CONSTANT, value=0
        )
        outputs = self.backend.run(self.backend.spec.preprocessing.to_blob(padded[None]))
        boxes, scores, points = self._decode(outputs, padded_rows, padded_cols)
        keep = scores >= self.settings.score_threshold
        boxes, scores, points = boxes[keep], scores[keep], points[keep]
        keep = nms(boxes, scores, self.settings.nms_threshold)
        faces = Faces.of(boxes[keep], scores[keep], points[keep]).transformed(1.0 / scale)
        sides = np.minimum(faces.boxes[:, 2] - faces.boxes[:, 0], faces.boxes[:, 3] - faces.boxes[:, 1])
        return faces.take(sides >= self.settings.min_face)

    @staticmethod
    def _decode(outputs: dict, rows: int, cols: int) -> tuple:
        """All grid cells of all strides → boxes ``(K, 4)``, scores ``(K,)``, landmarks ``(K, 5, 2)``."""
        boxes: List[np.ndarray] = []
        scores: List[np.ndarray] = []
        points: List[np.ndarray] = []
        for stride in STRIDES:
            grid_cols = cols // stride
            cells = (rows // stride) * grid_cols
            cls = np.clip(outputs[f"cls_{stride}"][0, :cells, 0], 0, 1)
            obj = np.clip(outputs[f"obj_{stride}"][0, :cells, 0], 0, 1)
            bbox = outputs[f"bbox_{stride}"][0, :cells]
            kps = outputs[f"kps_{stride}"][0, :cells].reshape(-1, 5, 2)
            index = np.arange(cells)
            origin = np.stack([index % grid_cols, index // grid_cols], axis=1).astype(np.float32)
            centre = (origin + bbox[:, :2]) * stride
            size = np.exp(bbox[:, 2:4]) * stride
            boxes.append(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
            scores.append(np.sqrt(cls * obj))
            points.append((origin[:, None, :] + kps) * stride)
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
