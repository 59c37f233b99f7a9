"""The INT8 calibration data path: fixed-size batches of a calibration set, the calibration cache file,
and the TensorRT entropy calibrator that feeds them.

:mod:`engines.tensorrt.batches` is pure numpy and is tested as it is. For
:class:`engines.tensorrt.calibrator.EntropyCalibrator`, TensorRT and pycuda are FAKED (no GPU here):
``tensorrt`` is replaced by a module with an ``IInt8EntropyCalibrator2`` base class, and
``pycuda.driver`` by one whose "device memory" is a host ``bytearray``, so what the calibrator copies
and which address it hands TensorRT can be checked. The samples are real: face photos from
``../shared/data`` pre-processed by the embedder's registry pre-processing.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator, List

import cv2
import numpy as np
import pytest

from calibration.errors import CalibrationDataError
from engines.registry import get_model
from engines.tensorrt.batches import CalibrationBatches, read_cache, write_cache

# -- real samples -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def face_blobs(shared_data: Path) -> np.ndarray:
    """``(N, 3, 112, 112)`` float32: real face photos resized to the embedder's input and pre-processed."""
    spec = get_model("mobilefacenet")
    paths = sorted((shared_data / "faces").glob("*/*.jpg"))[:10]
    images = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in paths]
    crops = np.stack([cv2.resize(image, (112, 112)) for image in images if image is not None])
    assert len(crops) >= 7, "too few readable face photos in ../shared/data/faces"
    return np.ascontiguousarray(spec.preprocessing.to_blob(crops), dtype=np.float32)


# -- batches ----------------------------------------------------------------------------------------


def test_batches_have_one_shape_and_cover_the_set_in_order(face_blobs: np.ndarray) -> None:
    batches = CalibrationBatches(face_blobs, batch_size=3, sample_dims=(3, 112, 112), name="mobilefacenet")
    assert batches.shape == (3, 3, 112, 112)
    assert batches.nbytes == 3 * 3 * 112 * 112 * 4
    served = list(batches)
    assert len(served) == batches.count == len(face_blobs) // 3
    assert batches.left_out == len(face_blobs) % 3
    assert all(batch.shape == batches.shape and batch.flags["C_CONTIGUOUS"] for batch in served)
    np.testing.assert_array_equal(np.concatenate(served), face_blobs[: batches.count * 3])
    assert batches.next_batch() is None
    batches.reset()
    np.testing.assert_array_equal(batches.next_batch(), face_blobs[:3])
    assert batches.served == 1


def test_a_small_set_is_one_batch(face_blobs: np.ndarray) -> None:
    batches = CalibrationBatches(face_blobs[:2], batch_size=32)
    assert batches.shape[0] == 2 and batches.count == 1 and batches.left_out == 0


def test_dynamic_dimensions_accept_any_size() -> None:
    tiles = np.zeros((4, 64, 64, 3), np.float32)  # P-Net's calibration tiles, (N, W, H, 3)
    batches = CalibrationBatches(tiles, 2, sample_dims=(None, None, 3), name="mtcnn-pnet")
    assert batches.shape == (2, 64, 64, 3)


@pytest.mark.parametrize(
    "data, sample_dims, batch_size, message",
    [
        (np.zeros((4, 3, 112, 112), np.float64), None, 2, "float64, expected float32"),
        (np.zeros((0, 3, 112, 112), np.float32), None, 2, "N >= 1"),
        (np.zeros((4,), np.float32), None, 2, "N >= 1"),
        (
            np.zeros((4, 3, 80, 80), np.float32),
            (3, 112, 112),
            2,
            "3x80x80, the network input takes 3x112x112",
        ),
        (np.zeros((4, 64, 64, 3), np.float32), (3, None, None), 2, "network input takes 3x?x?"),
        (np.zeros((4, 3, 112, 112), np.float32), None, 0, "batch size must be >= 1"),
    ],
)
def test_sets_that_do_not_fit_are_refused(
    data: np.ndarray, sample_dims: Any, batch_size: int, message: str
) -> None:
    with pytest.raises(CalibrationDataError, match=message):
        CalibrationBatches(data, batch_size, sample_dims, name="m")


def test_cache_files_round_trip_atomically(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "calibration.cache"
    assert read_cache(path) is None and read_cache(None) is None
    assert write_cache(path, b"TRT-8502-EntropyCalibration2\ninput: 3c010a14\n")
    assert read_cache(path) == b"TRT-8502-EntropyCalibration2\ninput: 3c010a14\n"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    assert not write_cache(None, b"x")
    blocked = tmp_path / "file"
    blocked.write_bytes(b"")
    assert not write_cache(blocked / "cannot" / "be.cache", b"x")  # a file where a folder should be
    path.write_bytes(b"")
    assert read_cache(path) is None  # an empty cache is no cache


# -- the calibrator, with TensorRT and pycuda faked -----------------------------------------------------


class FakeDevice:
    """'Device memory': a host bytearray with an address TensorRT would be given."""

    def __init__(self, nbytes: int, log: List[str]) -> None:
        self.buffer = bytearray(nbytes)
        self.log = log
        self.freed = False

    def __int__(self) -> int:
        return 0x7F0000001000

    def free(self) -> None:
        self.log.append("free")
        self.freed = True


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dict[str, Any]]:
    """``tensorrt`` and ``pycuda.driver`` replaced by fakes (no GPU here); yields the calibrator module."""
    state: Dict[str, Any] = {"log": [], "devices": []}

    tensorrt = types.ModuleType("tensorrt")

    class IInt8EntropyCalibrator2:  # the binding's base class; the real one is a pybind11 trampoline
        def __init__(self) -> None:
            state["log"].append("base init")

    tensorrt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2  # type: ignore[attr-defined]

    driver = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    def mem_alloc(nbytes: int) -> FakeDevice:
        device = FakeDevice(nbytes, state["log"])
        state["devices"].append(device)
        state["log"].append(f"mem_alloc {nbytes}")
        return device

    def memcpy_htod(dest: FakeDevice, src: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(src)).cast("B")
        assert len(data) == len(dest.buffer), "the copy must fill the device buffer exactly"
        dest.buffer[:] = data
        state["log"].append("memcpy_htod")

    driver.Error = Error  # type: ignore[attr-defined]
    driver.mem_alloc = mem_alloc  # type: ignore[attr-defined]
    driver.memcpy_htod = memcpy_htod  # type: ignore[attr-defined]
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver  # type: ignore[attr-defined]

    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.delitem(sys.modules, "engines.tensorrt.calibrator", raising=False)
    state["module"] = importlib.import_module("engines.tensorrt.calibrator")
    yield state
    sys.modules.pop("engines.tensorrt.calibrator", None)  # never leave the faked module imported


def test_the_calibrator_feeds_every_batch_then_ends(
    fake_cuda: Dict[str, Any], face_blobs: np.ndarray, tmp_path: Path
) -> None:
    set_path = tmp_path / "mobilefacenet.npy"
    np.save(set_path, face_blobs)
    spec = get_model("mobilefacenet")
    calibrator = fake_cuda["module"].EntropyCalibrator.from_set(
        spec, set_path, tmp_path / "cal.cache", batch_size=4
    )
    with calibrator:
        assert fake_cuda["log"] == ["base init"]  # the binding's base class is initialised
        assert calibrator.batch_shapes == {spec.inputs[0].name: (4, 3, 112, 112)}
        assert calibrator.get_batch_size() == 4
        assert calibrator.read_calibration_cache() is None and not calibrator.cache_used
        fed = []
        while True:
            pointers = calibrator.get_batch([spec.inputs[0].name])
            if pointers is None:
                break
            (device,) = fake_cuda["devices"]  # one buffer, reused for every batch
            assert pointers == [int(device)]
            fed.append(np.frombuffer(bytes(device.buffer), np.float32).reshape(4, 3, 112, 112))
        assert len(fed) == len(face_blobs) // 4
        np.testing.assert_array_equal(np.concatenate(fed), face_blobs[: len(fed) * 4])
        assert fake_cuda["log"].count("mem_alloc 602112") == 1
        calibrator.write_calibration_cache(memoryview(b"TRT-8502-EntropyCalibration2\n"))
        assert calibrator.error is None
    assert fake_cuda["log"][-1] == "free"
    calibrator.close()  # idempotent
    assert fake_cuda["log"].count("free") == 1

    again = fake_cuda["module"].EntropyCalibrator.from_set(spec, set_path, tmp_path / "cal.cache")
    assert again.read_calibration_cache() == b"TRT-8502-EntropyCalibration2\n"
    assert again.cache_used
    written = (tmp_path / "cal.cache").stat().st_mtime_ns
    again.write_calibration_cache(memoryview(b"TRT-8502-EntropyCalibration2\n"))  # the same scales back
    assert (tmp_path / "cal.cache").stat().st_mtime_ns == written  # not rewritten
    again.close()  # never allocated: nothing to free
    assert fake_cuda["log"].count("free") == 1


def test_a_failure_inside_a_callback_is_kept_not_raised(
    fake_cuda: Dict[str, Any], face_blobs: np.ndarray, tmp_path: Path
) -> None:
    set_path = tmp_path / "mobilefacenet.npy"
    np.save(set_path, face_blobs)
    spec = get_model("mobilefacenet")
    calibrator = fake_cuda["module"].EntropyCalibrator.from_set(spec, set_path, None, batch_size=4)
    assert calibrator.get_batch(["some_other_input"]) is None
    assert isinstance(calibrator.error, CalibrationDataError)
    assert "some_other_input" in str(calibrator.error)
    assert calibrator.get_batch([spec.inputs[0].name]) is None  # calibration stays ended
    calibrator.close()


def test_a_set_for_another_model_is_refused(
    fake_cuda: Dict[str, Any], face_blobs: np.ndarray, tmp_path: Path
) -> None:
    set_path = tmp_path / "minifasnet-v2.npy"
    np.save(set_path, face_blobs)  # 112x112 crops; MiniFASNet takes 80x80
    with pytest.raises(CalibrationDataError, match="3x112x112, the network input takes 3x80x80"):
        fake_cuda["module"].EntropyCalibrator.from_set(get_model("minifasnet-v2"), set_path, None)
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(CalibrationDataError, match="not a readable calibration set"):
        fake_cuda["module"].EntropyCalibrator.from_set(
            get_model("mobilefacenet"), tmp_path / "broken.npy", None
        )


def test_without_a_set_the_cache_alone_is_replayed(fake_cuda: Dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "cal.cache"
    cache.write_bytes(b"TRT-8502-EntropyCalibration2\n")
    calibrator = fake_cuda["module"].EntropyCalibrator("input", None, cache)
    assert calibrator.batch_shapes == {} and calibrator.get_batch_size() == 1
    assert calibrator.get_batch(["input"]) is None
    assert calibrator.read_calibration_cache() == b"TRT-8502-EntropyCalibration2\n"
    assert fake_cuda["log"] == ["base init"]  # no device memory was needed


# -- the calibrator on each TensorRT release (tests.fake_tensorrt: each release's API, CUDA rules) --------


@pytest.mark.parametrize("release", ["8.2", "8.5", "8.6", "10.3", "10.13"])
def test_the_calibrator_on_each_release_with_implicit_calibration(
    release: str, monkeypatch: pytest.MonkeyPatch, face_blobs: np.ndarray, tmp_path: Path
) -> None:
    from tests import fake_tensorrt

    record = fake_tensorrt.install(monkeypatch, release, device=fake_tensorrt.SHIPS_ON[release])
    try:
        import pycuda.driver as cuda

        module = importlib.import_module("engines.tensorrt.calibrator")
        assert module.IMPLICIT_CALIBRATION
        set_path = tmp_path / "mobilefacenet.npy"
        np.save(set_path, face_blobs)
        spec = get_model("mobilefacenet")
        context = cuda.Device(0).retain_primary_context()
        context.push()  # the builder's context: the batch buffer is allocated in it
        try:
            with module.EntropyCalibrator.from_set(
                spec, set_path, tmp_path / "cal.cache", batch_size=4
            ) as calibrator:
                (address,) = calibrator.get_batch([spec.inputs[0].name])
                fed = np.frombuffer(bytes(record.memory[address]), np.float32).reshape(4, 3, 112, 112)
                np.testing.assert_array_equal(fed, face_blobs[:4])
            assert address in record.freed and address not in record.memory
        finally:
            cuda.Context.pop()
            context.detach()
    finally:
        fake_tensorrt.uninstall()


def test_a_batch_without_a_cuda_context_is_kept_as_the_error(
    monkeypatch: pytest.MonkeyPatch, face_blobs: np.ndarray, tmp_path: Path
) -> None:
    """TensorRT calls get_batch during the build, with the builder's context current; without one the
    (fake) driver refuses the allocation and the calibrator keeps that as its error (never raises)."""
    from tests import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "8.5", device="xavier")
    try:
        module = importlib.import_module("engines.tensorrt.calibrator")
        np.save(tmp_path / "mobilefacenet.npy", face_blobs)
        spec = get_model("mobilefacenet")
        calibrator = module.EntropyCalibrator.from_set(
            spec, tmp_path / "mobilefacenet.npy", None, batch_size=4
        )
        assert calibrator.get_batch([spec.inputs[0].name]) is None
        assert "invalid device context" in str(calibrator.error)
        calibrator.close()
    finally:
        fake_tensorrt.uninstall()


def test_the_calibrator_module_imports_on_tensorrt_11(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT 11 has no IInt8EntropyCalibrator2: the module imports, says so, and asking for the
    calibrator is an EngineBuildError saying what to do — not an AttributeError at import time."""
    from engines.errors import EngineBuildError
    from tests import fake_tensorrt

    fake_tensorrt.install(monkeypatch, "11.4", device="thor")
    try:
        module = importlib.import_module("engines.tensorrt.calibrator")
        assert not module.IMPLICIT_CALIBRATION and "EntropyCalibrator" not in module.__all__
        with pytest.raises(
            EngineBuildError, match=r"TensorRT 11\.4\.0\.106 has no implicit INT8 calibration.*Q/DQ model"
        ):
            from engines.tensorrt.calibrator import EntropyCalibrator  # noqa: F401
        with pytest.raises(EngineBuildError, match="face-appliance calibrate"):
            module.require_implicit_calibration()
        with pytest.raises(AttributeError):
            module.no_such_name  # noqa: B018
        builder = importlib.import_module("engines.tensorrt.builder")  # its cache-only calibrator likewise
        assert not builder._HAS_CALIBRATORS and not hasattr(builder, "_CacheOnlyCalibrator")
    finally:
        fake_tensorrt.uninstall()
