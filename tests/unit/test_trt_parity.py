"""The pure parts of the CPU-vs-TensorRT comparison: pairing detections, cosines, the stand-in crops."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.trt_parity import ParityResult, cosines, match_faces, synthetic_crops


def test_faces_are_paired_once_best_overlap_first() -> None:
    reference = np.array([[0, 0, 100, 100], [200, 200, 260, 260], [500, 500, 520, 520]], np.float32)
    candidate = np.array(
        [[202, 201, 260, 262], [0, 0, 100, 100], [5, 5, 100, 100], [900, 900, 950, 950]], np.float32
    )
    pairs = match_faces(reference, candidate, min_iou=0.8)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (1, 0)]  # box 2 of candidate is a duplicate of 0
    assert pairs[0][2] == pytest.approx(1.0)
    assert 0.8 <= pairs[1][2] < 1.0
    assert match_faces(reference, candidate[:0]) == [] and match_faces(reference[:0], candidate) == []
    # Below the bar there is no pair, however close the next best is.
    assert match_faces(reference[:1], np.array([[0, 0, 100, 70]], np.float32), min_iou=0.8) == []


def test_cosines_are_row_wise() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [4.0, 3.0]])
    np.testing.assert_allclose(cosines(a, b), [1.0, -1.0, 24 / 25])


def test_synthetic_crops_are_deterministic_face_sized_images() -> None:
    crops = synthetic_crops(3, seed=5)
    assert crops.shape == (3, 112, 112, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, synthetic_crops(3, seed=5))
    assert crops.std() > 10  # not flat: both embedders have something to work with


def test_a_result_without_problems_is_ok() -> None:
    result = ParityResult(images=2, faces=3, matched=3, worst_iou=0.91, embeddings=3, worst_cosine=0.9991)
    assert result.ok
    assert result.describe() == "2 image(s), 3/3 faces matched (IoU >= 0.91), 3 embeddings (cosine >= 0.9991)"
    result.problems.append("a.jpg: embedding cosine 0.9712 < 0.99")
    assert not result.ok
