"""A track's views (appliance.face_views): the best frame first, then differing views of the same face."""

from __future__ import annotations

from typing import List

import numpy as np
import pytest

from appliance.face_views import SAME_VIEW, FaceSample, keep_view

THRESHOLD = 0.5


def _unit(*values: float) -> np.ndarray:
    vector = np.zeros(8, np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def _frame(quality: float, embedding: np.ndarray, version: str = "mobilefacenet@v1") -> FaceSample:
    crop = np.full((112, 112, 3), int(quality * 255), np.uint8)
    return FaceSample(quality, embedding, crop, None, version)


def _seen(frames: List[FaceSample], most: int = 3) -> List[FaceSample]:
    views: List[FaceSample] = []
    for frame in frames:
        views = keep_view(views, frame, most, THRESHOLD)
    return views


FRONT = _unit(1.0)
CLOSE_TO_FRONT = _unit(1.0, 0.2)  # cosine 0.98: the same view
TURNED = _unit(1.0, 1.0)  # cosine 0.71 to FRONT: another view of the same face
NEARER = _unit(1.0, 0.0, 1.0)  # 0.71 to FRONT, 0.5 to TURNED
SOMEONE_ELSE = _unit(0.3, 0.0, 0.0, 1.0)  # 0.29 to FRONT: below the decision threshold


def test_the_cosines_of_the_fixtures_are_what_the_tests_say() -> None:
    assert float(CLOSE_TO_FRONT @ FRONT) >= SAME_VIEW
    assert THRESHOLD <= float(TURNED @ FRONT) < SAME_VIEW
    assert THRESHOLD <= float(NEARER @ FRONT) < SAME_VIEW and float(NEARER @ TURNED) < SAME_VIEW
    assert float(SOMEONE_ELSE @ FRONT) < THRESHOLD


def test_frames_of_the_same_view_keep_only_the_best_one() -> None:
    frames = [_frame(0.6, FRONT), _frame(0.8, CLOSE_TO_FRONT), _frame(0.7, FRONT)]
    views = _seen(frames)
    assert views == [frames[1]]


def test_differing_views_are_kept_best_first_up_to_the_most() -> None:
    frames = [_frame(0.6, TURNED), _frame(0.9, FRONT), _frame(0.5, NEARER)]
    assert _seen(frames) == [frames[1], frames[0], frames[2]]
    assert _seen(frames, most=2) == [frames[1], frames[0]]
    # One view at most is the best-quality frame, whatever came before.
    assert _seen(frames, most=1) == [frames[1]]
    assert _seen([*frames, _frame(0.95, TURNED)], most=1)[0].quality == 0.95


def test_a_better_frame_of_a_view_replaces_it_a_worse_one_does_not() -> None:
    front, turned = _frame(0.9, FRONT), _frame(0.5, TURNED)
    better_turned = _frame(0.7, _unit(1.0, 1.1))  # the same view as TURNED (0.998)
    assert _seen([front, turned, better_turned]) == [front, better_turned]
    assert _seen([front, better_turned, turned]) == [front, better_turned]
    # An equal quality keeps the first seen.
    again = _frame(0.5, _unit(1.0, 1.1))
    assert _seen([front, turned, again]) == [front, turned]


def test_a_view_that_does_not_match_the_best_is_left_out() -> None:
    front = _frame(0.9, FRONT)
    assert _seen([front, _frame(0.4, SOMEONE_ELSE)]) == [front]
    # A new best that the earlier views do not match drops them.
    stranger_best = _frame(0.99, SOMEONE_ELSE)
    assert _seen([front, _frame(0.5, TURNED), stranger_best]) == [stranger_best]


def test_a_model_switch_starts_the_views_again() -> None:
    old = _frame(0.9, FRONT)
    new = _frame(0.3, np.ones(4, np.float32) / 2, version="mobilefacenet@v2")
    assert _seen([old, _frame(0.5, TURNED), new]) == [new]


def test_most_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        keep_view([], _frame(0.5, FRONT), 0, THRESHOLD)
