"""TensorRT around the edges, on a machine without it: ``engines build`` and ``doctor`` say why they
cannot, ``engines list`` reads the cache, and the CPU-vs-TensorRT parity comparison works (compared
here between two CPU pipelines on real photos, where TensorRT is absent; the ``gpu`` suite runs it
against real engines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.doctor import OK, check_tensorrt_parity
from appliance.runtime.loading import load_analyzer
from appliance.trt_parity import compare
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from engines.registry import get_model
from engines.tensorrt.cache import EngineRequest, EngineTensor, PlatformInfo, make_manifest, store
from engines.tensorrt.platform import tensorrt_unavailable
from tests.conftest import REPO_ROOT

NO_TENSORRT = tensorrt_unavailable()
needs_no_tensorrt = pytest.mark.skipif(
    NO_TENSORRT is None, reason="TensorRT is installed here: the build runs for real (gpu suite)"
)


def cli(*args: str) -> subprocess.CompletedProcess:
    command: List[str] = [sys.executable, "-m", "appliance", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False)


def write_config(tmp_path: Path, models_dir: Path) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[models]\ndir = "{models_dir}"\n[storage]\ndir = "{tmp_path / "state"}"\n')
    return path


@needs_no_tensorrt
def test_engines_build_says_tensorrt_is_unavailable(tmp_path: Path, shared_models: Path) -> None:
    result = cli("engines", "build", "--config", str(write_config(tmp_path, shared_models)))
    assert result.returncode == 1
    assert "TensorRT unavailable: cannot import tensorrt" in result.stderr
    assert "nvidia-jetpack" in result.stderr
    assert "Traceback" not in result.stderr
    for args in (["engines", "--help"], ["engines", "build", "--help"], ["engines", "list", "--help"]):
        assert cli(*args).returncode == 0


def test_engines_list_reads_the_manifests(tmp_path: Path, shared_models: Path) -> None:
    config = write_config(tmp_path, shared_models)
    engines = tmp_path / "state" / "engines"
    orin = PlatformInfo("8.5.2.2", "Orin", (8, 7), "35.4.1")
    request = EngineRequest("mobilefacenet", "ab" * 32, orin, "auto")
    engine = b"serialized engine bytes stand in here" * 1000
    tensors = [EngineTensor("input", "input", (-1, 3, 112, 112), "float32")]
    store(engines, make_manifest(request, engine, tensors, "int8", "INT8 (auto)", "dla:0"), engine)
    result = cli("engines", "list", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"engine cache: {engines}" in result.stdout
    line = next(row for row in result.stdout.splitlines() if row.startswith("mobilefacenet"))
    assert "INT8" in line and "dla:0" in line and request.key in line and "TensorRT 8.5.2.2 on Orin" in line

    (engines / "mobilefacenet" / "broken.json").write_text("{not json")
    broken = cli("engines", "list", "--dir", str(engines))
    assert broken.returncode == 1 and "unusable manifest" in broken.stderr


@needs_no_tensorrt
def test_doctor_skips_the_parity_check_with_the_reason(tmp_path: Path, shared_models: Path) -> None:
    config = validate_config({"models": {"dir": str(shared_models)}, "storage": {"dir": str(tmp_path)}})
    (check,) = check_tensorrt_parity(config)
    assert check.status == OK
    assert check.detail.startswith("skipped: TensorRT unavailable: cannot import tensorrt")


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> List[Tuple[str, np.ndarray]]:
    names = ["multi_face/deepface_couple.jpg", "multi_face/faceapi_bbt1.jpg", "no_face/faceapi_white.png"]
    return [(name, read_image(shared_data / name)) for name in names]


def pipeline(models: Path, state: Path, **detector: object) -> FaceAnalyzer:
    return load_analyzer(
        validate_config(
            {"models": {"dir": str(models)}, "storage": {"dir": str(state)}, "detector": dict(detector)}
        )
    )


def test_parity_of_identical_pipelines(
    tmp_path: Path, shared_models: Path, photos: List[Tuple[str, np.ndarray]]
) -> None:
    with pipeline(shared_models, tmp_path) as first, pipeline(shared_models, tmp_path) as second:
        result = compare(first, second, photos)
    assert result.ok, result.problems
    assert result.images == 3 and result.faces >= 6 and result.matched == result.faces
    assert result.worst_iou == pytest.approx(1.0)
    assert result.embeddings == result.faces and result.worst_cosine == pytest.approx(1.0, abs=1e-6)
    assert f"{result.faces}/{result.faces} faces matched" in result.describe()


def test_parity_reports_disagreeing_pipelines(
    tmp_path: Path, shared_models: Path, photos: List[Tuple[str, np.ndarray]]
) -> None:
    # A pipeline that misses the small faces stands in for an engine that lost accuracy.
    with pipeline(shared_models, tmp_path) as first, pipeline(
        shared_models, tmp_path, min_face_px=400
    ) as blind:
        result = compare(first, blind, photos[:2])
    assert not result.ok
    assert result.matched < result.faces
    assert any("the CPU back-end finds" in problem for problem in result.problems)
    assert any("have no TensorRT face with IoU >= 0.8" in problem for problem in result.problems)


def test_parity_without_images_compares_the_embedders(tmp_path: Path, shared_models: Path) -> None:
    with pipeline(shared_models, tmp_path) as first, pipeline(shared_models, tmp_path) as second:
        result = compare(first, second, [])
    assert result.ok and result.images == 0 and result.embeddings == 8
    assert "8 embeddings" in result.describe()
    assert get_model("mobilefacenet").embedding_dim == first.embedder.dim
