"""Box arithmetic shared by the detectors: NMS, squaring, and cutting many patches out of an image at once.

Patches are sampled with one ``cv2.remap`` call per pyramid level for all boxes together (a mosaic of
sampling grids), so there is no per-box Python loop; each box is read from the pyramid level at which
it is closest to (and not smaller than) the patch size, which keeps the bilinear sampling from
aliasing the way a direct downscale of a large face would.
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Sequence, Tuple

import cv2
import numpy as np

#: A pyramid level: the resized image and its (x, y) scale relative to the original.
Level = Tuple[np.ndarray, float, float]


def iou_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``first`` ``(N, 4)`` with every box of ``second`` ``(M, 4)``.

    Boxes are ``[x1, y1, x2, y2]``; returns ``(N, M)`` float32.
    """
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:4], second[None, :, 2:4])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_first = (first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1])
    area_second = (second[:, 2] - second[:, 0]) * (second[:, 3] - second[:, 1])
    union = area_first[:, None] + area_second[None, :] - overlap
    return (overlap / np.maximum(union, 1e-9)).astype(np.float32)


def nms(
    boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union", inclusive: bool = False
) -> np.ndarray:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``(N, 4)`` ``[x1, y1, x2, y2]``.
        scores: ``(N,)``.
        threshold: overlap above which the lower-scored box is dropped.
        mode: ``"union"`` (IoU) or ``"min"`` (intersection over the smaller box, MTCNN's last stage).
        inclusive: pixel-inclusive areas (``x2 - x1 + 1``), as the MTCNN reference computes them.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, best first. ``"union"`` runs in OpenCV
        (``cv2.dnn.NMSBoxes``, the same greedy rule); ``"min"`` loops once per *kept* box, each step
        vectorised over the remaining ones.
    """
    if len(boxes) <= 1:  # nothing to suppress (O-Net's last suppression mostly sees one face)
        return np.arange(len(boxes), dtype=np.int64)
    add = 1.0 if inclusive else 0.0
    if mode == "union":
        # OpenCV's rectangles are (x, y, w, h) with overlap min(x+w) - max(x): w = x2 - x1 + add
        # reproduces the pixel-inclusive arithmetic exactly.
        rects = np.concatenate([boxes[:, :2], boxes[:, 2:4] - boxes[:, :2] + add], axis=1).astype(np.float64)
        kept = cv2.dnn.NMSBoxes(rects, np.maximum(scores, 0).astype(np.float32), 0.0, float(threshold))
        return np.asarray(kept, np.int64).reshape(-1)
    return nms_reference(boxes, scores, threshold, mode, inclusive)


def nms_per_group(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float, inclusive: bool = False
) -> np.ndarray:
    """Greedy IoU suppression within each group, all groups in one :func:`nms` call.

    Each group is shifted along x by more than the extent of all boxes, so boxes of different groups
    never overlap and never suppress each other: the result is that of :func:`nms` run per group.

    Args:
        boxes: ``(N, 4)`` ``[x1, y1, x2, y2]``.
        scores: ``(N,)``.
        groups: ``(N,)`` integer group of each box (MTCNN: the pyramid level).
        threshold, inclusive: as for :func:`nms`.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by group (ascending), best first within a group.
    """
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    groups = np.asarray(groups, np.int64)
    shifted = boxes[:, :4].astype(np.float64, copy=True)
    span = float(shifted[:, 2].max() - shifted[:, 0].min()) + (1.0 if inclusive else 0.0) + 1.0
    offset = (groups - groups.min()) * span
    shifted[:, 0] += offset
    shifted[:, 2] += offset
    kept = nms(shifted, scores, threshold, inclusive=inclusive)
    return kept[np.argsort(groups[kept], kind="stable")]


def nms_reference(
    boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union", inclusive: bool = False
) -> np.ndarray:
    """Greedy NMS in numpy (the definition :func:`nms` follows); see :func:`nms` for the arguments."""
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    add = 1.0 if inclusive else 0.0
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    areas = (x2 - x1 + add) * (y2 - y1 + add)
    order = np.argsort(-scores, kind="stable")
    keep: List[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + add)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + add)
        inter = width * height
        if mode == "min":
            overlap = inter / np.minimum(areas[best], areas[rest])
        else:
            overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, np.int64)


def square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares about their centres (side = the longer side). ``(N, 4)`` → ``(N, 4)``."""
    out = boxes.astype(np.float64, copy=True)
    width = out[:, 2] - out[:, 0]
    height = out[:, 3] - out[:, 1]
    side = np.maximum(width, height)
    out[:, 0] = out[:, 0] + width * 0.5 - side * 0.5
    out[:, 1] = out[:, 1] + height * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def pyramid(image: np.ndarray, scales: Sequence[float]) -> List[Level]:
    """The image at each of ``scales`` (largest first, sizes rounded up), each level resampled from the
    one before: much cheaper than resizing the full frame again.

    A step of at least 2× is first taken by exact halvings (``cv2.resize(..., INTER_AREA)`` by 2, the
    2×2 average, OpenCV's fast path). The rest of the step, a ratio under 2, is bilinear
    (``INTER_LINEAR``: fixed point and vectorised) up to :data:`MAX_BILINEAR_RATIO`: 1/0.709 from
    level to level, 5:4 after the halving at a 30 px minimum face. A steeper rest (5:3 after the
    halving at a 40 px minimum face), where bilinear sampling skips pixels and aliases, goes bilinear
    to twice the level's size (an enlargement) and is then halved. OpenCV's area resize by a
    non-integer ratio, which the cascade used before, is a generic loop: the whole pyramid took
    about twice as long with it. Against levels area-resized straight from the frame (the reference
    implementation's pyramid) the detections of ``shared/data`` are as close as with area steps, with
    and without sensor noise (the figures are in ``docs/performance-history.md``, sixteenth round).

    Args:
        image: ``(H, W, 3)`` uint8.
        scales: each level's scale relative to ``image``, decreasing.

    Returns:
        One :data:`Level` per scale: ``(h, w, 3)`` uint8 and its exact per-axis scales.
    """
    height, width = image.shape[:2]
    levels: List[Level] = []
    source = image
    for scale in scales:
        new_width, new_height = int(np.ceil(width * scale)), int(np.ceil(height * scale))
        while source.shape[1] >= 2 * new_width and source.shape[0] >= 2 * new_height:
            source = _halve(source)
        if source.shape[:2] != (new_height, new_width):
            steep = (
                source.shape[1] > MAX_BILINEAR_RATIO * new_width
                or source.shape[0] > MAX_BILINEAR_RATIO * new_height
            )
            if steep:
                source = _halve(
                    cv2.resize(source, (2 * new_width, 2 * new_height), interpolation=cv2.INTER_LINEAR)
                )
            else:
                source = cv2.resize(source, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
        levels.append((source, new_width / width, new_height / height))
    return levels


#: The largest ratio :func:`pyramid` resamples bilinearly in one step. MTCNN's steps at its default
#: factor are 1.41; with 5:3 (the first step at a 40 px minimum face) bilinear sampling made the
#: benchmark's 1280×720 group scene show an edge false positive on every frame instead of one in eight.
MAX_BILINEAR_RATIO = 1.5


def _halve(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 → ``(H // 2, W // 2, 3)``: each pixel the average of 2×2 (a last odd row or
    column dropped)."""
    return cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)


def sample_patches(
    levels: Sequence[Level], regions: np.ndarray, size: Tuple[int, int], transpose: bool = False
) -> np.ndarray:
    """Cut ``regions`` out of an image and resize each to ``size``, padding with zeros outside the image.

    Args:
        levels: the image at several scales; the first must be the original (scale 1).
        regions: ``(N, 4)`` ``[left, top, right, bottom]`` in original-image pixel coordinates
            (continuous: a region may extend past the image, which reads as black).
        size: ``(height, width)`` of each patch.
        transpose: sample each patch transposed (rows along x), as networks that read images
            transposed want them; free here, where transposing afterwards is a strided copy.

    Returns:
        ``(N, height, width, 3)`` uint8 patches, or ``(N, width, height, 3)`` when ``transpose``.
    """
    out_h, out_w = size
    rows, cols = (out_w, out_h) if transpose else (out_h, out_w)  # transposed: patch rows follow x
    count = len(regions)
    patches = np.empty((count, rows, cols, 3), np.uint8)
    if count == 0:
        return patches
    regions = regions.astype(np.float64)
    extents = regions[:, 2:4] - regions[:, :2]  # (N, 2): width, height
    scales = np.array([level[1:] for level in levels])  # (L, 2): x, y
    order = None
    if len(levels) == 1:  # one image (liveness's context crops): nothing to choose
        choice = np.zeros(count, np.intp)
    else:
        # Per box, the smallest level at which the region is still at least the patch size.
        big_enough = (extents[:, None, :] * scales[None, :, :] >= (out_w, out_h)).all(axis=2)  # (N, L)
        choice = np.where(big_enough, scales[None, :, 0], np.inf).argmin(axis=1)
        choice[~big_enough.any(axis=1)] = 0  # smaller than the patch even at full size: upsample the original
        # The sampling grids of all boxes at once, boxes grouped by level: each level's boxes are then
        # one run of map rows, and a level costs one cv2.remap call and no numpy work of its own. One
        # box (as O-Net mostly gets) needs no grouping and is sampled straight into the output.
        if count > 1:
            order = np.argsort(choice, kind="stable")
            choice, regions, extents = choice[order], regions[order], extents[order]
    level_scales = scales[choice]  # (n, 2)
    grid_x, grid_y = _unit_grid(out_w)[None, :], _unit_grid(out_h)[None, :]
    xs = (regions[:, 0, None] + grid_x * extents[:, 0, None]) * level_scales[:, 0, None] - 0.5  # (n, out_w)
    ys = (regions[:, 1, None] + grid_y * extents[:, 1, None]) * level_scales[:, 1, None] - 0.5  # (n, out_h)
    # The maps filled by broadcasting, cast to float32 first while they are small.
    xs, ys = xs.astype(np.float32), ys.astype(np.float32)
    map_x = np.empty((count, rows, cols), np.float32)
    map_y = np.empty((count, rows, cols), np.float32)
    map_x[...] = xs[:, :, None] if transpose else xs[:, None, :]
    map_y[...] = ys[:, None, :] if transpose else ys[:, :, None]
    map_x, map_y = map_x.reshape(-1, cols), map_y.reshape(-1, cols)
    mosaic = patches.reshape(-1, cols, 3) if order is None else np.empty((count * rows, cols, 3), np.uint8)
    # cv2.remap needs fewer than 32767 rows of map, so very many boxes go in several calls.
    per_call = max(1, 32000 // rows)
    if order is None:  # one box, or one level: a single run
        runs = [(int(choice[0]), 0, count)]
    else:
        bounds = np.searchsorted(choice, np.arange(len(levels) + 1)).tolist()
        runs = [(level, first, last) for level, (first, last) in enumerate(zip(bounds[:-1], bounds[1:]))]
    for level_index, first, last in runs:
        for start in range(first, last, per_call):
            span = slice(start * rows, min(last, start + per_call) * rows)
            cv2.remap(
                levels[level_index][0],
                map_x[span],
                map_y[span],
                interpolation=cv2.INTER_LINEAR,
                dst=mosaic[span],
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=(0, 0, 0),
            )
    if order is not None:
        patches[order] = mosaic.reshape(count, rows, cols, 3)
    return patches


@lru_cache(maxsize=None)
def _unit_grid(size: int) -> np.ndarray:
    """``(size,)`` float64: the centres of ``size`` equal cells of the unit interval, ``(j + 0.5) / size``."""
    grid = (np.arange(size) + 0.5) / size
    grid.flags.writeable = False  # shared by every call
    return grid
