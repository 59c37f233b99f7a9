"""What the TensorRT calibrator feeds, without TensorRT: fixed-size batches of a calibration set, and
the calibration cache file.

:class:`engines.tensorrt.calibrator.EntropyCalibrator` hands TensorRT one batch per ``get_batch`` call;
TensorRT calibrates a network with runtime dimensions at one shape (its calibration profile), so
every batch has the same shape, ``(batch, *sample)``. The set's samples are taken in order; the
remainder that does not fill a last batch is left out (and logged), as a smaller last batch would
not match the calibration profile. This module is pure numpy so its rules are unit-tested anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from engines.files import PathLike, atomic_writer

from ..errors import CalibrationDataError

logger = logging.getLogger(__name__)

#: Samples per calibration batch. TensorRT's entropy calibration builds one histogram per activation
#: and widens it as larger values arrive; several small batches can leave a histogram with half its
#: bins empty when the widening happens late, so batches are as large as memory comfortably allows
#: (32 MobileFaceNet crops are 4.8 MB).
DEFAULT_BATCH = 32


class CalibrationBatches:
    """Fixed-size batches of one model input taken from a calibration set.

    Args:
        data: ``(N, *sample)`` float32, the set in the network's input layout (it may be memory-mapped).
        batch_size: samples per batch; reduced to ``N`` for a smaller set.
        sample_dims: the network input's dimensions after the batch, ``None`` for a dynamic one
            (P-Net's height and width); the set's sample shape must match the fixed ones.
        name: the model name, for messages.

    Raises:
        CalibrationDataError: the set is empty, not float32, or its samples do not fit the input.
    """

    def __init__(
        self,
        data: np.ndarray,
        batch_size: int = DEFAULT_BATCH,
        sample_dims: Optional[Sequence[Optional[int]]] = None,
        name: str = "model",
    ) -> None:
        if batch_size < 1:
            raise CalibrationDataError(f"{name}: the calibration batch size must be >= 1, got {batch_size}")
        if data.dtype != np.float32:
            raise CalibrationDataError(f"{name}: the calibration set is {data.dtype}, expected float32")
        if data.ndim < 2 or data.shape[0] < 1:
            raise CalibrationDataError(
                f"{name}: the calibration set has shape {data.shape}; expected (N, *sample) with N >= 1"
            )
        sample = tuple(int(dim) for dim in data.shape[1:])
        if sample_dims is not None:
            dims = tuple(sample_dims)
            fits = len(dims) == len(sample) and all(d is None or d == s for d, s in zip(dims, sample))
            if not fits:
                wanted = "x".join("?" if d is None else str(d) for d in dims)
                raise CalibrationDataError(
                    f"{name}: the calibration samples are {'x'.join(map(str, sample))}, the network input "
                    f"takes {wanted} (the set was made for another model or layout; rebuild it with "
                    "`face-appliance calibrate`)"
                )
        self.name = name
        self.data = data
        self.batch_size = min(int(batch_size), int(data.shape[0]))
        self.sample = sample
        self.count = int(data.shape[0]) // self.batch_size
        self.left_out = int(data.shape[0]) - self.count * self.batch_size
        self._next = 0
        if self.left_out:
            logger.info(
                "%s: %d calibration batches of %d; the last %d sample(s) do not fill a batch and are left out",
                name,
                self.count,
                self.batch_size,
                self.left_out,
            )

    @property
    def shape(self) -> Tuple[int, ...]:
        """The shape of every batch, ``(batch, *sample)``."""
        return (self.batch_size, *self.sample)

    @property
    def nbytes(self) -> int:
        """Bytes of one batch (the device buffer's size)."""
        return int(np.prod(self.shape)) * np.dtype(np.float32).itemsize

    @property
    def served(self) -> int:
        """How many batches :meth:`next_batch` has handed out since the last :meth:`reset`."""
        return self._next

    def next_batch(self) -> Optional[np.ndarray]:
        """The next batch as a C-contiguous ``(batch, *sample)`` float32 array, or ``None`` at the end."""
        if self._next >= self.count:
            return None
        start = self._next * self.batch_size
        self._next += 1
        return np.ascontiguousarray(self.data[start : start + self.batch_size], dtype=np.float32)

    def reset(self) -> None:
        """Start again from the first batch (TensorRT may calibrate more than once per build)."""
        self._next = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        self.reset()
        while True:
            batch = self.next_batch()
            if batch is None:
                return
            yield batch


def read_cache(path: Optional[PathLike]) -> Optional[bytes]:
    """The calibration cache at ``path``, or ``None`` when there is none (or it cannot be read: a
    missing cache only costs a calibration run, so that is logged, not raised)."""
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        logger.warning("cannot read the calibration cache %s (%s); calibrating again", path, err.strerror)
        return None
    return data or None


def write_cache(path: Optional[PathLike], cache: bytes) -> bool:
    """Write the calibration cache atomically; ``False`` (and a warning) when it cannot be written."""
    if path is None:
        return False
    try:
        with atomic_writer(Path(path)) as stream:
            stream.write(bytes(cache))
    except OSError as err:
        logger.warning("cannot write the calibration cache %s: %s", path, err)
        return False
    return True


__all__ = ["DEFAULT_BATCH", "CalibrationBatches", "read_cache", "write_cache"]
