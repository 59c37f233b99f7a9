"""The TensorRT conformance checker's logic (``tests/trt_conformance``), without the real bindings.

A small hand-made surface (the JSON ``dump_surface`` writes) and a tiny fake module stand in for the
real bindings and the project's fake: each kind of mismatch must be reported — a missing name, a
wrong kind, a parameter the real signature lacks, a traced argument that pybind11 would not convert —
and what is right must not be. The stand-in library generator is run end to end on a small extension
built here when gcc and binutils are present.
"""

from __future__ import annotations

import ctypes
import enum
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest

from tests.trt_conformance import chains, check, standins, trace
from tests.trt_conformance.signatures import Surface, fake_params_accepted, parse_signature, strip_self

T = "tensorrt.tensorrt."


def method(*signatures: str) -> Dict[str, Any]:
    return {"kind": "method", "signatures": list(signatures)}


def real_class(members: Dict[str, Any], mro: Sequence[str] = ()) -> Dict[str, Any]:
    return {
        "kind": "class",
        "bases": list(mro[:1]),
        "mro": list(mro),
        "constructible": "__init__" in members,
        "members": members,
    }


SURFACE_DATA = {
    "version": "10.3.0",
    "names": {
        "__version__": {"kind": "value", "type": "str"},
        "BuilderFlag": {
            "kind": "enum",
            "members": {"FP16": 0, "INT8": 1, "TF32": 6},
            "attributes": ["name", "value"],
        },
        "ILogger": real_class(
            {
                "__init__": method(f"(self: {T}ILogger) -> None"),
                "log": method(f"(self: {T}ILogger, severity: {T}ILogger.Severity, msg: str) -> None"),
                "Severity": {
                    "kind": "enum",
                    "members": {"ERROR": 1, "WARNING": 2},
                    "attributes": ["name", "value"],
                },
            }
        ),
        "IInt8Calibrator": real_class({"__init__": method(f"(self: {T}IInt8Calibrator) -> None")}),
        "IInt8EntropyCalibrator2": real_class(
            {"__init__": method(f"(self: {T}IInt8EntropyCalibrator2) -> None")}, ["IInt8Calibrator"]
        ),
        "Builder": real_class(
            {
                "__init__": method(f"(self: {T}Builder, logger: {T}ILogger) -> None"),
                "create_network": method(f"(self: {T}Builder, flags: int = 0) -> {T}INetworkDefinition"),
                "platform_has_fast_fp16": {"kind": "property", "readonly": True},
            }
        ),
        "IBuilderConfig": real_class(
            {
                "set_flag": method(f"(self: {T}IBuilderConfig, flag: {T}BuilderFlag) -> None"),
                "set_calibrator": method(
                    f"(self: {T}IBuilderConfig, calibrator: Optional[{T}IInt8Calibrator]) -> None"
                ),
                "set_shape": method(
                    f"(self: {T}IBuilderConfig, input: str, min: {T}Dims, opt: {T}Dims, max: {T}Dims) -> None"
                ),
                "load": method(f"(self: {T}IBuilderConfig, blob: buffer) -> bool"),
                "num_optimization_profiles": {"kind": "property", "readonly": True},
                "DLA_core": {"kind": "property", "readonly": False},
            }
        ),
        "ICudaEngine": real_class({"get_tensor_name": method(f"(self: {T}ICudaEngine, index: int) -> str")}),
        "init_libnvinfer_plugins": {
            "kind": "function",
            "signatures": ["(logger: capsule, namespace: str) -> bool"],
        },
    },
}


@pytest.fixture
def surface() -> Surface:
    return Surface(json.loads(json.dumps(SURFACE_DATA)))


def messages(report: check.Report, level: str = check.ERROR) -> List[str]:
    return [f.message for f in report.findings if f.level == level]


# -- the tiny fake module -----------------------------------------------------------------------------


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    STRICT_TYPES = 5  # not in the real enum


class ILogger:
    Severity = enum.IntEnum("Severity", {"ERROR": 1, "WARNING": 2})

    def __init__(self) -> None:
        pass

    def log(self, severity: Any, msg: str) -> None:
        raise NotImplementedError


class Builder:
    def __init__(self, logger: Any) -> None:
        self._logger = logger

    @property
    def platform_has_fast_fp16(self) -> bool:
        return True

    def create_network(self, flags: int = 0) -> Any:
        return None

    def build_engine(self, network: Any, config: Any) -> Any:  # gone from the real bindings
        return None


class IBuilderConfig:
    def __init__(self) -> None:
        self.DLA_core = -1
        self.flags: set = set()  # public bookkeeping the real class lacks

    def set_flag(self, flag: BuilderFlag, strict: bool = False) -> None:  # `strict`: not a real parameter
        self.flags.add(flag)

    def num_optimization_profiles(self) -> int:  # a property in the real bindings
        return 0


class Runtime:  # not in the (hand-made) bindings
    pass


def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
    return True


def IInt8Calibrator() -> None:  # noqa: N802 - a class in the real bindings, a function here
    return None


def tiny_fake(version: str = "10.3") -> types.ModuleType:
    module = types.ModuleType("tensorrt")
    for value in (
        BuilderFlag,
        ILogger,
        Builder,
        IBuilderConfig,
        Runtime,
        init_libnvinfer_plugins,
        IInt8Calibrator,
    ):
        setattr(module, value.__name__, value)
    module.__version__ = version  # type: ignore[attr-defined]
    return module


def test_the_fake_module_is_compared_name_by_name(surface: Surface) -> None:
    report = check.Report()
    check.check_fake_module(report, tiny_fake(), surface, __file__)
    errors = messages(report)
    missing = [f.message for f in report.findings if f.category == check.MISSING and f.level == check.ERROR]
    assert any("tensorrt.Runtime (class) is not in the bindings" in m for m in missing)
    assert any("Builder.build_engine: not in the real Builder" in m for m in missing)
    assert any("BuilderFlag.STRICT_TYPES: not a member of the real enum" in m for m in missing)
    assert any("tensorrt.IInt8Calibrator is a function, really a class" in m for m in errors)
    assert any(
        "IBuilderConfig.num_optimization_profiles: the fake has a method, the real one a property" in m
        for m in errors
    )
    assert any("IBuilderConfig.set_flag(flag, strict)" in m and "strict" in m for m in errors)
    assert len(errors) == 6, errors
    warnings = messages(report, check.WARNING)
    assert any("IBuilderConfig.flags: a public instance attribute" in m for m in warnings)
    assert not any("DLA_core" in m for m in warnings)  # a real property


def test_a_fake_that_matches_reports_nothing(surface: Surface) -> None:
    module = types.ModuleType("tensorrt")
    module.ILogger = ILogger  # type: ignore[attr-defined]
    module.init_libnvinfer_plugins = init_libnvinfer_plugins  # type: ignore[attr-defined]
    module.__version__ = "10.3"  # type: ignore[attr-defined]
    report = check.Report()
    check.check_fake_module(report, module, surface, __file__)
    assert report.findings == []
    # __version__, ILogger (+ __init__, log, Severity and its two members), the function
    assert report.fake_names["10.3.0"] == 8


# -- the trace --------------------------------------------------------------------------------------


def call(name: str, *positional: Dict[str, Any], **keywords: Dict[str, Any]) -> Dict[str, Any]:
    """A trace record of a call (``Class.method`` or a module function) with these argument types."""
    return {
        "version": "10.3.0.26",
        "event": "call",
        "owner": name.split(".", maxsplit=1)[0] if "." in name else "",
        "name": name,
        "exported": "tensorrt",
        "positional": list(positional),
        "keywords": keywords,
        "resolved": True,
        "sites": ["engines/tensorrt/builder.py:1"],
        "count": 1,
    }


LOGGER_SUBCLASS = {"type": "object", "class": "TrtLogBridge", "fake_mro": ["ILogger"], "fake": False}
CALIBRATOR = {
    "type": "object",
    "class": "EntropyCalibrator",
    "fake_mro": ["IInt8EntropyCalibrator2"],
    "fake": False,
}


def run_trace(surface: Surface, records: List[Dict[str, Any]]) -> check.Report:
    report = check.Report()
    check.check_trace(report, records, [surface])
    return report


def test_traced_calls_that_convert_pass(surface: Surface) -> None:
    records = [
        call("Builder.__init__", LOGGER_SUBCLASS),
        call("Builder.create_network", {"type": "int"}),
        call("Builder.create_network", flags={"type": "bool"}),
        call("IBuilderConfig.set_flag", {"type": "enum", "class": "BuilderFlag", "member": "FP16"}),
        call("IBuilderConfig.set_calibrator", CALIBRATOR),  # a subclass of the real base type
        call("IBuilderConfig.set_calibrator", {"type": "None"}),  # Optional
        call("IBuilderConfig.load", {"type": "memoryview"}),
        call(
            "IBuilderConfig.set_shape",
            {"type": "str"},
            {"type": "tuple", "items": ["int"]},
            {"type": "list", "items": ["int"]},
            {"type": "tuple", "items": []},
        ),
        call("init_libnvinfer_plugins", LOGGER_SUBCLASS, {"type": "str"}),  # void*: a bound instance
        {
            "version": "10.3",
            "event": "write",
            "owner": "IBuilderConfig",
            "name": "DLA_core",
            "found": True,
            "exported": "tensorrt",
        },
        {
            "version": "10.3",
            "event": "module",
            "owner": "tensorrt",
            "name": "Builder",
            "found": True,
            "exported": "tensorrt",
        },
        {
            "version": "10.3",
            "event": "module",
            "owner": "tensorrt",
            "name": "IProgressMonitor",
            "found": False,
            "exported": "tensorrt",
        },
        {**call("Stream.synchronize"), "exported": "pycuda"},
    ]
    report = run_trace(surface, records)
    assert messages(report) == []
    assert report.traced["10.3.0"] == 9


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (call("IBuilderConfig.set_flag", {"type": "int"}), "flag: int does not convert to BuilderFlag"),
        (
            call("IBuilderConfig.set_flag", {"type": "enum", "class": "BuilderFlag", "member": "FP8"}),
            "BuilderFlag has no member FP8",
        ),
        (
            call("IBuilderConfig.set_flag", {"type": "enum", "class": "DataType", "member": "HALF"}),
            "does not convert",
        ),
        (call("IBuilderConfig.set_flag", {"type": "None"}), "None does not convert"),
        (call("IBuilderConfig.load", {"type": "str"}), "blob: str does not convert to buffer"),
        (call("IBuilderConfig.set_calibrator", LOGGER_SUBCLASS), "TrtLogBridge object does not convert"),
        (call("Builder.create_network", flag={"type": "int"}), "no parameter named 'flag'"),
        (call("Builder.create_network", {"type": "int"}, {"type": "int"}), "2 positional arguments"),
        (call("Builder.__init__"), "missing required logger"),
        (
            call("IBuilderConfig.set_shape", {"type": "str"}, *[{"type": "tuple", "items": ["str"]}] * 3),
            "does not convert to Dims",
        ),
        (call("init_libnvinfer_plugins", {"type": "int"}, {"type": "str"}), "does not convert to capsule"),
        (call("Builder.build_engine"), "the real Builder has no such member"),
        (call("IBuilderConfig.__init__"), "the real IBuilderConfig has no constructor"),
        (call("Builder.platform_has_fast_fp16"), "is a property"),
        (
            {
                "version": "10.3",
                "event": "write",
                "owner": "IBuilderConfig",
                "name": "num_optimization_profiles",
                "found": True,
            },
            "is read-only really",
        ),
        (
            {"version": "10.3", "event": "read", "owner": "Builder", "name": "num_DLA_cores", "found": True},
            "not in the real Builder",
        ),
        (
            {"version": "10.3", "event": "module", "owner": "tensorrt", "name": "Runtime", "found": True},
            "tensorrt.Runtime read",
        ),
        ({**call("Runtime.__init__"), "owner": "Runtime"}, "class Runtime"),
    ],
)
def test_traced_mismatches_are_errors(surface: Surface, record: Dict[str, Any], expected: str) -> None:
    report = run_trace(surface, [record])
    errors = messages(report)
    assert len(errors) == 1, errors
    assert expected in errors[0]


def test_private_fake_classes_are_warnings_with_the_real_counterpart(surface: Surface) -> None:
    record = {
        **call("_Engine.get_tensor_name", {"type": "int"}),
        "owner": "_Engine",
        "exported": "unexported",
    }
    report = run_trace(surface, [record])
    assert messages(report) == []
    (warning,) = messages(report, check.WARNING)
    assert "_Engine (get_tensor_name), a private fake class" in warning
    assert "real classes with all of them: ICudaEngine" in warning


def test_trace_versions_map_to_the_nearest_real_version(surface: Surface) -> None:
    surfaces = [Surface({"version": v, "names": {}}) for v in ("8.6.1", "10.3.0", "10.13.3.9", "11.4.0.106")]
    assert check.nearest("8.2", surfaces).version == "8.6.1"  # type: ignore[union-attr]
    assert check.nearest("8.5.2.2", surfaces).version == "8.6.1"  # type: ignore[union-attr]
    assert check.nearest("10.3.0.26", surfaces).version == "10.3.0"  # type: ignore[union-attr]
    assert check.nearest("10.13", surfaces).version == "10.13.3.9"  # type: ignore[union-attr]
    assert check.nearest("10.5", surfaces).version == "10.3.0"  # type: ignore[union-attr]
    assert check.nearest("11.4", surfaces).version == "11.4.0.106"  # type: ignore[union-attr]
    assert check.nearest("9.0", surfaces) is None
    report = check.Report()
    check.check_trace(
        report, [{**call("Builder.create_network", {"type": "int"}), "version": "7.1.3"}], surfaces
    )
    assert any("no real surface of its major version" in m for m in messages(report, check.WARNING))


# -- signatures ---------------------------------------------------------------------------------------


def test_pybind11_signatures_parse() -> None:
    params = parse_signature(
        f"(self: {T}ILogger, severity: {T}ILogger.Severity = <Severity.WARNING: 2>, msg: str = 'a, b') -> None"
    )
    assert [(p.name, p.type, p.default) for p in strip_self(params)] == [
        ("severity", "ILogger.Severity", "<Severity.WARNING: 2>"),
        ("msg", "str", "'a, b'"),
    ]
    params = parse_signature(
        "(self: X, arg0: Callable[[int, str], None], *args, **kwargs) -> Tuple[int, int]"
    )
    assert [(p.name, p.type, p.star) for p in params[1:]] == [
        ("arg0", "Callable[[int, str], None]", ""),
        ("args", "", "*"),
        ("kwargs", "", "**"),
    ]
    assert [p.name for p in parse_signature("(this, exc_type, exc_value, traceback)")] == [
        "this",
        "exc_type",
        "exc_value",
        "traceback",
    ]


def test_fake_parameters_against_a_real_overload() -> None:
    real = strip_self(parse_signature(f"(self: {T}OnnxParser, model: buffer, path: str = None) -> bool"))
    assert fake_params_accepted(["model"], real) == (True, "")
    assert fake_params_accepted(["model", "path"], real) == (True, "")
    assert not fake_params_accepted(["data"], real)[0]
    assert not fake_params_accepted(["model", "path", "flags"], real)[0]
    assert not fake_params_accepted([], real)[0]  # model has no default
    unnamed = strip_self(parse_signature("(self: Dims, arg0: int) -> int"))
    assert fake_params_accepted(["index"], unnamed) == (True, "")


# -- code chains --------------------------------------------------------------------------------------

SOURCE = """
import tensorrt as trt

LEVELS = {trt.ILogger.Severity.ERROR: 1}
flag = trt.BuilderFlag.FP16 if hasattr(trt.BuilderFlag, "TF32") else trt.BuilderFlag.INT8
monitor = getattr(trt, "IProgressMonitor", None)
gone = trt.Nonexistent.THING
version = trt.__version__.split(".")
"""


def test_chains_resolve_per_version(surface: Surface) -> None:
    found = chains.scan_source(SOURCE, "engines/tensorrt/example.py")
    assert {(c.parts, c.probe) for c in found} == {
        (("ILogger", "Severity", "ERROR"), False),
        (("BuilderFlag", "FP16"), False),
        (("BuilderFlag", "INT8"), False),
        (("BuilderFlag",), False),
        (("BuilderFlag", "TF32"), True),
        (("IProgressMonitor",), True),
        (("Nonexistent", "THING"), False),
        (("__version__", "split"), False),
    }
    older = Surface(json.loads(json.dumps(SURFACE_DATA)))
    older.version = "8.6.1"
    del older.names["BuilderFlag"]["members"]["FP16"]
    report = check.Report()
    check.check_chains(report, found, [older, surface])
    assert [m for m in messages(report) if "Nonexistent" in m] == [
        "chain trt.Nonexistent.THING (engines/tensorrt/example.py:7) resolves in no version given"
    ] * 2  # once per version
    assert any("probe for trt.IProgressMonitor" in m for m in messages(report, check.WARNING))
    infos = [f for f in report.findings if f.level == check.INFO]
    assert [(f.version, f.message.split(" (")[0]) for f in infos] == [("8.6.1", "trt.BuilderFlag.FP16")]
    alone = check.Report()
    check.check_chains(alone, found, [older])  # one version: other versions' code paths may need it
    assert messages(alone) == []
    assert any("trt.Nonexistent.THING" in m for m in messages(alone, check.WARNING))


# -- the trace plugin's pieces --------------------------------------------------------------------------


class _Private:
    pass


def test_argument_descriptions() -> None:
    np = pytest.importorskip("numpy")
    here = __file__
    assert trace.describe(None, here) == {"type": "None"}
    assert trace.describe(True, here) == {"type": "bool"}
    assert trace.describe(3, here) == {"type": "int"}
    assert trace.describe(np.int64(3), here)["type"] == "int"
    assert trace.describe(b"x", here) == {"type": "bytes"}
    assert trace.describe(memoryview(b"x"), here) == {"type": "memoryview"}
    assert trace.describe((1, 2), here) == {"type": "tuple", "items": ["int"]}
    assert trace.describe(["a", 1], here) == {"type": "list", "items": ["int", "str"]}
    assert trace.describe(np.zeros(2, np.float32), here) == {"type": "ndarray", "dtype": "float32"}
    assert trace.describe(BuilderFlag.FP16, here) == {
        "type": "enum",
        "class": "BuilderFlag",
        "member": "FP16",
    }

    class Bridge(ILogger):
        pass

    described = trace.describe(Bridge(), here)
    assert described["class"] == "Bridge" and described["fake_mro"] == ["Bridge", "ILogger"]
    assert trace.describe(_Private(), "/elsewhere.py")["fake_mro"] == []


def test_call_sites_give_keyword_names(tmp_path: Path) -> None:
    source = tmp_path / "site.py"
    source.write_text(
        "ok = context.execute_async_v3(\n    stream_handle=stream.handle,\n)\n"
        "trt.IInt8EntropyCalibrator2.__init__(self)\n"
        "super().__init__(logger)\n"
        "builder.create_network(*flags)\n"
    )
    sites = trace.CallSites()
    first = sites.find(str(source), 2, ("execute_async_v3",))
    assert first == (0, ["stream_handle"], False)
    first[1].append("changed by a caller")  # a site is looked up once; its answer is not shared
    assert sites.find(str(source), 2, ("execute_async_v3",)) == (0, ["stream_handle"], False)
    assert sites.find(str(source), 4, ("__init__", "IInt8EntropyCalibrator2")) == (1, [], True)
    assert sites.find(str(source), 5, ("__init__",)) == (1, [], False)
    assert sites.find(str(source), 6, ("create_network",)) is None  # *args: not resolvable
    assert sites.find(str(source), 1, ("other",)) is None


# -- stand-in libraries -------------------------------------------------------------------------------


def test_versions_are_encoded_like_tensorrt() -> None:
    assert standins.encoded_version("8.6.1") == 8601
    assert standins.encoded_version("10.3.0") == 100300
    assert standins.encoded_version("10.13.3.9") == 101303
    assert standins.encoded_version("11.4.0.106") == 110400


def test_symbols_are_spread_over_the_missing_libraries() -> None:
    symbols = [
        standins.Symbol(name, "FUNC", 0)
        for name in (
            "createInferBuilder_INTERNAL",
            "createNvOnnxParser_INTERNAL",
            "initLibNvInferPlugins",
            "_ZN11nvuffparser15createUffParserEv",
        )
    ]
    plan = standins.assign(
        symbols, ["libnvonnxparser.so.8", "libnvinfer.so.8", "libnvparsers.so.8", "libnvinfer_plugin.so.8"]
    )
    assert {soname: [s.name for s in assigned] for soname, assigned in plan.items()} == {
        "libnvonnxparser.so.8": ["createNvOnnxParser_INTERNAL"],
        "libnvinfer.so.8": ["createInferBuilder_INTERNAL"],
        "libnvparsers.so.8": ["_ZN11nvuffparser15createUffParserEv"],
        "libnvinfer_plugin.so.8": ["initLibNvInferPlugins"],
    }
    source = standins.c_source(
        "libnvinfer.so.8",
        [
            *symbols[:1],
            standins.Symbol("getInferLibVersion", "FUNC", 0),
            standins.Symbol("gData", "OBJECT", 8),
        ],
        8601,
    )
    assert '__asm__("createInferBuilder_INTERNAL")' in source
    assert "return 8601L;" in source
    assert 'unsigned char standin_data_2[64] __asm__("gData");' in source


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("gcc", "readelf", "nm", "ldd")) or sys.platform != "linux",
    reason="needs gcc and binutils on Linux",
)
def test_stand_ins_let_an_extension_with_missing_libraries_load(tmp_path: Path) -> None:
    # A library the "extension" links against, then removed: as libnvinfer is on a machine without TensorRT.
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / "vendor.c").write_text(
        "int getVendorLibVersion(void) { return 1; }\nvoid *createThing_INTERNAL(void) { return 0; }\n"
    )
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wl,-soname,libvendor.so.7",
            "-o",
            str(vendor / "libvendor.so.7"),
            str(vendor / "vendor.c"),
        ],
        check=True,
    )
    package = tmp_path / "site" / "tensorrt_bindings"
    package.mkdir(parents=True)
    (tmp_path / "ext.c").write_text(
        "int getVendorLibVersion(void);\nvoid *createThing_INTERNAL(void);\n"
        "int probe(void) { return createThing_INTERNAL() == 0 ? getVendorLibVersion() : -1; }\n"
    )
    extension = package / "tensorrt.so"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-o",
            str(extension),
            str(tmp_path / "ext.c"),
            f"-L{vendor}",
            "-l:libvendor.so.7",
        ],
        check=True,
    )
    shutil.rmtree(vendor)

    built = standins.build(tmp_path / "site", tmp_path / "standins", "10.3.0")

    assert [path.name for path in built] == ["libvendor.so.7"]
    ctypes.CDLL(str(built[0]))  # loaded first, its SONAME satisfies the extension's NEEDED entry
    assert ctypes.CDLL(str(extension)).probe() == 100300
