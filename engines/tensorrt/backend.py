"""The TensorRT back-end: a cached (or freshly built) TensorRT engine run through pycuda.

Importing this module imports ``tensorrt`` and ``pycuda.driver``; on a machine without them the
back-end registry turns the ``ImportError`` into "TensorRT back-end unavailable: …".

Threading and the CUDA context
------------------------------
The back-end uses the *primary* CUDA context of ``options.device``
(``pycuda.driver.Device(n).retain_primary_context()``), the one the CUDA runtime inside TensorRT uses
too (``Device.make_context`` would create a second, private context, which TensorRT would not see
as current on other threads). It is retained once at open and released once at close, and pushed
onto the calling thread's context stack around each call (open, run, close) and popped afterwards,
so no context stays current on any thread between calls. The thread that opens the back-end — the
pipeline thread — owns it: the pycuda context object, the TensorRT runtime, engine and execution
context and the device buffers were all made there with that context current, and are used only
there. :meth:`run` or :meth:`close` from another thread raises :class:`engines.errors.InferenceError`
naming both threads (a close from the wrong thread leaves the back-end open, so that its owner can
still close it). A lock serialises calls anyway, because the page-locked and device buffers are
shared by all calls.

Memory
------
One execution context and one CUDA stream. Page-locked host buffers and device buffers are allocated
once, for the optimization profile's largest shapes; each call sets its input shapes, copies the
inputs in, runs, and copies out only the bytes the actual output shapes need. A batch larger than the
profile's maximum is run in profile-sized parts and the outputs are concatenated, so callers can pass
any batch, as on the CPU back-end. ``close()`` frees the buffers, the stream, the TensorRT objects and
the context explicitly; nothing is freed in ``__del__``.

The engine cache
----------------
At open the engine for these ONNX bytes, this device and these options is looked up in
``options.engine_dir`` (:func:`engines.tensorrt.cache.lookup`): its manifest is checked *before*
anything is deserialized. Without a fitting engine (or when the cached one does not deserialize) the
back-end builds it, or, with ``options.build_missing = False``, raises
:class:`engines.errors.EngineMissingError` saying what did not match, so the daemon can serve on the
CPU while the engine is built in the background.

TensorRT 8, 10 and 11
---------------------
The name-based I/O API (``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``; TensorRT 8.5+, the only one in 10.x and 11.x) is used
when the execution context has ``execute_async_v3``; otherwise the binding API (``num_bindings``,
``set_binding_shape``, ``execute_async_v2``) of TensorRT 8.2 (the Jetson Nano's), which 10.0 removed.
Engines built from the FP16 or Q/DQ ONNX (TensorRT 11) keep float32 inputs and outputs, so the
buffers are the same for every precision.
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

from ..backends.base import InferenceBackend
from ..errors import EngineBuildError, EngineLoadError, EngineMissingError, InferenceError
from ..registry import TensorSpec
from .builder import EngineBuilder, errors_text, get_trt_logger, numpy_dtype
from .cache import (
    EngineManifest,
    EngineRequest,
    engine_request,
    lookup,
)
from .platform import PlatformInfo, probe_platform

logger = logging.getLogger(__name__)


@dataclass
class _Tensor:
    """One engine input or output with its buffers.

    ``engine_shape`` has ``-1`` for dynamic dimensions; ``min_shape``/``opt_shape``/``max_shape`` are
    the profile's (inputs) or the shape at the profile's largest inputs (outputs); ``host`` is a flat
    page-locked array of ``max_shape``'s volume; ``device`` the device allocation of the same size.
    """

    name: str
    index: int  # binding index (TensorRT 8 binding API); I/O position otherwise
    is_input: bool
    dtype: np.dtype
    engine_shape: Tuple[int, ...]
    min_shape: Tuple[int, ...]
    max_shape: Tuple[int, ...]
    opt_shape: Tuple[int, ...] = ()
    host: Optional[np.ndarray] = None
    device: Optional[Any] = None  # pycuda.driver.DeviceAllocation


class TensorRTBackend(InferenceBackend):
    """TensorRT on a CUDA device (Jetson or desktop GPU).

    ``_open`` looks the engine for these ONNX bytes up in ``options.engine_dir`` (see
    :mod:`engines.tensorrt.cache`) and builds it with :class:`engines.tensorrt.builder.EngineBuilder`
    when it is absent or was built for another platform, precision or profile. Without an
    ``engine_dir`` the engine is built in memory at every open (logged as a warning).

    Options read: ``device``, ``precision``, ``engine_dir``, ``max_batch``, ``workspace_mb``,
    ``dla_core``, ``max_frame``, ``opt_frame``, ``min_face``, ``yunet_max_side``, ``embedder_batch``,
    ``calibration_cache``, ``calibration_dir``, ``build_missing``.
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
    _owner: int = 0  # the thread that opened the back-end (threading.get_ident())
    _owner_name: str = ""
    #: the manifest of the engine in use: built precision, target, platform (for status reports)
    manifest: Optional[EngineManifest] = None

    # -- open ----------------------------------------------------------------------------------

    def _open(self, model: bytes) -> None:
        self._tensors = []
        self._lock = threading.Lock()
        self._bindings: List[int] = []
        current = threading.current_thread()
        self._owner, self._owner_name = threading.get_ident(), current.name
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
            self._load(model, probe_platform(self.options.device))
        except BaseException as err:
            self._free(pushed=True)
            if isinstance(err, EngineBuildError) and not isinstance(err, EngineLoadError):
                raise EngineLoadError(f"{name}: {err}") from err
            if isinstance(err, (cuda.Error, RuntimeError, TypeError, ValueError)):
                raise EngineLoadError(
                    f"{name}: CUDA/TensorRT failed while loading the engine: {err}"
                ) from err
            if isinstance(err, AttributeError):  # an API this TensorRT lacks: a bug here
                raise EngineLoadError(
                    f"{name}: TensorRT {trt.__version__} lacks an API the back-end uses ({err}); report it "
                    "with the output of `face-appliance doctor`"
                ) from err
            raise
        self._pop()

    def _load(self, model: bytes, platform: PlatformInfo) -> None:
        """With the context current: find or build the engine, deserialize it, allocate buffers."""
        name = self.spec.name
        try:
            request = engine_request(self.spec, model, platform, self.options)
        except (ValueError, OSError) as err:
            raise EngineLoadError(f"{name}: invalid TensorRT options: {err}") from err

        trt_logger = get_trt_logger()
        self._runtime = trt.Runtime(trt_logger)
        engine_bytes, from_cache = self._engine_bytes(model, request)
        with trt_logger.capture_errors() as errors:
            self._select_dla()
            engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if engine is None and from_cache:
                reason = (
                    f"{name}: the cached engine does not deserialize on {platform.describe()} (built for "
                    "another TensorRT version or GPU, or damaged)" + errors_text(errors)
                )
                if not self.options.build_missing:
                    raise EngineMissingError(f"{reason}; it has to be built again")
                logger.warning("%s; rebuilding it", reason)
                engine_bytes = self._build(model, request)
                self._select_dla()
                engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if engine is None:
                raise EngineLoadError(
                    f"{name}: TensorRT cannot deserialize the engine it just built on "
                    f"{platform.describe()}.{errors_text(errors)} Check the TensorRT installation "
                    "(face-appliance doctor)"
                )
            self._engine = engine
            self._exec = engine.create_execution_context()
            if self._exec is None:
                raise EngineLoadError(
                    f"{name}: TensorRT cannot create an execution context.{errors_text(errors)}"
                )
        self._v3 = hasattr(self._exec, "execute_async_v3")
        if not self._v3 and not hasattr(self._engine, "num_bindings"):
            raise EngineLoadError(
                f"{name}: TensorRT {trt.__version__} offers neither execute_async_v3 nor the binding API"
            )
        try:
            self._stream = cuda.Stream()
            self._tensors = self._discover()
            self._allocate()
        except cuda.Error as err:
            raise EngineLoadError(f"{name}: CUDA allocation failed: {err}") from err
        except TypeError as err:  # a tensor type without a numpy equivalent
            raise EngineLoadError(f"{name}: {err}") from err
        logger.info(
            "%s: TensorRT %s engine ready on %s (%s, %s API)",
            name,
            trt.__version__,
            platform.gpu_name,
            self.manifest.precision if self.manifest is not None else "?",
            "tensor" if self._v3 else "binding",
        )

    def _select_dla(self) -> None:
        """Tell the runtime which DLA core an engine built for one runs on (before deserializing).

        ``IRuntime.DLA_core`` is "the DLA core that the engine executes on" and defaults to core 0, so
        an engine built for core 1 must have it set.
        """
        target = self.manifest.target if self.manifest is not None else "gpu"
        if target.startswith("dla:"):
            self._runtime.DLA_core = int(target.split(":", 1)[1])

    def _engine_bytes(self, model: bytes, request: EngineRequest) -> Tuple[bytes, bool]:
        """The serialized engine from the cache, or a new build; and whether it came from the cache.

        The manifest is checked before anything is deserialized.

        Raises:
            EngineMissingError: no cached engine fits and ``options.build_missing`` is off.
        """
        engine_dir = self.options.engine_dir
        if engine_dir is None:
            if not self.options.build_missing:
                raise EngineMissingError(
                    f"{self.spec.name}: no engine_dir configured, so no engine is cached"
                )
            logger.warning(
                "%s: no engine_dir configured: building the TensorRT engine in memory (not cached)",
                self.spec.name,
            )
            return self._build(model, request), False
        found = lookup(engine_dir, request)
        reason = found.reason
        if found.path is not None:
            try:
                engine = found.path.read_bytes()
            except OSError as err:
                reason = f"{self.spec.name}: cannot read cached engine {found.path} ({err.strerror})"
            else:
                self.manifest = found.manifest
                logger.info("%s: using cached engine %s", self.spec.name, found.path)
                return engine, True
        if not self.options.build_missing:
            raise EngineMissingError(
                f"{reason}; build it with `face-appliance engines build --models {self.spec.name}`"
            )
        logger.info("%s: building a TensorRT engine: %s", self.spec.name, reason)
        return self._build(model, request), False

    def _build(self, model: bytes, request: EngineRequest) -> bytes:
        options = self.options
        calibration: Optional[bytes] = None
        if options.calibration_cache is not None:
            from .service import read_calibration_cache

            try:
                calibration = read_calibration_cache(self.spec.name, Path(options.calibration_cache))
            except EngineBuildError as err:
                raise EngineLoadError(str(err)) from err
        elif request.plan.int8_source is not None and request.calibration_sha256 is not None:
            raise EngineLoadError(
                f"{self.spec.name}: INT8 calibration from a calibration set needs its calibrator; build the "
                f"engine with `face-appliance engines build --models {self.spec.name}` (or let the daemon "
                "build it), then open the model again"
            )
        try:
            builder = EngineBuilder(
                device=options.device,
                workspace_mb=options.workspace_mb,
                platform=request.platform,
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
                dtype = numpy_dtype(engine.get_tensor_dtype(tensor_name))
                low = opt = high = shape
                if is_input and any(d < 0 for d in shape):
                    low, opt, high = (
                        tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(tensor_name, 0)
                    )
                tensors.append(_Tensor(tensor_name, index, is_input, dtype, shape, low, high, opt))
        else:
            for index in range(engine.num_bindings):
                tensor_name = engine.get_binding_name(index)
                is_input = bool(engine.binding_is_input(index))
                shape = tuple(int(d) for d in engine.get_binding_shape(index))
                dtype = numpy_dtype(engine.get_binding_dtype(index))
                low = opt = high = shape
                if is_input and any(d < 0 for d in shape):
                    low, opt, high = (tuple(int(d) for d in s) for s in engine.get_profile_shape(0, index))
                tensors.append(_Tensor(tensor_name, index, is_input, dtype, shape, low, high, opt))
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

    def warmup(self, iterations: int = 2, batch: int = 1) -> None:
        """Run ``iterations`` batches of zeros at the profile's opt shape with batch ``batch``.

        The registry's example shapes need not lie inside this engine's profile (a P-Net engine for a
        large minimum face size takes smaller images than the example), so the profile decides.
        """
        feeds: Dict[str, np.ndarray] = {}
        for tensor in getattr(self, "_tensors", []):
            if tensor.is_input:
                shape = list(tensor.opt_shape or tensor.max_shape)
                shape[0] = max(tensor.min_shape[0], batch)
                feeds[tensor.name] = np.zeros(shape, np.float32)
        for _ in range(iterations):
            self.run(feeds)

    def _run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        """Run one batch.

        Args:
            feeds: input name → C-contiguous float32 array (checked by the base class), each within
                the engine's optimization profile but for the batch, which may exceed the profile's
                maximum when the profile starts at batch 1: it is then run in parts.

        Returns:
            float32 arrays in ``spec.outputs`` order, freshly allocated (not views of the buffers).

        Raises:
            InferenceError: a shape outside the profile, a closed back-end, or a CUDA/TensorRT failure.
        """
        name = self.spec.name
        self._check_thread("run")
        with self._lock:
            if self._exec is None or self._context is None:
                raise InferenceError(f"{name}: the tensorrt back-end is closed")
            inputs = [t for t in self._tensors if t.is_input]
            step = self._batch_step(feeds, inputs)
            try:
                self._context.push()
            except cuda.Error as err:
                raise InferenceError(f"{name}: cannot make the CUDA context current: {err}") from err
            try:
                batch = int(feeds[inputs[0].name].shape[0])
                if batch <= step:
                    return self._execute(feeds, inputs)
                parts = [
                    self._execute({key: array[start : start + step] for key, array in feeds.items()}, inputs)
                    for start in range(0, batch, step)
                ]
                return [np.concatenate([part[i] for part in parts]) for i in range(len(self.spec.outputs))]
            except cuda.Error as err:
                raise InferenceError(f"{name}: CUDA failed: {err}") from err
            except (RuntimeError, TypeError, ValueError, AttributeError) as err:
                raise InferenceError(f"{name}: TensorRT failed: {err}") from err
            finally:
                self._pop()

    def _batch_step(self, feeds: Dict[str, np.ndarray], inputs: List[_Tensor]) -> int:
        """The largest batch one execution takes; checks every other dimension against the profile.

        Raises:
            InferenceError: a shape outside the profile (other than a batch that can be split).
        """
        step = min(tensor.max_shape[0] for tensor in inputs) if inputs else 1
        for tensor in inputs:
            shape = feeds[tensor.name].shape
            splittable = tensor.min_shape[0] == 1 and len(shape) == len(tensor.min_shape) and shape[0] >= 1
            fits = len(shape) == len(tensor.min_shape) and all(
                lo <= d <= hi
                for axis, (lo, d, hi) in enumerate(zip(tensor.min_shape, shape, tensor.max_shape))
                if not (axis == 0 and splittable)
            )
            if not fits:
                raise InferenceError(
                    f"{self.spec.name}: input {tensor.name!r} shape {tuple(shape)} is outside the engine's "
                    f"profile {tensor.min_shape}..{tensor.max_shape} (rebuild the engine with a larger "
                    "max_frame/yunet_max_side, see `face-appliance engines build`)"
                )
        return max(1, step)

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

    def _check_thread(self, action: str) -> None:
        """Refuse a call from a thread other than the one that opened the back-end (see the module docs)."""
        if threading.get_ident() == self._owner:
            return
        raise InferenceError(
            f"{self.spec.name}: cannot {action} the TensorRT back-end on thread "
            f"{threading.current_thread().name!r}: it was opened on thread {self._owner_name!r}, which owns "
            "its CUDA context and TensorRT objects; open, run and close it on one thread (the pipeline thread)"
        )

    def _release(self) -> None:
        try:
            self._check_thread("close")
        except InferenceError:
            self._closed = False  # still open: its owner thread can close it
            raise
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
