"""ONNX preparation: the dynamic-batch models give the original's outputs on real faces."""

from __future__ import annotations

from pathlib import Path
from typing import List

import cv2
import numpy as np
import onnx
import pytest

from engines.errors import ModelPreparationError
from engines.prepare import compare_batched, make_batch_dynamic, prepare_bytes
from engines.registry import get_model

FACE_IMAGES = [
    "aligned_160/fnp_angelina_jolie.png",
    "aligned_160/fnp_bradley_cooper.png",
    "aligned_160/fnp_kate_siegel.png",
    "aligned_160/fnp_paul_rudd.png",
    "aligned_160/fnp_shea_whigham.png",
    "antispoof/image_T1.jpg",
    "antispoof/image_F1.jpg",
    "faces/fr_obama/obama.jpg",
]


def _real_batch(shared_data: Path, size: int) -> np.ndarray:
    """Eight real photos, centre-cropped to a square and resized: (8, size, size, 3) uint8 BGR."""
    images: List[np.ndarray] = []
    for relative in FACE_IMAGES:
        image = cv2.imread(str(shared_data / relative), cv2.IMREAD_COLOR)
        assert image is not None, relative
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        images.append(cv2.resize(image[top : top + side, left : left + side], (size, size)))
    return np.stack(images)


@pytest.mark.parametrize("name", ["mobilefacenet", "minifasnet-v2", "minifasnet-v1se"])
def test_batch_of_8_real_faces_equals_one_by_one(name: str, shared_models: Path, shared_data: Path) -> None:
    spec = get_model(name)
    original = (shared_models / spec.file).read_bytes()
    prepared = prepare_bytes(spec, original)
    height, width = spec.preprocessing.input_size or (0, 0)
    blob = spec.preprocessing.to_blob(_real_batch(shared_data, height))
    assert blob.shape == (8, 3, height, width)
    worst, outputs = compare_batched(original, prepared, inputs=blob)
    assert worst < 1e-5
    output = outputs[spec.outputs[0].name]
    assert output.shape[0] == 8
    # Different faces give different outputs: the batch really carried eight samples.
    assert len({np.round(row, 3).tobytes() for row in output}) == 8


def test_prepared_graph_has_a_symbolic_batch(shared_models: Path) -> None:
    spec = get_model("mobilefacenet")
    model = onnx.load_from_string(prepare_bytes(spec, (shared_models / spec.file).read_bytes()))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 112, 112]


def test_not_onnx_is_a_preparation_error() -> None:
    with pytest.raises(ModelPreparationError, match="not a readable ONNX model"):
        make_batch_dynamic(b"\x00\x01garbage")


def test_a_fixed_batch_other_than_one_is_refused() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    model = helper.make_model(graph)
    with pytest.raises(ModelPreparationError, match="batch 2"):
        make_batch_dynamic(model.SerializeToString())
