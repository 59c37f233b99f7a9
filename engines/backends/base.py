"""The inference back-end interface: one loaded network on one device.

Vision code talks only to :class:`InferenceBackend`, so the CPU (ONNX Runtime) and TensorRT paths
run the same pre- and post-processing. Subclasses implement the underscore hooks; the public
methods here do the checking (template method, as python-can's ``BusABC.recv`` does).
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import EngineLoadError, InferenceError
from ..registry import ModelSpec, TensorSpec

logger = logging.getLogger(__name__)

Feeds = Union[np.ndarray, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class BackendOptions:
    """Settings shared by the back-ends; each reads the ones that concern it.

    Attributes:
        threads: CPU threads for one inference (0 = the runtime's default).
        device: CUDA device index (TensorRT).
        precision: ``"auto"``, ``"int8"``, ``"fp16"`` or ``"fp32"`` (TensorRT).
        engine_dir: where TensorRT engines and their manifests are cached.
        max_batch: the largest batch a TensorRT optimization profile must cover.
        workspace_mb: TensorRT builder workspace limit.
        dla_core: DLA core for TensorRT on Xavier/Orin, ``None`` for the GPU.
        max_frame: the largest camera frame ``(height, width)`` the TensorRT P-Net profile covers.
        min_face: the MTCNN minimum face size in pixels; with ``max_frame`` it sets the largest
            P-Net pyramid level (frame × 12 / min_face) the TensorRT profile covers.
        yunet_max_side: the longest input side the TensorRT YuNet profile covers (multiple of 32).
        calibration_cache: path of the model's INT8 calibration cache (TensorRT), ``None`` without.
        calibration_dir: folder of INT8 calibration sets, ``<dir>/<model name>.npy`` (TensorRT; see
            :mod:`calibration.sets`). A model's set is part of its engine's cache key; the engine is
            built from it by ``face-appliance engines build`` or the daemon. ``calibration_cache``,
            when given, takes precedence.
        int8_dir: folder of the gate-passed Q/DQ INT8 models ``face-appliance calibrate`` installs
            (``calibration.int8_dir``); TensorRT builds a model's INT8 engine from its Q/DQ model
            there (the only INT8 source on TensorRT 11), ``None`` offers none.
        opt_frame: the camera frame ``(height, width)`` the TensorRT P-Net profile is tuned for
            (its opt shape); ``None`` tunes for ``max_frame``.
        embedder_batch: the batch the TensorRT embedder profile is tuned for (its opt), ``None`` for
            the default.
        build_missing: TensorRT: build the engine at open when no cached engine fits. ``False``
            raises :class:`engines.errors.EngineMissingError` instead, so the caller can serve on
            the CPU while it builds the engine elsewhere (the daemon does).
        prepared_dir: where :func:`engines.prepare.load_model_bytes` keeps prepared ONNX models
            (dynamic batch) between processes, ``None`` to prepare them in memory at every start.
    """

    threads: int = 0
    device: int = 0
    precision: str = "auto"
    engine_dir: Optional[str] = None
    max_batch: int = 16
    workspace_mb: int = 256
    dla_core: Optional[int] = None
    max_frame: Tuple[int, int] = (1080, 1920)
    min_face: int = 20
    yunet_max_side: int = 640
    calibration_cache: Optional[str] = None
    calibration_dir: Optional[str] = None
    int8_dir: Optional[str] = None
    opt_frame: Optional[Tuple[int, int]] = None
    embedder_batch: Optional[int] = None
    build_missing: bool = True
    prepared_dir: Optional[str] = None


class InferenceBackend(ABC):
    """One network loaded on one device.

    Args:
        spec: the registry entry; its inputs and outputs are checked against the loaded model.
        model: the ONNX bytes to load (already prepared, see :func:`engines.prepare.load_model_bytes`).
        options: back-end settings.

    Raises:
        EngineLoadError: the model cannot be loaded or its I/O differs from ``spec``.
    """

    #: registry key, also the value of ``backend.type`` in the configuration
    key: ClassVar[str]
    #: The most rows a caller that batches many crops (MTCNN's R-Net and O-Net) should give one
    #: ``run``, when larger batches are slower per row on this back-end; ``None``: no such limit.
    max_rows_per_run: ClassVar[Optional[int]] = None

    # Until __init__ has finished there is nothing to release (python-can's _is_shutdown trick).
    _closed: bool = True

    def __init__(self, spec: ModelSpec, model: bytes, options: Optional[BackendOptions] = None) -> None:
        self.spec = spec
        self.options = options or BackendOptions()
        self._open(model)
        try:
            self._check_io()
        except Exception:
            self._release()
            raise
        self._closed = False
        logger.debug("%s back-end loaded %s", self.key, spec.qualified_version)

    # -- hooks ---------------------------------------------------------------------------------

    @abstractmethod
    def _open(self, model: bytes) -> None:
        """Load the model; raise :class:`EngineLoadError` with the runtime's reason."""

    @abstractmethod
    def _io(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        """The loaded model's inputs and outputs, with ``None`` for dynamic dimensions."""

    @abstractmethod
    def _run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """Run one batch; outputs in the order of ``spec.outputs``."""

    @abstractmethod
    def _release(self) -> None:
        """Free the runtime's resources; called once."""

    # -- public API ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def inputs(self) -> Tuple[TensorSpec, ...]:
        return self.spec.inputs

    @property
    def outputs(self) -> Tuple[TensorSpec, ...]:
        return self.spec.outputs

    def run(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        """Run one batch.

        Args:
            feeds: one array per input name, or a bare array for a single-input model. Arrays are
                converted to C-contiguous float32; shapes must match the registry's ranks and fixed
                dimensions, with a batch of at least 1.

        Returns:
            One float32 array per output name, batch first.

        Raises:
            InferenceError: missing or unknown inputs, wrong shapes, a closed back-end, or a
                failure inside the runtime.
        """
        if self._closed:
            raise InferenceError(f"{self.spec.name}: the {self.key} back-end is closed")
        prepared = self._check_feeds(feeds)
        outputs = self._run(prepared)
        return {spec.name: array for spec, array in zip(self.spec.outputs, outputs)}

    def warmup(self, iterations: int = 2, batch: int = 1) -> None:
        """Run ``iterations`` batches of zeros in the inputs' example shapes (first-run costs)."""
        feeds = {tensor.name: np.zeros(tensor.concrete_shape(batch), np.float32) for tensor in self.inputs}
        for _ in range(iterations):
            self.run(feeds)

    def close(self) -> None:
        """Release the runtime's resources. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def __enter__(self) -> InferenceBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed:
            warnings.warn(
                f"{type(self).__name__} for {self.spec.name} was not closed", ResourceWarning, stacklevel=1
            )

    # -- checks --------------------------------------------------------------------------------

    def _check_io(self) -> None:
        inputs, outputs = self._io()
        problems = _compare(self.spec.inputs, inputs, "input") + _compare(
            self.spec.outputs, outputs, "output"
        )
        if problems:
            raise EngineLoadError(
                f"{self.spec.name}: the loaded model does not match the registry: {'; '.join(problems)}"
            )

    def _check_feeds(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        if isinstance(feeds, np.ndarray):
            if len(self.spec.inputs) != 1:
                names = ", ".join(t.name for t in self.spec.inputs)
                raise InferenceError(f"{self.spec.name} has several inputs ({names}); pass a mapping")
            feeds = {self.spec.inputs[0].name: feeds}
        expected = {tensor.name for tensor in self.spec.inputs}
        unknown = sorted(set(feeds) - expected)
        missing = sorted(expected - set(feeds))
        if unknown or missing:
            raise InferenceError(
                f"{self.spec.name}: inputs missing {missing or '[]'}, unknown {unknown or '[]'}; "
                f"expected {sorted(expected)}"
            )
        checked: Dict[str, np.ndarray] = {}
        batch: Optional[int] = None
        for tensor in self.spec.inputs:
            array = np.ascontiguousarray(feeds[tensor.name], dtype=np.float32)
            if not _shape_fits(tensor.shape, array.shape) or array.shape[0] < 1:
                raise InferenceError(
                    f"{self.spec.name}: input {tensor.describe()} cannot take an array of shape {array.shape}"
                )
            if batch is not None and array.shape[0] != batch:
                raise InferenceError(f"{self.spec.name}: inputs have different batch sizes")
            batch = array.shape[0]
            checked[tensor.name] = array
        return checked


def _shape_fits(expected: Sequence[Optional[int]], actual: Sequence[int]) -> bool:
    return len(expected) == len(actual) and all(e is None or e == a for e, a in zip(expected, actual))


def _compare(expected: Sequence[TensorSpec], actual: Sequence[TensorSpec], what: str) -> List[str]:
    problems: List[str] = []
    found = {tensor.name: tensor for tensor in actual}
    for tensor in expected:
        got = found.pop(tensor.name, None)
        if got is None:
            problems.append(f"{what} {tensor.name!r} is absent (model has {sorted(t.name for t in actual)})")
            continue
        if got.dtype != tensor.dtype:
            problems.append(f"{what} {tensor.name!r} is {got.dtype}, expected {tensor.dtype}")
        if len(got.shape) != len(tensor.shape):
            problems.append(
                f"{what} {got.describe()} has rank {len(got.shape)}, expected {tensor.describe()}"
            )
            continue
        for axis, (want, have) in enumerate(zip(tensor.shape, got.shape)):
            if want is None and have is not None:
                problems.append(
                    f"{what} {got.describe()} fixes axis {axis} to {have}, the registry needs it dynamic"
                    + (" (prepare the model with a dynamic batch)" if axis == 0 else "")
                )
            elif want is not None and have is not None and want != have:
                problems.append(f"{what} {got.describe()} differs from {tensor.describe()} on axis {axis}")
    problems.extend(f"unexpected {what} {name!r}" for name in found)
    return problems
