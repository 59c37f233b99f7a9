"""The TensorRT INT8 entropy calibrator (implicit quantization), fed from a calibration set.

:class:`EntropyCalibrator` is a ``tensorrt.IInt8EntropyCalibrator2`` (the calibrator TensorRT
recommends, and the one the DLA requires). It reads the model's calibration set (``<dir>/<model>.npy``,
made by ``face-appliance calibrate``, see :mod:`calibration.sets`), copies one fixed-size batch at a
time into a pycuda device buffer and hands TensorRT its address; TensorRT's scales are written to a
calibration cache file and read back on every later build with the same network, data and TensorRT
version, which then needs no batches (and no device memory) at all.

The TensorRT Python binding calls these methods from C++ functions declared ``noexcept``: an exception
escaping ``get_batch`` or the cache methods cannot be handled there. So none escapes: the first
failure is kept in :attr:`EntropyCalibrator.error`, calibration is ended (``get_batch`` returns
``None``), and :class:`engines.tensorrt.builder.EngineBuilder` raises it after the build.

Implicit quantization with a calibrator is deprecated from TensorRT 10.1 in favour of explicit Q/DQ
models (:mod:`calibration.quantize`); it still works there and is the normal path on JetPack 5
(TensorRT 8.5). TensorRT 11 removed it (no ``IInt8Calibrator``/``IInt8EntropyCalibrator2`` in its
bindings, no ``IBuilderConfig.int8_calibrator``). This module still imports there —
:data:`IMPLICIT_CALIBRATION` is then ``False`` — but ``EntropyCalibrator`` is defined only where its
base class exists: elsewhere, asking for it (``from engines.tensorrt.calibrator import
EntropyCalibrator``) raises :class:`engines.errors.EngineBuildError` saying that INT8 engines come
from the Q/DQ models of ``face-appliance calibrate`` there. The engine request never asks for
calibration on such a TensorRT (:func:`engines.tensorrt.cache.plan_precision`).

This module imports ``tensorrt`` and ``pycuda`` when it is imported: import it only where an INT8
engine is built on a device. The batching and cache rules are in :mod:`engines.tensorrt.batches`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorrt as trt  # first: its absence is the usual reason INT8 calibration is unavailable

# isort: split
import pycuda.driver as cuda

from engines.files import PathLike
from engines.registry import ModelSpec

from ..errors import CalibrationDataError, EngineBuildError
from .batches import DEFAULT_BATCH, CalibrationBatches, read_cache, write_cache
from .cache import no_implicit_int8

logger = logging.getLogger(__name__)

#: Whether the imported TensorRT has implicit INT8 calibration (``IInt8EntropyCalibrator2``).
IMPLICIT_CALIBRATION: bool = hasattr(trt, "IInt8EntropyCalibrator2")


def require_implicit_calibration() -> None:
    """Raise :class:`EngineBuildError` (what to do instead) when this TensorRT has no calibrators."""
    if not IMPLICIT_CALIBRATION:
        raise EngineBuildError(no_implicit_int8(f"TensorRT {trt.__version__}"))


if IMPLICIT_CALIBRATION:  # TensorRT 8.x and 10.x (deprecated from 10.1)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds one model input's calibration batches to TensorRT and keeps its calibration cache.

        Args:
            input_name: the network input the batches are for.
            batches: the batches (``None``: the cache must hold the scales; TensorRT then asks for none).
            cache_path: where the calibration cache is read from and written to; ``None`` keeps none.

        The device buffer is allocated on the first ``get_batch`` (while the builder's CUDA context is
        current) and freed by :meth:`close`, which is idempotent; use the calibrator as a context manager.
        """

        def __init__(
            self, input_name: str, batches: Optional[CalibrationBatches], cache_path: Optional[PathLike]
        ) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.input_name = input_name
            self.batches = batches
            self.cache_path = Path(cache_path) if cache_path is not None else None
            #: the first failure inside a TensorRT callback (raised by the builder after the build)
            self.error: Optional[BaseException] = None
            #: whether TensorRT took its scales from an existing cache (no batches were needed)
            self.cache_used = False
            self._device: Optional[Any] = None  # pycuda.driver.DeviceAllocation

        @classmethod
        def from_set(
            cls,
            spec: ModelSpec,
            set_path: PathLike,
            cache_path: Optional[PathLike],
            batch_size: int = DEFAULT_BATCH,
        ) -> EntropyCalibrator:
            """A calibrator for ``spec`` fed from the calibration set file ``set_path`` (memory-mapped).

            Raises:
                CalibrationDataError: the model has more than one input, or the set cannot be read or
                    does not fit the model's input.
            """
            if len(spec.inputs) != 1:
                raise CalibrationDataError(
                    f"{spec.name}: calibration sets feed one input; the model has {len(spec.inputs)}"
                )
            tensor = spec.inputs[0]
            try:
                data = np.load(Path(set_path), mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise CalibrationDataError(f"{set_path}: not a readable calibration set: {err}") from err
            batches = CalibrationBatches(data, batch_size, tensor.shape[1:], spec.name)
            logger.info(
                "%s: INT8 calibration from %s: %d batches of %s",
                spec.name,
                set_path,
                batches.count,
                "x".join(map(str, batches.shape)),
            )
            return cls(tensor.name, batches, cache_path)

        # -- what the engine builder reads -------------------------------------------------------------

        @property
        def batch_shapes(self) -> Dict[str, Tuple[int, ...]]:
            """Input name → the shape of every batch (the calibration profile's shape)."""
            if self.batches is None:
                return {}
            return {self.input_name: self.batches.shape}

        # -- trt.IInt8Calibrator -----------------------------------------------------------------------

        def get_batch_size(self) -> int:
            """Samples per batch (deprecated by TensorRT 10 with implicit batch, still required)."""
            return self.batches.batch_size if self.batches is not None else 1

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            """The device address of the next batch for each name in ``names``, or ``None`` at the end."""
            if self.error is not None or self.batches is None:
                return None
            try:
                if list(names) != [self.input_name]:
                    raise CalibrationDataError(
                        f"TensorRT asks calibration data for {list(names)}, this calibrator feeds {self.input_name!r}"
                    )
                batch = self.batches.next_batch()
                if batch is None:
                    return None
                if self._device is None:
                    self._device = cuda.mem_alloc(self.batches.nbytes)
                cuda.memcpy_htod(self._device, batch)
                return [int(self._device)]
            except Exception as err:  # never into TensorRT's noexcept caller
                logger.error("INT8 calibration stopped: %s", err)
                self.error = err
                return None

        def read_calibration_cache(self) -> Optional[bytes]:
            """The cached scales, or ``None`` to calibrate from the batches."""
            try:
                cache = read_cache(self.cache_path)
            except Exception as err:
                self.error = err
                return None
            if cache is not None:
                self.cache_used = True
                logger.info("reusing the INT8 calibration cache %s", self.cache_path)
            return cache

        def write_calibration_cache(self, cache: Any) -> None:
            """Keep the scales TensorRT computed (``cache`` is a buffer: a ``memoryview``); a cache that
            was just read back unchanged is not rewritten."""
            try:
                data = bytes(memoryview(cache))
                if self.cache_used and read_cache(self.cache_path) == data:
                    return
                if write_cache(self.cache_path, data):
                    logger.info("wrote the INT8 calibration cache %s", self.cache_path)
            except Exception as err:
                self.error = err

        # -- release -----------------------------------------------------------------------------------

        def close(self) -> None:
            """Free the device buffer (with the CUDA context that allocated it current). Idempotent."""
            device, self._device = self._device, None
            if device is None:
                return
            try:
                device.free()
            except cuda.Error as err:
                logger.warning("freeing the calibration buffer failed: %s", err)

        def __enter__(self) -> EntropyCalibrator:
            return self

        def __exit__(self, *exc_info: object) -> None:
            self.close()

else:  # TensorRT 11+: the base class is gone, so is the calibrator

    def __getattr__(name: str) -> Any:
        """``EntropyCalibrator`` is not defined on this TensorRT: say why instead of ``AttributeError``."""
        if name == "EntropyCalibrator":
            require_implicit_calibration()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["IMPLICIT_CALIBRATION", "require_implicit_calibration"]
if IMPLICIT_CALIBRATION:
    __all__ += ["EntropyCalibrator"]
