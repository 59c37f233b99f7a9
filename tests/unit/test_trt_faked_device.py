"""The TensorRT engine builder, the TensorRT back-end and the calibrator on every TensorRT release the
appliance meets — 8.2 (Nano), 8.5, 8.6, 10.3, 10.13, 11.4 — each on the Jetson it ships on, against
the FAKE TensorRT and pycuda of :mod:`tests.fake_tensorrt`: there is no GPU here.

The fakes have each release's API (removed names absent), refuse what the device refuses (a CUDA
context or TensorRT object used from another thread, an engine from another TensorRT or GPU, INT8
without scales, precision flags on a strongly typed network, shapes outside the profile, copies
larger than their buffer) and "execute" an engine with ONNX Runtime on the ONNX TensorRT parsed. So
these tests run the project's real TensorRT code paths — the precision chosen per version and GPU,
which ONNX is built (FP32, FP16 made on the device, Q/DQ), flags, profiles, the calibrator and its
cache, the timing cache, the manifest check before deserializing, buffers and batch splitting — on
the real ONNX models, with only the hardware faked. TensorRT's own numerics are the ``gpu`` suite's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import re
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from engines.backends import BackendOptions, open_model
from engines.errors import EngineBuildError, EngineLoadError, EngineMissingError, InferenceError
from engines.int8 import install as install_int8
from engines.prepare import load_model_bytes
from engines.registry import MODELS, ModelSpec, get_model
from engines.store import ModelStore
from engines.tensorrt.cache import (
    NETWORK_FP16,
    NETWORK_ONNX,
    NETWORK_QDQ,
    calibration_cache_path,
    engine_request,
    lookup,
    read_manifest,
    store,
)
from tests import fake_tensorrt

MAX_FRAME = (96, 128)  # small P-Net/YuNet profiles keep the fake "engines" quick
RELEASES = ["8.2", "8.5", "8.6", "10.3", "10.13", "11.4"]
WEAKLY_TYPED = ["8.2", "8.5", "8.6", "10.3", "10.13"]


@dataclasses.dataclass(frozen=True)
class TrtOptions(BackendOptions):
    """The back-end options plus ``int8_dir``, the folder of the Q/DQ models that
    :func:`engines.tensorrt.cache.engine_request` offers to TensorRT (``calibration.int8_dir``)."""

    int8_dir: Optional[str] = None


def on_device(release: str) -> str:
    return f"trt{release}-{fake_tensorrt.SHIPS_ON[release]}"


@pytest.fixture(params=RELEASES, ids=on_device)
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_tensorrt.Record]:
    """Each TensorRT release on the Jetson it ships on."""
    record = fake_tensorrt.install(monkeypatch, request.param, device=fake_tensorrt.SHIPS_ON[request.param])
    yield record
    fake_tensorrt.uninstall()


@pytest.fixture
def trt8(monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_tensorrt.Record]:
    record = fake_tensorrt.install(monkeypatch, "8.5.2.2")
    yield record
    fake_tensorrt.uninstall()


@pytest.fixture
def thor11(monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_tensorrt.Record]:
    record = fake_tensorrt.install(monkeypatch, "11.4", device="thor")
    yield record
    fake_tensorrt.uninstall()


def trt() -> Any:
    """The (fake) ``tensorrt`` module installed for the test."""
    return importlib.import_module("tensorrt")


def options(tmp_path: Path, **changes: Any) -> TrtOptions:
    base = TrtOptions(
        engine_dir=str(tmp_path / "engines"),
        max_batch=4,
        max_frame=MAX_FRAME,
        min_face=20,
        yunet_max_side=128,
        precision="fp16",
    )
    return dataclasses.replace(base, **changes)


def feeds_for(spec: ModelSpec, batch: int, seed: int = 0) -> np.ndarray:
    """Random pre-processed input of the model's size (P-Net/YuNet: a size inside the small profile)."""
    rng = np.random.default_rng(seed)
    shape = list(spec.inputs[0].shape)
    shape[0] = batch
    if spec.stage == "pnet":
        shape = [batch, 40, 30, 3]
    elif spec.family == "yunet":
        shape = [batch, 3, 64, 96]
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


def flags_of(config: Any) -> List[str]:
    """The precision builder flags set on a (fake) config, by name."""
    flags = trt().BuilderFlag
    return sorted(
        name
        for name in ("FP16", "INT8", "TF32")
        if hasattr(flags, name) and config.get_flag(getattr(flags, name))
    )


def qdq_model(spec: ModelSpec, models: Path) -> bytes:
    """``spec``'s prepared model with a Quantize/Dequantize pair in front of its first convolution: an
    explicitly quantized (Q/DQ) model, as ``face-appliance calibrate`` makes (there with measured scales)."""
    model = onnx.load_from_string(load_model_bytes(spec, ModelStore(models).require(spec)))
    graph = model.graph
    conv = next(node for node in graph.node if node.op_type == "Conv")
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(2.0 / 127, np.float32), "qdq_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "qdq_zero_point"),
        ]
    )
    quantize = helper.make_node(
        "QuantizeLinear", [conv.input[0], "qdq_scale", "qdq_zero_point"], ["qdq_q"], name="q0"
    )
    dequantize = helper.make_node(
        "DequantizeLinear", ["qdq_q", "qdq_scale", "qdq_zero_point"], ["qdq_dq"], name="dq0"
    )
    conv.input[0] = "qdq_dq"
    at = list(graph.node).index(conv)
    graph.node.insert(at, dequantize)
    graph.node.insert(at, quantize)
    return model.SerializeToString()


def install_qdq(tmp_path: Path, spec: ModelSpec, models: Path) -> Path:
    """Install a gate-passed Q/DQ model of ``spec`` into ``tmp_path/int8`` (as ``calibrate`` does)."""
    folder = tmp_path / "int8"
    install_int8(folder, spec, qdq_model(spec, models), {"gate_passed": True, "method": "test"})
    return folder


# -- the precision per version and GPU -----------------------------------------------------------------

#: release → (precision, which ONNX, builder flags) that ``auto`` builds without INT8 data, on its device.
AUTO_WITHOUT_INT8 = {
    "8.2": ("fp16", NETWORK_ONNX, ["FP16"]),  # the Nano: no INT8 at all
    "8.5": ("fp16", NETWORK_ONNX, ["FP16"]),
    "8.6": ("fp16", NETWORK_ONNX, ["FP16"]),
    "10.3": ("fp16", NETWORK_ONNX, ["FP16"]),
    "10.13": ("fp16", NETWORK_ONNX, ["FP16"]),
    "11.4": ("fp16", NETWORK_FP16, []),  # strongly typed: the FP16 ONNX made on the device, no flags
}


def test_auto_precision_per_version_on_its_device(
    fake: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    module = trt()
    release = fake_tensorrt.profile_of(module.__version__)[0]
    major = int(release.split(".")[0])
    spec = get_model("mtcnn-onet")
    with open_model("tensorrt", spec, shared_models, options(tmp_path, precision="auto")) as backend:
        manifest = backend.manifest  # type: ignore[attr-defined]
        blob = feeds_for(spec, 3)
        with open_model("cpu", spec, shared_models) as cpu:
            expected, got = cpu.run(blob), backend.run(blob)
    precision, network, flags = AUTO_WITHOUT_INT8[release]
    assert (manifest.precision, manifest.network, flags_of(fake.configs[-1])) == (precision, network, flags)
    assert fake.builds[-1]["precision"] == precision  # what the (fake) TensorRT built
    assert manifest.tensorrt_version == module.__version__ and manifest.gpu_name == fake.gpu_name
    assert manifest.l4t_version is not None  # the device's release file
    if release == "8.2":
        assert "no fast INT8 (Jetson Nano)" in manifest.precision_reason
    else:
        assert "there is no INT8 calibration cache or calibrator" in manifest.precision_reason
    if network == NETWORK_FP16:
        assert fake.builds[-1]["strongly_typed"] and "strongly typed" in manifest.precision_reason
        assert manifest.fp16_converter and manifest.fp16_converter.startswith("onnxconverter-common")
        assert manifest.network_sha256 != manifest.onnx_sha256  # the converted model, not the registry's
        tolerance = 2e-2  # FP16 arithmetic (ONNX Runtime runs the converted model)
    else:
        assert manifest.network_sha256 == manifest.onnx_sha256 and manifest.fp16_converter is None
        tolerance = 1e-5
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=tolerance, atol=tolerance)

    network_flags = [value for name, value in fake.calls if name == "create_network"]
    if major < 10:  # explicit batch must be asked for; TensorRT is asked about fast FP16/INT8
        assert network_flags == [1 << int(module.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)]
        assert "platform_has_fast_int8" in fake.names()
    else:  # 10: always explicit batch (flag deprecated); 11: always strongly typed (flag ignored)
        assert network_flags == [0] and "platform_has_fast_int8" not in fake.names()
    config = fake.configs[-1]
    if release == "8.2":  # set_memory_pool_limit came in 8.4
        assert config.max_workspace_size == 256 << 20
    else:
        assert config.get_memory_pool_limit(module.MemoryPoolType.WORKSPACE) == 256 << 20
    (profile,) = config._profiles
    assert profile.get_shape(spec.inputs[0].name) == [(1, 48, 48, 3), (2, 48, 48, 3), (4, 48, 48, 3)]
    # The timing cache is kept per TensorRT version and GPU, and fed to the next build.
    (timing,) = (tmp_path / "engines").glob("timing-*.cache")
    assert module.__version__ in timing.name and timing.read_bytes() == b"[0]"


@pytest.mark.parametrize("release", RELEASES)
def test_fp32_is_ieee_fp32_from_the_registry_onnx(
    release: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_models: Path
) -> None:
    record = fake_tensorrt.install(monkeypatch, release, device=fake_tensorrt.SHIPS_ON[release])
    try:
        with open_model(
            "tensorrt", get_model("mtcnn-rnet"), shared_models, options(tmp_path, precision="fp32")
        ) as b:
            manifest = b.manifest  # type: ignore[attr-defined]
        assert (manifest.precision, manifest.network, manifest.precision_reason) == (
            "fp32",
            NETWORK_ONNX,
            "FP32 as requested",
        )
        assert (
            flags_of(record.configs[-1]) == [] and record.builds[-1]["precision"] == "fp32"
        )  # TF32 cleared too
    finally:
        fake_tensorrt.uninstall()


def test_explicit_int8_that_cannot_be_had_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_models: Path
) -> None:
    spec = get_model("mtcnn-onet")
    fake_tensorrt.install(monkeypatch, "8.2", device="nano")
    try:
        with pytest.raises(
            EngineLoadError,
            match=r"INT8 requested, but SM 5.3 has no fast INT8 \(Jetson Nano\); use precision \"auto\"",
        ):
            open_model("tensorrt", spec, shared_models, options(tmp_path / "nano", precision="int8"))
    finally:
        fake_tensorrt.uninstall()
    fake_tensorrt.install(monkeypatch, "10.3", device="orin")
    try:
        with pytest.raises(
            EngineLoadError, match="INT8 requested, but there is no INT8 calibration cache or calibrator"
        ):
            open_model("tensorrt", spec, shared_models, options(tmp_path / "orin", precision="int8"))
    finally:
        fake_tensorrt.uninstall()


# -- INT8 ------------------------------------------------------------------------------------------------


def test_int8_from_the_qdq_model_on_tensorrt_11(
    thor11: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    spec = get_model("mtcnn-onet")
    folder = install_qdq(tmp_path, spec, shared_models)
    qdq_file = next(folder.rglob("*.int8.onnx"))
    settings = options(tmp_path, precision="auto", int8_dir=str(folder))
    with open_model("tensorrt", spec, shared_models, settings) as backend, open_model(
        "cpu", spec, shared_models
    ) as cpu:
        manifest = backend.manifest  # type: ignore[attr-defined]
        blob = feeds_for(spec, 2)
        expected, got = cpu.run(blob), backend.run(blob)
    digest = hashlib.sha256(qdq_file.read_bytes()).hexdigest()
    assert (manifest.precision, manifest.network) == ("int8", NETWORK_QDQ)
    assert manifest.int8_onnx_sha256 == digest == manifest.network_sha256  # which ONNX: the Q/DQ one
    assert (
        "explicit quantization" in manifest.precision_reason
        and "SM 11.0 has fast INT8" in manifest.precision_reason
    )
    assert flags_of(thor11.configs[-1]) == []  # strongly typed: no flags, no calibrator
    assert thor11.builds[-1]["precision"] == "int8" and thor11.builds[-1]["strongly_typed"]
    assert np.abs(got["softmax_2"] - expected["softmax_2"]).max() < 0.05  # the Q/DQ model runs, close to FP32
    # The Q/DQ model is part of the key: another one is another engine.
    request = engine_request(
        spec,
        load_model_bytes(spec, ModelStore(shared_models).require(spec)),
        backend.manifest.platform,
        settings,
    )  # type: ignore[attr-defined]
    assert lookup(settings.engine_dir, request).hit  # type: ignore[arg-type]
    qdq_file.write_bytes(qdq_file.read_bytes() + b"\0")  # an altered file no longer verifies: FP16 again
    request = engine_request(
        spec,
        load_model_bytes(spec, ModelStore(shared_models).require(spec)),
        backend.manifest.platform,
        settings,
    )  # type: ignore[attr-defined]
    assert request.int8_onnx_sha256 is None and request.plan.network == NETWORK_FP16


def test_int8_from_the_qdq_model_on_tensorrt_8_with_fp16_for_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_models: Path
) -> None:
    record = fake_tensorrt.install(monkeypatch, "8.5", device="xavier")
    try:
        spec = get_model("mtcnn-onet")
        folder = install_qdq(tmp_path, spec, shared_models)
        settings = options(tmp_path, precision="int8", int8_dir=str(folder))
        with open_model("tensorrt", spec, shared_models, settings) as backend:
            manifest = backend.manifest  # type: ignore[attr-defined]
        assert (manifest.precision, manifest.network) == ("int8", NETWORK_QDQ)
        assert flags_of(record.configs[-1]) == ["FP16", "INT8"]
        assert record.configs[-1].int8_calibrator is None  # explicit quantization: no calibrator
    finally:
        fake_tensorrt.uninstall()


@pytest.mark.parametrize(("release", "device"), [("11.4", "thor"), ("10.3", "orin"), ("8.2", "nano")])
def test_a_model_shipped_as_a_qdq_onnx_is_its_own_int8_network(
    release: str, device: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_models: Path
) -> None:
    """A model package may carry the Q/DQ model as the model itself: it is built INT8 from its own Q/DQ
    layers where the GPU has INT8, and refused (with what to do) on the Nano."""
    from engines.tensorrt.platform import probe_platform

    record = fake_tensorrt.install(monkeypatch, release, device=device)
    try:
        from engines.tensorrt.builder import EngineBuilder

        spec = get_model("mtcnn-onet")
        qdq = qdq_model(spec, shared_models)
        request = engine_request(spec, qdq, probe_platform(0), options(tmp_path, precision="auto"))
        builder = EngineBuilder(platform=request.platform)
        if device == "nano":
            with pytest.raises(EngineBuildError, match=r"Q/DQ INT8 model, and SM 5\.3 has no fast INT8"):
                builder.build(spec, qdq, request, tmp_path / "engines")
            return
        built = builder.build(spec, qdq, request, tmp_path / "engines")
        assert (built.manifest.precision, built.manifest.network) == ("int8", NETWORK_ONNX)
        assert "the model's own Q/DQ layers" in built.manifest.precision_reason
        assert record.builds[-1]["precision"] == "int8"
        assert flags_of(record.configs[-1]) == ([] if release == "11.4" else ["FP16", "INT8"])
    finally:
        fake_tensorrt.uninstall()


@pytest.mark.parametrize("release", WEAKLY_TYPED[1:])  # the Nano has no INT8
def test_int8_from_a_calibration_set_with_the_implicit_calibrator(
    release: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_models: Path
) -> None:
    from engines.tensorrt.platform import probe_platform

    record = fake_tensorrt.install(monkeypatch, release, device=fake_tensorrt.SHIPS_ON[release])
    try:
        from engines.tensorrt.builder import EngineBuilder
        from engines.tensorrt.calibrator import EntropyCalibrator

        spec = get_model("mobilefacenet")
        folder = tmp_path / "calibration"
        folder.mkdir()
        rng = np.random.default_rng(3)
        np.save(folder / "mobilefacenet.npy", rng.uniform(-1, 1, (70, 3, 112, 112)).astype(np.float32))
        settings = options(tmp_path, precision="auto", calibration_dir=str(folder))
        onnx_bytes = load_model_bytes(spec, ModelStore(shared_models).require(spec))
        request = engine_request(spec, onnx_bytes, probe_platform(0), settings)
        assert request.calibration_sha256 is not None and request.plan.int8_source == "calibration"
        builder = EngineBuilder(platform=request.platform)
        cache = calibration_cache_path(settings.engine_dir, request)  # type: ignore[arg-type]
        with EntropyCalibrator.from_set(spec, folder / "mobilefacenet.npy", cache) as calibrator:
            built = builder.build(spec, onnx_bytes, request, settings.engine_dir, calibrator=calibrator)
        assert built.manifest.precision == "int8", built.manifest.precision_reason
        assert "implicit quantization" in built.manifest.precision_reason
        config = record.configs[-1]
        assert flags_of(config) == ["FP16", "INT8"] and config.int8_calibrator is not None
        assert config._calibration_profile.get_shape(spec.inputs[0].name)[1] == (32, 3, 112, 112)
        assert ("calibration_batches", 2) in record.calls  # 70 samples: two batches of 32, 6 left out
        assert cache.read_bytes() == b"TRT-FAKE-EntropyCalibration2\n2"
        assert all(address not in record.memory for address in record.freed)  # the batch buffer was freed
        assert record.pushes == record.pops  # the builder's context was popped
        # The same network, data and TensorRT: the scales are read back, no batch is asked for.
        with EntropyCalibrator.from_set(spec, folder / "mobilefacenet.npy", cache) as calibrator:
            builder.build(spec, onnx_bytes, request, None, calibrator=calibrator)
        assert record.names().count("calibration_batches") == 1
        # The back-end opens what was built, but never calibrates itself.
        with open_model("tensorrt", spec, shared_models, settings) as backend:
            assert backend.manifest.precision == "int8"  # type: ignore[attr-defined]
        np.save(folder / "mobilefacenet.npy", np.zeros((8, 3, 112, 112), np.float32))
        with pytest.raises(EngineLoadError, match="needs its calibrator"):
            open_model("tensorrt", spec, shared_models, settings)
    finally:
        fake_tensorrt.uninstall()


@pytest.mark.parametrize("release", ["8.5", "10.13"])
def test_int8_from_a_calibration_cache_replayed(
    release: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_models: Path
) -> None:
    record = fake_tensorrt.install(monkeypatch, release, device=fake_tensorrt.SHIPS_ON[release])
    try:
        cache = tmp_path / "calibration.cache"
        cache.write_bytes(b"TRT-8502-EntropyCalibration2\ninput_3: 3c010a14\n")
        settings = options(tmp_path, precision="int8", calibration_cache=str(cache))
        with open_model("tensorrt", get_model("mtcnn-onet"), shared_models, settings) as backend:
            manifest = backend.manifest  # type: ignore[attr-defined]
        assert (
            manifest.precision == "int8"
            and manifest.calibration_sha256 == hashlib.sha256(cache.read_bytes()).hexdigest()
        )
        assert ("read_calibration_cache", cache.read_bytes()) in record.calls
        assert "calibration_batches" not in record.names()  # the cache holds the scales
    finally:
        fake_tensorrt.uninstall()


def test_tensorrt_11_does_not_use_calibration_data_and_says_why(
    thor11: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    cache = tmp_path / "calibration.cache"
    cache.write_bytes(b"TRT-8502-EntropyCalibration2\ninput_3: 3c010a14\n")
    spec = get_model("mtcnn-onet")
    settings = options(tmp_path, precision="auto", calibration_cache=str(cache))
    with open_model("tensorrt", spec, shared_models, settings) as backend:
        manifest = backend.manifest  # type: ignore[attr-defined]
    assert (manifest.precision, manifest.network, manifest.calibration_sha256) == ("fp16", NETWORK_FP16, None)
    assert "has no implicit INT8 calibration" in manifest.precision_reason
    assert "Q/DQ model that `face-appliance calibrate` installs" in manifest.precision_reason
    assert "read_calibration_cache" not in thor11.names()
    with pytest.raises(
        EngineLoadError, match=r"INT8 requested, but TensorRT 11\.4\.0\.106 has no implicit INT8 calibration"
    ):
        open_model("tensorrt", spec, shared_models, dataclasses.replace(settings, precision="int8"))


def test_the_builder_refuses_a_calibrator_tensorrt_11_does_not_have(
    thor11: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    """A request that names calibration data (made by hand: engine_request never does on 11.x) cannot be
    built: an EngineBuildError says so, never an AttributeError from the missing API."""
    from engines.tensorrt.builder import EngineBuilder
    from engines.tensorrt.platform import probe_platform

    spec = get_model("mtcnn-onet")
    onnx_bytes = load_model_bytes(spec, ModelStore(shared_models).require(spec))
    request = dataclasses.replace(
        engine_request(spec, onnx_bytes, probe_platform(0), options(tmp_path, precision="int8")),
        calibration_sha256=hashlib.sha256(b"cache").hexdigest(),
        fp16_converter=None,
    )
    with pytest.raises(EngineBuildError, match="no implicit INT8 calibration"):
        EngineBuilder(platform=request.platform).build(spec, onnx_bytes, request, calibration_cache=b"cache")


# -- engines are tied to their TensorRT and GPU ------------------------------------------------------------


def _rekey(engine_dir: Path, spec: ModelSpec, onnx_bytes: bytes, settings: BackendOptions) -> None:
    """Copy the cached engine under the running device's key with a manifest that claims it fits — as a
    restored backup or a hand-copied cache would — so only TensorRT itself can tell."""
    from engines.tensorrt.platform import probe_platform

    (old,) = (engine_dir / spec.name).glob("*.json")
    manifest = read_manifest(old)
    request = engine_request(spec, onnx_bytes, probe_platform(0), settings)
    engine = old.with_suffix(".engine").read_bytes()
    platform = request.platform
    forged = dataclasses.replace(
        manifest,
        key=request.key,
        tensorrt_version=platform.tensorrt_version,
        gpu_name=platform.gpu_name,
        compute_capability=platform.compute_capability,
        l4t_version=platform.l4t_version,
    )
    store(engine_dir, forged, engine)


@pytest.mark.parametrize(
    "built_on, runs_on, lookup_says, tensorrt_says",
    [
        (
            ("8.5", "xavier"),
            ("8.6", "xavier"),
            "built with TensorRT 8.5.2.2, this device runs 8.6.1",
            "not compatible with this version of TensorRT",
        ),
        (
            ("10.3", "orin"),
            ("10.3", "thor"),
            "built for Orin (SM 8.7), this device has NVIDIA Thor (SM 11.0)",
            "incompatible device, expecting compute 11.0 got compute 8.7",
        ),
    ],
    ids=["tensorrt-upgrade", "other-gpu"],
)
def test_a_stale_engine_is_refused_at_load(
    built_on: Any,
    runs_on: Any,
    lookup_says: str,
    tensorrt_says: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    shared_models: Path,
) -> None:
    spec = get_model("mtcnn-rnet")
    settings = options(tmp_path, precision="fp16")
    strict = dataclasses.replace(settings, build_missing=False)
    fake_tensorrt.install(monkeypatch, built_on[0], device=built_on[1])
    try:
        with open_model("tensorrt", spec, shared_models, settings):
            pass
    finally:
        fake_tensorrt.uninstall()
    record = fake_tensorrt.install(monkeypatch, runs_on[0], device=runs_on[1])
    try:
        # The manifest says why before anything is deserialized ...
        with pytest.raises(EngineMissingError, match=re.escape(lookup_says)):
            open_model("tensorrt", spec, shared_models, strict)
        assert "deserialize_cuda_engine" not in record.names()
        # ... and an engine whose manifest lies is refused by TensorRT itself, with what it said.
        _rekey(
            Path(settings.engine_dir),
            spec,
            load_model_bytes(spec, ModelStore(shared_models).require(spec)),
            settings,
        )  # type: ignore[arg-type]
        with pytest.raises(EngineMissingError, match=f"does not deserialize.*{re.escape(tensorrt_says)}"):
            open_model("tensorrt", spec, shared_models, strict)
        assert record.pushes == record.pops and not record.memory
    finally:
        fake_tensorrt.uninstall()


# -- the back-end --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", MODELS, ids=[spec.name for spec in MODELS])
def test_the_backend_gives_the_cpu_outputs(
    fake: fake_tensorrt.Record, spec: ModelSpec, tmp_path: Path, shared_models: Path
) -> None:
    cpu = open_model("cpu", spec, shared_models)
    accelerated = open_model("tensorrt", spec, shared_models, options(tmp_path, precision="fp32"))
    try:
        batches = [1] if spec.stage in ("pnet", "detect") else [1, 3, 9]  # 9 > max_batch 4: three parts
        for batch in batches:
            blob = feeds_for(spec, batch, seed=batch)
            expected, got = cpu.run(blob), accelerated.run(blob)
            for name in expected:
                assert got[name].dtype == np.float32 and got[name].shape == expected[name].shape
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)
        first = accelerated.run(feeds_for(spec, 1, seed=11))
        kept = {name: array.copy() for name, array in first.items()}
        accelerated.run(feeds_for(spec, 1, seed=12))
        for name in first:  # results are fresh arrays, not views of the page-locked buffers
            np.testing.assert_array_equal(first[name], kept[name])
        if spec.stage == "pnet":
            with pytest.raises(InferenceError, match="profile"):
                accelerated.run(np.zeros((1, 8, 8, 3), np.float32))
    finally:
        accelerated.close()
        cpu.close()
    accelerated.close()  # idempotent
    assert fake.pushes == fake.pops  # no context left current
    assert not fake.memory  # every device buffer freed
    with pytest.raises(InferenceError, match="closed"):
        accelerated.run(feeds_for(spec, 1))
    api, other = ("execute_async_v2", "execute_async_v3")[:: 1 if fake.version.startswith("8.2") else -1]
    assert api in fake.names() and other not in fake.names()  # the binding API only on 8.2


def test_a_backend_used_from_another_thread_raises(
    fake: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    """The thread that opens a TensorRT back-end owns its CUDA context and TensorRT objects: running or
    closing it from another thread raises InferenceError (naming both threads); the owner can still
    run and close it afterwards."""
    spec = get_model("mtcnn-onet")
    backend = open_model("tensorrt", spec, shared_models, options(tmp_path, precision="fp32"))
    failures: List[BaseException] = []

    def elsewhere() -> None:
        for action in (lambda: backend.run(feeds_for(spec, 1)), backend.close):
            try:
                action()
            except BaseException as err:
                failures.append(err)

    worker = threading.Thread(target=elsewhere, name="not-the-owner")
    worker.start()
    worker.join(30)
    assert [type(err) for err in failures] == [InferenceError, InferenceError]
    assert "on thread 'not-the-owner': it was opened on thread 'MainThread'" in str(failures[0])
    assert "cannot close" in str(failures[1]) and not backend.closed
    assert backend.run(feeds_for(spec, 1))["softmax_2"].shape == (1, 2)  # the owner still runs it
    backend.close()
    assert fake.pushes == fake.pops and not fake.memory


def test_the_fake_enforces_cuda_context_ownership(trt8: fake_tensorrt.Record) -> None:
    """What the back-end's own check guards against: the (fake) driver refuses a context, an allocation
    and a TensorRT execution context used from a thread other than their owner."""
    import pycuda.driver as cuda

    cuda.init()
    context = cuda.Device(0).retain_primary_context()
    context.push()
    allocation = cuda.mem_alloc(16)
    runtime = trt().Runtime(object())
    errors: List[BaseException] = []

    def elsewhere() -> None:
        for action in (
            context.push,
            context.detach,
            allocation.free,
            lambda: runtime.deserialize_cuda_engine(b""),
        ):
            try:
                action()
            except BaseException as err:
                errors.append(err)
        try:
            cuda.mem_alloc(16)  # no context current on this thread
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=elsewhere, name="intruder")
    worker.start()
    worker.join(30)
    assert [type(err).__name__ for err in errors] == [
        "LogicError",
        "LogicError",
        "LogicError",
        "RuntimeError",
        "LogicError",
    ]
    assert all(isinstance(err, cuda.Error) for err in errors[:3] + errors[4:])
    assert "context used from thread 'intruder', owned by 'MainThread'" in str(errors[0])
    allocation.free()
    cuda.Context.pop()
    context.detach()
    with pytest.raises(cuda.Error, match="detached"):
        context.push()


def test_the_cache_is_checked_before_deserializing(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    spec = get_model("mtcnn-rnet")
    strict = options(tmp_path, build_missing=False)
    with pytest.raises(EngineMissingError, match=r"no engine cached.*engines build --models mtcnn-rnet"):
        open_model("tensorrt", spec, shared_models, strict)
    assert "deserialize_cuda_engine" not in trt8.names() and "build_serialized_network" not in trt8.names()

    with open_model("tensorrt", spec, shared_models, options(tmp_path)):
        pass
    with open_model("tensorrt", spec, shared_models, strict):  # now cached: loads, builds nothing
        pass
    assert trt8.names().count("build_serialized_network") == 1

    # A different precision is another engine: the manifest says why before anything is loaded.
    with pytest.raises(EngineMissingError, match="precision 'fp32' is asked for"):
        open_model("tensorrt", spec, shared_models, dataclasses.replace(strict, precision="fp32"))

    trt8.corrupt_engines = True  # the cached engine no longer deserializes
    with pytest.raises(EngineMissingError, match=r"does not deserialize.*Magic tag does not match"):
        open_model("tensorrt", spec, shared_models, strict)
    with pytest.raises(EngineLoadError, match="cannot deserialize the engine it just built"):
        open_model("tensorrt", spec, shared_models, options(tmp_path))
    assert trt8.names().count("build_serialized_network") == 2


# -- the builder -----------------------------------------------------------------------------------------


def test_every_parser_error_is_reported(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    trt8.parse_errors = ["PRelu: unsupported slope shape", "Resize: unsupported mode"]
    with pytest.raises(EngineLoadError, match=r"2 error\(s\).*PRelu.*\|.*Resize"):
        open_model("tensorrt", get_model("mtcnn-onet"), shared_models, options(tmp_path))


def test_a_failed_build_says_what_tensorrt_logged(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    trt8.fail_build = True
    with pytest.raises(EngineLoadError, match="reformatting-free rules"):
        open_model("tensorrt", get_model("mtcnn-onet"), shared_models, options(tmp_path))


def test_a_tensorrt_exception_becomes_the_projects_error(
    trt8: fake_tensorrt.Record, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_models: Path
) -> None:
    def refuse(*args: Any) -> None:
        raise RuntimeError("Shape provided for min is inconsistent with other shapes.")

    monkeypatch.setattr(trt().IOptimizationProfile, "set_shape", refuse)
    with pytest.raises(EngineLoadError, match=r"TensorRT 8\.5\.2\.2 failed while building: Shape provided"):
        open_model("tensorrt", get_model("mobilefacenet"), shared_models, options(tmp_path))
    assert trt8.pushes == trt8.pops and not trt8.memory


def test_the_dla_core_is_targeted_and_selected_at_load(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    trt8.dla_cores = 2
    with open_model("tensorrt", get_model("mtcnn-onet"), shared_models, options(tmp_path, dla_core=1)) as b:
        assert b.manifest.target == "dla:1"  # type: ignore[attr-defined]
    config = trt8.configs[-1]
    assert config.default_device_type == trt().DeviceType.DLA and config.DLA_core == 1
    assert config.get_flag(trt().BuilderFlag.GPU_FALLBACK)
    # IRuntime.DLA_core is set before the engine is deserialized.
    assert [value for name, value in trt8.calls if name == "deserialize_cuda_engine"] == [1]

    trt8.dla_cores = 0
    with open_model("tensorrt", get_model("mtcnn-rnet"), shared_models, options(tmp_path, dla_core=0)) as b:
        manifest = b.manifest  # type: ignore[attr-defined]
    assert manifest.target == "gpu" and "this device has 0 DLA core(s)" in manifest.precision_reason


@pytest.mark.parametrize("release", ["10.3", "11.4"])
def test_progress_and_cancel(
    release: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_models: Path
) -> None:
    from engines.tensorrt.platform import probe_platform

    record = fake_tensorrt.install(monkeypatch, release, device=fake_tensorrt.SHIPS_ON[release])
    try:
        from engines.tensorrt.builder import EngineBuilder

        spec = get_model("mtcnn-onet")
        onnx_bytes = load_model_bytes(spec, ModelStore(shared_models).require(spec))
        request = engine_request(spec, onnx_bytes, probe_platform(0), options(tmp_path))
        reports: List[tuple] = []
        EngineBuilder(platform=request.platform, progress=lambda *report: reports.append(report)).build(
            spec, onnx_bytes, request, tmp_path / "engines"
        )
        assert ("Building engine", 0, 3) in reports and ("Building engine", 3, 3) in reports
        assert reports[0][0] == "parse" and reports[-1][0] == "save"

        cancel = threading.Event()
        cancel.set()
        with pytest.raises(EngineBuildError, match="cancelled"):
            EngineBuilder(platform=request.platform, cancel=cancel).build(spec, onnx_bytes, request)
        # Cancelling during TensorRT's own phases: step_complete answers False, TensorRT stops.
        stop = threading.Event()

        def cancel_midway(phase: str, done: int, total: int) -> None:
            if phase == "Building engine" and done >= 1:
                stop.set()

        with pytest.raises(EngineBuildError, match="cancelled"):
            EngineBuilder(platform=request.platform, progress=cancel_midway, cancel=stop).build(
                spec, onnx_bytes, request
            )
        assert record.names().count("build_serialized_network") == 2
    finally:
        fake_tensorrt.uninstall()


# -- the fake itself: each release's API and rules --------------------------------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_each_release_has_its_own_api(release: str) -> None:
    module = fake_tensorrt.tensorrt_module(release)
    major = int(release.split(".", maxsplit=1)[0])
    binding_api = major < 10
    assert hasattr(module.IExecutionContext, "execute_async_v2") is binding_api
    assert hasattr(module.ICudaEngine, "num_bindings") is binding_api
    assert hasattr(module.IBuilderConfig, "max_workspace_size") is binding_api
    assert hasattr(module.IExecutionContext, "execute_async_v3") is (release != "8.2")
    assert hasattr(module, "MemoryPoolType") is (release != "8.2")
    assert hasattr(module, "IProgressMonitor") is (major >= 10)
    implicit = major < 11
    assert hasattr(module, "IInt8EntropyCalibrator2") is implicit
    assert hasattr(module.IBuilderConfig, "int8_calibrator") is implicit
    assert hasattr(module.Builder, "platform_has_fast_int8") is implicit
    assert hasattr(module.BuilderFlag, "FP16") is implicit and hasattr(module.BuilderFlag, "INT8") is implicit
    assert hasattr(module.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") is implicit
    assert hasattr(module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") is (major >= 10)
    with pytest.raises(TypeError, match="No constructor"):
        module.ICudaEngine()


def _build_onet(
    release: str, monkeypatch: pytest.MonkeyPatch, shared_models: Path, network_flags: int, flags: List[str]
) -> tuple:
    """Build O-Net straight through the fake's API with ``flags``; return (serialized or None, TensorRT errors)."""
    fake_tensorrt.install(monkeypatch, release)
    module = trt()
    errors: List[str] = []

    class Collect(module.ILogger):  # type: ignore[misc, name-defined]
        def log(self, severity: Any, msg: str) -> None:
            if severity <= module.ILogger.Severity.ERROR:
                errors.append(msg)

    spec = get_model("mtcnn-onet")
    logger = Collect()
    builder = module.Builder(logger)
    network = builder.create_network(network_flags)
    assert module.OnnxParser(network, logger).parse(
        load_model_bytes(spec, ModelStore(shared_models).require(spec))
    )
    config = builder.create_builder_config()
    for name in flags:
        config.set_flag(getattr(module.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.inputs[0].name, (1, 48, 48, 3), (1, 48, 48, 3), (1, 48, 48, 3))
    config.add_optimization_profile(profile)
    return builder.build_serialized_network(network, config), errors


def test_int8_without_scales_fails_the_build(monkeypatch: pytest.MonkeyPatch, shared_models: Path) -> None:
    try:
        serialized, errors = _build_onet("8.5", monkeypatch, shared_models, 1, ["INT8"])
        assert serialized is None and "no scaling factors detected" in errors[-1]
    finally:
        fake_tensorrt.uninstall()


def test_a_strongly_typed_network_refuses_precision_flags(
    monkeypatch: pytest.MonkeyPatch, shared_models: Path
) -> None:
    try:
        module = fake_tensorrt.tensorrt_module("10.3")
        typed = 1 << int(module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        serialized, errors = _build_onet("10.3", monkeypatch, shared_models, typed, ["FP16"])
        assert serialized is None and "not allowed if the network is strongly typed" in errors[-1]
    finally:
        fake_tensorrt.uninstall()
    try:
        serialized, errors = _build_onet("11.4", monkeypatch, shared_models, 0, [])
        assert serialized is not None and not errors  # FP32 from the FP32 ONNX: strongly typed, fine
        with pytest.raises(AttributeError):  # and pybind11 objects take no undeclared attribute
            trt().Builder(object()).create_builder_config().int8_calibrator = object()
    finally:
        fake_tensorrt.uninstall()
