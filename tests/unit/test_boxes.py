"""Box arithmetic: OpenCV's NMS against the numpy definition, squaring, patch sampling."""

from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np
import pytest

from appliance.vision import boxes
from appliance.vision.boxes import (
    iou_matrix,
    nms,
    nms_per_group,
    nms_reference,
    pyramid,
    sample_patches,
    square,
)


@pytest.mark.parametrize("mode", ["union", "min"])
@pytest.mark.parametrize("inclusive", [True, False])
@pytest.mark.parametrize("count", [0, 1, 40, 400])
def test_opencv_nms_equals_the_reference(count: int, inclusive: bool, mode: str) -> None:
    rng = np.random.default_rng(count)
    corner = rng.uniform(0, 300, (count, 2))
    boxes = np.fix(np.concatenate([corner, corner + rng.uniform(12, 60, (count, 1))], axis=1))
    scores = rng.uniform(0.6, 1.0, count)
    for threshold in (0.3, 0.5, 0.7):
        kept = nms(boxes, scores, threshold, mode, inclusive=inclusive)
        assert kept.dtype == np.int64
        np.testing.assert_array_equal(
            kept, nms_reference(boxes, scores, threshold, mode, inclusive=inclusive)
        )


@pytest.mark.parametrize("inclusive", [True, False])
def test_grouped_nms_is_nms_within_each_group(inclusive: bool) -> None:
    rng = np.random.default_rng(7)
    count = 300
    corner = rng.uniform(0, 200, (count, 2))
    boxes = np.fix(np.concatenate([corner, corner + rng.uniform(12, 60, (count, 1))], axis=1))
    scores = rng.uniform(0.6, 1.0, count)
    groups = rng.integers(0, 6, count)  # overlapping boxes of different groups must all survive
    expected = np.concatenate(
        [
            np.flatnonzero(groups == group)[
                nms_reference(boxes[groups == group], scores[groups == group], 0.5, inclusive=inclusive)
            ]
            for group in np.unique(groups)
        ]
    )
    np.testing.assert_array_equal(nms_per_group(boxes, scores, groups, 0.5, inclusive=inclusive), expected)
    assert len(nms_per_group(boxes[:0], scores[:0], groups[:0], 0.5)) == 0


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


def test_transposed_patches_are_the_patches_transposed() -> None:
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    levels = [(image, 1.0, 1.0), *pyramid(image, [0.5])]
    regions = np.array([[10.0, 5.0, 58.0, 53.0], [-8.0, 20.0, 100.0, 128.0], [30.5, 2.25, 41.0, 20.0]])
    plain = sample_patches(levels, regions, (24, 24))
    flipped = sample_patches(levels, regions, (24, 24), transpose=True)
    np.testing.assert_array_equal(flipped, plain.transpose(0, 2, 1, 3))
    wide = sample_patches(levels, regions, (12, 20), transpose=True)
    assert wide.shape == (3, 20, 12, 3)
    np.testing.assert_array_equal(wide, sample_patches(levels, regions, (12, 20)).transpose(0, 2, 1, 3))


def uint8_cascade_level(source: np.ndarray, original_size: Tuple[int, int], scale: float) -> np.ndarray:
    """The definition :func:`pyramid` follows: the original scaled by ``scale`` (sizes rounded up),
    area-resampled in uint8 from ``source`` (a larger level), halving first while a step is ≥ 2×."""
    height, width = original_size
    new_width, new_height = int(np.ceil(width * scale)), int(np.ceil(height * scale))
    resized = source
    while resized.shape[1] >= 2 * new_width and resized.shape[0] >= 2 * new_height:
        resized = cv2.resize(
            resized, (resized.shape[1] // 2, resized.shape[0] // 2), interpolation=cv2.INTER_AREA
        )
    if (new_height, new_width) != resized.shape[:2]:
        resized = cv2.resize(resized, (new_width, new_height), interpolation=cv2.INTER_AREA)
    return resized


@pytest.mark.parametrize(
    "height, width, first, factor",
    [
        (720, 1280, 0.3, 0.709),  # a 720p camera, minimum face 40: halving, then 5:3
        (1080, 1920, 0.3, 0.709),  # 1080p, minimum face 40
        (480, 640, 0.4, 0.709),  # minimum face 30: halving, then 5:4
        (480, 640, 0.6, 0.709),  # minimum face 20: no halving first
        (481, 643, 1.0, 0.709),  # minimum face 12: the first level is the frame itself
        (500, 375, 0.3, 0.45),  # steps under one half: halvings inside the cascade
        (601, 900, 0.5, 0.5),  # exact and inexact halvings
        (600, 900, 1 / 3, 0.5),  # whole-number ratios other than 2
        (97, 131, 0.9, 0.8),
    ],
)
def test_the_pyramid_is_the_cascade_of_levels_pixel_for_pixel(
    height: int, width: int, first: float, factor: float
) -> None:
    rng = np.random.default_rng(height * width)
    # A smooth image and noise: both give the resampler sums that fall on or near halves.
    smooth = cv2.resize(
        rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8), (width, height)
    )
    noisy = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    scales = [
        first * factor**index for index in range(12) if min(height, width) * first * factor**index >= 12
    ]
    for image in (smooth, noisy):
        expected = [image]
        for scale in scales:
            expected.append(uint8_cascade_level(expected[-1], (height, width), scale))
        levels = pyramid(image, scales)
        assert len(levels) == len(scales)
        for (pixels, sx, sy), reference in zip(levels, expected[1:]):
            assert pixels.dtype == np.uint8
            assert (sx, sy) == (reference.shape[1] / width, reference.shape[0] / height)
            np.testing.assert_array_equal(pixels, reference)


def test_many_patches_from_many_levels_are_each_patch_on_its_own() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    levels = [(image, 1.0, 1.0), *pyramid(image, [0.5, 0.35, 0.25, 0.12])]
    corner = rng.uniform(-30, 350, (900, 2))
    # 700 boxes under 96 px read from the full image: two remap calls there (maps under 32 767 rows).
    sides = np.concatenate([rng.uniform(10, 90, 700), rng.uniform(90, 250, 200)])[:, None]
    regions = np.concatenate([corner, corner + sides], axis=1)
    for transpose in (False, True):
        together = sample_patches(levels, regions, (48, 48), transpose=transpose)
        for index in rng.choice(len(regions), 60, replace=False):
            alone = sample_patches(levels, regions[index : index + 1], (48, 48), transpose=transpose)
            np.testing.assert_array_equal(together[index], alone[0])


@pytest.mark.parametrize(
    "rows, columns",
    [((5, 3), (5, 3)), ((5, 4), (5, 4)), ((7, 3), (9, 8)), ((15, 8), (3, 2)), ((11, 7), (13, 12))],
)
def test_whole_weight_area_steps_are_opencvs_area_resize(
    rows: Tuple[int, int], columns: Tuple[int, int]
) -> None:
    """The claim :func:`boxes._area_by_whole_weights` rests on: with odd numerators no pixel's area
    average falls on a half, so whole-number sums give OpenCV's uint8 area resize exactly."""
    rng = np.random.default_rng(rows[0] * 100 + columns[0])
    height, width = rows[0] * 13, columns[0] * 17
    smooth = cv2.resize(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), (width, height))
    noisy = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    extremes = np.where(rng.random((height, width, 3)) < 0.5, 0, 255).astype(np.uint8)
    size = (width // columns[0] * columns[1], height // rows[0] * rows[1])
    assert boxes._whole_weight_ratios((height, width), size[::-1]) == (rows, columns)
    for image in (smooth, noisy, extremes, np.full_like(noisy, 255)):
        expected = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(boxes._area_by_whole_weights(image, rows, columns), expected)


def test_only_odd_small_non_whole_ratios_take_whole_weights() -> None:
    assert boxes._whole_weight_ratios((360, 640), (216, 384)) == ((5, 3), (5, 3))
    assert boxes._whole_weight_ratios((216, 384), (154, 273)) is None  # 108:77 and 128:91
    assert boxes._whole_weight_ratios((400, 400), (300, 300)) is None  # 4:3, halves possible
    assert boxes._whole_weight_ratios((300, 300), (100, 100)) is None  # 3:1, OpenCV's whole-ratio path
    assert boxes._whole_weight_ratios((170, 170), (80, 80)) is None  # 17:8, sums past uint16
