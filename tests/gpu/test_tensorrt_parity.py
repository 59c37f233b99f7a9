"""TensorRT against ONNX Runtime: the same real models, the same inputs, outputs within tolerance.

For every registry model an FP32 and an FP16 engine is built from the real ONNX file (once per
session, then loaded from the engine cache), and random and real inputs go through both back-ends.
The TensorRT back-end also passes the contract the CPU back-end passes: idempotent ``close()``,
:class:`InferenceError` after close and for wrong shapes, batches of 1 and of 8, and a batch larger
than the optimization profile's maximum (run in parts).

Tolerances: outputs are compared as ``max |trt - cpu| / max(1, max |cpu|)``, i.e. absolute for
probabilities and relative to the output's scale for logits, box offsets and embeddings.
FP32 engines are built without TF32 (see :mod:`engines.tensorrt.builder`), so only kernel choice and
summation order differ: 1e-3. FP16 keeps about three significant digits through each layer: 5e-2,
and an embedding must keep a cosine similarity of at least 0.995 to the FP32 CPU one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest

from engines.backends import BackendOptions, InferenceBackend, open_model
from engines.errors import InferenceError
from engines.registry import KIND_EMBEDDER, MODELS, ModelSpec
from engines.tensorrt.cache import EngineRequest, engine_path, lookup

pytestmark = pytest.mark.gpu

PRECISIONS = ("fp32", "fp16")
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.995}
MAX_BATCH = 8
MAX_FRAME = (480, 640)  # keeps the P-Net profile (and the build) small; the example input fits
SINGLE_IMAGE_STAGES = ("pnet", "detect")  # fully convolutional detectors: batch 1 profiles

Pair = Tuple[ModelSpec, str, InferenceBackend, InferenceBackend]


def trt_options(engine_dir: Path, precision: str) -> BackendOptions:
    return BackendOptions(
        precision=precision,
        engine_dir=str(engine_dir),
        max_batch=MAX_BATCH,
        max_frame=MAX_FRAME,
        min_face=20,
        yunet_max_side=640,
    )


def largest_batch(spec: ModelSpec) -> int:
    return 1 if spec.stage in SINGLE_IMAGE_STAGES else MAX_BATCH


def image_size(spec: ModelSpec) -> Tuple[int, int]:
    """The ``(height, width)`` of the images fed to ``spec`` here: its fixed size, or its example shape's."""
    pre = spec.preprocessing
    if pre.input_size is not None:
        return pre.input_size
    example = spec.inputs[0].example_shape
    if example is None:
        raise ValueError(f"{spec.name} has neither a fixed input size nor an example shape")
    first, second = (example[1], example[2]) if pre.layout == "NHWC" else (example[2], example[3])
    return (second, first) if pre.transpose_hw else (first, second)


def random_blob(spec: ModelSpec, batch: int, seed: int) -> np.ndarray:
    """``batch`` random uint8 images of the model's size, pre-processed: the input's real value range."""
    height, width = image_size(spec)
    images = np.random.default_rng(seed).integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8)
    return spec.preprocessing.to_blob(images)


def real_blob(spec: ModelSpec, images: List[np.ndarray], batch: int) -> np.ndarray:
    """``batch`` real photos resized to the model's size (no detection: the same pixels to both)."""
    import cv2

    height, width = image_size(spec)
    resized = [cv2.resize(images[i % len(images)], (width, height)) for i in range(batch)]
    return spec.preprocessing.to_blob(np.stack(resized))


def wrong_shape(spec: ModelSpec, blob: np.ndarray) -> np.ndarray:
    """``blob`` cut short on the first fixed axis after the batch (channels, or the fixed image size)."""
    for axis, dim in enumerate(spec.inputs[0].shape):
        if axis > 0 and dim is not None:
            return np.take(blob, range(dim - 1), axis=axis)
    raise ValueError(f"{spec.name} has no fixed axis to get wrong")


def assert_close(
    spec: ModelSpec, precision: str, ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray]
) -> None:
    for output in spec.outputs:
        expected, actual = ref[output.name], got[output.name]
        assert actual.dtype == np.float32, f"{spec.name} {output.name}: dtype {actual.dtype}"
        assert actual.shape == expected.shape, (
            f"{spec.name} {output.name}: {actual.shape} != {expected.shape}"
        )
        assert np.all(np.isfinite(actual)), f"{spec.name} {output.name}: non-finite TensorRT output"
        scale = max(1.0, float(np.max(np.abs(expected))))
        error = float(np.max(np.abs(actual - expected))) / scale
        assert error <= TOLERANCE[precision], (
            f"{spec.name} {precision} {output.name}: scaled max error {error:.2e} > {TOLERANCE[precision]:.0e}"
        )
    if spec.kind == KIND_EMBEDDER:
        name = spec.outputs[0].name
        a, b = ref[name], got[name]
        cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert float(cosine.min()) >= MIN_COSINE[precision], (
            f"{spec.name} {precision}: cosine {cosine.min():.5f}"
        )


@pytest.fixture(scope="session")
def real_images(shared_data: Path) -> List[np.ndarray]:
    """Eight real photos (BGR uint8), faces from several identities and the liveness samples."""
    cv2 = pytest.importorskip("cv2", reason="the real-image parity needs OpenCV (the cpu extra)")
    faces = sorted((shared_data / "faces").glob("*/*.jpg"))[:6]
    paths = faces + sorted((shared_data / "antispoof").glob("*.jpg"))[:2]
    images = [cv2.imread(str(path), cv2.IMREAD_COLOR) for path in paths]
    loaded = [image for image in images if image is not None]
    if len(loaded) < 4:
        pytest.fail(f"too few readable test images under {shared_data} ({len(loaded)} of {len(paths)})")
    return loaded


@pytest.fixture(
    scope="module",
    params=[(spec, precision) for spec in MODELS for precision in PRECISIONS],
    ids=[f"{spec.name}-{precision}" for spec in MODELS for precision in PRECISIONS],
)
def pair(request: pytest.FixtureRequest, models_dir: Path, engine_dir: Path) -> Iterator[Pair]:
    """The CPU back-end and a TensorRT back-end at one precision, for one model."""
    spec, precision = request.param
    cpu = open_model("cpu", spec, models_dir)
    try:
        accelerated = open_model("tensorrt", spec, models_dir, trt_options(engine_dir, precision))
    except BaseException:
        cpu.close()
        raise
    yield spec, precision, cpu, accelerated
    accelerated.close()
    cpu.close()


def test_random_inputs_match(pair: Pair) -> None:
    spec, precision, cpu, accelerated = pair
    for seed, batch in enumerate(sorted({1, largest_batch(spec)})):
        blob = random_blob(spec, batch, seed)
        assert_close(spec, precision, cpu.run(blob), accelerated.run(blob))


def test_real_inputs_match(pair: Pair, real_images: List[np.ndarray]) -> None:
    spec, precision, cpu, accelerated = pair
    for batch in sorted({1, largest_batch(spec)}):
        blob = real_blob(spec, real_images, batch)
        assert_close(spec, precision, cpu.run(blob), accelerated.run(blob))


def test_outputs_are_not_views_of_the_buffers(pair: Pair) -> None:
    spec, _precision, _cpu, accelerated = pair
    first = accelerated.run(random_blob(spec, 1, 11))
    kept = {name: array.copy() for name, array in first.items()}
    accelerated.run(random_blob(spec, 1, 12))
    for name, array in first.items():
        np.testing.assert_array_equal(array, kept[name])


def test_engine_is_cached_with_its_manifest(pair: Pair, engine_dir: Path, models_dir: Path) -> None:
    spec, precision, _cpu, accelerated = pair
    manifest = accelerated.manifest  # type: ignore[attr-defined]
    assert manifest is not None and manifest.model == spec.name
    assert manifest.requested_precision == precision
    assert manifest.precision == precision or (precision == "fp16" and manifest.precision == "fp32"), (
        manifest.precision_reason
    )
    assert engine_path(engine_dir, spec.name, manifest.key).is_file()
    request = EngineRequest(
        spec.name, manifest.onnx_sha256, manifest.platform, precision, None, manifest.profiles, None
    )
    assert lookup(engine_dir, request, verify_digest=True).hit
    # A second back-end loads the cached engine and computes the same thing.
    blob = random_blob(spec, 1, 21)
    with open_model("tensorrt", spec, models_dir, trt_options(engine_dir, precision)) as again:
        assert again.manifest == manifest  # type: ignore[attr-defined]
        assert_close(spec, "fp32", accelerated.run(blob), again.run(blob))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("spec", MODELS, ids=[spec.name for spec in MODELS])
def test_backend_contract(spec: ModelSpec, precision: str, models_dir: Path, engine_dir: Path) -> None:
    good = random_blob(spec, 1, 0)
    backend = open_model("tensorrt", spec, models_dir, trt_options(engine_dir, precision))
    try:
        backend.warmup()
        for batch in sorted({1, largest_batch(spec)}):
            outputs = backend.run(random_blob(spec, batch, batch))
            assert list(outputs) == [out.name for out in spec.outputs]
            assert all(array.shape[0] == batch for array in outputs.values())
        with pytest.raises(InferenceError):
            backend.run(wrong_shape(spec, good))
        with pytest.raises(InferenceError):
            backend.run(good.reshape(good.shape[1:]))  # wrong rank
        # A batch beyond the profile's maximum is run in parts, as the CPU back-end would take it.
        too_many = largest_batch(spec) + 1
        single = backend.run(good)
        split = backend.run(np.repeat(good, too_many, axis=0))
        for name, array in split.items():
            assert array.shape[0] == too_many
            np.testing.assert_allclose(array, np.repeat(single[name], too_many, axis=0), rtol=1e-5, atol=1e-5)
        if spec.stage == "pnet":
            with pytest.raises(InferenceError, match="profile"):
                backend.run(np.zeros((1, 8, 8, 3), np.float32))  # below one 12x12 cell
    finally:
        backend.close()
    assert backend.closed
    backend.close()  # idempotent
    with pytest.raises(InferenceError, match="closed"):
        backend.run(good)
