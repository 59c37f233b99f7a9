"""Stand-ins for the ``tensorrt`` and ``pycuda.driver`` modules, for tests on machines without a GPU.

TensorRT and CUDA are hardware that does not exist on the development machines or in CI, so the
unit tests of :mod:`engines.tensorrt.builder`, :mod:`engines.tensorrt.backend` and the daemon's engine
path replace them with these fakes. They implement only the part of the Python API the project
uses, with the names and argument orders of the TensorRT 8.5 and 10.x bindings
(``python/src/infer/pyCore.cpp``, ``pyInt8.cpp``, ``parsers/pyOnnx.cpp``) and of pycuda's driver
module, and they check what the real ones would refuse (a shape outside the optimization profile,
a copy that does not fit its buffer, a calibration batch of the wrong shape).

What stands in for the GPU:

* device memory is a dict of host ``bytearray`` buffers keyed by fake addresses;
* a "serialized engine" is a JSON header (the network's I/O, the profile, the precision flags)
  followed by the ONNX bytes, and "executing" it runs ONNX Runtime on the CPU on the bytes at the
  tensor addresses — so a back-end's buffer handling, shapes and copies are checked against real
  model outputs;
* the ONNX parser reads the real ONNX graph (inputs, outputs, Q/DQ nodes) with the ``onnx`` package.

:func:`install` puts both fakes into ``sys.modules`` (through pytest's ``monkeypatch``) and drops any
project module that imported the real ones, so the next import binds to the fakes.
"""

from __future__ import annotations

import enum
import itertools
import json
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Project modules that import tensorrt or pycuda at import time.
TRT_MODULES = ("engines.tensorrt.builder", "engines.tensorrt.backend", "engines.tensorrt.calibrator")

MAGIC = b"FAKE-TRT-ENGINE\n"


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.IntEnum):  # pybind11 enums convert with int()
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


class TensorIOMode(enum.IntEnum):  # pybind11 enums convert with int()
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class BuilderFlag(enum.IntEnum):  # pybind11 enums convert with int()
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    GPU_FALLBACK = 3
    TF32 = 7


class MemoryPoolType(enum.IntEnum):  # pybind11 enums convert with int()
    WORKSPACE = 0


class DeviceType(enum.IntEnum):  # pybind11 enums convert with int()
    GPU = 0
    DLA = 1


class NetworkDefinitionCreationFlag(enum.IntEnum):  # pybind11 enums convert with int()
    EXPLICIT_BATCH = 0


class LayerType(enum.IntEnum):  # pybind11 enums convert with int()
    CONVOLUTION = 0
    QUANTIZE = 1
    DEQUANTIZE = 2
    OTHER = 3


@dataclass
class Record:
    """What the fakes saw, for the tests to check."""

    calls: List[Tuple[str, Any]] = field(default_factory=list)
    configs: List[IBuilderConfig] = field(default_factory=list)
    runtimes: List[Runtime] = field(default_factory=list)
    memory: Dict[int, bytearray] = field(default_factory=dict)
    freed: List[int] = field(default_factory=list)
    pushes: int = 0
    pops: int = 0
    fast_fp16: bool = True
    fast_int8: bool = True
    dla_cores: int = 0
    compute_capability: Tuple[int, int] = (8, 7)
    gpu_name: str = "Orin"
    parse_errors: List[str] = field(default_factory=list)
    fail_build: bool = False
    corrupt_engines: bool = False
    progress_cancel_at: Optional[int] = None
    binding_api: bool = False  # engines offer only TensorRT 8's binding API (no execute_async_v3)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, name: str, value: Any = None) -> None:
        with self.lock:
            self.calls.append((name, value))

    def names(self) -> List[str]:
        return [name for name, _ in self.calls]


RECORD = Record()
_addresses = itertools.count(0x7F0000000000, 0x100000)


def _report(logger: Any, severity: Severity, message: str) -> None:
    logger.log(severity, message)


# -- tensorrt ----------------------------------------------------------------------------------------


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, msg: str) -> None:  # overridden by the project's bridge
        raise NotImplementedError


class IInt8Calibrator:
    def __init__(self) -> None:
        pass


class IInt8EntropyCalibrator2(IInt8Calibrator):
    pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
    RECORD.log("init_libnvinfer_plugins", namespace)
    return True


@dataclass
class _Tensor:
    name: str
    shape: Tuple[int, ...]
    dtype: DataType = DataType.FLOAT


@dataclass
class _Layer:
    type: LayerType


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: List[_Tensor] = []
        self.outputs: List[_Tensor] = []
        self.layers: List[_Layer] = []
        self.onnx = b""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_input(self, index: int) -> _Tensor:
        return self.inputs[index]

    def get_output(self, index: int) -> _Tensor:
        return self.outputs[index]

    def get_layer(self, index: int) -> _Layer:
        return self.layers[index]


class _ParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:  # pyOnnx.cpp: "In node N (func): CODE: desc"
        return f"In node 0 (parseGraph): UNSUPPORTED_NODE: {self.text}"


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Any) -> None:
        self.network = network
        self.logger = logger
        self.errors: List[_ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> _ParserError:
        return self.errors[index]

    def parse(self, model: bytes, path: Optional[str] = None) -> bool:
        import onnx

        if RECORD.parse_errors:
            self.errors = [_ParserError(text) for text in RECORD.parse_errors]
            return False
        graph = onnx.load_from_string(bytes(model)).graph
        initializers = {init.name for init in graph.initializer}

        def dims(value: Any) -> Tuple[int, ...]:
            shape = value.type.tensor_type.shape.dim
            return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in shape)

        self.network.inputs = [_Tensor(v.name, dims(v)) for v in graph.input if v.name not in initializers]
        self.network.outputs = [_Tensor(v.name, dims(v)) for v in graph.output]
        kinds = {"QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE}
        self.network.layers = [_Layer(kinds.get(node.op_type, LayerType.OTHER)) for node in graph.node]
        self.network.onnx = bytes(model)
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: Dict[str, Tuple[Tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Sequence[int], opt: Sequence[int], max: Sequence[int]) -> None:
        lows, opts, highs = tuple(min), tuple(opt), tuple(max)
        if not (len(lows) == len(opts) == len(highs)) or any(
            not lo <= mid <= hi for lo, mid, hi in zip(lows, opts, highs)
        ):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[input] = (lows, opts, highs)


class ITimingCache:
    def __init__(self, blob: bytes) -> None:
        self.entries = json.loads(blob.decode()) if blob else []

    def serialize(self) -> bytes:
        return json.dumps(self.entries).encode()


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags: set = set()
        self.pools: Dict[Any, int] = {}
        self.int8_calibrator: Optional[Any] = None
        self.profiles: List[IOptimizationProfile] = []
        self.calibration_profile: Optional[IOptimizationProfile] = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.timing_cache: Optional[ITimingCache] = None
        self.progress_monitor: Optional[Any] = None

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self.calibration_profile = profile
        return True

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> Optional[ITimingCache]:
        return self.timing_cache


class Builder:
    def __init__(self, logger: Any) -> None:
        self.logger = logger

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
        RECORD.log("create_network", flags)
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        config = IBuilderConfig()
        RECORD.configs.append(config)
        return config

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> Optional[bytes]:
        RECORD.log("build_serialized_network")
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 3)
            for step in range(3):
                if not monitor.step_complete("Building engine", step) or RECORD.progress_cancel_at == step:
                    monitor.phase_finish("Building engine")
                    _report(self.logger, Severity.ERROR, "the build was cancelled by the progress monitor")
                    return None
            monitor.phase_finish("Building engine")
        if RECORD.fail_build:
            _report(self.logger, Severity.ERROR, "no implementation obeys the reformatting-free rules")
            return None
        qdq = any(layer.type in (LayerType.QUANTIZE, LayerType.DEQUANTIZE) for layer in network.layers)
        if BuilderFlag.INT8 in config.flags and config.int8_calibrator is not None and not qdq:
            self._calibrate(network, config)
        if config.timing_cache is not None:
            config.timing_cache.entries.append(len(config.timing_cache.entries))
        dynamic = {name: shapes for profile in config.profiles for name, shapes in profile.shapes.items()}
        header = {
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "profile": [list(s) for s in dynamic.get(t.name, ())],
                }
                for t in network.inputs
            ],
            "outputs": [{"name": t.name, "shape": list(t.shape)} for t in network.outputs],
            "flags": sorted(flag.name for flag in config.flags),
            "device": config.default_device_type.name,
            "dla_core": config.DLA_core,
        }
        return MAGIC + json.dumps(header).encode() + b"\n" + network.onnx

    def _calibrate(self, network: INetworkDefinition, config: IBuilderConfig) -> None:
        calibrator = config.int8_calibrator
        cache = calibrator.read_calibration_cache()
        RECORD.log("read_calibration_cache", cache)
        if cache:
            return
        names = [tensor.name for tensor in network.inputs]
        shapes = {}
        if config.calibration_profile is not None:
            shapes = {name: s[1] for name, s in config.calibration_profile.shapes.items()}
        batches = 0
        while True:
            pointers = calibrator.get_batch(names)
            if not pointers:
                break
            for name, pointer in zip(names, pointers):
                expected = shapes.get(name)
                if expected is not None:
                    nbytes = int(np.prod(expected)) * 4
                    if len(RECORD.memory[int(pointer)]) != nbytes:
                        raise AssertionError(
                            f"calibration batch for {name} is not the calibration profile's {expected}"
                        )
            batches += 1
        RECORD.log("calibration_batches", batches)
        calibrator.write_calibration_cache(
            memoryview(b"TRT-FAKE-EntropyCalibration2\n" + str(batches).encode())
        )


class _Engine:
    """A deserialized fake engine: the header's I/O, executed with ONNX Runtime on fake device memory."""

    def __init__(self, header: Dict[str, Any], onnx: bytes, binding_api: bool) -> None:
        from engines.backends.cpu import new_session  # ONNX Runtime on the CPU, on the shared thread pool

        self.header = header
        self.session = new_session(onnx)
        self.tensors = [(t["name"], True, tuple(t["shape"]), t["profile"]) for t in header["inputs"]] + [
            (t["name"], False, tuple(t["shape"]), []) for t in header["outputs"]
        ]
        if binding_api:
            self.num_bindings = len(self.tensors)

    # TensorRT 8.5+/10 name-based I/O
    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return self.tensors[index][0]

    def _find(self, name: str) -> Tuple[str, bool, Tuple[int, ...], List[Any]]:
        return next(t for t in self.tensors if t[0] == name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if self._find(name)[1] else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        return self._find(name)[2]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> List[Tuple[int, ...]]:
        assert profile_index == 0
        return [tuple(s) for s in self._find(name)[3]]

    # TensorRT 8 binding API
    def get_binding_name(self, index: int) -> str:
        return self.tensors[index][0]

    def binding_is_input(self, index: int) -> bool:
        return self.tensors[index][1]

    def get_binding_shape(self, index: int) -> Tuple[int, ...]:
        return self.tensors[index][2]

    def get_binding_dtype(self, index: int) -> DataType:
        return DataType.FLOAT

    def get_profile_shape(self, profile_index: int, binding: int) -> List[Tuple[int, ...]]:
        return [tuple(s) for s in self.tensors[binding][3]]

    def create_execution_context(self) -> Any:
        return _BindingContext(self) if hasattr(self, "num_bindings") else _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.addresses: Dict[str, int] = {}
        self._output_shapes: Dict[Tuple[Tuple[int, ...], ...], Dict[str, Tuple[int, ...]]] = {}

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        dims = tuple(int(d) for d in shape)
        low, _, high = self.engine.get_tensor_profile_shape(name, 0) or [dims, dims, dims]
        if len(dims) != len(low) or any(not lo <= d <= hi for lo, d, hi in zip(low, dims, high)):
            return False
        self.shapes[name] = dims
        return True

    def _inputs(self) -> List[str]:
        return [t[0] for t in self.engine.tensors if t[1]]

    def _current(self, name: str) -> Tuple[int, ...]:
        declared = self.engine.get_tensor_shape(name)
        return self.shapes.get(name, declared)

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        if self.engine._find(name)[1]:
            return self._current(name)
        key = tuple(self._current(n) for n in self._inputs())
        if key not in self._output_shapes:
            feeds = {n: np.zeros(self._current(n), np.float32) for n in self._inputs()}
            outs = self.engine.session.run(None, feeds)
            names = [o.name for o in self.engine.session.get_outputs()]
            self._output_shapes[key] = {n: tuple(o.shape) for n, o in zip(names, outs)}
        return self._output_shapes[key][name]

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return True

    def _run(self, address_of: Callable[[str], int]) -> bool:
        feeds = {}
        for name in self._inputs():
            shape = self._current(name)
            count = int(np.prod(shape))
            feeds[name] = np.frombuffer(RECORD.memory[address_of(name)], np.float32, count).reshape(shape)
        outputs = self.engine.session.run(None, feeds)
        for meta, array in zip(self.engine.session.get_outputs(), outputs):
            data = np.ascontiguousarray(array, np.float32).tobytes()
            target = RECORD.memory[address_of(meta.name)]
            if len(data) > len(target):
                raise AssertionError(f"output {meta.name} does not fit its device buffer")
            target[: len(data)] = data
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        RECORD.log("execute_async_v3", stream_handle)
        return self._run(lambda name: self.addresses[name])


class _BindingContext(_Context):
    """TensorRT 8's binding API only (before 8.5: no execute_async_v3)."""

    def __getattribute__(self, name: str) -> Any:
        if name in ("execute_async_v3", "set_input_shape", "set_tensor_address"):
            raise AttributeError(name)
        return super().__getattribute__(name)

    def set_binding_shape(self, binding: int, shape: Sequence[int]) -> bool:
        return _Context.set_input_shape(self, self.engine.get_binding_name(binding), shape)

    def get_binding_shape(self, binding: int) -> Tuple[int, ...]:
        return self.get_tensor_shape(self.engine.get_binding_name(binding))

    def execute_async_v2(self, bindings: List[int], stream_handle: int, input_consumed: Any = None) -> bool:
        RECORD.log("execute_async_v2", stream_handle)
        return self._run(lambda name: bindings[[t[0] for t in self.engine.tensors].index(name)])


class Runtime:
    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.DLA_core = -1
        self.binding_api = RECORD.binding_api
        RECORD.runtimes.append(self)

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> Optional[_Engine]:
        data = bytes(serialized_engine)
        RECORD.log("deserialize_cuda_engine", self.DLA_core)
        if RECORD.corrupt_engines or not data.startswith(MAGIC):
            _report(self.logger, Severity.ERROR, "Serialization assertion magicTagRead == kMAGIC_TAG failed")
            return None
        header_text, onnx = data[len(MAGIC) :].split(b"\n", 1)
        return _Engine(json.loads(header_text), onnx, self.binding_api)


# -- pycuda.driver ----------------------------------------------------------------------------------


class Error(Exception):
    pass


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.address = next(_addresses)
        RECORD.memory[self.address] = bytearray(nbytes)

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        RECORD.freed.append(self.address)
        RECORD.memory.pop(self.address, None)


class PagelockedHostAllocation(np.ndarray):
    """The ``base`` of a page-locked array (its ``free()`` releases it)."""

    def free(self) -> None:
        RECORD.log("free_host")


def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
    """Like pycuda's: a plain ndarray whose ``base`` is the allocation that owns the memory."""
    owner = np.ndarray.__new__(PagelockedHostAllocation, shape, dtype)
    owner.fill(0)
    return owner.view(np.ndarray)


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(int(nbytes))


def _host_bytes(src: Any) -> bytes:
    return np.ascontiguousarray(src).tobytes()


def memcpy_htod(dest: Any, src: Any) -> None:
    data = _host_bytes(src)
    buffer = RECORD.memory[int(dest)]
    if len(data) > len(buffer):
        raise Error("cuMemcpyHtoD failed: the copy is larger than the allocation")
    buffer[: len(data)] = data


def memcpy_htod_async(dest: Any, src: Any, stream: Any = None) -> None:
    memcpy_htod(dest, src)


def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Any = None) -> None:
    buffer = RECORD.memory[int(src)]
    nbytes = dest.nbytes
    if nbytes > len(buffer):
        raise Error("cuMemcpyDtoHAsync failed: the copy is larger than the allocation")
    np.copyto(dest, np.frombuffer(bytes(buffer[:nbytes]), dest.dtype).reshape(dest.shape))


class Stream:
    def __init__(self, flags: int = 0) -> None:
        self.handle = next(_addresses)

    def synchronize(self) -> None:
        pass


class Context:
    def push(self) -> None:
        RECORD.pushes += 1

    @staticmethod
    def pop() -> None:
        RECORD.pops += 1

    def detach(self) -> None:
        RECORD.log("detach")


class Device:
    def __init__(self, number: int) -> None:
        if number != 0:
            raise Error(f"cuDeviceGet failed: invalid device ordinal {number}")

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return RECORD.gpu_name

    def compute_capability(self) -> Tuple[int, int]:
        return RECORD.compute_capability

    def retain_primary_context(self) -> Context:
        return Context()


def init(flags: int = 0) -> None:
    pass


# -- installing -------------------------------------------------------------------------------------


def _tensorrt_module(version: str) -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    major = int(version.split(".", maxsplit=1)[0])
    names = [
        "ILogger",
        "IInt8Calibrator",
        "IInt8EntropyCalibrator2",
        "init_libnvinfer_plugins",
        "DataType",
        "TensorIOMode",
        "BuilderFlag",
        "MemoryPoolType",
        "DeviceType",
        "LayerType",
        "Builder",
        "OnnxParser",
        "Runtime",
        "IBuilderConfig",
        "INetworkDefinition",
        "IOptimizationProfile",
    ]
    for name in names:
        setattr(module, name, globals()[name])
    module.__version__ = version  # type: ignore[attr-defined]
    if major < 10:
        module.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag  # type: ignore[attr-defined]
    else:  # TensorRT 10: the progress monitor exists, INT64 too
        module.IProgressMonitor = IProgressMonitor  # type: ignore[attr-defined]
    return module


def _pycuda_modules() -> Tuple[types.ModuleType, types.ModuleType]:
    driver = types.ModuleType("pycuda.driver")
    for name in (
        "Error",
        "DeviceAllocation",
        "pagelocked_empty",
        "mem_alloc",
        "memcpy_htod",
        "memcpy_htod_async",
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


def install(monkeypatch: Any, version: str = "8.5.2.2") -> Record:
    """Put the fakes in ``sys.modules`` for the test (TensorRT ``version``) and return a fresh record."""
    global RECORD  # noqa: PLW0603 - one record per test, read by the fakes
    RECORD = Record()
    package, driver = _pycuda_modules()
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt_module(version))
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    for name in TRT_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return RECORD


def uninstall() -> None:
    """Forget the project modules bound to the fakes (monkeypatch restores ``tensorrt``/``pycuda``)."""
    for name in TRT_MODULES:
        sys.modules.pop(name, None)
