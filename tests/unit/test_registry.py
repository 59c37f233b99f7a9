"""The model registry: complete, consistent, and its pre-processing does what MANIFEST.md says."""

from __future__ import annotations

import re

import numpy as np
import pytest

from engines.errors import ModelRegistryError
from engines.registry import KIND_EMBEDDER, MODELS, get_model, required_models, select_models


def test_every_model_the_appliance_knows_is_registered() -> None:
    assert {spec.name for spec in MODELS} == {
        "mtcnn-pnet",
        "mtcnn-rnet",
        "mtcnn-onet",
        "mobilefacenet",
        "yunet",
        "minifasnet-v2",
        "minifasnet-v1se",
    }


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_entries_are_complete(spec) -> None:  # type: ignore[no-untyped-def]
    assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
    assert spec.size > 0
    commit = re.search(r"/([0-9a-f]{40})/", spec.url)
    assert spec.url.startswith("https://raw.githubusercontent.com/") and commit, spec.url
    assert commit.group(1) in spec.source
    assert spec.inputs and spec.outputs
    assert spec.preprocessing.color in ("RGB", "BGR") and spec.preprocessing.layout in ("NCHW", "NHWC")
    assert spec.license


def test_files_are_unique_and_lookup_works() -> None:
    assert len({spec.file for spec in MODELS}) == len(MODELS)
    assert get_model("yunet").family == "yunet"
    with pytest.raises(ModelRegistryError, match="known models: mtcnn-pnet"):
        get_model("arcface")
    assert [s.name for s in select_models(["mobilefacenet", "mtcnn-pnet", "mtcnn-pnet"])] == [
        "mtcnn-pnet",
        "mobilefacenet",
    ]


def test_embedding_dimension_comes_from_the_registry() -> None:
    embedder = get_model("mobilefacenet")
    assert embedder.kind == KIND_EMBEDDER and embedder.embedding_dim == 128
    assert get_model("mtcnn-onet").embedding_dim is None


def test_required_models_follow_the_pipeline() -> None:
    assert [s.name for s in required_models("mtcnn", "mobilefacenet", False)] == [
        "mtcnn-pnet",
        "mtcnn-rnet",
        "mtcnn-onet",
        "mobilefacenet",
    ]
    assert [s.name for s in required_models("yunet", "mobilefacenet", True)] == [
        "mobilefacenet",
        "yunet",
        "minifasnet-v2",
        "minifasnet-v1se",
    ]


def test_mtcnn_preprocessing_is_rgb_scaled_and_transposed() -> None:
    image = np.zeros((1, 2, 3, 3), np.uint8)  # H=2, W=3, BGR
    image[0, 0, 2] = (10, 20, 255)  # pixel (row 0, col 2): B=10, G=20, R=255
    blob = get_model("mtcnn-rnet").preprocessing.to_blob(image)
    assert blob.shape == (1, 3, 2, 3)  # transposed: (N, W, H, C)
    np.testing.assert_allclose(blob[0, 2, 0], [(255 - 127.5) / 128, (20 - 127.5) / 128, (10 - 127.5) / 128])


def test_embedder_preprocessing_is_imagenet_normalised_nchw_rgb() -> None:
    image = np.full((2, 4, 4, 3), 255, np.uint8)
    blob = get_model("mobilefacenet").preprocessing.to_blob(image)
    assert blob.shape == (2, 3, 4, 4) and blob.dtype == np.float32
    np.testing.assert_allclose(
        blob[0, :, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-6
    )


def test_liveness_preprocessing_is_raw_bgr() -> None:
    image = np.random.default_rng(0).integers(0, 256, (1, 80, 80, 3), dtype=np.uint8)
    blob = get_model("minifasnet-v2").preprocessing.to_blob(image)
    np.testing.assert_array_equal(blob[0], image[0].transpose(2, 0, 1).astype(np.float32))


def test_to_blob_refuses_non_images() -> None:
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        get_model("yunet").preprocessing.to_blob(np.zeros((4, 4, 3), np.uint8))


def test_single_image_fast_path_equals_the_batch_path() -> None:
    pre = get_model("mtcnn-pnet").preprocessing
    image = np.random.default_rng(2).integers(0, 256, (1, 37, 53, 3), dtype=np.uint8)
    single = pre.to_blob(image)
    batched = pre.to_blob(np.concatenate([image, image]))[:1]
    assert single.shape == (1, 53, 37, 3) and single.flags.c_contiguous
    np.testing.assert_array_equal(single, batched)


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_normalize_is_the_documented_arithmetic_to_the_bit(spec) -> None:  # type: ignore[no-untyped-def]
    """``(pixel * input_scale - mean) / std`` as float32 arithmetic, whether :meth:`normalize` runs it
    or reads it from its look-up table (contiguous channel-alike NHWC input)."""
    pre = spec.preprocessing
    pixels = np.random.default_rng(3).integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
    pixels[0, 0, :4] = [[0, 0, 0], [255, 255, 255], [127, 128, 129], [1, 2, 254]]
    std = np.asarray(pre.std, np.float32)
    scale = (np.float32(pre.input_scale) / std).reshape(1, 1, 1, 3)
    offset = (-np.asarray(pre.mean, np.float32) / std).reshape(1, 1, 1, 3)
    for arranged in (pixels, pixels.transpose(0, 2, 1, 3)):  # contiguous, and a strided view
        expected = arranged.astype(np.float32) * scale + offset
        if pre.layout == "NCHW":
            expected = expected.transpose(0, 3, 1, 2)
        got = pre.normalize(arranged)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        # Bit patterns: -0.0 and 0.0 differ there.
        np.testing.assert_array_equal(got.view(np.uint32), np.ascontiguousarray(expected).view(np.uint32))


def test_normalize_refuses_what_is_not_uint8_pixels() -> None:
    pre = get_model("mtcnn-pnet").preprocessing
    with pytest.raises(ValueError, match="uint8"):
        pre.normalize(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(1, 4, 4\)"):
        pre.normalize(np.zeros((1, 4, 4), np.uint8))
