"""Box arithmetic: OpenCV's NMS against the numpy definition, squaring, patch sampling."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from appliance.vision.boxes import iou_matrix, nms, nms_reference, sample_patches, square


@pytest.mark.parametrize("inclusive", [True, False])
@pytest.mark.parametrize("count", [1, 40, 400])
def test_opencv_nms_equals_the_reference(count: int, inclusive: bool) -> None:
    rng = np.random.default_rng(count)
    corner = rng.uniform(0, 300, (count, 2))
    boxes = np.fix(np.concatenate([corner, corner + rng.uniform(12, 60, (count, 1))], axis=1))
    scores = rng.uniform(0.6, 1.0, count)
    for threshold in (0.3, 0.5, 0.7):
        np.testing.assert_array_equal(
            nms(boxes, scores, threshold, inclusive=inclusive),
            nms_reference(boxes, scores, threshold, inclusive=inclusive),
        )


def test_min_mode_suppresses_a_box_inside_another() -> None:
    boxes = np.array([[0, 0, 100, 100], [10, 10, 40, 40]], float)
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.7).tolist() == [0, 1]  # IoU is small
    assert nms(boxes, scores, 0.7, mode="min").tolist() == [0]  # but it lies inside


def test_square_keeps_the_centre() -> None:
    squared = square(np.array([[10.0, 20.0, 30.0, 80.0]]))
    np.testing.assert_allclose(squared, [[-10.0, 20.0, 50.0, 80.0]])
    assert iou_matrix(squared, squared)[0, 0] == pytest.approx(1.0)


def test_patches_match_a_resize_and_pad_outside() -> None:
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    (patch,) = sample_patches([(image, 1.0, 1.0)], np.array([[10.0, 5.0, 58.0, 53.0]]), (24, 24))
    reference = cv2.resize(image[5:53, 10:58], (24, 24), interpolation=cv2.INTER_LINEAR)
    assert np.abs(patch.astype(int) - reference.astype(int)).max() <= 1
    (outside,) = sample_patches([(image, 1.0, 1.0)], np.array([[-40.0, -40.0, -10.0, -10.0]]), (12, 12))
    assert not outside.any()
