"""Face quality from what the detector already gives: size, sharpness of the aligned crop, head pose.

The pose is estimated from the five landmarks (no extra model): yaw from how far the nose sits from
the midpoint of the eyes, relative to the eye distance; pitch from where the nose sits between the
eye line and the mouth line. They are coarse (±10°) but enough to refuse a profile photo at
enrolment and to prefer frontal frames in a track.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import cv2
import numpy as np

#: Nose height between the eye line (0) and the mouth line (1) on a frontal face, as MTCNN places the
#: points: the median over the 98 portraits of shared/data (the ArcFace template's 0.49 reads as
#: everyone looking 10° down).
FRONTAL_NOSE_HEIGHT = 0.58


@dataclass(frozen=True)
class FaceQuality:
    """Per face: ``size`` (shorter box side, px), ``sharpness`` (variance of the Laplacian of the
    aligned gray crop), ``yaw`` and ``pitch`` (degrees, signed), and ``score`` in [0, 1]."""

    size: float
    sharpness: float
    yaw: float
    pitch: float
    score: float


def head_pose(landmarks: np.ndarray) -> np.ndarray:
    """Estimated ``(yaw, pitch)`` in degrees per face from ``(N, 5, 2)`` landmarks → ``(N, 2)`` float32."""
    points = np.asarray(landmarks, np.float64)
    left_eye, right_eye, nose = points[:, 0], points[:, 1], points[:, 2]
    mouth = (points[:, 3] + points[:, 4]) / 2
    eyes = (left_eye + right_eye) / 2
    eye_axis = right_eye - left_eye
    eye_distance = np.maximum(np.linalg.norm(eye_axis, axis=1), 1e-6)
    unit = eye_axis / eye_distance[:, None]
    normal = np.stack([-unit[:, 1], unit[:, 0]], axis=1)  # points down the face
    sideways = ((nose - eyes) * unit).sum(axis=1) / eye_distance
    # A head turned by θ moves the nose sideways by about 0.6·eye distance·sin θ.
    yaw = np.degrees(np.arcsin(np.clip(sideways / 0.6, -1, 1)))
    face_height = np.maximum(((mouth - eyes) * normal).sum(axis=1), 1e-6)
    height = ((nose - eyes) * normal).sum(axis=1) / face_height
    pitch = np.degrees(np.arcsin(np.clip((height - FRONTAL_NOSE_HEIGHT) / 0.5, -1, 1)))
    return np.stack([yaw, pitch], axis=1).astype(np.float32)


def sharpness(crops: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each ``(N, 112, 112, 3)`` uint8 crop's gray image → ``(N,)`` float32."""
    values = [cv2.Laplacian(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var() for crop in crops]
    return np.asarray(values, np.float32)


def assess(boxes: np.ndarray, landmarks: np.ndarray, crops: np.ndarray) -> List[FaceQuality]:
    """Quality of each face: ``boxes`` ``(N, 4)``, ``landmarks`` ``(N, 5, 2)``, aligned ``crops``."""
    sizes = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    sharp = sharpness(crops)
    pose = head_pose(landmarks)
    # Each factor saturates where more stops helping recognition.
    size_score = np.clip(sizes / 112.0, 0, 1)
    # Sharpness spans decades (a σ=2 px blur of a sharp crop gives ~13, the crop itself ~1000).
    sharp_score = np.clip(np.log(np.maximum(sharp, 1e-6) / 10.0) / np.log(30.0), 0, 1)
    pose_score = np.clip(1 - np.abs(pose[:, 0]) / 60.0, 0, 1) * np.clip(1 - np.abs(pose[:, 1]) / 50.0, 0, 1)
    scores = size_score * (0.3 + 0.7 * sharp_score) * pose_score
    return [
        FaceQuality(float(sizes[i]), float(sharp[i]), float(pose[i, 0]), float(pose[i, 1]), float(scores[i]))
        for i in range(len(boxes))
    ]
