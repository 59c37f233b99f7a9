"""FP16 ONNX models made on the device (TensorRT 11's FP16 path) against FP32, on the real models and
images, on the CPU back-end.

TensorRT 11 builds strongly typed networks only, so an FP16 engine needs an FP16 ONNX model:
:func:`engines.tensorrt.fp16.convert` makes it from the registry's FP32 model with
``onnxconverter-common`` (inputs and outputs stay float32). Here ONNX Runtime runs the converted
MobileFaceNet and MTCNN O-Net — and the pipeline with them — against the FP32 models, the way the
INT8 (Q/DQ) models are checked in ``test_int8.py``:

* on what each network is fed in the appliance: O-Net's 48×48 crops and the embedder's aligned faces
  from real photos and video frames (:func:`calibration.sets.build_sets`, the calibration-set
  builder, which records those inputs from the FP32 pipeline);
* end to end on the labelled faces (:func:`calibration.report.compare`): the same faces found, the
  embeddings' cosine, and TAR at FAR 1e-3.

The bounds are a margin under what was measured (O-Net face probability within 0.004, every decision
the same; embedding cosine ≥ 0.99989, mean 0.999993; the pipeline: every face matched, TAR at FAR 1e-3
equal). ONNX Runtime's FP16 kernels are not TensorRT's; the ``gpu`` suite checks TensorRT's engines.
Nothing is mocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np
import onnx
import pytest

from appliance.calibration_inputs import labelled_items, vision_side
from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from calibration.interfaces import VisionSide
from calibration.report import Comparison, compare, open_pipelines
from calibration.sets import build_sets, load_set
from engines.backends import open_model
from engines.backends.cpu import OnnxRuntimeBackend
from engines.prepare import load_model_bytes
from engines.registry import get_model
from engines.store import ModelStore
from engines.tensorrt.fp16 import convert, converter_version

CONVERTED = ("mtcnn-onet", "mobilefacenet")
SOURCES = ("multi_face", "video")
MAX_COUNT = 200
LABELS = "faces_identities.csv"

pytestmark = pytest.mark.skipif(
    converter_version() is None,
    reason="onnxconverter-common is not installed (pip install 'face-appliance[dev]')",
)


@dataclass
class Converted:
    config: ApplianceConfig
    vision: VisionSide
    fp32: Dict[str, bytes]
    fp16: Dict[str, bytes]
    sets_dir: Path


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, shared_models: Path, shared_data: Path) -> Converted:
    root = tmp_path_factory.mktemp("fp16")
    config = validate_config({"models": {"dir": str(shared_models)}, "storage": {"dir": str(root / "state")}})
    vision = vision_side(config)
    fp32 = {
        name: load_model_bytes(get_model(name), ModelStore(shared_models).require(get_model(name)))
        for name in CONVERTED
    }
    fp16 = {name: convert(fp32[name], name) for name in CONVERTED}
    sets_dir = root / "inputs"
    build_sets(vision, [shared_data / sub for sub in SOURCES], list(CONVERTED), sets_dir, MAX_COUNT)
    return Converted(config, vision, fp32, fp16, sets_dir)


@pytest.fixture(scope="module")
def comparison(converted: Converted, shared_data: Path) -> Comparison:
    items = labelled_items(shared_data, shared_data / LABELS)
    fp32, fp16, backends = open_pipelines(converted.vision, converted.fp16, liveness=False)
    try:
        return compare(converted.vision, fp32, fp16, items, list(CONVERTED))
    finally:
        for backend in backends:
            backend.close()


def _run_both(converted: Converted, name: str) -> tuple:
    """The FP32 and FP16 outputs of ``name`` on its real inputs."""
    spec = get_model(name)
    inputs = load_set(converted.sets_dir, name)
    with open_model("cpu", spec, converted.config.models.dir) as fp32, OnnxRuntimeBackend(
        spec, converted.fp16[name]
    ) as fp16:
        return inputs, fp32.run(inputs), fp16.run(inputs)


def test_the_converted_models_compute_in_fp16_with_float32_inputs_and_outputs(converted: Converted) -> None:
    for name in CONVERTED:
        model = onnx.load_from_string(converted.fp16[name])
        onnx.checker.check_model(model)
        reference = onnx.load_from_string(converted.fp32[name])
        float_type = onnx.TensorProto.FLOAT
        for got, want in (
            (model.graph.input, reference.graph.input),
            (model.graph.output, reference.graph.output),
        ):
            assert [v.name for v in got] == [v.name for v in want], name
            assert all(v.type.tensor_type.elem_type == float_type for v in got), name
        weights = [
            init
            for init in model.graph.initializer
            if init.data_type in (float_type, onnx.TensorProto.FLOAT16)
        ]
        halves = sum(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
        assert halves == len(weights), f"{name}: {len(weights) - halves} float32 weights left"
        assert sum(node.op_type == "Cast" for node in model.graph.node) >= 2  # at the float32 edges
        assert len(converted.fp16[name]) < 0.7 * len(converted.fp32[name])
        # Deterministic: the engine cache keys the FP16 model by the FP32 model and the converter release.
        assert convert(converted.fp32[name], name) == converted.fp16[name]


def test_fp16_onet_matches_fp32_on_its_real_inputs(converted: Converted) -> None:
    crops, fp32, fp16 = _run_both(converted, "mtcnn-onet")
    assert len(crops) >= 100, "too few O-Net crops from ../shared/data"
    threshold = converted.config.detector.mtcnn.thresholds[2]
    face32, face16 = fp32["softmax_2"][:, 1], fp16["softmax_2"][:, 1]
    assert np.abs(face32 - face16).max() <= 0.02
    assert ((face32 >= threshold) == (face16 >= threshold)).mean() >= 0.995
    for output in ("dense_5", "dense_6"):  # box regression and landmarks, in units of the crop
        assert np.abs(fp32[output] - fp16[output]).max() <= 0.005, output


def test_fp16_mobilefacenet_matches_fp32_on_real_faces(converted: Converted) -> None:
    faces, fp32, fp16 = _run_both(converted, "mobilefacenet")
    assert len(faces) >= 50, "too few aligned faces from ../shared/data"
    (name,) = fp32
    first = fp32[name] / np.linalg.norm(fp32[name], axis=1, keepdims=True)
    second = fp16[name] / np.linalg.norm(fp16[name], axis=1, keepdims=True)
    cosine = np.sum(first * second, axis=1)
    assert cosine.mean() >= 0.9999 and cosine.min() >= 0.999


def test_the_pipeline_with_fp16_models_finds_the_same_faces_and_people(comparison: Comparison) -> None:
    detection = comparison.document["detection"]
    assert detection["fp32_faces"] >= 100 and detection["agreement"] >= 0.99
    embedder = comparison.document["embedder"]
    assert embedder["faces"] >= 95
    assert embedder["cosine"]["mean"] >= 0.9999 and embedder["cosine"]["min"] >= 0.999
    fp32, fp16 = embedder["fp32"]["tar_at_far"], embedder["int8"]["tar_at_far"]  # "int8": the candidate
    assert fp32["0.001"] is not None and fp16["0.001"] is not None
    assert abs(fp16["0.001"] - fp32["0.001"]) <= 0.005
