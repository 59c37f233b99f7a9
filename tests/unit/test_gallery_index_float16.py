"""Templates stored as float16, exact and HNSW (issue 16, part 4): the appliance's default.

Float16 halves the bytes an exact scan reads; every score stays within 2⁻¹¹ of float32's, so the
top-1 is float32's wherever float32's best two templates are further apart than twice that.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from appliance.gallery.index import (
    FLOAT16_SCORE_BOUND,
    FORMAT_VERSION,
    IndexCorruptError,
    IndexStaleError,
    TemplateIndex,
    measure_recall,
    probe_queries,
    read_snapshot_header,
)
from tests.unit.test_gallery_index import MODEL, D, identities, some_ids, unit


def fresh_captures(n: int, count: int, seed: int = 7, per_identity: int = 3) -> np.ndarray:
    """New captures of enrolled identities of :func:`identities`: the same centres, fresh noise."""
    rng = np.random.default_rng(1)  # identities()'s seed: the same centres
    centres = unit(rng.standard_normal(((n + per_identity - 1) // per_identity, D)))
    pick = np.random.default_rng(seed).integers(0, centres.shape[0], count)
    noise = np.random.default_rng(seed + 1).standard_normal((count, D)) * (0.75 / np.sqrt(D))
    return unit(centres[pick] + noise)


def test_float16_has_float32s_top_1_and_scores_within_the_bound() -> None:
    x, ids = identities(30_000), some_ids(30_000)
    queries = np.concatenate([fresh_captures(30_000, 800), probe_queries(x, 200, seed=3)])
    single = TemplateIndex.build(D, ids, x)
    half = TemplateIndex.build(D, ids, x, precision="float16")
    assert (single.precision, half.precision, half.kind) == ("float32", "float16", "exact")
    scores32, found32 = single.search(queries, 10)
    scores16, found16 = half.search(queries, 10)
    clear = scores32[:, 0] - scores32[:, 1] > 2 * FLOAT16_SCORE_BOUND
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(found16[clear, 0], found32[clear, 0])
    # every score the float16 index reports is within the bound of the true (float32) inner product
    assert np.abs(scores16 - _exact_scores(x, ids, queries, found16)).max() <= FLOAT16_SCORE_BOUND + 1e-6


def _exact_scores(x: np.ndarray, ids: np.ndarray, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(q, k): the float32 inner product of each query with each template found."""
    order = np.argsort(ids)
    rows = order[np.searchsorted(ids[order], found)]
    return np.einsum("qd,qkd->qk", queries, unit(x)[rows])


def test_float16_scores_stay_within_the_bound_on_every_rank() -> None:
    x, ids = identities(5000, seed=4), some_ids(5000)
    queries = probe_queries(x, 300, seed=5)
    scores, found = TemplateIndex.build(D, ids, x, precision="float16").search(queries, 5)
    assert np.abs(scores - _exact_scores(x, ids, queries, found)).max() <= FLOAT16_SCORE_BOUND + 1e-6


def test_float16_hnsw_reaches_recall_at_1_of_0_99_in_half_the_memory(tmp_path: Path) -> None:
    x, ids = identities(20_000), some_ids(20_000)
    half = TemplateIndex.build(D, ids, x, approximate_above=1000, precision="float16", recall_sample=500)
    assert half.kind == "hnsw" and isinstance(faiss.downcast_index(half._index.index), faiss.IndexHNSWSQ)
    assert half.recall_at_1 is not None and half.recall_at_1 >= 0.99
    assert measure_recall(half, x, ids, fresh_captures(20_000, 1000), k=1) >= 0.99
    # The memory, on graphs of 2 000 (a float32 graph of 20 000 would take as long again to build).
    sizes = [
        TemplateIndex.build(
            D, ids[:2000], x[:2000], approximate_above=1000, precision=precision, recall_sample=0
        ).save(tmp_path / precision, MODEL, 1)
        for precision in ("float16", "float32")
    ]
    assert sizes[0] < sizes[1] - 2000 * D  # 2 bytes per value saved on each template


@pytest.mark.parametrize("approximate_above", [10_000, 1000], ids=["exact", "hnsw"])
def test_float16_save_load_round_trip(tmp_path: Path, approximate_above: int) -> None:
    x, ids = identities(2000), some_ids(2000)
    q = probe_queries(x, 100)
    index = TemplateIndex.build(
        D, ids, x, approximate_above=approximate_above, precision="float16", recall_sample=0
    )
    path = tmp_path / "gallery.index"
    index.save(path, MODEL, 4)
    header = read_snapshot_header(path)
    assert header["format"] == FORMAT_VERSION and len(header["snapshot_id"]) == 32
    loaded = TemplateIndex.load(path, MODEL, 4, precision="float16")
    assert (loaded.kind, loaded.precision, len(loaded)) == (index.kind, "float16", 2000)
    for a, b in zip(index.search(q, 3), loaded.search(q, 3)):
        np.testing.assert_array_equal(a, b)


def test_a_saved_exact_index_of_another_precision_is_stale_an_hnsw_one_is_used(tmp_path: Path) -> None:
    x, ids = identities(1500), some_ids(1500)
    exact, graph = tmp_path / "exact", tmp_path / "graph"
    TemplateIndex.build(D, ids, x).save(exact, MODEL, 1)
    TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0).save(graph, MODEL, 1)
    with pytest.raises(IndexStaleError, match="a float32 index, but float16 is asked for"):
        TemplateIndex.load(exact, MODEL, 1, precision="float16")
    loaded = TemplateIndex.load(graph, MODEL, 1, precision="float16")  # a rebuild of a graph takes minutes
    assert not loaded.rebuild_if_due()  # in place: rebuilds may start from now on, none is due
    assert loaded.kind == "hnsw" and isinstance(
        faiss.downcast_index(loaded._index.index), faiss.IndexHNSWFlat
    )
    assert loaded.remove(ids[:10]) == 10  # detached in place: still the saved graph
    assert loaded.detached == 10
    assert isinstance(faiss.downcast_index(loaded._index.index), faiss.IndexHNSWFlat)
    assert loaded.remove(ids[10:200]) == 190  # past MAX_DETACHED_SHARE: rebuilt, in the precision asked for
    assert loaded.wait_rebuilt(30.0) and (loaded.detached, len(loaded)) == (0, 1300)
    assert isinstance(faiss.downcast_index(loaded._index.index), faiss.IndexHNSWSQ)


@pytest.mark.parametrize("approximate_above", [10_000, 500], ids=["exact", "hnsw"])
def test_float16_removed_ids_never_come_back(approximate_above: int) -> None:
    x, ids = identities(2000), some_ids(2000)
    index = TemplateIndex.build(
        D, ids, x, approximate_above=approximate_above, precision="float16", recall_sample=0
    )
    gone = ids[::5]
    assert index.remove(gone) == gone.shape[0]
    assert not np.isin(index.search(x[::5], 50)[1], gone).any() and not np.isin(index.ids(), gone).any()
    kept = np.setdiff1d(np.arange(2000), np.arange(0, 2000, 5))[:100]
    np.testing.assert_array_equal(index.search(x[kept], 1)[1][:, 0], ids[kept])


def test_float16_growth_across_the_threshold_and_back() -> None:
    x, ids = identities(1500), some_ids(1500)
    index = TemplateIndex(D, approximate_above=1000, recall_sample=0, precision="float16")
    index.add(ids[:900], x[:900])
    assert index.kind == "exact"
    index.add(ids[900:], x[900:])
    assert (
        index.wait_rebuilt(30.0)
        and index.kind == "hnsw"
        and isinstance(faiss.downcast_index(index._index.index), faiss.IndexHNSWSQ)
    )
    assert np.mean(index.search(x, 1)[1][:, 0] == ids) >= 0.99
    assert index.remove(ids[:600]) == 600
    assert index.kind == "exact" and index.precision == "float16" and len(index) == 900
    np.testing.assert_array_equal(index.search(x[600:700], 1)[1][:, 0], ids[600:700])


def _rewrite_header(path: Path, **changes: object) -> None:
    data = path.read_bytes()
    _, version, length = struct.unpack("<8sHI", data[:14])
    header = json.loads(data[14 : 14 + length])
    header.update(changes)
    encoded = json.dumps(header).encode()
    prefix = struct.pack("<8sHI", data[:8], version, len(encoded))
    path.write_bytes(prefix + encoded + struct.pack("<I", zlib.crc32(encoded)) + data[14 + length + 4 :])


@pytest.mark.parametrize("snapshot_id", ["", "XYZ" * 10 + "ab", "0" * 31, 12])
def test_a_damaged_snapshot_id_is_refused(tmp_path: Path, snapshot_id: object) -> None:
    path = tmp_path / "gallery.index"
    TemplateIndex.build(D, [1, 2], identities(2), precision="float16").save(path, MODEL, 1)
    _rewrite_header(path, snapshot_id=snapshot_id)
    with pytest.raises(IndexCorruptError, match="snapshot_id"):
        TemplateIndex.load(path, MODEL, 1)


def test_a_graph_of_an_unknown_storage_is_refused(tmp_path: Path) -> None:
    """A readable HNSW over 8-bit codes: not a kind this software builds, so not trusted."""
    graph = faiss.IndexHNSWSQ(D, faiss.ScalarQuantizer.QT_8bit, 16, faiss.METRIC_INNER_PRODUCT)
    x = identities(300)
    graph.train(x)
    wrapped = faiss.IndexIDMap2(graph)
    wrapped.add_with_ids(x, np.arange(300))
    path = tmp_path / "gallery.index"
    TemplateIndex.build(D, np.arange(300), x, approximate_above=100, recall_sample=0).save(path, MODEL, 1)
    payload = faiss.serialize_index(wrapped).tobytes()
    data = path.read_bytes()
    _, _, length = struct.unpack("<8sHI", data[:14])
    path.write_bytes(data[: 14 + length + 4] + payload)
    _rewrite_header(path, payload_bytes=len(payload), payload_sha256=hashlib.sha256(payload).hexdigest())
    with pytest.raises(IndexCorruptError, match="header says hnsw"):
        TemplateIndex.load(path, MODEL, 1)
