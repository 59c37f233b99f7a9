"""MTCNN face detection (Zhang et al. 2016): P-Net over an image pyramid, then R-Net and O-Net on crops.

The networks are the original Caffe weights (``engines`` registry ``mtcnn-*``), which read images
transposed (MATLAB heritage): the registry's pre-processing transposes the input and this module
transposes P-Net's maps back. Box arithmetic follows the reference implementation's pixel-inclusive
convention internally (a box ``[x1, y1, x2, y2]`` covers pixels ``x1-1 … x2-1``); :class:`Faces`
come out in plain 0-based coordinates.

Everything after the network calls is vectorised numpy; crops for R-Net and O-Net are cut for all
boxes at once (:func:`boxes.sample_patches`, already transposed) and run in batches. The pyramid is
built from the frame as it arrives (BGR, not transposed); only the small levels and patches are put in
the networks' arrangement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import accumulate
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from engines.backends import InferenceBackend

from .boxes import Level, nms, nms_per_group, pyramid, sample_patches, square
from .faces import Faces

logger = logging.getLogger(__name__)

CELL = 12
STRIDE = 2
NMS_PER_SCALE = 0.5
NMS_ACROSS_SCALES = 0.7
NMS_RNET = 0.7
NMS_ONET = 0.7
#: Subtracted from a reference box ``[x1, y1, x2, y2]`` (pixels ``x1-1 … x2-1``): the continuous region
#: ``[x1-1, x2)``, which is also the 0-based box.
TO_ZERO_BASED = np.array([1.0, 1.0, 0.0, 0.0])
TO_ZERO_BASED.flags.writeable = False


@dataclass(frozen=True)
class MtcnnSettings:
    """Cascade parameters (defaults are the reference's, but for the minimum face size)."""

    min_face: int = 40
    scale_factor: float = 0.709
    thresholds: Tuple[float, float, float] = (0.6, 0.7, 0.7)


class MtcnnDetector:
    """The three-stage cascade on three loaded back-ends.

    Args:
        pnet, rnet, onet: back-ends for ``mtcnn-pnet``, ``mtcnn-rnet``, ``mtcnn-onet``.
        settings: minimum face size, pyramid step and score thresholds.
        max_batch: the largest batch R-Net and O-Net take at once (a TensorRT profile's limit);
            ``None`` for no limit. A back-end's own ``max_rows_per_run`` applies as well.
    """

    def __init__(
        self,
        pnet: InferenceBackend,
        rnet: InferenceBackend,
        onet: InferenceBackend,
        settings: Optional[MtcnnSettings] = None,
        max_batch: Optional[int] = None,
    ) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.settings = settings or MtcnnSettings()
        self.max_batch = max_batch
        self._pre = pnet.spec.preprocessing
        if any(
            (net.spec.preprocessing.color, net.spec.preprocessing.transpose_hw)
            != (self._pre.color, self._pre.transpose_hw)
            for net in (rnet, onet)
        ):
            raise ValueError("the three MTCNN stages must share one pixel arrangement")

    def scales(self, height: int, width: int) -> List[float]:
        """Pyramid scales: the first maps ``min_face`` to P-Net's 12 px cell, each next one × factor."""
        first = CELL / self.settings.min_face
        scales: List[float] = []
        side = min(height, width) * first
        while side >= CELL:
            scales.append(first * self.settings.scale_factor ** len(scales))
            side *= self.settings.scale_factor
        return scales

    def detect(self, image: np.ndarray) -> Faces:
        """Find faces in one ``(H, W, 3)`` uint8 BGR image."""
        height, width = image.shape[:2]
        # The pyramid is built from the frame as it comes (BGR, not transposed) and each level is put
        # in the networks' pixel arrangement only when it is fed: arranging the full frame first
        # (a transpose and a colour conversion of every pixel) cost more than the rest of the
        # pyramid. R-Net and O-Net patches are cut from the same BGR levels and arranged as patches.
        scales = self.scales(height, width)
        levels: List[Level] = [(image, 1.0, 1.0), *pyramid(image, scales)]
        boxes = self._pnet_candidates(levels[1:], scales)
        if not len(boxes):
            return Faces.empty()
        keep = nms(boxes[:, :4], boxes[:, 4], NMS_ACROSS_SCALES, inclusive=True)
        boxes = boxes[keep]
        # P-Net's regression is relative to the box side without the +1 (reference behaviour).
        sides = _twice(boxes[:, 2:4] - boxes[:, 0:2])
        refined = boxes[:, :4] + boxes[:, 5:9] * sides
        # The reference's fix() is truncation toward zero: np.trunc is the same on floats in one call,
        # where NumPy 1.x's np.fix (JetPack 5's Python 3.8) makes three and took 4 against 0.4 µs.
        boxes = np.trunc(square(refined))

        boxes, scores, offsets = self._refine(levels, boxes, self.rnet, 24, self.settings.thresholds[1])
        if not len(boxes):
            return Faces.empty()
        # Suppress duplicates after the regression (the reference does it before): the refined boxes
        # of one face converge, so O-Net sees ~1 crop per face instead of ~8, for the same output.
        boxes = _regress(boxes, offsets)
        keep = nms(boxes, scores, NMS_RNET, inclusive=True)
        boxes = np.trunc(square(boxes[keep]))

        boxes, scores, offsets, points = self._output(levels, boxes)
        if not len(boxes):
            return Faces.empty()
        boxes = _regress(boxes, offsets)
        keep = nms(boxes, scores, NMS_ONET, mode="min", inclusive=True)
        boxes, scores, points = boxes[keep], scores[keep], points[keep]
        boxes = boxes - TO_ZERO_BASED
        return Faces.of(boxes, scores, points)

    # -- stages -------------------------------------------------------------------------------------

    def _pnet_candidates(self, levels: Sequence[Level], scales: Sequence[float]) -> np.ndarray:
        """P-Net on every pyramid level → ``(K, 9)``: box (4), score, regression (4).

        Args:
            levels: the BGR pyramid levels, largest first, one per scale.
            scales: each level's nominal scale (the reference maps cells back with it, not with the
                level's exact per-axis scale).

        Returns:
            The candidates after NMS within each level, level by level and best first within a
            level, as the reference orders them. The per-level suppressions run as one OpenCV call.
        """
        reg_name, prob_name = (tensor.name for tensor in self.pnet.spec.outputs)
        # Every level's maps as rows of two tables (cells row-major, level after level), so that the
        # threshold and the gathers are a few calls for the whole pyramid instead of a few per level.
        probabilities: List[np.ndarray] = []  # (cells, 2) per level
        regressions: List[np.ndarray] = []  # (cells, 4) per level
        widths: List[int] = []  # each level's map row length
        for blob in self._pnet_inputs(levels):
            outputs = self.pnet.run(blob)
            probability = outputs[prob_name][0]  # (rows, cols, 2)
            probabilities.append(probability.reshape(-1, 2))
            regressions.append(outputs[reg_name][0].reshape(-1, 4))
            widths.append(probability.shape[1])
        live = np.concatenate(probabilities)[:, 1]
        cells = np.flatnonzero(live >= self.settings.thresholds[0])  # ascending: level by level
        if not len(cells):
            return np.zeros((0, 9))
        sizes = np.array([len(table) for table in probabilities])
        ends = sizes.cumsum()
        level_of = ends.searchsorted(cells, side="right")
        local = cells - (ends - sizes)[level_of]  # each cell's row in its level's tables
        # Map indices: (x, y) cells when the input was transposed, (y, x) otherwise.
        first, second = np.divmod(local, np.array(widths)[level_of])
        # The regressions of the candidates, from the levels that have any (a few of them): cheaper
        # than one table of every cell's regression (about 600 KB at 1280×720).
        per_level = np.bincount(level_of, minlength=len(sizes)).tolist()
        gathered, start = [], 0
        for level, count in enumerate(per_level):
            if count:
                gathered.append(regressions[level][local[start : start + count]])
                start += count
        scale_of = np.asarray(scales, np.float64)[level_of, None]
        corner = np.empty((len(cells), 2))  # (K, 2) x, y of each cell's corner
        x_column = 0 if self._pre.transpose_hw else 1
        corner[:, x_column] = first
        corner[:, 1 - x_column] = second
        corner *= STRIDE
        boxes = np.concatenate(
            [
                np.trunc((corner + 1) / scale_of),
                np.trunc((corner + CELL) / scale_of),
                live[cells, None],
                np.concatenate(gathered),
            ],
            axis=1,
        )
        keep = nms_per_group(boxes[:, :4], boxes[:, 4], level_of, NMS_PER_SCALE, inclusive=True)
        return boxes[keep]

    def _pnet_inputs(self, levels: Sequence[Level]) -> List[np.ndarray]:
        """P-Net's input for every level, ``(1, w, h, 3)`` float32 each (``(1, h, w, 3)`` untransposed).

        The levels are arranged into one buffer and converted to float in one pass over it, rather
        than with a conversion per level: each input is a contiguous view into that buffer.
        """
        pre = self._pre
        if pre.layout != "NHWC":  # a channels-first P-Net has no one-buffer form: level by level
            return [pre.to_blob(pixels[None]) for pixels, _, _ in levels]
        shapes = [(p.shape[1], p.shape[0]) if pre.transpose_hw else p.shape[:2] for p, _, _ in levels]
        sizes = [rows * cols * 3 for rows, cols in shapes]
        ends = list(accumulate(sizes))
        pixels = np.empty(ends[-1] if ends else 0, np.uint8)
        for (level, _, _), (rows, cols), end, size in zip(levels, shapes, ends, sizes):
            place = pixels[end - size : end].reshape(rows, cols, 3)
            if pre.transpose_hw:
                cv2.transpose(level, dst=place)  # written in place: the view is the size it needs
            else:
                np.copyto(place, level)
        flat = pixels.reshape(1, -1, 1, 3)
        if pre.color == "RGB":
            flat = cv2.cvtColor(flat[0], cv2.COLOR_BGR2RGB)[None]
        values = pre.normalize(flat).reshape(-1)
        return [
            values[end - size : end].reshape(1, rows, cols, 3)
            for (rows, cols), end, size in zip(shapes, ends, sizes)
        ]

    def _run_batched(self, backend: InferenceBackend, blob: np.ndarray) -> List[np.ndarray]:
        """Run ``blob`` in chunks of at most ``max_batch`` and the back-end's ``max_rows_per_run``;
        outputs in the registry's order."""
        step = min(
            (limit for limit in (self.max_batch, backend.max_rows_per_run) if limit), default=len(blob)
        )
        chunks = [backend.run(blob[start : start + step]) for start in range(0, len(blob), step)]
        if len(chunks) == 1:
            return [chunks[0][t.name] for t in backend.spec.outputs]
        return [np.concatenate([chunk[t.name] for chunk in chunks]) for t in backend.spec.outputs]

    def _crops(
        self, levels: Sequence[Level], boxes: np.ndarray, size: int, backend: InferenceBackend
    ) -> np.ndarray:
        regions = boxes - TO_ZERO_BASED
        pre = backend.spec.preprocessing
        patches = sample_patches(levels, regions, (size, size), transpose=pre.transpose_hw)
        if pre.color == "RGB" and len(patches):
            # All patches as one tall image: one colour conversion instead of one per patch.
            mosaic = patches.reshape(-1, patches.shape[2], 3)
            patches = cv2.cvtColor(mosaic, cv2.COLOR_BGR2RGB).reshape(patches.shape)
        return pre.normalize(patches)

    def _refine(
        self,
        levels: Sequence[Level],
        boxes: np.ndarray,
        backend: InferenceBackend,
        size: int,
        threshold: float,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """R-Net: keep boxes scoring above ``threshold``; returns boxes, scores, regression offsets."""
        regression, probability = self._run_batched(backend, self._crops(levels, boxes, size, backend))
        passed = probability[:, 1] > threshold
        return boxes[passed], probability[passed, 1].astype(np.float64), regression[passed].astype(np.float64)

    def _output(
        self, levels: Sequence[Level], boxes: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """O-Net: scores, regression and landmarks ``(K, 5, 2)`` of the boxes above the threshold."""
        regression, landmarks, probability = self._run_batched(
            self.onet, self._crops(levels, boxes, 48, self.onet)
        )
        passed = probability[:, 1] > self.settings.thresholds[2]
        boxes = boxes[passed]
        landmarks = landmarks[passed].astype(np.float64)
        width = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        height = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        xs = boxes[:, 0:1] + width * landmarks[:, 0:5] - 1
        ys = boxes[:, 1:2] + height * landmarks[:, 5:10] - 1
        points = np.empty((len(boxes), 5, 2))
        points[:, :, 0], points[:, :, 1] = xs, ys
        return boxes, probability[passed, 1].astype(np.float64), regression[passed].astype(np.float64), points


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply R-/O-Net box regression, relative to the pixel-inclusive box size."""
    return boxes + offsets * _twice(boxes[:, 2:4] - boxes[:, 0:2] + 1)


def _twice(sizes: np.ndarray) -> np.ndarray:
    """``(N, 2)`` widths and heights → ``(N, 4)`` ``[w, h, w, h]``, to scale box offsets by."""
    # One concatenate: np.stack and np.tile are Python functions, several calls each (NumPy 1.x, as
    # JetPack 5's Python 3.8 has it, pays a few µs for each on this per-frame path).
    return np.concatenate([sizes, sizes], axis=1)
