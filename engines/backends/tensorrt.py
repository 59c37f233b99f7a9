"""The TensorRT back-end: a cached (or freshly built) TensorRT engine run through pycuda.

Importing this module imports ``tensorrt`` and ``pycuda.driver``; on a machine without them the
back-end registry turns the ``ImportError`` into "TensorRT back-end unavailable: …".

Threading and the CUDA context
------------------------------
The back-end uses the *primary* CUDA context of ``options.device``
(``pycuda.driver.Device(n).retain_primary_context()``), retained once at open and released once at
close. It is pushed onto the calling thread's context stack around each call (open, run, close) and
popped afterwards, so no context stays current on any thread between calls. The thread that uses the
back-end — the pipeline thread — owns it: construct it, run it and close it there. A lock serialises
calls anyway, because the page-locked and device buffers are shared by all calls.

Memory
------
One execution context and one CUDA stream. Page-locked host buffers and device buffers are allocated
once, for the optimization profile's largest shapes; each call sets its input shapes, copies the
inputs in, runs, and copies out only the bytes the actual output shapes need. ``close()`` frees the
buffers, the stream, the TensorRT objects and the context explicitly; nothing is freed in ``__del__``.

TensorRT 8 and 10
-----------------
The name-based I/O API (``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``; TensorRT 8.5+, the only one in 10.x) is used when the
execution context has ``execute_async_v3``; otherwise the binding API (``num_bindings``,
``set_binding_shape``, ``execute_async_v2``) of TensorRT 8.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorrt as trt  # first: its absence is the usual reason this back-end is unavailable

# isort: split
import pycuda.driver as cuda

from ..errors import EngineBuildError, EngineLoadError, InferenceError
from ..registry import TensorSpec
from ..trt_builder import EngineBuilder, errors_text, get_trt_logger
from ..trt_engine_cache import (
    EngineManifest,
    EngineRequest,
    PlatformInfo,
    file_sha256_or_none,
    lookup,
    optimization_profile,
    read_l4t_version,
    sha256_bytes,
)
from .base import InferenceBackend

logger = logging.getLogger(__name__)


@dataclass
class _Tensor:
    """One engine input or output with its buffers.

    ``engine_shape`` has ``-1`` for dynamic dimensions; ``min_shape``/``max_shape`` are the profile's
    range (inputs) or the shape at the profile's largest inputs (outputs); ``host`` is a flat
    page-locked array of ``max_shape``'s volume; ``device`` the device allocation of the same size.
    """

    name: str
    index: int  # binding index (TensorRT 8 binding API); I/O position otherwise
    is_input: bool
    dtype: np.dtype
    engine_shape: Tuple[int, ...]
    min_shape: Tuple[int, ...]
    max_shape: Tuple[int, ...]
    host: Optional[np.ndarray] = None
    device: Optional[Any] = None  # pycuda.driver.DeviceAllocation


class TensorRTBackend(InferenceBackend):
    """TensorRT on a CUDA device (Jetson or desktop GPU).

    ``_open`` looks the engine for these ONNX bytes up in ``options.engine_dir`` (see
    :mod:`engines.trt_engine_cache`) and builds it with :class:`engines.trt_builder.EngineBuilder`
    when it is absent or was built for another platform, precision or profile. Without an
    ``engine_dir`` the engine is built in memory at every open (logged as a warning).

    Options read: ``device``, ``precision``, ``engine_dir``, ``max_batch``, ``workspace_mb``,
    ``dla_core``, ``max_frame``, ``min_face``, ``yunet_max_side``, ``calibration_cache``.
    """

    key = "tensorrt"

    # Everything _release frees; class-level defaults make a half-finished _open safe to release.
    _context: Optional[Any] = None  # pycuda.driver.Context (the device's primary context)
    _stream: Optional[Any] = None
    _runtime: Optional[Any] = None
    _engine: Optional[Any] = None
    _exec: Optional[Any] = None
    _tensors: List[_Tensor]
    _lock: threading.Lock
    _v3: bool = True
    #: the manifest of the engine in use: built precision, target, platform (for status reports)
    manifest: Optional[EngineManifest] = None

    # -- open ----------------------------------------------------------------------------------

    def _open(self, model: bytes) -> None:
        self._tensors = []
        self._lock = threading.Lock()
        self._bindings: List[int] = []
        name = self.spec.name
        try:
            cuda.init()
            device = cuda.Device(self.options.device)
            self._context = device.retain_primary_context()
        except cuda.Error as err:
            self._context = None
            raise EngineLoadError(f"{name}: cannot use CUDA device {self.options.device}: {err}") from err
        try:
            self._context.push()
        except cuda.Error as err:
            self._drop_context()
            raise EngineLoadError(
                f"{name}: cannot make CUDA device {self.options.device} current: {err}"
            ) from err
        try:
            major, minor = device.compute_capability()
            platform = PlatformInfo(
                str(trt.__version__), str(device.name()), (int(major), int(minor)), read_l4t_version()
            )
            self._load(model, platform)
        except BaseException as err:
            self._free(pushed=True)
            if isinstance(err, (cuda.Error, RuntimeError, TypeError, ValueError)):
                raise EngineLoadError(
                    f"{name}: CUDA/TensorRT failed while loading the engine: {err}"
                ) from err
            raise
        self._pop()

    def _load(self, model: bytes, platform: PlatformInfo) -> None:
        """With the context current: find or build the engine, deserialize it, allocate buffers."""
        name = self.spec.name
        options = self.options
        try:
            profiles = optimization_profile(
                self.spec,
                max_batch=options.max_batch,
                max_frame=options.max_frame,
                min_face=options.min_face,
                yunet_max_side=options.yunet_max_side,
            )
            calibration_sha256 = file_sha256_or_none(options.calibration_cache)
            request = EngineRequest(
                model=name,
                onnx_sha256=sha256_bytes(model),
                platform=platform,
                precision=options.precision,
                dla_core=options.dla_core,
                profiles=profiles,
                calibration_sha256=calibration_sha256,
            )
        except (ValueError, OSError) as err:
            raise EngineLoadError(f"{name}: invalid TensorRT options: {err}") from err

        trt_logger = get_trt_logger()
        self._runtime = trt.Runtime(trt_logger)
        engine_bytes, from_cache = self._engine_bytes(model, request, platform)
        with trt_logger.capture_errors() as errors:
            engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if engine is None and from_cache:
                logger.warning(
                    "%s: the cached engine does not deserialize; rebuilding it%s", name, errors_text(errors)
                )
                engine_bytes = self._build(model, request, platform)
                engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if engine is None:
                raise EngineLoadError(f"{name}: TensorRT cannot deserialize the engine.{errors_text(errors)}")
            self._engine = engine
            self._exec = engine.create_execution_context()
            if self._exec is None:
                raise EngineLoadError(
                    f"{name}: TensorRT cannot create an execution context.{errors_text(errors)}"
                )
        self._v3 = hasattr(self._exec, "execute_async_v3")
        try:
            self._stream = cuda.Stream()
            self._tensors = self._discover()
            self._allocate()
        except cuda.Error as err:
            raise EngineLoadError(f"{name}: CUDA allocation failed: {err}") from err
        logger.info(
            "%s: TensorRT %s engine ready on %s (%s API)",
            name,
            trt.__version__,
            platform.gpu_name,
            "tensor" if self._v3 else "binding",
        )

    def _engine_bytes(
        self, model: bytes, request: EngineRequest, platform: PlatformInfo
    ) -> Tuple[bytes, bool]:
        """The serialized engine from the cache, or a new build; and whether it came from the cache."""
        engine_dir = self.options.engine_dir
        if engine_dir is None:
            logger.warning(
                "%s: no engine_dir configured: building the TensorRT engine in memory (not cached)",
                self.spec.name,
            )
            return self._build(model, request, platform), False
        found = lookup(engine_dir, request)
        if found.path is not None:
            try:
                engine = found.path.read_bytes()
            except OSError as err:
                logger.warning(
                    "%s: cannot read cached engine %s (%s); rebuilding", self.spec.name, found.path, err
                )
            else:
                self.manifest = found.manifest
                logger.info("%s: using cached engine %s", self.spec.name, found.path)
                return engine, True
        else:
            logger.info("%s: building a TensorRT engine: %s", self.spec.name, found.reason)
        return self._build(model, request, platform), False

    def _build(self, model: bytes, request: EngineRequest, platform: PlatformInfo) -> bytes:
        options = self.options
        calibration: Optional[bytes] = None
        if options.calibration_cache is not None:
            try:
                calibration = Path(options.calibration_cache).read_bytes()
            except OSError as err:
                raise EngineLoadError(
                    f"{self.spec.name}: cannot read the calibration cache {options.calibration_cache}: {err}"
                ) from err
        try:
            builder = EngineBuilder(
                device=options.device,
                workspace_mb=options.workspace_mb,
                platform=platform,
                manage_context=False,  # our context is current
            )
            built = builder.build(
                self.spec, model, request, options.engine_dir, calibration_cache=calibration
            )
        except EngineBuildError as err:
            raise EngineLoadError(f"{self.spec.name}: {err}") from err
        self.manifest = built.manifest
        return built.engine

    def _discover(self) -> List[_Tensor]:
        """The engine's inputs and outputs with their shape ranges (input shapes are left at max)."""
        engine = self._engine
        tensors: List[_Tensor] = []
        if self._v3:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            for index, tensor_name in enumerate(names):
                is_input = engine.get_tensor_mode(tensor_name) == trt.TensorIOMode.INPUT
                shape = tuple(int(d) for d in engine.get_tensor_shape(tensor_name))
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor_name)))
                low, high = shape, shape
                if is_input and any(d < 0 for d in shape):
                    low, _opt, high = (
                        tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(tensor_name, 0)
                    )
                tensors.append(_Tensor(tensor_name, index, is_input, dtype, shape, low, high))
        else:
            for index in range(engine.num_bindings):
                tensor_name = engine.get_binding_name(index)
                is_input = bool(engine.binding_is_input(index))
                shape = tuple(int(d) for d in engine.get_binding_shape(index))
                dtype = np.dtype(trt.nptype(engine.get_binding_dtype(index)))
                low, high = shape, shape
                if is_input and any(d < 0 for d in shape):
                    low, _opt, high = (tuple(int(d) for d in s) for s in engine.get_profile_shape(0, index))
                tensors.append(_Tensor(tensor_name, index, is_input, dtype, shape, low, high))
        # The outputs' largest shapes: set every input to its profile max and read the outputs back.
        try:
            for tensor in tensors:
                if tensor.is_input:
                    self._set_shape(tensor, tensor.max_shape)
        except InferenceError as err:
            raise EngineLoadError(str(err)) from err
        for tensor in tensors:
            if not tensor.is_input:
                shape = self._shape_of(tensor)
                if any(d < 0 for d in shape):
                    raise EngineLoadError(
                        f"{self.spec.name}: output {tensor.name!r} has no bounded shape {shape} "
                        "(data-dependent outputs are not supported)"
                    )
                tensor.min_shape = tensor.max_shape = shape
        return tensors

    def _allocate(self) -> None:
        """Page-locked host and device buffers for every tensor's largest shape."""
        self._bindings = [0] * len(self._tensors)
        for tensor in self._tensors:
            count = max(1, int(np.prod(tensor.max_shape)))
            tensor.host = cuda.pagelocked_empty(count, tensor.dtype)
            tensor.device = cuda.mem_alloc(count * tensor.dtype.itemsize)
            self._bindings[tensor.index] = int(tensor.device)
            if self._v3 and not self._exec.set_tensor_address(tensor.name, int(tensor.device)):
                raise EngineLoadError(f"{self.spec.name}: TensorRT refused the address of {tensor.name!r}")

    # -- I/O -----------------------------------------------------------------------------------

    def _io(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        inputs: List[TensorSpec] = []
        outputs: List[TensorSpec] = []
        for tensor in self._tensors:
            shape = tuple(None if d < 0 else int(d) for d in tensor.engine_shape)
            spec = TensorSpec(tensor.name, shape, tensor.dtype.name)
            (inputs if tensor.is_input else outputs).append(spec)
        return inputs, outputs

    # -- run -----------------------------------------------------------------------------------

    def _run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """Run one batch.

        Args:
            feeds: input name → C-contiguous float32 array (checked by the base class), each within
                the engine's optimization profile.

        Returns:
            float32 arrays in ``spec.outputs`` order, freshly allocated (not views of the buffers).

        Raises:
            InferenceError: a shape outside the profile, a closed back-end, or a CUDA/TensorRT failure.
        """
        name = self.spec.name
        with self._lock:
            if self._exec is None or self._context is None:
                raise InferenceError(f"{name}: the tensorrt back-end is closed")
            inputs = [t for t in self._tensors if t.is_input]
            for tensor in inputs:
                shape = feeds[tensor.name].shape
                if len(shape) != len(tensor.min_shape) or not all(
                    lo <= d <= hi for lo, d, hi in zip(tensor.min_shape, shape, tensor.max_shape)
                ):
                    raise InferenceError(
                        f"{name}: input {tensor.name!r} shape {tuple(shape)} is outside the engine's "
                        f"profile {tensor.min_shape}..{tensor.max_shape} (rebuild with larger "
                        "max_batch/max_frame/yunet_max_side, or split the batch)"
                    )
            try:
                self._context.push()
            except cuda.Error as err:
                raise InferenceError(f"{name}: cannot make the CUDA context current: {err}") from err
            try:
                return self._execute(feeds, inputs)
            except cuda.Error as err:
                raise InferenceError(f"{name}: CUDA failed: {err}") from err
            except (RuntimeError, TypeError, ValueError) as err:
                raise InferenceError(f"{name}: TensorRT failed: {err}") from err
            finally:
                self._pop()

    def _execute(self, feeds: Dict[str, np.ndarray], inputs: List[_Tensor]) -> List[np.ndarray]:
        stream = self._stream
        for tensor in inputs:
            array = np.ascontiguousarray(feeds[tensor.name], dtype=tensor.dtype)
            self._set_shape(tensor, array.shape)
            view = tensor.host[: array.size]
            np.copyto(view, array.reshape(-1))
            cuda.memcpy_htod_async(tensor.device, view, stream)
        if self._v3:
            ok = self._exec.execute_async_v3(stream_handle=stream.handle)
        else:
            ok = self._exec.execute_async_v2(bindings=self._bindings, stream_handle=stream.handle)
        if not ok:
            raise InferenceError(f"{self.spec.name}: TensorRT refused to enqueue the inference")
        results: Dict[str, Tuple[np.ndarray, Tuple[int, ...]]] = {}
        for tensor in self._tensors:
            if tensor.is_input:
                continue
            shape = self._shape_of(tensor)
            view = tensor.host[: int(np.prod(shape))]
            cuda.memcpy_dtoh_async(view, tensor.device, stream)
            results[tensor.name] = (view, shape)
        stream.synchronize()
        return [
            np.array(results[out.name][0], dtype=np.float32).reshape(results[out.name][1])
            for out in self.spec.outputs
        ]

    def _set_shape(self, tensor: _Tensor, shape: Tuple[int, ...]) -> None:
        dims = tuple(int(d) for d in shape)
        if not any(d < 0 for d in tensor.engine_shape):
            return  # a static input needs no shape
        if self._v3:
            ok = self._exec.set_input_shape(tensor.name, dims)
        else:
            ok = self._exec.set_binding_shape(tensor.index, dims)
        if not ok:
            raise InferenceError(f"{self.spec.name}: TensorRT refused shape {dims} for input {tensor.name!r}")

    def _shape_of(self, tensor: _Tensor) -> Tuple[int, ...]:
        if self._v3:
            return tuple(int(d) for d in self._exec.get_tensor_shape(tensor.name))
        return tuple(int(d) for d in self._exec.get_binding_shape(tensor.index))

    # -- release -------------------------------------------------------------------------------

    def _release(self) -> None:
        with self._lock:
            pushed = False
            if self._context is not None:
                try:
                    self._context.push()
                    pushed = True
                except cuda.Error as err:
                    logger.warning(
                        "%s: cannot make the CUDA context current to release: %s", self.spec.name, err
                    )
            self._free(pushed)

    def _free(self, pushed: bool) -> None:
        """Free buffers, stream and TensorRT objects (with the context current), then the context."""
        for tensor in getattr(self, "_tensors", []):
            for label, holder in (("device", tensor.device), ("host", tensor.host)):
                if holder is None:
                    continue
                try:
                    if label == "device":
                        holder.free()
                    else:
                        holder.base.free()  # the PagelockedHostAllocation behind the array
                except (cuda.Error, AttributeError) as err:
                    logger.warning(
                        "%s: freeing the %s buffer of %r failed: %s", self.spec.name, label, tensor.name, err
                    )
            tensor.device = None
            tensor.host = None
        self._tensors = []
        self._bindings = []
        if self._stream is not None:
            try:
                self._stream.synchronize()
            except cuda.Error as err:
                logger.warning("%s: the CUDA stream did not drain: %s", self.spec.name, err)
        # TensorRT objects go in reverse order of creation while the context is current.
        self._stream = None
        self._exec = None
        self._engine = None
        self._runtime = None
        if pushed:
            self._pop()
        self._drop_context()

    def _pop(self) -> None:
        try:
            cuda.Context.pop()
        except cuda.Error as err:
            logger.warning("%s: popping the CUDA context failed: %s", self.spec.name, err)

    def _drop_context(self) -> None:
        if self._context is None:
            return
        try:
            self._context.detach()
        except cuda.Error as err:
            logger.warning("%s: releasing the CUDA context failed: %s", self.spec.name, err)
        self._context = None
