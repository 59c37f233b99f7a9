"""Box arithmetic: OpenCV's NMS against the numpy definition, squaring, patch sampling."""

from __future__ import annotations

from typing import List, Tuple

import cv2
import numpy as np
import pytest

from appliance.vision.boxes import (
    MAX_BILINEAR_RATIO,
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


def _level_size(original_size: Tuple[int, int], scale: float) -> Tuple[int, int]:
    """``(width, height)`` of the original scaled by ``scale``, rounded up."""
    height, width = original_size
    return int(np.ceil(width * scale)), int(np.ceil(height * scale))


def _halved_towards(source: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``source`` halved by area while it is at least twice ``size`` (width, height) on both sides."""
    while source.shape[1] >= 2 * size[0] and source.shape[0] >= 2 * size[1]:
        source = cv2.resize(
            source, (source.shape[1] // 2, source.shape[0] // 2), interpolation=cv2.INTER_AREA
        )
    return source


def defined_level(source: np.ndarray, original_size: Tuple[int, int], scale: float) -> np.ndarray:
    """The pyramid's definition, restated: from ``source`` (the level before), halvings by area, then
    the rest of the step bilinear, or, steeper than ``MAX_BILINEAR_RATIO``, bilinear to twice the
    size and halved."""
    width, height = _level_size(original_size, scale)
    halved = _halved_towards(source, (width, height))
    if halved.shape[:2] == (height, width):
        return halved
    if halved.shape[1] > MAX_BILINEAR_RATIO * width or halved.shape[0] > MAX_BILINEAR_RATIO * height:
        double = cv2.resize(halved, (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR)
        return cv2.resize(double, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.resize(halved, (width, height), interpolation=cv2.INTER_LINEAR)


def area_cascade_level(source: np.ndarray, original_size: Tuple[int, int], scale: float) -> np.ndarray:
    """The cascade the pyramid replaced: halvings by area, then the rest of the step by area too."""
    width, height = _level_size(original_size, scale)
    halved = _halved_towards(source, (width, height))
    if halved.shape[:2] == (height, width):
        return halved
    return cv2.resize(halved, (width, height), interpolation=cv2.INTER_AREA)


PYRAMIDS = [
    (720, 1280, 0.3, 0.709),  # a 720p camera, minimum face 40: halving, then 5:3
    (1080, 1920, 0.3, 0.709),  # 1080p, minimum face 40
    (480, 640, 0.4, 0.709),  # minimum face 30: halving, then 5:4
    (480, 640, 0.6, 0.709),  # minimum face 20: no halving first
    (481, 643, 1.0, 0.709),  # minimum face 12: the first level is the frame itself
    (500, 375, 0.3, 0.45),  # steps under one half: halvings inside the cascade
    (601, 900, 0.5, 0.5),  # exact and inexact halvings
    (600, 900, 1 / 3, 0.5),  # whole-number ratios other than 2
    (97, 131, 0.9, 0.8),
]


def _test_images(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """A smooth image and noise, ``(height, width, 3)`` uint8."""
    rng = np.random.default_rng(height * width)
    smooth = cv2.resize(
        rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8), (width, height)
    )
    return smooth, rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _scales(height: int, width: int, first: float, factor: float) -> List[float]:
    return [first * factor**index for index in range(12) if min(height, width) * first * factor**index >= 12]


@pytest.mark.parametrize("height, width, first, factor", PYRAMIDS)
def test_the_pyramid_halves_by_area_then_steps_bilinearly_level_from_level(
    height: int, width: int, first: float, factor: float
) -> None:
    scales = _scales(height, width, first, factor)
    for image in _test_images(height, width):
        expected = [image]
        for scale in scales:
            expected.append(defined_level(expected[-1], (height, width), scale))
        levels = pyramid(image, scales)
        assert len(levels) == len(scales)
        for (pixels, sx, sy), reference in zip(levels, expected[1:]):
            assert pixels.dtype == np.uint8
            assert (sx, sy) == (reference.shape[1] / width, reference.shape[0] / height)
            np.testing.assert_array_equal(pixels, reference)


@pytest.mark.parametrize("height, width, first, factor", PYRAMIDS)
def test_the_pyramid_is_as_close_to_direct_area_levels_as_an_area_cascade(
    height: int, width: int, first: float, factor: float
) -> None:
    """The reference implementation resizes the frame to every level by area. The pyramid's steps
    (bilinear up to ``MAX_BILINEAR_RATIO``, enlarged and halved above) stay as close to those levels as
    the area-resampled cascade did before them: within one grey level per level, and no farther over
    the whole pyramid."""
    scales = _scales(height, width, first, factor)
    smooth, _ = _test_images(height, width)
    edges = cv2.resize(_sharp_edges(), (width, height), interpolation=cv2.INTER_AREA)
    for image in (smooth, edges):
        cascade = [image]
        for scale in scales:
            cascade.append(area_cascade_level(cascade[-1], (height, width), scale))
        ours, theirs = [], []
        for (pixels, _, _), area in zip(pyramid(image, scales), cascade[1:]):
            direct = cv2.resize(image, pixels.shape[1::-1], interpolation=cv2.INTER_AREA).astype(np.int16)
            ours.append(np.abs(pixels - direct).mean())
            theirs.append(np.abs(area - direct).mean())
        assert all(mine <= area + 1.0 for mine, area in zip(ours, theirs)), (ours, theirs)
        assert sum(ours) <= sum(theirs) + 0.5, (ours, theirs)


def _sharp_edges() -> np.ndarray:
    """A 400×300 image with sharp edges at every scale: filled ellipses on a gradient."""
    rng = np.random.default_rng(7)
    image = np.tile(np.linspace(40, 200, 400, dtype=np.uint8)[None, :, None], (300, 1, 3))
    for _ in range(40):
        centre = (int(rng.integers(0, 400)), int(rng.integers(0, 300)))
        axes = (int(rng.integers(3, 80)), int(rng.integers(3, 80)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return image


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
