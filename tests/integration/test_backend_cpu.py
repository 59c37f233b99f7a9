"""The back-end contract, run on the ONNX Runtime CPU back-end with every real model.

The same contract runs on TensorRT in tests/gpu (on a device).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from engines.backends import InferenceBackend, backend_class, open_model
from engines.backends.cpu import OnnxRuntimeBackend
from engines.errors import BackendUnavailableError, EngineLoadError, InferenceError, ModelMissingError
from engines.registry import MODELS, ModelSpec, get_model


@pytest.fixture(params=MODELS, ids=lambda spec: spec.name)
def loaded(request: pytest.FixtureRequest, shared_models: Path) -> Iterator[InferenceBackend]:
    backend = open_model("cpu", request.param, shared_models)
    yield backend
    backend.close()


def _inputs(spec: ModelSpec, batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {t.name: rng.uniform(-1, 1, t.concrete_shape(batch)).astype(np.float32) for t in spec.inputs}


class TestBackendContract:
    def test_io_matches_the_registry(self, loaded: InferenceBackend) -> None:
        assert [t.name for t in loaded.inputs] == [t.name for t in loaded.spec.inputs]
        assert [t.name for t in loaded.outputs] == [t.name for t in loaded.spec.outputs]

    @pytest.mark.parametrize("batch", [1, 3, 8])
    def test_batches_come_back_batch_first(self, loaded: InferenceBackend, batch: int) -> None:
        outputs = loaded.run(_inputs(loaded.spec, batch))
        assert list(outputs) == [t.name for t in loaded.spec.outputs]
        for tensor in loaded.spec.outputs:
            array = outputs[tensor.name]
            assert array.dtype == np.float32
            assert array.shape[0] == batch
            assert all(want is None or want == got for want, got in zip(tensor.shape, array.shape))
            assert np.isfinite(array).all()

    def test_same_input_same_output(self, loaded: InferenceBackend) -> None:
        feeds = _inputs(loaded.spec, 2, seed=7)
        first = loaded.run(feeds)
        second = loaded.run(feeds)
        for name in first:
            np.testing.assert_array_equal(first[name], second[name])

    def test_bare_array_and_non_contiguous_float64_input(self, loaded: InferenceBackend) -> None:
        (tensor,) = loaded.spec.inputs
        data = np.random.default_rng(1).uniform(-1, 1, tensor.concrete_shape(2))
        as_mapping = loaded.run({tensor.name: data.astype(np.float32)})
        as_array = loaded.run(np.asfortranarray(data))  # float64, Fortran order: converted
        for name in as_mapping:
            np.testing.assert_allclose(as_mapping[name], as_array[name], rtol=1e-6, atol=1e-6)

    def test_wrong_inputs_are_refused_with_the_reason(self, loaded: InferenceBackend) -> None:
        (tensor,) = loaded.spec.inputs
        shape = tensor.concrete_shape(1)
        with pytest.raises(InferenceError, match="cannot take an array of shape"):
            loaded.run(np.zeros(shape[:-1], np.float32))
        with pytest.raises(InferenceError, match="unknown"):
            loaded.run({"nope": np.zeros(shape, np.float32)})
        with pytest.raises(InferenceError, match="cannot take"):
            loaded.run(np.zeros((0, *shape[1:]), np.float32))
        fixed_axes = [axis for axis, dim in enumerate(tensor.shape) if dim is not None]
        if fixed_axes:
            wrong = list(shape)
            wrong[fixed_axes[-1]] += 1
            with pytest.raises(InferenceError, match=tensor.name):
                loaded.run(np.zeros(wrong, np.float32))

    def test_warmup_and_idempotent_close(self, loaded: InferenceBackend) -> None:
        loaded.warmup(iterations=1, batch=2)
        loaded.close()
        loaded.close()
        assert loaded.closed
        with pytest.raises(InferenceError, match="closed"):
            loaded.run(_inputs(loaded.spec, 1))


def test_context_manager_closes(shared_models: Path) -> None:
    with open_model("cpu", get_model("mtcnn-rnet"), shared_models) as backend:
        assert not backend.closed
    assert backend.closed


def test_tensorrt_without_tensorrt_is_a_clear_unavailable_error() -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(
        BackendUnavailableError, match=r"TensorRT back-end unavailable: No module named .tensorrt"
    ) as caught:
        backend_class("tensorrt")
    assert isinstance(caught.value, NotImplementedError)
    assert "JetPack" in str(caught.value)


def test_unknown_backend() -> None:
    with pytest.raises(BackendUnavailableError, match="known back-ends: cpu, tensorrt"):
        backend_class("openvino")


def test_fixed_batch_original_is_refused_with_a_hint(shared_models: Path) -> None:
    spec = get_model("mobilefacenet")
    original = (shared_models / spec.file).read_bytes()
    with pytest.raises(EngineLoadError, match=r"fixes axis 0 to 1.*dynamic batch"):
        OnnxRuntimeBackend(spec, original)


def test_model_with_other_io_is_refused(shared_models: Path) -> None:
    pnet = (shared_models / get_model("mtcnn-pnet").file).read_bytes()
    with pytest.raises(EngineLoadError, match="'input0' is absent"):
        OnnxRuntimeBackend(get_model("mobilefacenet"), pnet)


def test_garbage_bytes_are_a_load_error() -> None:
    with pytest.raises(EngineLoadError, match="ONNX Runtime cannot load"):
        OnnxRuntimeBackend(get_model("mtcnn-rnet"), b"this is not onnx")


def test_missing_model_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="face-appliance models fetch mobilefacenet"):
        open_model("cpu", get_model("mobilefacenet"), tmp_path)
