"""The TensorRT engine builder, the TensorRT back-end, the engine service and ``engines build``, run
against FAKE TensorRT and pycuda modules (:mod:`tests.fake_tensorrt`): there is no GPU here.

The fakes implement the documented TensorRT 8.5 / 10.x and pycuda calls the project makes, refuse
what the real ones refuse (a shape outside the profile, a copy larger than its buffer, a calibration
batch that is not the calibration profile's shape), and "execute" an engine with ONNX Runtime on the
bytes at its device addresses. So these tests run the project's real TensorRT code paths — flags
per precision, profiles, the calibrator, the timing cache, the manifest check before deserializing,
buffer handling and batch splitting — on the real ONNX models, with only the hardware faked. What
they cannot show is TensorRT's own behaviour (kernels, numerics): the ``gpu`` suite does, on a Jetson.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from pathlib import Path
from typing import Any, Iterator, List

import numpy as np
import pytest

from engines.backends import BackendOptions, open_model
from engines.errors import EngineBuildError, EngineMissingError, InferenceError
from engines.registry import MODELS, ModelSpec, get_model
from engines.tensorrt.cache import calibration_cache_path, lookup
from tests import fake_tensorrt

MAX_FRAME = (96, 128)  # small P-Net/YuNet profiles keep the fake "engines" quick


@pytest.fixture(params=["8.5.2.2", "10.3.0.26"], ids=["trt8.5", "trt10"])
def fake(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_tensorrt.Record]:
    record = fake_tensorrt.install(monkeypatch, request.param)
    yield record
    fake_tensorrt.uninstall()


@pytest.fixture
def trt8(monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_tensorrt.Record]:
    record = fake_tensorrt.install(monkeypatch, "8.5.2.2")
    yield record
    fake_tensorrt.uninstall()


def options(tmp_path: Path, **changes: Any) -> BackendOptions:
    base = BackendOptions(
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


# -- the builder --------------------------------------------------------------------------------------


def test_fp16_on_a_nano_with_the_api_of_each_version(
    fake: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    fake.fast_int8, fake.compute_capability, fake.gpu_name = False, (5, 3), "NVIDIA Tegra X1"
    trt_major = int(importlib.import_module("tensorrt").__version__.split(".")[0])
    spec = get_model("mtcnn-onet")
    with open_model("tensorrt", spec, shared_models, options(tmp_path, precision="auto")) as backend:
        manifest = backend.manifest  # type: ignore[attr-defined]
    assert manifest.precision == "fp16" and "no fast INT8 (Jetson Nano)" in manifest.precision_reason
    (config,) = fake.configs
    assert (
        fake_tensorrt.BuilderFlag.FP16 in config.flags and fake_tensorrt.BuilderFlag.INT8 not in config.flags
    )
    assert config.pools[fake_tensorrt.MemoryPoolType.WORKSPACE] == 256 << 20
    network_flags = [value for name, value in fake.calls if name == "create_network"]
    if trt_major < 10:  # explicit batch must be asked for; platform_has_fast_* are asked
        assert network_flags == [1 << fake_tensorrt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH.value]
        assert "platform_has_fast_int8" in fake.names()
    else:  # TensorRT 10: every network is explicit-batch; the deprecated queries are not used
        assert network_flags == [0]
        assert "platform_has_fast_int8" not in fake.names()
    (profile,) = config.profiles
    assert profile.shapes[spec.inputs[0].name] == ((1, 48, 48, 3), (2, 48, 48, 3), (4, 48, 48, 3))
    # The timing cache is kept per TensorRT version and GPU, and fed to the next build.
    (timing,) = (tmp_path / "engines").glob("timing-*.cache")
    assert "nvidia-tegra-x1-sm53" in timing.name and timing.read_bytes() == b"[0]"
    with open_model("tensorrt", get_model("mtcnn-rnet"), shared_models, options(tmp_path)) as _:
        pass
    assert timing.read_bytes() == b"[0, 1]"


def test_fp32_is_ieee_fp32(trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path) -> None:
    with open_model(
        "tensorrt", get_model("mtcnn-onet"), shared_models, options(tmp_path, precision="fp32")
    ) as b:
        assert b.manifest.precision == "fp32"  # type: ignore[attr-defined]
    (config,) = trt8.configs
    assert not config.flags & {fake_tensorrt.BuilderFlag.FP16, fake_tensorrt.BuilderFlag.TF32}


def test_every_parser_error_is_reported(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    trt8.parse_errors = ["PRelu: unsupported slope shape", "Resize: unsupported mode"]
    with pytest.raises(Exception, match=r"2 error\(s\).*PRelu.*\|.*Resize"):
        open_model("tensorrt", get_model("mtcnn-onet"), shared_models, options(tmp_path))


def test_a_failed_build_says_what_tensorrt_logged(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    trt8.fail_build = True
    with pytest.raises(Exception, match="reformatting-free rules"):
        open_model("tensorrt", get_model("mtcnn-onet"), shared_models, options(tmp_path))


def test_the_dla_core_is_targeted_and_selected_at_load(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    trt8.dla_cores = 2
    with open_model("tensorrt", get_model("mtcnn-onet"), shared_models, options(tmp_path, dla_core=1)) as b:
        assert b.manifest.target == "dla:1"  # type: ignore[attr-defined]
    (config,) = trt8.configs
    assert config.default_device_type == fake_tensorrt.DeviceType.DLA and config.DLA_core == 1
    assert fake_tensorrt.BuilderFlag.GPU_FALLBACK in config.flags
    # IRuntime.DLA_core is set before the engine is deserialized.
    assert [value for name, value in trt8.calls if name == "deserialize_cuda_engine"] == [1]

    trt8.dla_cores = 0
    with open_model("tensorrt", get_model("mtcnn-rnet"), shared_models, options(tmp_path, dla_core=0)) as b:
        manifest = b.manifest  # type: ignore[attr-defined]
    assert manifest.target == "gpu" and "this device has 0 DLA core(s)" in manifest.precision_reason


def test_progress_and_cancel_on_tensorrt_10(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_models: Path
) -> None:
    record = fake_tensorrt.install(monkeypatch, "10.3.0.26")
    try:
        from engines.tensorrt.service import EngineService, EngineTarget

        reports: List[tuple] = []
        target = EngineTarget("mtcnn-onet", get_model("mtcnn-onet"), shared_models)
        service = EngineService(options(tmp_path), progress=lambda *report: reports.append(report))
        service.build(target)
        assert ("Building engine", 0, 3) in reports and ("Building engine", 3, 3) in reports
        assert reports[0][0] == "parse" and reports[-1][0] == "save"

        cancel = threading.Event()
        cancel.set()
        with pytest.raises(EngineBuildError, match="cancelled"):
            EngineService(options(tmp_path / "other"), cancel=cancel).build(target)
        # Cancelling during TensorRT's own phases: step_complete answers False, TensorRT stops.
        stop = threading.Event()

        def cancel_midway(phase: str, done: int, total: int) -> None:
            if phase == "Building engine" and done >= 1:
                stop.set()

        service = EngineService(options(tmp_path / "third"), progress=cancel_midway, cancel=stop)
        with pytest.raises(EngineBuildError, match="cancelled"):
            service.build(target)
        assert record.names().count("build_serialized_network") == 2
    finally:
        fake_tensorrt.uninstall()


def test_int8_from_a_calibration_set(trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path) -> None:
    from engines.tensorrt.service import EngineService, EngineTarget

    trt8.compute_capability = (7, 2)  # Xavier
    spec = get_model("mobilefacenet")
    folder = tmp_path / "calibration"
    folder.mkdir()
    rng = np.random.default_rng(3)
    np.save(folder / "mobilefacenet.npy", rng.uniform(-1, 1, (70, 3, 112, 112)).astype(np.float32))
    service = EngineService(options(tmp_path, precision="auto", calibration_dir=str(folder)))
    target = EngineTarget("mobilefacenet", spec, shared_models)
    built = service.build(target)
    assert built.manifest.precision == "int8", built.manifest.precision_reason
    assert "SM 7.2 has fast INT8" in built.manifest.precision_reason
    config = trt8.configs[-1]
    assert {fake_tensorrt.BuilderFlag.INT8, fake_tensorrt.BuilderFlag.FP16} <= config.flags
    assert config.calibration_profile is not None
    assert config.calibration_profile.shapes[spec.inputs[0].name][1] == (32, 3, 112, 112)
    assert ("calibration_batches", 2) in trt8.calls  # 70 samples: two batches of 32, 6 left out
    cache = calibration_cache_path(service.engine_dir, service.request(target))
    assert cache.read_bytes() == b"TRT-FAKE-EntropyCalibration2\n2"
    assert all(address not in trt8.memory for address in trt8.freed)  # the batch buffer was freed
    assert lookup(service.engine_dir, service.request(target)).hit

    service.build(target)  # the same network, data and TensorRT: the scales are read back
    assert trt8.names().count("calibration_batches") == 1
    assert ("read_calibration_cache", b"TRT-FAKE-EntropyCalibration2\n2") in trt8.calls

    # The back-end opens what was built (the set is part of the key) but never builds INT8 itself.
    with open_model("tensorrt", spec, shared_models, service.options) as backend:
        assert backend.manifest.precision == "int8"  # type: ignore[attr-defined]
    (folder / "mobilefacenet.npy").unlink()
    np.save(folder / "mobilefacenet.npy", np.zeros((8, 3, 112, 112), np.float32))
    with pytest.raises(Exception, match="needs its calibrator"):
        open_model("tensorrt", spec, shared_models, service.options)


# -- the back-end --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", MODELS, ids=[spec.name for spec in MODELS])
def test_the_backend_gives_the_cpu_outputs(
    fake: fake_tensorrt.Record, spec: ModelSpec, tmp_path: Path, shared_models: Path
) -> None:
    cpu = open_model("cpu", spec, shared_models)
    accelerated = open_model("tensorrt", spec, shared_models, options(tmp_path))
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


def test_the_binding_api_of_tensorrt_8(
    trt8: fake_tensorrt.Record, tmp_path: Path, shared_models: Path
) -> None:
    trt8.binding_api = True
    spec = get_model("mobilefacenet")
    with open_model("cpu", spec, shared_models) as cpu, open_model(
        "tensorrt", spec, shared_models, options(tmp_path)
    ) as accelerated:
        blob = feeds_for(spec, 6)  # two parts of at most 4
        expected, got = cpu.run(blob), accelerated.run(blob)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)
    assert "execute_async_v2" in trt8.names() and "execute_async_v3" not in trt8.names()


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
    with pytest.raises(EngineMissingError, match="does not deserialize"):
        open_model("tensorrt", spec, shared_models, strict)
    with pytest.raises(Exception, match="cannot deserialize"):  # rebuilding does not help a broken runtime
        open_model("tensorrt", spec, shared_models, options(tmp_path))
    assert trt8.names().count("build_serialized_network") == 2
