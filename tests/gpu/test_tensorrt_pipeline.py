"""The TensorRT pipeline end to end on a device: the whole face pipeline against the CPU one, INT8 from a
calibration set, the daemon's switch-over, ``engines build`` and the doctor's parity check.

Real engines from the real ONNX models and real photos; skipped with the reason where TensorRT or a
CUDA device is absent (see ``conftest.py``). Engines are built into one cache per session, with a
detector ``max_side`` of 1280 to keep the P-Net build short.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.doctor import OK, check_tensorrt_parity
from appliance.runtime.engines import CPU, TENSORRT, supervisor_for
from appliance.runtime.loading import ModelLoader, backend_options, load_analyzer, model_targets
from appliance.trt_parity import MIN_COSINE, compare, cosines
from appliance.vision.align import align_faces
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from engines.registry import get_model
from engines.tensorrt.cache import INT8_FROM_CALIBRATION, calibration_cache_path
from engines.tensorrt.service import EngineService, EngineTarget
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.gpu

WAIT_S = 1800.0  # a bound for a Jetson's engine builds, not an expectation


def make_config(models_dir: Path, state: Path, precision: str = "fp16", **backend: Any) -> Any:
    return validate_config(
        {
            "models": {"dir": str(models_dir)},
            "storage": {"dir": str(state)},
            "detector": {"max_side": 1280, "min_face_px": 40},
            "backend": {
                "type": "tensorrt",
                "fallback": "none",
                "tensorrt": {"precision": precision},
                **backend,
            },
        }
    )


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> List[Tuple[str, np.ndarray]]:
    names = [
        "multi_face/deepface_couple.jpg",
        "multi_face/faceapi_bbt1.jpg",
        "antispoof/image_T1.jpg",
        "no_face/faceapi_white.png",
    ]
    faces = sorted((shared_data / "faces").glob("*/*.jpg"))[:4]
    paths = [shared_data / name for name in names] + faces
    return [(path.name, read_image(path)) for path in paths]


@pytest.fixture(scope="module")
def cpu_pipeline(models_dir: Path, state_dir: Path) -> Iterator[FaceAnalyzer]:
    config = make_config(models_dir, state_dir)
    on_cpu = config.model_copy(update={"backend": config.backend.model_copy(update={"type": "cpu"})})
    with load_analyzer(on_cpu) as analyzer:
        yield analyzer


def test_the_tensorrt_pipeline_finds_and_embeds_what_the_cpu_one_does(
    models_dir: Path, state_dir: Path, cpu_pipeline: FaceAnalyzer, photos: List[Tuple[str, np.ndarray]]
) -> None:
    config = make_config(models_dir, state_dir, precision="fp16")
    with load_analyzer(config) as accelerated:
        assert {backend.key for backend in accelerated._backends} == {TENSORRT}
        result = compare(cpu_pipeline, accelerated, photos)
    assert result.ok, result.problems
    assert result.faces > 0 and result.worst_cosine is not None and result.worst_cosine >= MIN_COSINE


def test_int8_from_a_calibration_set(
    models_dir: Path,
    state_dir: Path,
    cpu_pipeline: FaceAnalyzer,
    photos: List[Tuple[str, np.ndarray]],
    shared_data: Path,
) -> None:
    """The embedder's engine built with the entropy calibrator from real aligned crops; the calibration
    cache is written and reused; INT8 where the GPU has fast INT8, FP16 with the reason elsewhere."""
    crops = []
    for path in sorted((shared_data / "faces").glob("*/*.jpg")):
        image = read_image(path)
        faces = cpu_pipeline.detect(image, still=True)
        if len(faces):
            crops.append(align_faces(image, faces.landmarks[:1]))
    crops_array = np.concatenate(crops)
    assert len(crops_array) >= 16, "too few faces found in ../shared/data/faces for a calibration set"
    calibration = state_dir / "calibration"
    calibration.mkdir(exist_ok=True)
    embedder = get_model("mobilefacenet")
    np.save(calibration / "mobilefacenet.npy", embedder.preprocessing.to_blob(crops_array))
    config = make_config(models_dir, state_dir, precision="auto")
    options = backend_options(config)
    service = EngineService(options)
    (target,), _ = model_targets(config, names=["mobilefacenet"])
    built = service.build(target)
    request = service.request(target)
    # The plan says what this TensorRT and GPU can make of the set: INT8 by implicit calibration where
    # the version has it and the GPU has fast INT8, else FP16 (the Nano; TensorRT 11 without Q/DQ).
    expected = request.plan.precision
    assert built.manifest.precision == expected, built.manifest.precision_reason
    cache = calibration_cache_path(service.engine_dir, request)
    if request.plan.int8_source == INT8_FROM_CALIBRATION:
        assert request.calibration_sha256 is not None and expected == "int8"
        assert cache.is_file()
        written = cache.stat().st_mtime_ns
        again = service.build(target)  # the same request: the scales come from the cache
        assert again.manifest.precision == "int8"
        assert cache.stat().st_mtime_ns == written  # read back, not calibrated again
    with service.open(target) as accelerated:
        reference = cpu_pipeline.embedder.backend.run(embedder.preprocessing.to_blob(crops_array[:8]))
        got = accelerated.run(embedder.preprocessing.to_blob(crops_array[:8]))
        name = embedder.outputs[0].name
        assert float(cosines(reference[name], got[name]).mean()) >= MIN_COSINE


def test_the_daemon_serves_on_the_cpu_then_switches_to_the_built_engine(
    models_dir: Path, tmp_path: Path
) -> None:
    config = make_config(models_dir, tmp_path, precision="fp16", fallback="cpu")
    service = EngineService(backend_options(config, build_missing=False))
    supervisor = supervisor_for(config, service, ModelLoader(config).open_cpu)
    (target,), _ = model_targets(config, names=["mtcnn-onet"])
    backend = supervisor.open(target)
    assert backend.key == CPU and supervisor.status()["mtcnn-onet"]["state"] == "queued"
    switched: List[Any] = []

    def switch(built: EngineTarget) -> bool:
        switched.append(service.open(built))
        return True

    try:
        assert supervisor.start(switch)
        assert supervisor.wait(WAIT_S)
    finally:
        supervisor.close()
        backend.close()
    assert supervisor.status()["mtcnn-onet"] == {"backend": TENSORRT, "state": "ready", "reason": None}
    assert service.check(target) is None
    for engine in switched:
        engine.close()


def test_engines_build_command(models_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[models]\ndir = "{models_dir}"\n[storage]\ndir = "{tmp_path / "state"}"\n'
        '[detector]\nmax_side = 1280\n[backend]\ntype = "tensorrt"\n'
    )
    command = [sys.executable, "-m", "appliance", "engines", "build", "--config", str(config)]
    args = ["--models", "mtcnn-rnet", "--precision", "fp16", "--no-progress"]
    first = subprocess.run(command + args, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert first.returncode == 0, first.stderr
    assert "mtcnn-rnet" in first.stdout and "built in" in first.stdout
    assert "FP16" in first.stdout or "FP32" in first.stdout
    second = subprocess.run(command + args, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert second.returncode == 0 and "cached" in second.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "appliance", "engines", "list", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )
    assert listing.returncode == 0 and "mtcnn-rnet" in listing.stdout


def test_the_doctor_parity_check_passes(models_dir: Path, state_dir: Path, shared_data: Path) -> None:
    config = make_config(models_dir, state_dir)
    images = [shared_data / "multi_face" / "deepface_couple.jpg", shared_data / "antispoof" / "image_T1.jpg"]
    (check,) = check_tensorrt_parity(config, images)
    assert check.status == OK, check.detail
    assert "faces matched" in check.detail
