"""The detectors' output: boxes, scores and five landmarks per face, as typed arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np


@dataclass(frozen=True)
class Faces:
    """Faces found in one image.

    Attributes:
        boxes: ``(N, 4)`` float32 ``[x1, y1, x2, y2]`` in pixels; the face covers ``[x1, x2) × [y1, y2)``.
        scores: ``(N,)`` float32 detector confidence in ``[0, 1]``.
        landmarks: ``(N, 5, 2)`` float32 ``(x, y)``: eye on the image left, eye on the image right,
            nose tip, mouth corner on the image left, mouth corner on the image right.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @classmethod
    def empty(cls) -> Faces:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32))

    @classmethod
    def of(cls, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray) -> Faces:
        """Build from any float arrays, checking shapes and casting to float32."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
        if not len(boxes) == len(scores) == len(landmarks):
            raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores, {len(landmarks)} landmark sets")
        return cls(boxes, scores, landmarks)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def take(self, indices: Union[Sequence[int], np.ndarray]) -> Faces:
        """The faces at ``indices`` (an index array or a boolean mask)."""
        index = np.asarray(indices)
        return Faces(self.boxes[index], self.scores[index], self.landmarks[index])

    @property
    def areas(self) -> np.ndarray:
        """``(N,)`` float32 box areas in pixels."""
        return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])

    def largest(self) -> Optional[int]:
        """Index of the face with the largest box, or ``None`` when there is none."""
        return int(np.argmax(self.areas)) if len(self) else None

    def xywh(self) -> np.ndarray:
        """``(N, 4)`` float32 ``[x, y, width, height]`` (the event schema's box format)."""
        out = self.boxes.copy()
        out[:, 2:] -= out[:, :2]
        return out

    def transformed(self, scale: float, offset_x: float = 0.0, offset_y: float = 0.0) -> Faces:
        """Coordinates mapped by ``p * scale + offset`` (from a resized or padded image back to the original)."""
        shift = np.array([offset_x, offset_y], np.float32)
        boxes = self.boxes * np.float32(scale) + np.tile(shift, 2)
        landmarks = self.landmarks * np.float32(scale) + shift
        return Faces(boxes.astype(np.float32), self.scores, landmarks.astype(np.float32))
