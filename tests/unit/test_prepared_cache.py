"""Prepared ONNX models cached between processes (``engines.prepare.load_model_bytes`` with a
``cache_dir``): the second load reads the cache and never runs the edit (so never imports ``onnx``),
a damaged cached file is prepared again, a cache that cannot be written costs nothing but the
cache, and a model without preparation steps is never cached."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import pytest

from engines import prepare
from engines.registry import get_model
from engines.store import ModelStore


@pytest.fixture(autouse=True)
def fresh_process_cache() -> Iterator[None]:
    """Each load as in a new process: the in-memory cache is emptied before and after."""
    prepare._prepared_cached.cache_clear()
    yield
    prepare._prepared_cached.cache_clear()


@pytest.fixture(scope="module")
def embedder(shared_models: Path) -> Path:
    return ModelStore(shared_models).require(get_model("mobilefacenet"))


def _no_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(model_bytes: bytes, dim_name: str = prepare.BATCH_DIM_NAME) -> bytes:
        raise AssertionError("the model was prepared again instead of read from the cache")

    monkeypatch.setattr(prepare, "make_batch_dynamic", refuse)


def test_the_second_load_reads_the_cache(
    tmp_path: Path, embedder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = get_model("mobilefacenet")
    cache = tmp_path / "prepared"
    first = prepare.load_model_bytes(spec, embedder, cache)
    assert first == prepare.prepare_bytes(spec, embedder.read_bytes())
    files = sorted(path.name for path in cache.iterdir())
    assert len(files) == 2 and files[0].startswith("mobilefacenet-") and files[1] == files[0] + ".sha256"
    prepare._prepared_cached.cache_clear()
    _no_edit(monkeypatch)
    assert prepare.load_model_bytes(spec, embedder, cache) == first


def test_a_damaged_cached_model_is_prepared_again(
    tmp_path: Path, embedder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = get_model("mobilefacenet")
    cache = tmp_path / "prepared"
    good = prepare.load_model_bytes(spec, embedder, cache)
    (cached,) = cache.glob("*.onnx")
    cached.write_bytes(good[:1000])  # torn
    prepare._prepared_cached.cache_clear()
    with caplog.at_level(logging.WARNING, logger="engines.prepare"):
        assert prepare.load_model_bytes(spec, embedder, cache) == good
    assert "does not match its checksum" in caplog.text
    assert cached.read_bytes() == good  # written again


def test_an_unwritable_cache_is_skipped(tmp_path: Path, embedder: Path) -> None:
    spec = get_model("mobilefacenet")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    prepared = prepare.load_model_bytes(spec, embedder, blocker / "prepared")
    assert prepared == prepare.prepare_bytes(spec, embedder.read_bytes())


def test_models_without_steps_are_not_cached(tmp_path: Path, shared_models: Path) -> None:
    spec = get_model("mtcnn-pnet")
    path = ModelStore(shared_models).require(spec)
    assert prepare.load_model_bytes(spec, path, tmp_path / "prepared") == path.read_bytes()
    assert not (tmp_path / "prepared").exists()
