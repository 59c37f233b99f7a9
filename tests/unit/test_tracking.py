"""The IoU tracker on synthetic boxes: moving faces, misses, crossing paths, ends and id hygiene."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import pytest

from appliance.tracking import IouTracker


def box(x: float, y: float, side: float = 100.0) -> List[float]:
    """A square face box with its top-left corner at (x, y)."""
    return [x, y, x + side, y + side]


def frame(*boxes: Sequence[float]) -> np.ndarray:
    """``(N, 4)`` float32 boxes of one frame."""
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def test_a_still_face_keeps_its_id() -> None:
    tracker = IouTracker()
    ids = [tracker.update(frame(box(100, 100))) for _ in range(20)]
    assert ids == [[1]] * 20
    assert tracker.active_ids == [1]
    assert tracker.ended() == []


def test_a_face_walking_in_moves_and_grows_on_one_track() -> None:
    tracker = IouTracker()
    seen = set()
    for step in range(30):
        side = 60.0 + 6.0 * step  # coming closer
        x = 400.0 - 4.0 * step + np.sin(step) * 3.0  # drifting, with detector jitter
        seen.update(tracker.update(frame(box(x, 200.0 - 2.0 * step, side))))
    assert seen == {1}


def test_no_faces_and_an_empty_tracker() -> None:
    tracker = IouTracker()
    assert tracker.update(np.zeros((0, 4), np.float32)) == []
    assert tracker.update(np.zeros((0,), np.float32)) == []
    assert tracker.active_ids == []
    assert tracker.close_all() == []


def test_ids_follow_the_faces_not_their_order_in_the_frame() -> None:
    tracker = IouTracker()
    assert tracker.update(frame(box(0, 0), box(500, 0))) == [1, 2]
    assert tracker.update(frame(box(505, 2), box(3, 1))) == [2, 1]
    assert tracker.update(frame(box(900, 0), box(6, 2), box(510, 4))) == [3, 1, 2]


def test_a_track_survives_max_missed_frames_and_then_ends_once() -> None:
    tracker = IouTracker(max_missed=3)
    tracker.update(frame(box(100, 100)))
    for _ in range(3):
        assert tracker.update(frame()) == []
        assert tracker.ended() == []
        assert tracker.active_ids == [1]
    assert tracker.update(frame(box(102, 100))) == [1]  # found again after 3 misses
    for _ in range(3):
        tracker.update(frame())
    assert tracker.ended() == []
    tracker.update(frame())  # the 4th consecutive miss
    assert tracker.ended() == [1]
    assert tracker.ended() == []  # drained
    assert tracker.active_ids == []


def test_max_missed_zero_ends_a_track_at_its_first_miss() -> None:
    tracker = IouTracker(max_missed=0)
    tracker.update(frame(box(0, 0)))
    tracker.update(frame())
    assert tracker.ended() == [1]


def test_ended_ids_accumulate_until_drained() -> None:
    tracker = IouTracker(max_missed=0)
    tracker.update(frame(box(0, 0)))
    tracker.update(frame(box(500, 0)))
    tracker.update(frame())
    assert tracker.ended() == [1, 2]


def test_ids_are_never_reused() -> None:
    tracker = IouTracker(max_missed=1)
    assert tracker.update(frame(box(100, 100))) == [1]
    tracker.update(frame())
    tracker.update(frame())
    assert tracker.ended() == [1]
    # the same face in the same place after its track ended is a new passage
    assert tracker.update(frame(box(100, 100))) == [2]
    assert tracker.close_all() == [2]
    assert tracker.update(frame(box(100, 100))) == [3]


def test_a_far_jump_starts_a_new_track() -> None:
    tracker = IouTracker(max_missed=0)
    assert tracker.update(frame(box(0, 0))) == [1]
    assert tracker.update(frame(box(300, 0))) == [2]
    assert tracker.ended() == [1]


def test_one_box_between_two_tracks_goes_to_the_closer_one() -> None:
    tracker = IouTracker()
    tracker.update(frame(box(0, 0), box(80, 0)))
    # between them, nearer the second: IoU 0.33 with track 1 and 0.54 with track 2
    assert tracker.update(frame(box(50, 0))) == [2]
    assert tracker.active_ids == [1, 2]  # track 1 is coasting on a miss


def test_prediction_finds_a_moving_face_after_missed_detections() -> None:
    """A face moving 40 px a frame is not detected for 3 frames; its box then lies where the
    track's last box no longer overlaps it, yet the constant-velocity prediction does."""
    tracker = IouTracker(iou_threshold=0.3, max_missed=5)
    for step in range(5):
        assert tracker.update(frame(box(40.0 * step, 0))) == [1]
    for _ in range(3):
        tracker.update(frame())
    assert tracker.update(frame(box(40.0 * 8, 0))) == [1]  # 160 px from its last box: IoU 0 there
    assert tracker.update(frame(box(40.0 * 9, 0))) == [1]


def test_two_faces_crossing_keep_their_ids() -> None:
    """Two faces walk towards each other at the same height, overlap almost completely mid-way, and
    part. Right after the crossing each face overlaps the *other* track's last box more than its own,
    so matching on last boxes alone would swap them; the velocity prediction does not."""
    tracker = IouTracker()
    first: List[int] = []
    second: List[int] = []
    for step in range(21):
        left = 0.0 + 30.0 * step  # walks right
        right = 615.0 - 30.0 * step  # walks left; at step 10 they are 15 px apart
        ids = tracker.update(frame(box(left, 50.0), box(right, 50.0)))
        first.append(ids[0])
        second.append(ids[1])
    assert set(first) == {1}
    assert set(second) == {2}


def test_crossing_with_the_detector_missing_the_hidden_face() -> None:
    """The face behind is not detected while the two overlap; it gets its own track back afterwards."""
    tracker = IouTracker()
    ids_front: List[int] = []
    ids_back: List[int] = []
    for step in range(21):
        front = box(30.0 * step, 60.0, 120.0)  # nearer the camera: larger, walks right
        back = box(600.0 - 30.0 * step, 50.0, 100.0)  # walks left, hidden while overlapping
        if 8 < step < 12:  # the boxes overlap
            ids_front.extend(tracker.update(frame(front)))
        else:
            ids = tracker.update(frame(front, back))
            ids_front.append(ids[0])
            ids_back.append(ids[1])
    assert set(ids_front) == {1}
    assert set(ids_back) == {2}
    assert tracker.ended() == []


def test_close_all_reports_every_track_once() -> None:
    tracker = IouTracker(max_missed=0)
    tracker.update(frame(box(0, 0), box(500, 0)))
    tracker.update(frame(box(500, 0)))  # track 1 ends, not drained
    tracker.update(frame(box(500, 0), box(900, 0)))
    assert tracker.close_all() == [1, 2, 3]
    assert tracker.active_ids == []
    assert tracker.ended() == []
    assert tracker.close_all() == []


def test_list_input_is_accepted() -> None:
    tracker = IouTracker()
    assert tracker.update([[0, 0, 10, 10]]) == [1]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "boxes",
    [
        np.zeros((2, 5), np.float32),
        np.zeros((4,), np.float32),
        np.array([[0, 0, np.nan, 10]], np.float32),
        np.array([[10, 0, 0, 10]], np.float32),
    ],
)
def test_bad_boxes_are_refused(boxes: np.ndarray) -> None:
    with pytest.raises(ValueError, match="boxes"):
        IouTracker().update(boxes)


@pytest.mark.parametrize(("iou", "missed"), [(0.0, 8), (1.0, 8), (0.3, -1)])
def test_bad_settings_are_refused(iou: float, missed: int) -> None:
    with pytest.raises(ValueError):
        IouTracker(iou, missed)
