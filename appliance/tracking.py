"""Face tracks across frames: an IoU tracker with constant-velocity prediction (SORT-like, no Kalman filter).

Each frame's face boxes are tied to the tracks of the previous frames so that the decision engine
(:mod:`appliance.decisions`) can vote over a passage instead of deciding on every frame.

Association, per :meth:`IouTracker.update`:

1. every live track predicts where its face is now: its last matched box moved on by its smoothed
   per-frame velocity (of all four corners, so a face walking towards the camera grows as well as
   moves) times the frames since that match;
2. the IoU of every new box with every prediction is computed; pairs with IoU ≥ ``iou_threshold`` are
   taken greedily, highest IoU first (ties: earlier box, then earlier track), each box and each track
   at most once — for the handful of faces in a doorway this gives the same answer as an optimal
   assignment;
3. a box left over starts a new track; a track left over counts a miss, and ends once it has been
   missed for more than ``max_missed`` consecutive frames.

Track ids are ints counting up from 1 and are never reused within one tracker. Prediction is what
keeps two faces whose paths cross from swapping tracks, and what lets a face that was not detected
for a few frames (occlusion, motion blur) find its track again although it moved meanwhile.

Pure logic: no threads, no I/O; one tracker per camera, used from one thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from .vision.boxes import iou_matrix

logger = logging.getLogger(__name__)

#: Weight of the newest displacement in a track's velocity (exponential smoothing of detector jitter).
VELOCITY_SMOOTHING = 0.5


@dataclass
class _Track:
    """One face's track.

    Attributes:
        track_id: the id handed out for it.
        box: ``(4,)`` float32 ``[x1, y1, x2, y2]`` of its last matched detection.
        velocity: ``(4,)`` float32 smoothed change of ``box`` per frame.
        missed: consecutive frames without a matched detection.
        hits: frames with a matched detection.
    """

    track_id: int
    box: np.ndarray
    velocity: np.ndarray
    missed: int = 0
    hits: int = 1

    def predicted(self) -> np.ndarray:
        """``(4,)`` float32 box expected in the coming frame (the last box when the prediction degenerates)."""
        guess = self.box + self.velocity * np.float32(self.missed + 1)
        if guess[2] <= guess[0] or guess[3] <= guess[1]:
            return self.box
        return guess

    def matched(self, box: np.ndarray) -> None:
        """Take ``box`` ``(4,)`` float32 as this frame's detection of the face."""
        step = (box - self.box) / np.float32(self.missed + 1)
        if self.hits == 1:
            self.velocity = step
        else:
            self.velocity = VELOCITY_SMOOTHING * step + (1.0 - VELOCITY_SMOOTHING) * self.velocity
        self.velocity = self.velocity.astype(np.float32)
        self.box = box
        self.missed = 0
        self.hits += 1


def _checked_boxes(boxes: np.ndarray) -> np.ndarray:
    """``boxes`` as ``(N, 4)`` float32 ``[x1, y1, x2, y2]``; ``ValueError`` for another shape or bad boxes."""
    array = np.asarray(boxes, dtype=np.float32)
    if array.size == 0:
        return np.zeros((0, 4), np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) [x1, y1, x2, y2], got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("boxes must be finite (found NaN or infinity)")
    if (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
        raise ValueError("boxes must have x2 >= x1 and y2 >= y1")
    return array


class IouTracker:
    """Ties face boxes to tracks across frames (see the module documentation for the rules).

    Args:
        iou_threshold: least IoU between a box and a track's predicted box to continue the track,
            in ``(0, 1)`` (``decision.track_iou``).
        max_missed: frames a track survives without a matched box (``decision.track_max_missed``); a
            track unmatched for more than this many consecutive frames ends. 0 ends a track at its
            first miss.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 8) -> None:
        if not 0.0 < iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1), got {iou_threshold}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self._tracks: Dict[int, _Track] = {}
        self._ended: List[int] = []
        self._next_id = 1

    @property
    def active_ids(self) -> List[int]:
        """Ids of the tracks still alive (matched now or coasting on misses), ascending."""
        return sorted(self._tracks)

    def update(self, boxes: np.ndarray) -> List[int]:
        """Associate one frame's face boxes with the tracks.

        Args:
            boxes: ``(N, 4)`` float32 ``[x1, y1, x2, y2]`` in pixels; ``N`` may be 0 (no face this frame).

        Returns:
            ``N`` track ids, one per box in the order given: an existing track's id, or a new id for a
            face not seen before. Tracks that end in this update are reported by :meth:`ended`.

        Raises:
            ValueError: ``boxes`` has another shape, is not finite, or has a box with ``x2 < x1`` or
                ``y2 < y1``.
        """
        detections = _checked_boxes(boxes)
        tracks = list(self._tracks.values())
        assigned: List[int] = [-1] * len(detections)
        used_tracks = set()
        if len(detections) and tracks:
            predictions = np.stack([track.predicted() for track in tracks]).astype(np.float32)
            overlaps = iou_matrix(detections, predictions)
            rows, columns = np.nonzero(overlaps >= self.iou_threshold)
            order = np.argsort(-overlaps[rows, columns], kind="stable")
            for index in order:
                row, column = int(rows[index]), int(columns[index])
                if assigned[row] >= 0 or column in used_tracks:
                    continue
                assigned[row] = column
                used_tracks.add(column)

        ids: List[int] = []
        for row, column in enumerate(assigned):
            if column >= 0:
                track = tracks[column]
                track.matched(detections[row].copy())
            else:
                track = _Track(self._next_id, detections[row].copy(), np.zeros(4, np.float32))
                self._tracks[track.track_id] = track
                self._next_id += 1
                logger.debug("track %d started at %s", track.track_id, detections[row].tolist())
            ids.append(track.track_id)

        for column, track in enumerate(tracks):
            if column in used_tracks:
                continue
            track.missed += 1
            if track.missed > self.max_missed:
                del self._tracks[track.track_id]
                self._ended.append(track.track_id)
                logger.debug("track %d ended after %d frames with a face", track.track_id, track.hits)
        return ids

    def ended(self) -> List[int]:
        """Ids of the tracks that ended since the previous call (normally: in the last :meth:`update`).

        The list is drained: each ended id is returned once.
        """
        ended, self._ended = self._ended, []
        return ended

    def close_all(self) -> List[int]:
        """End every track, e.g. when the camera stops or a video file ends.

        Returns:
            Ascending ids of every track that ended and was not yet reported by :meth:`ended`,
            including all the tracks that were alive; the tracker is empty afterwards (ids keep counting
            up from where they were).
        """
        closed = sorted(set(self._ended) | set(self._tracks))
        self._ended = []
        self._tracks.clear()
        if closed:
            logger.debug("closed tracks %s", closed)
        return closed
