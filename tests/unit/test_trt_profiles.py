"""TensorRT engine requests from the configuration (no TensorRT needed): P-Net profiles over the
detector's real pyramid, batch profiles, calibration data in the cache key, and the precision each
Jetson gets.

The pyramid is checked against the detector's own code (:meth:`MtcnnDetector.scales` and
:func:`pyramid` on real arrays), so the profile and the detector cannot drift apart.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict

import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.runtime.loading import backend_options
from appliance.vision.analyzer import RETRY_PAD_FRACTION
from appliance.vision.boxes import pyramid
from appliance.vision.mtcnn import MtcnnDetector, MtcnnSettings
from engines.backends import BackendOptions
from engines.registry import get_model
from engines.tensorrt.cache import (
    INT8_FROM_CALIBRATION,
    INT8_FROM_QDQ,
    PlatformInfo,
    calibration_cache_path,
    calibration_set_path,
    engine_request,
    optimization_profile,
    plan_precision,
    pnet_top_level,
    pyramid_sizes,
)

ORIN = PlatformInfo("8.5.2.2", "Orin", (8, 7), "35.4.1")
ONNX = b"the prepared ONNX bytes of one model"


def detector_levels(height: int, width: int, min_face: int, factor: float) -> list:
    """The ``(height, width)`` of the levels the real detector makes for an image of that size."""
    holder = SimpleNamespace(settings=MtcnnSettings(min_face=min_face, scale_factor=factor))
    scales = MtcnnDetector.scales(holder, height, width)  # type: ignore[arg-type]
    image = np.zeros((height, width, 3), np.uint8)
    return [level.shape[:2] for level, _, _ in pyramid(image, scales)]


@pytest.mark.parametrize(
    "height, width, min_face, factor",
    [
        (1080, 1920, 40, 0.709),
        (720, 1280, 20, 0.709),
        (481, 641, 12, 0.6),
        (100, 90, 30, 0.8),
        (60, 60, 6, 0.7),
    ],
)
def test_pyramid_sizes_are_the_detectors(height: int, width: int, min_face: int, factor: float) -> None:
    assert pyramid_sizes(height, width, min_face, factor) == detector_levels(height, width, min_face, factor)


def config_with(**sections: Dict[str, Any]) -> Any:
    return validate_config(dict(sections))


@pytest.mark.parametrize(
    "detector",
    [
        {"min_face_px": 40, "max_side": 1920, "mtcnn": {"scale_factor": 0.709}},
        {"min_face_px": 12, "max_side": 640, "mtcnn": {"scale_factor": 0.5}},
        {"min_face_px": 24, "max_side": 1280, "mtcnn": {"scale_factor": 0.8}},
    ],
)
def test_the_pnet_profile_covers_every_level_the_configured_detector_makes(detector: Dict[str, Any]) -> None:
    config = config_with(detector=detector)
    options = backend_options(config)
    (profile,) = optimization_profile(
        get_model("mtcnn-pnet"),
        max_frame=options.max_frame,
        min_face=options.min_face,
        opt_frame=options.opt_frame,
    )
    side = config.detector.max_side
    pad = round(RETRY_PAD_FRACTION * side)
    factor = config.detector.mtcnn.scale_factor
    images = [
        (side, side),  # the largest frame either way round
        (round(side * 9 / 16), side),  # landscape camera
        (side, round(side * 9 / 16)),  # portrait camera
        (side + 2 * pad, side + 2 * pad),  # a still photo retried with a border
        (13, 500),  # a sliver
    ]
    for height, width in images:
        for level_h, level_w in pyramid_sizes(height, width, config.detector.min_face_px, factor):
            shape = (1, level_w, level_h, 3)  # P-Net's input is NHWC with height and width swapped
            assert profile.contains(shape), (height, width, shape, profile.describe())


def test_pnet_is_tuned_for_the_camera_frame() -> None:
    config = config_with(
        camera={"width": 1280, "height": 720}, detector={"min_face_px": 40, "max_side": 1920}
    )
    options = backend_options(config)
    assert options.opt_frame == (720, 1280)
    (profile,) = optimization_profile(
        get_model("mtcnn-pnet"), max_frame=options.max_frame, min_face=40, opt_frame=options.opt_frame
    )
    assert profile.opt == (1, 384, 216, 3)  # 1280x720 scaled by 12/40, transposed
    top = pnet_top_level(*options.max_frame, 40)
    assert profile.max == (1, top[1], top[0], 3)

    # A camera larger than max_side is scaled down before detection; opt follows.
    big = backend_options(config_with(camera={"width": 3840, "height": 2160}, detector={"max_side": 1920}))
    assert big.opt_frame == (1080, 1920)

    # Several cameras: tuned for the largest frame; one without a size does not count.
    several = config_with(
        cameras=[
            {"id": "entry", "width": 640, "height": 480},
            {"id": "exit", "width": 1280, "height": 720},
            {"id": "side"},
        ],
        detector={"max_side": 1920},
    )
    assert backend_options(several).opt_frame == (720, 1280)


def test_an_opt_frame_beyond_the_maximum_is_clipped() -> None:
    (profile,) = optimization_profile(
        get_model("mtcnn-pnet"), max_frame=(100, 100), min_face=12, opt_frame=(4000, 4000)
    )
    assert profile.opt == profile.max == (1, 100, 100, 3)
    with pytest.raises(ValueError, match="opt_frame"):
        optimization_profile(get_model("mtcnn-pnet"), opt_frame=(8, 8))


@pytest.mark.parametrize("batch_size, max_batch, opt", [(8, 16, 8), (32, 16, 16), (1, 4, 1)])
def test_the_embedder_is_tuned_for_its_batch_size(batch_size: int, max_batch: int, opt: int) -> None:
    config = config_with(embedder={"batch_size": batch_size}, backend={"tensorrt": {"max_batch": max_batch}})
    options = backend_options(config)
    (profile,) = optimization_profile(
        get_model("mobilefacenet"), max_batch=options.max_batch, embedder_batch=options.embedder_batch
    )
    assert (profile.min[0], profile.opt[0], profile.max[0]) == (1, opt, max_batch)
    (liveness,) = optimization_profile(
        get_model("minifasnet-v2"), max_batch=options.max_batch, embedder_batch=options.embedder_batch
    )
    assert liveness.opt[0] == min(4, max_batch)  # the embedder's batch does not touch other models
    with pytest.raises(ValueError, match="embedder_batch"):
        optimization_profile(get_model("mobilefacenet"), embedder_batch=0)


# -- requests and calibration data ----------------------------------------------------------------------


def test_requests_are_derived_alike_from_the_same_options(tmp_path: Path) -> None:
    spec = get_model("mobilefacenet")
    options = backend_options(config_with(storage={"dir": str(tmp_path)}))
    first = engine_request(spec, ONNX, ORIN, options)
    second = engine_request(spec, ONNX, ORIN, backend_options(config_with(storage={"dir": str(tmp_path)})))
    assert first == second and first.key == second.key
    assert first.calibration_sha256 is None  # no calibration set in <storage>/calibration
    assert first.precision == "auto" and first.model == "mobilefacenet"
    # The detector settings reach P-Net's request, and so its key.
    pnet = get_model("mtcnn-pnet")
    small = backend_options(config_with(storage={"dir": str(tmp_path)}, detector={"min_face_px": 80}))
    assert engine_request(pnet, ONNX, ORIN, small).key != engine_request(pnet, ONNX, ORIN, options).key


def test_a_calibration_set_is_part_of_the_key(tmp_path: Path) -> None:
    spec = get_model("mobilefacenet")
    folder = tmp_path / "calibration"
    folder.mkdir()
    options = BackendOptions(calibration_dir=str(folder))
    without = engine_request(spec, ONNX, ORIN, options)
    assert calibration_set_path(folder, "mobilefacenet") is None

    path = folder / "mobilefacenet.npy"
    np.save(path, np.zeros((4, 3, 112, 112), np.float32))
    assert calibration_set_path(folder, "mobilefacenet") == path
    assert calibration_set_path(folder, "mtcnn-onet") is None and calibration_set_path(None, "x") is None
    with_set = engine_request(spec, ONNX, ORIN, options)
    assert with_set.calibration_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert with_set.key != without.key

    np.save(path, np.ones((4, 3, 112, 112), np.float32))  # `calibrate` made a new set
    assert engine_request(spec, ONNX, ORIN, options).key != with_set.key

    cache = tmp_path / "shipped.cache"
    cache.write_bytes(b"TRT-8502-EntropyCalibration2\n")
    explicit = BackendOptions(calibration_dir=str(folder), calibration_cache=str(cache))
    assert (
        engine_request(spec, ONNX, ORIN, explicit).calibration_sha256
        == hashlib.sha256(cache.read_bytes()).hexdigest()
    )


def test_the_calibration_cache_is_kept_per_network_data_and_tensorrt(tmp_path: Path) -> None:
    spec = get_model("mobilefacenet")
    request = engine_request(spec, ONNX, ORIN, BackendOptions(), calibration_sha256="ab" * 32)
    path = calibration_cache_path(tmp_path, request)
    assert path.parent == tmp_path / "mobilefacenet"
    assert path.name == f"calibration-{request.onnx_sha256[:12]}-{'ab' * 6}-trt8.5.2.2.cache"
    other = engine_request(spec, b"another model", ORIN, BackendOptions(), calibration_sha256="ab" * 32)
    assert calibration_cache_path(tmp_path, other) != path
    # The precision or profile do not change the scales: the cache is shared by those engines.
    fp16 = engine_request(spec, ONNX, ORIN, BackendOptions(precision="int8"), calibration_sha256="ab" * 32)
    assert calibration_cache_path(tmp_path, fp16) == path
    with pytest.raises(ValueError, match="no calibration data"):
        calibration_cache_path(tmp_path, engine_request(spec, ONNX, ORIN, BackendOptions()))


# -- precision per Jetson --------------------------------------------------------------------------------

#: Each Jetson with the TensorRT it runs most often.
JETSONS: Dict[str, PlatformInfo] = {
    "Nano": PlatformInfo("8.2.1.8", "NVIDIA Tegra X1", (5, 3), "32.7.1"),
    "Xavier": PlatformInfo("8.5.2.2", "Xavier", (7, 2), "35.4.1"),
    "Orin": PlatformInfo("10.3.0.30", "Orin", (8, 7), "36.4.3"),
    "Thor": PlatformInfo("11.4.0.106", "NVIDIA Thor", (11, 0), "38.4.0"),
}


@pytest.mark.parametrize(
    "device, source, precision, because",
    [
        ("Nano", INT8_FROM_CALIBRATION, "fp16", "SM 5.3 has no fast INT8 (Jetson Nano)"),
        ("Nano", None, "fp16", "SM 5.3 has no fast INT8"),
        ("Xavier", INT8_FROM_CALIBRATION, "int8", "SM 7.2 has fast INT8, scales from the calibration data"),
        ("Xavier", INT8_FROM_QDQ, "int8", "scales from the Q/DQ INT8 model"),
        ("Xavier", None, "fp16", "no INT8 calibration cache or calibrator (calibration set) and no Q/DQ"),
        ("Orin", INT8_FROM_CALIBRATION, "int8", "SM 8.7 has fast INT8"),
        ("Orin", INT8_FROM_QDQ, "int8", "Q/DQ"),
        ("Orin", None, "fp16", "building FP16"),
        ("Thor", INT8_FROM_CALIBRATION, "fp16", "has no implicit INT8 calibration"),
        ("Thor", INT8_FROM_QDQ, "int8", "explicit quantization"),
        ("Thor", None, "fp16", "FP16 ONNX made on the device"),
    ],
)
def test_auto_precision_per_jetson(device: str, source: Any, precision: str, because: str) -> None:
    plan = plan_precision(
        "auto",
        JETSONS[device],
        qdq=source == INT8_FROM_QDQ,
        calibration=source == INT8_FROM_CALIBRATION,
        fp16_converter="onnxconverter-common 1.16.0",
    )
    assert plan.precision == precision
    assert because in plan.reason


def test_requests_keep_only_the_int8_data_they_build_from(tmp_path: Path) -> None:
    """The calibration data is in the key only where the engine is calibrated from it, so a Nano (no INT8)
    or a TensorRT 11 (no implicit calibration) does not rebuild when the set changes."""
    spec = get_model("mobilefacenet")
    cached = dict(calibration_sha256="ab" * 32)
    xavier = engine_request(spec, ONNX, JETSONS["Xavier"], BackendOptions(), **cached)  # type: ignore[arg-type]
    assert xavier.calibration_sha256 == "ab" * 32 and xavier.plan.precision == "int8"
    nano = engine_request(spec, ONNX, JETSONS["Nano"], BackendOptions(), **cached)  # type: ignore[arg-type]
    assert nano.calibration_sha256 is None and nano.plan.precision == "fp16"
    thor = engine_request(spec, ONNX, JETSONS["Thor"], BackendOptions(), **cached)  # type: ignore[arg-type]
    assert thor.calibration_sha256 is None and thor.plan.precision == "fp16"
    assert "has no implicit INT8 calibration" in thor.plan.reason  # the reason survives, the digest does not
    assert thor.key == engine_request(spec, ONNX, JETSONS["Thor"], BackendOptions()).key
