"""A hardware double of TensorRT and pycuda, for tests on machines without a GPU (there is none here, nor
in CI): stand-ins for the ``tensorrt`` and ``pycuda.driver`` modules that enforce what a Jetson enforces.

Used only by tests. :func:`install` puts both into ``sys.modules`` (through pytest's ``monkeypatch``)
for one TensorRT version and one device, and drops any project module that imported the real ones,
so the next import binds to the fakes.

Versions (:data:`VERSIONS`): ``"8.2"`` (Jetson Nano, JetPack 4.6: 8.2.1.8), ``"8.5"`` (JetPack 5:
8.5.2.2), ``"8.6"`` (8.6.1), ``"10.3"`` (JetPack 6: 10.3.0.30), ``"10.13"`` (JetPack 7.0: 10.13.3.9),
``"11.4"`` (JetPack 7.2: 11.4.0.106). :func:`tensorrt_module` builds each version's module with exactly
the names that version's real bindings have among those the fake implements, with the real class,
method, parameter and enum member names and enum values: removed APIs are absent (10.x: no binding
API, ``execute_async_v2``, ``num_bindings``, ``max_workspace_size``; 11.x: no ``BuilderFlag.FP16``/``INT8``,
no ``int8_calibrator``/``set_calibration_profile``, no ``IInt8Calibrator``/``IInt8EntropyCalibrator2``, no
``platform_has_fast_*``, no ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``), deprecated-but-present
ones present. Sources: the Python binding sources of each release (``python/src/infer/pyCore.cpp``,
``pyFoundationalTypes.cpp``, ``pyInt8.cpp``, ``pyGraph.cpp``, ``parsers/pyOnnx.cpp`` at the tags 8.2.1,
8.5.2, v8.6.1, v10.3.0, v10.13.3, v11.1), the enum values of their ``NvInfer*.h``, and the surfaces
dumped from the real 8.6.1, 10.3.0, 10.13.3.9 and 11.4.0.106 wheels (tests/trt_conformance).

Devices (:data:`DEVICES`): ``nano`` (SM 5.3, "NVIDIA Tegra X1", no fast INT8), ``xavier`` (SM 7.2),
``orin`` (SM 8.7), ``thor`` (SM 11.0). With a device, the L4T release file
(``engines.tensorrt.platform.NV_TEGRA_RELEASE``) points at a temporary file of the version's JetPack.

What is enforced, as on the device:

* **CUDA context ownership.** A pycuda ``Context`` from ``retain_primary_context()`` belongs to the
  thread that retained it: ``push``/``pop``/``detach`` from another thread raise ``pycuda.driver.Error``
  ("context used from thread X, owned by Y"). Device and page-locked allocations, streams and copies
  need a current context; allocations are freed only on their thread. TensorRT objects made while a
  context was current (runtime, engine, execution context, builder) may be used only on that thread
  with that context current; anything else raises.
* **Engines are tied to their TensorRT version and GPU.** ``Runtime.deserialize_cuda_engine`` logs an
  error through the ``ILogger`` and returns ``None`` for an engine built by another version or for
  another compute capability (or for bytes that are not an engine).
* **Precision.** INT8 needs a calibrator (or its cache) or Q/DQ layers, else the build logs an error and
  ``build_serialized_network`` returns ``None``; a strongly typed network (11.x always; 10.x with
  ``STRONGLY_TYPED``) refuses the precision flags the same way. The engine's precision follows the flags
  (weakly typed) or the ONNX's types (strongly typed).
* shapes outside the optimization profile, copies larger than their buffer, calibration batches that
  are not the calibration profile's shape.

What stands in for the GPU: device memory is a dict of host ``bytearray`` buffers keyed by fake
addresses; a "serialized engine" is a JSON header (TensorRT version, GPU, I/O, profile, precision)
followed by the ONNX bytes TensorRT parsed; "executing" it runs those ONNX bytes with ONNX Runtime on
the CPU on the bytes at the tensor addresses — so outputs are real (FP16 and Q/DQ models included) and
a back-end's buffer handling, shapes and copies are checked against them. The ONNX parser reads the
real ONNX graph (inputs, outputs, Q/DQ nodes, FP16 tensors) with the ``onnx`` package.
"""

from __future__ import annotations

import atexit
import enum
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Project modules that import tensorrt or pycuda at import time.
TRT_MODULES = ("engines.tensorrt.builder", "engines.tensorrt.backend", "engines.tensorrt.calibrator")

MAGIC = b"FAKE-TRT-ENGINE\n"
#: Sleep per extra build step of :attr:`Record.build_seconds` (the progress monitor sees each step).
BUILD_STEP_S = 0.1
#: ``VERSION,DEVICE[,BUILD_SECONDS]``: makes a daemon subprocess run on the fakes (tests/fake_site).
ENVIRONMENT = "FACE_APPLIANCE_FAKE_TENSORRT"

Version = Tuple[int, int]


# -- versions and devices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionProfile:
    """One TensorRT release as shipped: its full version and the JetPack/L4T release it comes with."""

    full: str
    jetpack: str
    l4t: Tuple[int, str]  # (major, revision) of the L4T release line: R35, REVISION 4.1
    board: str


VERSIONS: Dict[str, VersionProfile] = {
    "8.2": VersionProfile("8.2.1.8", "4.6.1", (32, "7.1"), "t210ref"),
    "8.5": VersionProfile("8.5.2.2", "5.1.2", (35, "4.1"), "t186ref"),
    "8.6": VersionProfile("8.6.1", "6.0 DP", (36, "2.0"), "t186ref"),
    "10.3": VersionProfile("10.3.0.30", "6.2", (36, "4.3"), "t186ref"),
    "10.13": VersionProfile("10.13.3.9", "7.0", (38, "2.0"), "t264ref"),
    "11.4": VersionProfile("11.4.0.106", "7.2", (38, "4.0"), "t264ref"),  # L4T release assumed
}


@dataclass(frozen=True)
class DevicePreset:
    """A Jetson GPU as CUDA and TensorRT report it."""

    gpu_name: str
    compute_capability: Tuple[int, int]
    fast_fp16: bool
    fast_int8: bool
    dla_cores: int


DEVICES: Dict[str, DevicePreset] = {
    "nano": DevicePreset("NVIDIA Tegra X1", (5, 3), True, False, 0),
    "xavier": DevicePreset("Xavier", (7, 2), True, True, 2),
    "orin": DevicePreset("Orin", (8, 7), True, True, 2),
    "thor": DevicePreset("NVIDIA Thor", (11, 0), True, True, 0),
}

#: The device each version ships on (the Nano is stuck on 8.2; JetPack 7.0 is Thor's).
SHIPS_ON: Dict[str, str] = {
    "8.2": "nano",
    "8.5": "xavier",
    "8.6": "orin",
    "10.3": "orin",
    "10.13": "thor",
    "11.4": "thor",
}


def version_tuple(version: str) -> Version:
    """``(major, minor)`` of ``"10.13.3.9"``."""
    parts = version.split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def profile_of(version: str) -> Tuple[str, VersionProfile]:
    """The known release ``version`` belongs to (``"8.5.2.2"`` → ``"8.5"``): the same major and the
    newest minor not above it."""
    wanted = version_tuple(version)
    candidates = [
        key for key in VERSIONS if version_tuple(key)[0] == wanted[0] and version_tuple(key) <= wanted
    ]
    if not candidates:
        raise ValueError(f"the fake TensorRT models {', '.join(VERSIONS)}; not {version}")
    key = max(candidates, key=version_tuple)
    return key, VERSIONS[key]


# -- the record of what the fakes saw -----------------------------------------------------------------


@dataclass
class Record:
    """What the fakes saw, and the knobs a test turns (one per test: :func:`install`)."""

    calls: List[Tuple[str, Any]] = field(default_factory=list)
    configs: List[Any] = field(default_factory=list)  # IBuilderConfig
    networks: List[Any] = field(default_factory=list)  # INetworkDefinition
    builds: List[Dict[str, Any]] = field(default_factory=list)  # headers of the engines built
    runtimes: List[Any] = field(default_factory=list)
    memory: Dict[int, bytearray] = field(default_factory=dict)
    freed: List[int] = field(default_factory=list)
    pushes: int = 0
    pops: int = 0
    version: str = "8.5.2.2"
    device: Optional[str] = None
    fast_fp16: bool = True
    fast_int8: bool = True
    dla_cores: int = 0
    compute_capability: Tuple[int, int] = (8, 7)
    gpu_name: str = "Orin"
    parse_errors: List[str] = field(default_factory=list)
    fail_build: bool = False
    corrupt_engines: bool = False
    progress_cancel_at: Optional[int] = None
    #: Each build takes this long (a Nano needs minutes per engine), in steps the progress monitor
    #: (TensorRT 10+) sees and may cancel; older versions cannot be interrupted, as on the device.
    build_seconds: float = 0.0
    release_file: Optional[Path] = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, name: str, value: Any = None) -> None:
        with self.lock:
            self.calls.append((name, value))

    def names(self) -> List[str]:
        return [name for name, _ in self.calls]


RECORD = Record()
_addresses = itertools.count(0x7F0000000000, 0x100000)


# -- pycuda.driver ------------------------------------------------------------------------------------


class Error(Exception):
    """``pycuda.driver.Error``."""


class LogicError(Error):
    """``pycuda.driver.LogicError``: a CUDA call made in a state where it cannot work."""


_threads = threading.local()


def _stack() -> List[Context]:
    """This thread's CUDA context stack."""
    if not hasattr(_threads, "stack"):
        _threads.stack = []
    return _threads.stack  # type: ignore[no-any-return]


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return f"<thread {ident}>"


def _current_context(call: str) -> Context:
    stack = _stack()
    if not stack:
        raise LogicError(f"{call} failed: invalid device context (no CUDA context is current on this thread)")
    return stack[-1]


class _Owned:
    """Remembers the thread (and the CUDA context current there) it was made on."""

    _owner: int = 0
    _owner_context: Optional[Context] = None

    def _own(self, need_context: bool = False, call: str = "") -> None:
        self._owner = threading.get_ident()
        stack = _stack()
        if need_context and not stack:
            raise LogicError(f"{call} failed: invalid device context (no CUDA context is current)")
        self._owner_context = stack[-1] if stack else None

    def _check_owner(self, what: str, error: type = RuntimeError) -> None:
        here = threading.get_ident()
        if here != self._owner:
            raise error(
                f"{what}: context used from thread {_thread_name(here)!r}, owned by {_thread_name(self._owner)!r}"
            )
        if self._owner_context is not None and (not _stack() or _stack()[-1] is not self._owner_context):
            raise error(f"{what}: the CUDA context it was created with is not current on this thread")


class DeviceAllocation(_Owned):
    def __init__(self, nbytes: int) -> None:
        self._own(need_context=True, call="cuMemAlloc")
        self.address = next(_addresses)
        RECORD.memory[self.address] = bytearray(nbytes)

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        here = threading.get_ident()
        if here != self._owner:
            raise LogicError(
                f"cuMemFree failed: context used from thread {_thread_name(here)!r}, owned by {_thread_name(self._owner)!r}"
            )
        if self.address in RECORD.memory:
            RECORD.freed.append(self.address)
            RECORD.memory.pop(self.address, None)


class PagelockedHostAllocation(np.ndarray):
    """The ``base`` of a page-locked array (its ``free()`` releases it, on its thread)."""

    def free(self) -> None:
        owner = getattr(self, "_owner", threading.get_ident())
        if threading.get_ident() != owner:
            raise LogicError(
                f"cuMemFreeHost failed: context used from thread {_thread_name(threading.get_ident())!r}, "
                f"owned by {_thread_name(owner)!r}"
            )
        RECORD.log("free_host")


def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
    """Like pycuda's: a plain ndarray whose ``base`` is the allocation that owns the memory."""
    _current_context("cuMemHostAlloc")
    owner = np.ndarray.__new__(PagelockedHostAllocation, shape, dtype)
    owner._owner = threading.get_ident()  # type: ignore[attr-defined]
    owner.fill(0)
    return owner.view(np.ndarray)


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(int(nbytes))


def _host_bytes(src: Any) -> bytes:
    return np.ascontiguousarray(src).tobytes()


def _device_buffer(address: Any, call: str) -> bytearray:
    _current_context(call)
    try:
        return RECORD.memory[int(address)]
    except KeyError:
        raise LogicError(
            f"{call} failed: invalid argument (no device allocation at {int(address):#x})"
        ) from None


def memcpy_htod(dest: Any, src: Any) -> None:
    data = _host_bytes(src)
    buffer = _device_buffer(dest, "cuMemcpyHtoD")
    if len(data) > len(buffer):
        raise LogicError("cuMemcpyHtoD failed: the copy is larger than the allocation")
    buffer[: len(data)] = data


def memcpy_htod_async(dest: Any, src: Any, stream: Any = None) -> None:
    if stream is not None:
        stream._check_owner("cuMemcpyHtoDAsync", LogicError)
    memcpy_htod(dest, src)


def memcpy_dtoh(dest: np.ndarray, src: Any) -> None:
    buffer = _device_buffer(src, "cuMemcpyDtoH")
    nbytes = dest.nbytes
    if nbytes > len(buffer):
        raise LogicError("cuMemcpyDtoH failed: the copy is larger than the allocation")
    np.copyto(dest, np.frombuffer(bytes(buffer[:nbytes]), dest.dtype).reshape(dest.shape))


def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Any = None) -> None:
    if stream is not None:
        stream._check_owner("cuMemcpyDtoHAsync", LogicError)
    memcpy_dtoh(dest, src)


class Stream(_Owned):
    def __init__(self, flags: int = 0) -> None:
        self._own(need_context=True, call="cuStreamCreate")
        self.handle = next(_addresses)

    def synchronize(self) -> None:
        self._check_owner("cuStreamSynchronize", LogicError)


class Context:
    """A CUDA context as pycuda hands it out: owned by the thread that retained it."""

    def __init__(self, device: Device) -> None:
        self._device = device
        self._owner = threading.get_ident()
        self._detached = False

    def _check_thread(self, call: str) -> None:
        here = threading.get_ident()
        if here != self._owner:
            raise LogicError(
                f"{call} failed: context used from thread {_thread_name(here)!r}, owned by {_thread_name(self._owner)!r}"
            )
        if self._detached:
            raise LogicError(f"{call} failed: the context was detached")

    def push(self) -> None:
        self._check_thread("cuCtxPushCurrent")
        _stack().append(self)
        RECORD.pushes += 1

    @staticmethod
    def pop() -> None:
        context = _current_context("cuCtxPopCurrent")
        context._check_thread("cuCtxPopCurrent")
        _stack().pop()
        RECORD.pops += 1

    @staticmethod
    def get_current() -> Optional[Context]:
        stack = _stack()
        return stack[-1] if stack else None

    def get_device(self) -> Device:
        return self._device

    def detach(self) -> None:
        self._check_thread("cuDevicePrimaryCtxRelease")
        if self in _stack():
            raise LogicError("cuDevicePrimaryCtxRelease failed: the context is still current on this thread")
        self._detached = True
        RECORD.log("detach")


class Device:
    def __init__(self, number: int) -> None:
        if number != 0:
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {number}")

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return RECORD.gpu_name

    def compute_capability(self) -> Tuple[int, int]:
        return RECORD.compute_capability

    def retain_primary_context(self) -> Context:
        return Context(self)


def init(flags: int = 0) -> None:
    pass


# -- tensorrt: enums ----------------------------------------------------------------------------------


class _BindingEnum(enum.IntEnum):
    """A pybind11 enum: ``int()`` works, ``str()`` is ``"BuilderFlag.FP16"``."""

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


#: enum → [(member, value, since, until)] (``until`` exclusive); values per NvInfer*.h of each release.
_ENUM_MEMBERS: Dict[str, List[Tuple[str, int, Optional[Version], Optional[Version]]]] = {
    "DataType": [
        ("FLOAT", 0, None, None),
        ("HALF", 1, None, None),
        ("INT8", 2, None, None),
        ("INT32", 3, None, None),
        ("BOOL", 4, None, None),
        ("UINT8", 5, (8, 5), None),
        ("FP8", 6, (8, 6), None),
        ("BF16", 7, (10, 0), None),
        ("INT64", 8, (10, 0), None),
    ],
    "TensorIOMode": [("NONE", 0, (8, 5), None), ("INPUT", 1, (8, 5), None), ("OUTPUT", 2, (8, 5), None)],
    "BuilderFlag": [
        ("FP16", 0, None, (11, 0)),
        ("INT8", 1, None, (11, 0)),
        ("DEBUG", 2, None, None),
        ("GPU_FALLBACK", 3, None, None),
        ("TF32", 7, None, (10, 0)),
        ("TF32", 6, (10, 0), None),
        ("FP8", 17, (8, 6), (10, 0)),
        ("FP8", 15, (10, 0), (11, 0)),
        ("BF16", 17, (10, 0), (11, 0)),
    ],
    "MemoryPoolType": [("WORKSPACE", 0, (8, 4), None)],
    "DeviceType": [("GPU", 0, None, None), ("DLA", 1, None, None)],
    "NetworkDefinitionCreationFlag": [
        ("EXPLICIT_BATCH", 0, None, (11, 0)),
        ("EXPLICIT_PRECISION", 1, None, (10, 0)),
        ("STRONGLY_TYPED", 1, (10, 0), (11, 0)),
        ("STRONGLY_TYPED", 0, (11, 0), None),
    ],
    "LayerType": [
        ("CONVOLUTION", 0, None, None),
        ("ACTIVATION", 2, None, None),
        ("POOLING", 3, None, None),
        ("SOFTMAX", 6, None, None),
        ("ELEMENTWISE", 9, None, None),
        ("SHUFFLE", 13, None, None),
        ("PARAMETRIC_RELU", 25, None, (10, 0)),
        ("PARAMETRIC_RELU", 24, (10, 0), None),
        ("QUANTIZE", 33, None, (10, 0)),
        ("QUANTIZE", 32, (10, 0), None),
        ("DEQUANTIZE", 34, None, (10, 0)),
        ("DEQUANTIZE", 33, (10, 0), None),
        ("CAST", 47, (8, 6), (10, 0)),
        ("CAST", 1, (10, 0), None),
    ],
    "Severity": [
        ("INTERNAL_ERROR", 0, None, None),
        ("ERROR", 1, None, None),
        ("WARNING", 2, None, None),
        ("INFO", 3, None, None),
        ("VERBOSE", 4, None, None),
    ],
}

#: ONNX operator → layer type the fake parser reports (QuantizeLinear/DequantizeLinear decide INT8).
_LAYER_OF = {
    "Conv": "CONVOLUTION",
    "Relu": "ACTIVATION",
    "Sigmoid": "ACTIVATION",
    "MaxPool": "POOLING",
    "AveragePool": "POOLING",
    "GlobalAveragePool": "POOLING",
    "Softmax": "SOFTMAX",
    "Transpose": "SHUFFLE",
    "Reshape": "SHUFFLE",
    "Flatten": "SHUFFLE",
    "PRelu": "PARAMETRIC_RELU",
    "QuantizeLinear": "QUANTIZE",
    "DequantizeLinear": "DEQUANTIZE",
    "Cast": "CAST",
}


def _available(span: Tuple[Optional[Version], Optional[Version]], version: Version) -> bool:
    since, until = span
    return (since is None or version >= since) and (until is None or version < until)


def _enum(name: str, version: Version) -> type:
    members = [
        (member, value) for member, value, *span in _ENUM_MEMBERS[name] if _available(tuple(span), version)
    ]  # type: ignore[arg-type]
    return _BindingEnum(name, members)  # type: ignore[return-value]


# -- tensorrt: availability of classes and members per version ------------------------------------------

_BEFORE_10 = (None, (10, 0))
_BEFORE_11 = (None, (11, 0))
_FROM_8_5 = ((8, 5), None)

#: (class or "" for the module, name) → (since, until); names not listed exist in every modelled release.
_SPANS: Dict[Tuple[str, str], Tuple[Optional[Version], Optional[Version]]] = {
    ("", "TensorIOMode"): _FROM_8_5,
    ("", "MemoryPoolType"): ((8, 4), None),
    ("", "IProgressMonitor"): ((10, 0), None),
    ("", "IInt8Calibrator"): _BEFORE_11,
    ("", "IInt8EntropyCalibrator2"): _BEFORE_11,
    ("Builder", "platform_has_fast_fp16"): _BEFORE_11,
    ("Builder", "platform_has_fast_int8"): _BEFORE_11,
    ("IBuilderConfig", "int8_calibrator"): _BEFORE_11,
    ("IBuilderConfig", "set_calibration_profile"): _BEFORE_11,
    ("IBuilderConfig", "max_workspace_size"): _BEFORE_10,
    ("IBuilderConfig", "set_memory_pool_limit"): ((8, 4), None),
    ("IBuilderConfig", "get_memory_pool_limit"): ((8, 4), None),
    ("IBuilderConfig", "progress_monitor"): ((10, 0), None),
    ("INetworkDefinition", "get_flag"): ((10, 0), None),
    ("ICudaEngine", "num_bindings"): _BEFORE_10,
    ("ICudaEngine", "get_binding_name"): _BEFORE_10,
    ("ICudaEngine", "binding_is_input"): _BEFORE_10,
    ("ICudaEngine", "get_binding_shape"): _BEFORE_10,
    ("ICudaEngine", "get_binding_dtype"): _BEFORE_10,
    ("ICudaEngine", "get_profile_shape"): _BEFORE_10,
    ("ICudaEngine", "num_io_tensors"): _FROM_8_5,
    ("ICudaEngine", "get_tensor_name"): _FROM_8_5,
    ("ICudaEngine", "get_tensor_mode"): _FROM_8_5,
    ("ICudaEngine", "get_tensor_shape"): _FROM_8_5,
    ("ICudaEngine", "get_tensor_dtype"): _FROM_8_5,
    ("ICudaEngine", "get_tensor_profile_shape"): _FROM_8_5,
    ("IExecutionContext", "execute_async_v2"): _BEFORE_10,
    ("IExecutionContext", "set_binding_shape"): _BEFORE_10,
    ("IExecutionContext", "get_binding_shape"): _BEFORE_10,
    ("IExecutionContext", "execute_async_v3"): _FROM_8_5,
    ("IExecutionContext", "set_input_shape"): _FROM_8_5,
    ("IExecutionContext", "set_tensor_address"): _FROM_8_5,
    ("IExecutionContext", "get_tensor_shape"): _FROM_8_5,
}


def _trt_log(logger: Any, severity: str, message: str) -> None:
    """Log through the user's ``ILogger`` (a subclass of the version's) with ``ILogger.Severity``."""
    logger.log(getattr(type(logger).Severity, severity), message)


class _Binding:
    """Base of the fake binding classes.

    As with pybind11: objects refuse attributes their class does not declare, and the classes that
    TensorRT only hands out (engines, contexts, tensors, configs, ...) have no Python constructor —
    the fake makes them with the private ``_new`` (which calls ``_init``).
    """

    _ns: Any = None  # the version's module (set on the versioned class)
    _constructible = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if not cls._constructible:
            raise TypeError(f"tensorrt.{cls.__name__}: No constructor defined!")
        return object.__new__(cls)

    @classmethod
    def _new(cls, *args: Any) -> Any:
        made = object.__new__(cls)
        made._init(*args)
        return made

    def _init(self, *args: Any) -> None:
        pass

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"'tensorrt.{type(self).__name__}' object has no attribute '{name}'")


# -- tensorrt: classes (every member of every modelled release; tensorrt_module filters per version) ----


class ILogger:
    """``tensorrt.ILogger``: subclassed by the user, who overrides ``log``."""

    Severity: Any = None  # the version's enum (set on the versioned class)

    def __init__(self) -> None:
        pass

    def log(self, severity: Any, msg: str) -> None:  # overridden by the project's bridge
        raise NotImplementedError


class IInt8Calibrator:
    def __init__(self) -> None:
        pass

    def get_batch_size(self) -> int:
        raise NotImplementedError

    def get_batch(self, names: List[str]) -> Optional[List[int]]:
        raise NotImplementedError

    def read_calibration_cache(self) -> Optional[bytes]:
        raise NotImplementedError

    def write_calibration_cache(self, cache: Any) -> None:
        raise NotImplementedError


class IInt8EntropyCalibrator2(IInt8Calibrator):
    def __init__(self) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass

    def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
        raise NotImplementedError

    def step_complete(self, phase_name: str, step: int) -> bool:
        raise NotImplementedError

    def phase_finish(self, phase_name: str) -> None:
        raise NotImplementedError


def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
    RECORD.log("init_libnvinfer_plugins", namespace)
    return True


class ITensor(_Binding):
    def _init(self, name: str, shape: Tuple[int, ...], dtype: Any) -> None:
        self._name, self._shape, self._dtype = name, shape, dtype

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def shape(self) -> Tuple[int, ...]:
        return self._shape

    @shape.setter
    def shape(self, value: Tuple[int, ...]) -> None:
        self._shape = tuple(value)

    @property
    def dtype(self) -> Any:
        return self._dtype

    @dtype.setter
    def dtype(self, value: Any) -> None:
        self._dtype = value


class ILayer(_Binding):
    def _init(self, name: str, kind: Any) -> None:
        self._name, self._type = name, kind

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def type(self) -> Any:
        return self._type


class INetworkDefinition(_Binding):
    def _init(self, flags: int) -> None:
        self._flags = int(flags)
        self._inputs: List[ITensor] = []
        self._outputs: List[ITensor] = []
        self._layers: List[ILayer] = []
        self._onnx = b""
        self._fp16 = False  # the parsed graph computes in FP16 (FP16 tensors)

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    def get_layer(self, index: int) -> ILayer:
        return self._layers[index]

    def get_flag(self, flag: Any) -> bool:
        return bool(self._flags & (1 << int(flag)))

    def _strongly_typed(self) -> bool:
        flags = self._ns.NetworkDefinitionCreationFlag
        if version_tuple(self._ns.__version__) >= (11, 0):
            return True  # "Strongly typed mode is always enabled" (the flag is ignored)
        return hasattr(flags, "STRONGLY_TYPED") and bool(self._flags & (1 << int(flags.STRONGLY_TYPED)))

    def _has_qdq(self) -> bool:
        kinds = self._ns.LayerType
        return any(layer.type in (kinds.QUANTIZE, kinds.DEQUANTIZE) for layer in self._layers)


class ParserError(_Binding):
    def _init(self, text: str) -> None:
        self._text = text

    def code(self) -> int:
        return 8  # ErrorCode.UNSUPPORTED_NODE

    def desc(self) -> str:
        return self._text

    def __str__(self) -> str:  # pyOnnx.cpp: "In node N (func): CODE: desc"
        return f"In node 0 (parseGraph): UNSUPPORTED_NODE: {self._text}"


_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 6: "INT32", 3: "INT8", 2: "UINT8", 9: "BOOL", 7: "INT64"}


class OnnxParser(_Binding):
    _constructible = True

    def __init__(self, network: INetworkDefinition, logger: Any) -> None:
        self._network = network
        self._logger = logger
        self._errors: List[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def parse(self, model: bytes, path: Optional[str] = None) -> bool:
        import onnx

        ns = self._ns
        if RECORD.parse_errors:
            self._errors = [ns.ParserError._new(text) for text in RECORD.parse_errors]
            return False
        try:
            graph = onnx.load_from_string(bytes(model)).graph
        except Exception as err:
            self._errors = [ns.ParserError._new(f"the model is not ONNX: {err}")]
            return False
        initializers = {init.name for init in graph.initializer}

        def tensor(value: Any) -> ITensor:
            kind = value.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
            return ns.ITensor._new(
                value.name, dims, getattr(ns.DataType, _ONNX_TYPES.get(kind.elem_type, "FLOAT"))
            )

        network = self._network
        network._inputs = [tensor(v) for v in graph.input if v.name not in initializers]
        network._outputs = [tensor(v) for v in graph.output]
        kinds = ns.LayerType
        network._layers = [
            ns.ILayer._new(node.name, getattr(kinds, _LAYER_OF.get(node.op_type, "ELEMENTWISE")))
            for node in graph.node
        ]
        network._fp16 = any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
        network._onnx = bytes(model)
        return True


class IOptimizationProfile(_Binding):
    def _init(self) -> None:
        self._shapes: Dict[str, Tuple[Tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Sequence[int], opt: Sequence[int], max: Sequence[int]) -> None:
        lows, opts, highs = tuple(min), tuple(opt), tuple(max)
        if not (len(lows) == len(opts) == len(highs)) or any(
            not lo <= mid <= hi for lo, mid, hi in zip(lows, opts, highs)
        ):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self._shapes[input] = (lows, opts, highs)

    def get_shape(self, input: str) -> List[Tuple[int, ...]]:
        return list(self._shapes[input])


class ITimingCache(_Binding):
    def _init(self, blob: bytes) -> None:
        self._entries = json.loads(blob.decode()) if blob else []

    def serialize(self) -> IHostMemory:
        return self._ns.IHostMemory._new(json.dumps(self._entries).encode())


class IHostMemory(_Binding):
    """Serialized bytes; the real one exposes the buffer protocol (``bytes(memory)`` copies them)."""

    def _init(self, data: bytes) -> None:
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)

    @property
    def dtype(self) -> Any:
        return self._ns.DataType.UINT8 if hasattr(self._ns.DataType, "UINT8") else self._ns.DataType.INT8


class IBuilderConfig(_Binding):
    def _init(self) -> None:
        self._flags: set = set()
        self._pools: Dict[Any, int] = {}
        self._workspace = 0
        self._calibrator: Optional[Any] = None
        self._profiles: List[IOptimizationProfile] = []
        self._calibration_profile: Optional[IOptimizationProfile] = None
        self._device_type = self._ns.DeviceType.GPU
        self._dla_core = -1
        self._timing_cache: Optional[ITimingCache] = None
        self._monitor: Optional[Any] = None

    # flags and pools
    def set_flag(self, flag: Any) -> None:
        self._flags.add(int(flag))

    def clear_flag(self, flag: Any) -> None:
        self._flags.discard(int(flag))

    def get_flag(self, flag: Any) -> bool:
        return int(flag) in self._flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._pools[int(pool)] = int(pool_size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(int(pool), 0)

    @property
    def max_workspace_size(self) -> int:
        return self._workspace

    @max_workspace_size.setter
    def max_workspace_size(self, value: int) -> None:
        self._workspace = int(value)

    # INT8 calibration (implicit quantization)
    @property
    def int8_calibrator(self) -> Optional[Any]:
        return self._calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, value: Any) -> None:
        self._calibrator = value

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self._calibration_profile = profile
        return True

    # profiles, devices, timing cache, progress
    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def default_device_type(self) -> Any:
        return self._device_type

    @default_device_type.setter
    def default_device_type(self, value: Any) -> None:
        self._device_type = value

    @property
    def DLA_core(self) -> int:  # noqa: N802 - the binding's name
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, value: int) -> None:  # noqa: N802
        self._dla_core = int(value)

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return self._ns.ITimingCache._new(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> Optional[ITimingCache]:
        return self._timing_cache

    @property
    def progress_monitor(self) -> Optional[Any]:
        return self._monitor

    @progress_monitor.setter
    def progress_monitor(self, value: Any) -> None:
        self._monitor = value


class Builder(_Binding, _Owned):
    _constructible = True

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._own()

    @property
    def platform_has_fast_fp16(self) -> bool:
        RECORD.log("platform_has_fast_fp16")
        return RECORD.fast_fp16

    @property
    def platform_has_fast_int8(self) -> bool:
        RECORD.log("platform_has_fast_int8")
        return RECORD.fast_int8

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - the binding's name
        return RECORD.dla_cores

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        RECORD.log("create_network", int(flags))
        network = self._ns.INetworkDefinition._new(flags)
        RECORD.networks.append(network)
        return network

    def create_builder_config(self) -> IBuilderConfig:
        config = self._ns.IBuilderConfig._new()
        RECORD.configs.append(config)
        return config

    def create_optimization_profile(self) -> IOptimizationProfile:
        return self._ns.IOptimizationProfile._new()

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> Optional[IHostMemory]:
        self._check_owner("IBuilder::buildSerializedNetwork")
        RECORD.log("build_serialized_network")
        ns = self._ns
        flags = ns.BuilderFlag
        set_precisions = [
            name
            for name in ("FP16", "INT8", "BF16", "FP8")
            if hasattr(flags, name) and config.get_flag(getattr(flags, name))
        ]
        if network._strongly_typed() and set_precisions:
            _trt_log(
                self._logger,
                "ERROR",
                f"[builder] Invalid usage: setting {set_precisions[0]} mode is not allowed if the network is "
                f"strongly typed (BuilderFlag::k{set_precisions[0]})",
            )
            return None
        monitor = config._monitor
        steps = 3 + int(RECORD.build_seconds / BUILD_STEP_S)
        if monitor is None:
            time.sleep(RECORD.build_seconds)
        else:
            monitor.phase_start("Building engine", None, steps)
            for step in range(steps):
                if step >= 3:
                    time.sleep(BUILD_STEP_S)
                if not monitor.step_complete("Building engine", step) or RECORD.progress_cancel_at == step:
                    monitor.phase_finish("Building engine")
                    _trt_log(self._logger, "ERROR", "the build was cancelled by the progress monitor")
                    return None
            monitor.phase_finish("Building engine")
        if RECORD.fail_build:
            _trt_log(self._logger, "ERROR", "no implementation obeys the reformatting-free rules")
            return None
        qdq = network._has_qdq()
        int8 = "INT8" in set_precisions
        if int8 and not RECORD.fast_int8:
            _trt_log(
                self._logger, "WARNING", "Int8 support requested on hardware without native Int8 support"
            )
        if int8 and not qdq:
            if config._calibrator is None:
                _trt_log(
                    self._logger,
                    "ERROR",
                    "Calibration failure occurred with no scaling factors detected. This could be due to no "
                    "int8 calibrator or insufficient custom scales for network layers.",
                )
                return None
            if not self._calibrate(network, config):
                return None
        if config._timing_cache is not None:
            config._timing_cache._entries.append(len(config._timing_cache._entries))
        if network._strongly_typed():
            precision = "int8" if qdq else "fp16" if network._fp16 else "fp32"
        else:
            precision = "int8" if int8 else "fp16" if "FP16" in set_precisions else "fp32"
        dynamic = {name: shapes for profile in config._profiles for name, shapes in profile._shapes.items()}
        header = {
            "tensorrt_version": ns.__version__,
            "gpu_name": RECORD.gpu_name,
            "compute_capability": list(RECORD.compute_capability),
            "precision": precision,
            "strongly_typed": network._strongly_typed(),
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "dtype": t.dtype.name,
                    "profile": [list(s) for s in dynamic.get(t.name, ())],
                }
                for t in network._inputs
            ],
            "outputs": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in network._outputs
            ],
            "flags": sorted(set_precisions),
            "device": config._device_type.name,
            "dla_core": config._dla_core,
        }
        RECORD.builds.append(header)
        return ns.IHostMemory._new(MAGIC + json.dumps(header).encode() + b"\n" + network._onnx)

    def _calibrate(self, network: INetworkDefinition, config: IBuilderConfig) -> bool:
        calibrator = config._calibrator
        cache = calibrator.read_calibration_cache()
        RECORD.log("read_calibration_cache", cache)
        if cache:
            return True
        names = [tensor.name for tensor in network._inputs]
        shapes = {}
        if config._calibration_profile is not None:
            shapes = {name: s[1] for name, s in config._calibration_profile._shapes.items()}
        batches = 0
        while True:
            pointers = calibrator.get_batch(names)
            if not pointers:
                break
            for name, pointer in zip(names, pointers):
                expected = shapes.get(name)
                if expected is not None and len(RECORD.memory[int(pointer)]) != int(np.prod(expected)) * 4:
                    _trt_log(
                        self._logger,
                        "ERROR",
                        f"calibration batch for {name} is not the calibration profile's {expected}",
                    )
                    return False
            batches += 1
        RECORD.log("calibration_batches", batches)
        calibrator.write_calibration_cache(
            memoryview(b"TRT-FAKE-EntropyCalibration2\n" + str(batches).encode())
        )
        return True


class ICudaEngine(_Binding, _Owned):
    """A deserialized fake engine: the header's I/O, executed with ONNX Runtime on fake device memory."""

    def _init(self, header: Dict[str, Any], onnx: bytes) -> None:
        from engines.backends.cpu import new_session  # ONNX Runtime on the CPU, on the shared thread pool

        self._own()
        self._header = header
        self._session = new_session(onnx)
        self._tensors = [
            (t["name"], True, tuple(t["shape"]), t["profile"], t.get("dtype", "FLOAT"))
            for t in header["inputs"]
        ] + [(t["name"], False, tuple(t["shape"]), [], t.get("dtype", "FLOAT")) for t in header["outputs"]]

    def _find(self, name: str) -> Tuple[str, bool, Tuple[int, ...], List[Any], str]:
        return next(t for t in self._tensors if t[0] == name)

    # TensorRT 8.5+ name-based I/O
    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    def get_tensor_name(self, index: int) -> str:
        return self._tensors[index][0]

    def get_tensor_mode(self, name: str) -> Any:
        modes = self._ns.TensorIOMode
        return modes.INPUT if self._find(name)[1] else modes.OUTPUT

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        return self._find(name)[2]

    def get_tensor_dtype(self, name: str) -> Any:
        return getattr(self._ns.DataType, self._find(name)[4])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Tuple[int, ...]]:
        if profile_index != 0:
            raise RuntimeError(f"profile index {profile_index} out of range")
        return [tuple(s) for s in self._find(name)[3]]

    # TensorRT 8 binding API (removed in 10.0)
    @property
    def num_bindings(self) -> int:
        return len(self._tensors)

    def get_binding_name(self, index: int) -> str:
        return self._tensors[index][0]

    def binding_is_input(self, index: int) -> bool:
        return self._tensors[index][1]

    def get_binding_shape(self, index: int) -> Tuple[int, ...]:
        return self._tensors[index][2]

    def get_binding_dtype(self, index: int) -> Any:
        return getattr(self._ns.DataType, self._tensors[index][4])

    def get_profile_shape(self, profile_index: int, binding: int) -> List[Tuple[int, ...]]:
        return [tuple(s) for s in self._tensors[binding][3]]

    def create_execution_context(self) -> IExecutionContext:
        self._check_owner("ICudaEngine::createExecutionContext")
        return self._ns.IExecutionContext._new(self)


class IExecutionContext(_Binding, _Owned):
    def _init(self, engine: ICudaEngine) -> None:
        self._own()
        self._engine = engine
        self._shapes: Dict[str, Tuple[int, ...]] = {}
        self._addresses: Dict[str, int] = {}
        self._output_shapes: Dict[Tuple[Tuple[int, ...], ...], Dict[str, Tuple[int, ...]]] = {}

    def _profile(self, name: str) -> List[Tuple[int, ...]]:
        return [tuple(s) for s in self._engine._find(name)[3]]

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        self._check_owner("IExecutionContext::setInputShape")
        dims = tuple(int(d) for d in shape)
        low, _, high = self._profile(name) or [dims, dims, dims]
        if len(dims) != len(low) or any(not lo <= d <= hi for lo, d, hi in zip(low, dims, high)):
            return False
        self._shapes[name] = dims
        return True

    def _inputs(self) -> List[str]:
        return [t[0] for t in self._engine._tensors if t[1]]

    def _current(self, name: str) -> Tuple[int, ...]:
        return self._shapes.get(name, self._engine._find(name)[2])

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        self._check_owner("IExecutionContext::getTensorShape")
        if self._engine._find(name)[1]:
            return self._current(name)
        key = tuple(self._current(n) for n in self._inputs())
        if key not in self._output_shapes:
            session = self._engine._session
            feeds = {n: np.zeros(self._current(n), np.float32) for n in self._inputs()}
            outs = session.run(None, feeds)
            names = [o.name for o in session.get_outputs()]
            self._output_shapes[key] = {n: tuple(o.shape) for n, o in zip(names, outs)}
        return self._output_shapes[key][name]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._check_owner("IExecutionContext::setTensorAddress")
        self._addresses[name] = int(memory)
        return True

    def _run(self, address_of: Callable[[str], int]) -> bool:
        feeds = {}
        for name in self._inputs():
            shape = self._current(name)
            count = int(np.prod(shape))
            feeds[name] = np.frombuffer(RECORD.memory[address_of(name)], np.float32, count).reshape(shape)
        session = self._engine._session
        outputs = session.run(None, feeds)
        for meta, array in zip(session.get_outputs(), outputs):
            data = np.ascontiguousarray(array, np.float32).tobytes()
            target = RECORD.memory[address_of(meta.name)]
            if len(data) > len(target):
                raise RuntimeError(f"output {meta.name} does not fit its device buffer")
            target[: len(data)] = data
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self._check_owner("IExecutionContext::enqueueV3")
        RECORD.log("execute_async_v3", stream_handle)
        return self._run(lambda name: self._addresses[name])

    # TensorRT 8 binding API (removed in 10.0)
    def set_binding_shape(self, binding: int, shape: Sequence[int]) -> bool:
        self._check_owner("IExecutionContext::setBindingDimensions")
        dims = tuple(int(d) for d in shape)
        name = self._engine._tensors[binding][0]
        low, _, high = self._profile(name) or [dims, dims, dims]
        if len(dims) != len(low) or any(not lo <= d <= hi for lo, d, hi in zip(low, dims, high)):
            return False
        self._shapes[name] = dims
        return True

    def get_binding_shape(self, binding: int) -> Tuple[int, ...]:
        self._check_owner("IExecutionContext::getBindingDimensions")
        name = self._engine._tensors[binding][0]
        if self._engine._tensors[binding][1]:
            return self._current(name)
        return IExecutionContext.get_tensor_shape(self, name)

    def execute_async_v2(self, bindings: List[int], stream_handle: int, input_consumed: Any = None) -> bool:
        self._check_owner("IExecutionContext::enqueueV2")
        RECORD.log("execute_async_v2", stream_handle)
        names = [t[0] for t in self._engine._tensors]
        return self._run(lambda name: bindings[names.index(name)])


class Runtime(_Binding, _Owned):
    _constructible = True

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._dla_core = -1
        self._own()
        RECORD.runtimes.append(self)

    @property
    def DLA_core(self) -> int:  # noqa: N802 - the binding's name
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, value: int) -> None:  # noqa: N802
        self._dla_core = int(value)

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802
        return RECORD.dla_cores

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> Optional[ICudaEngine]:
        self._check_owner("IRuntime::deserializeCudaEngine")
        data = bytes(serialized_engine)
        RECORD.log("deserialize_cuda_engine", self._dla_core)
        if RECORD.corrupt_engines or not data.startswith(MAGIC):
            _trt_log(
                self._logger,
                "ERROR",
                "1: [stdArchiveReader.cpp] Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match",
            )
            return None
        header_text, onnx = data[len(MAGIC) :].split(b"\n", 1)
        header = json.loads(header_text)
        built, running = header["tensorrt_version"], self._ns.__version__
        if built != running:
            _trt_log(
                self._logger,
                "ERROR",
                f"6: The engine plan file is not compatible with this version of TensorRT, expecting library "
                f"version {running} got {built}, please rebuild.",
            )
            return None
        made_for, here = tuple(header["compute_capability"]), tuple(RECORD.compute_capability)
        if made_for != here:
            _trt_log(
                self._logger,
                "ERROR",
                f"6: The engine plan file is generated on an incompatible device, expecting compute "
                f"{here[0]}.{here[1]} got compute {made_for[0]}.{made_for[1]}, please rebuild.",
            )
            return None
        return self._ns.ICudaEngine._new(header, onnx)


# -- the modules ---------------------------------------------------------------------------------------

_ENUMS = (
    "DataType",
    "TensorIOMode",
    "BuilderFlag",
    "MemoryPoolType",
    "DeviceType",
    "NetworkDefinitionCreationFlag",
    "LayerType",
)
_CLASSES: Tuple[type, ...] = (
    ILogger,
    IInt8Calibrator,
    IInt8EntropyCalibrator2,
    IProgressMonitor,
    ITensor,
    ILayer,
    INetworkDefinition,
    ParserError,
    OnnxParser,
    IOptimizationProfile,
    ITimingCache,
    IHostMemory,
    IBuilderConfig,
    Builder,
    ICudaEngine,
    IExecutionContext,
    Runtime,
)


def _create_execution_context_10(self: Any, strategy: Any = None) -> Any:
    """TensorRT 10+: ``create_execution_context(strategy=ExecutionContextAllocationStrategy.STATIC)``."""
    return ICudaEngine.create_execution_context(self)


#: Members whose signature or kind changed: (class, name) → [(since, replacement)].
_VARIANTS: Dict[Tuple[str, str], List[Tuple[Version, Any]]] = {
    ("ICudaEngine", "create_execution_context"): [((10, 0), _create_execution_context_10)],
    ("ITensor", "dtype"): [((11, 0), property(ITensor.dtype.fget))],  # strongly typed: read-only
}


def _versioned(cls: type, version: Version, module: types.ModuleType) -> type:
    """A copy of ``cls`` with only the members this version has (so ``dir``/``hasattr`` see the real
    surface), bound to the version's module."""
    namespace: Dict[str, Any] = {}
    for klass in reversed([k for k in cls.__mro__ if k not in (object, _Binding, _Owned)]):
        for name, value in vars(klass).items():
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") or _available(_SPANS.get((cls.__name__, name), (None, None)), version):
                namespace[name] = value
    helpers = [base for base in (_Binding, _Owned) if issubclass(cls, base)]
    if _Binding in helpers:
        for name in ("__new__", "__setattr__", "_new", "_init"):
            namespace.setdefault(name, vars(_Binding)[name])
        namespace.setdefault("_constructible", False)
    if _Owned in helpers:
        for name in ("_own", "_check_owner", "_owner", "_owner_context"):
            namespace[name] = getattr(_Owned, name)
    for (owner, name), variants in _VARIANTS.items():
        if owner == cls.__name__:
            for since, replacement in variants:
                if version >= since:
                    namespace[name] = replacement
    namespace["_ns"] = module
    namespace["__module__"] = "tensorrt"
    namespace["__qualname__"] = cls.__name__
    bases: Tuple[type, ...] = (object,)
    if cls is IInt8EntropyCalibrator2:
        bases = (module.IInt8Calibrator,)
        namespace = {
            k: v for k, v in namespace.items() if k in vars(IInt8EntropyCalibrator2) or k.startswith("_")
        }
    return type(cls.__name__, bases, namespace)


def tensorrt_module(version: str) -> types.ModuleType:
    """The fake ``tensorrt`` module of ``version`` (``"8.5"`` or a full ``"8.5.2.2"``).

    It has exactly the names of that release's bindings among those the fake implements, with their
    real members; ``__version__`` is ``version`` when it is a full version, else the release's.
    """
    _, profile = profile_of(version)
    full = version if version.count(".") >= 2 else profile.full
    release = version_tuple(full)
    module = types.ModuleType("tensorrt")
    module.__version__ = full  # type: ignore[attr-defined]
    for name in _ENUMS:
        if _available(_SPANS.get(("", name), (None, None)), release):
            setattr(module, name, _enum(name, release))
    for cls in _CLASSES:
        if _available(_SPANS.get(("", cls.__name__), (None, None)), release):
            setattr(module, cls.__name__, _versioned(cls, release, module))
    module.ILogger.Severity = _enum("Severity", release)  # type: ignore[attr-defined]
    module.init_libnvinfer_plugins = init_libnvinfer_plugins  # type: ignore[attr-defined]
    return module


def _pycuda_modules() -> Tuple[types.ModuleType, types.ModuleType]:
    driver = types.ModuleType("pycuda.driver")
    for name in (
        "Error",
        "LogicError",
        "DeviceAllocation",
        "pagelocked_empty",
        "mem_alloc",
        "memcpy_htod",
        "memcpy_htod_async",
        "memcpy_dtoh",
        "memcpy_dtoh_async",
        "Stream",
        "Context",
        "Device",
        "init",
    ):
        setattr(driver, name, globals()[name])
    package = types.ModuleType("pycuda")
    package.driver = driver  # type: ignore[attr-defined]
    return package, driver


def release_line(version: str, device: str) -> str:
    """The ``/etc/nv_tegra_release`` line of the JetPack that ships ``version`` on ``device``."""
    _, profile = profile_of(version)
    major, revision = profile.l4t
    return (
        f"# R{major} (release), REVISION: {revision}, GCID: 00000000, BOARD: {profile.board}, EABI: aarch64, "
        f"DATE: JetPack {profile.jetpack} on {DEVICES[device].gpu_name} (fake)\n"
    )


def install(monkeypatch: Any, version: str = "8.5.2.2", device: Optional[str] = None) -> Record:
    """Put the fakes in ``sys.modules`` for the test and return a fresh :class:`Record`.

    Args:
        version: ``"8.2"``, ``"8.5"``, ``"8.6"``, ``"10.3"``, ``"10.13"``, ``"11.4"`` or a full version
            of one of those releases (``"8.5.2.2"``).
        device: a :data:`DEVICES` preset (``"nano"``, ``"xavier"``, ``"orin"``, ``"thor"``); it also
            points the L4T release file at a temporary one of the version's JetPack. ``None`` keeps the
            record's default GPU (Orin, SM 8.7, no DLA) and no release file.
    """
    global RECORD  # noqa: PLW0603 - one record per test, read by the fakes
    module = tensorrt_module(version)
    RECORD = Record(version=module.__version__, device=device)  # type: ignore[attr-defined]
    _threads.stack = []
    if device is not None:
        preset = DEVICES[device]
        RECORD.gpu_name, RECORD.compute_capability = preset.gpu_name, preset.compute_capability
        RECORD.fast_fp16, RECORD.fast_int8, RECORD.dla_cores = (
            preset.fast_fp16,
            preset.fast_int8,
            preset.dla_cores,
        )
        folder = Path(tempfile.mkdtemp(prefix="fake-l4t-"))
        atexit.register(shutil.rmtree, folder, True)  # no teardown reaches here: gone at process exit
        RECORD.release_file = folder / "nv_tegra_release"
        RECORD.release_file.write_text(release_line(version, device))
        from engines.tensorrt import platform

        monkeypatch.setattr(platform, "NV_TEGRA_RELEASE", RECORD.release_file)
    package, driver = _pycuda_modules()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    for name in TRT_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return RECORD


def install_from_environment() -> Optional[Record]:
    """Install the fakes for the whole process when :data:`ENVIRONMENT` asks for them (a daemon started
    as a subprocess by a test; ``tests/fake_site/sitecustomize.py`` calls this at interpreter start).

    Returns the record, or ``None`` when the variable is not set.
    """
    import os

    value = os.environ.get(ENVIRONMENT)
    if not value:
        return None
    parts = value.split(",")
    from _pytest.monkeypatch import MonkeyPatch  # a process-long patch: never undone

    record = install(MonkeyPatch(), parts[0], device=parts[1] if len(parts) > 1 and parts[1] else None)
    if len(parts) > 2:
        record.build_seconds = float(parts[2])
    return record


def run_python_on_fakes(
    arguments: Sequence[str], fakes: str = "10.3,orin", timeout: float = 600.0
) -> subprocess.CompletedProcess[str]:
    """``python ARGUMENTS`` from the repository root in a subprocess on the fakes (:data:`ENVIRONMENT`
    set to ``fakes``, ``tests/fake_site`` first on the path), outside any systemd service (no
    ``CREDENTIALS_DIRECTORY``): how a command or a benchmark run on a device is tried here. Its output
    is captured; ``timeout`` bounds a hung run."""
    import os

    repo = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        ENVIRONMENT: fakes,
        "PYTHONPATH": f"{repo / 'tests' / 'fake_site'}{os.pathsep}{repo}",
    }
    env.pop("CREDENTIALS_DIRECTORY", None)
    return subprocess.run(
        [sys.executable, *arguments],
        check=False,
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def uninstall() -> None:
    """Forget the project modules bound to the fakes (monkeypatch restores ``tensorrt``/``pycuda``) and
    remove the temporary release file."""
    for name in TRT_MODULES:
        sys.modules.pop(name, None)
    if RECORD.release_file is not None:
        shutil.rmtree(RECORD.release_file.parent, ignore_errors=True)
        RECORD.release_file = None
    _threads.stack = []


__all__ = [
    "DEVICES",
    "SHIPS_ON",
    "VERSIONS",
    "DevicePreset",
    "Record",
    "VersionProfile",
    "install",
    "release_line",
    "tensorrt_module",
    "uninstall",
]
