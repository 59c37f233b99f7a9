"""The template index: real Faiss on seeded synthetic embeddings, checked against numpy brute force."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator, List, Tuple

import faiss
import numpy as np
import pytest

from appliance.errors import ApplianceError
from appliance.gallery import index as index_module
from appliance.gallery.index import (
    MAGIC,
    GalleryIndexError,
    IndexCorruptError,
    IndexMissingError,
    IndexStaleError,
    TemplateIndex,
    exact_top_k,
    measure_recall,
    probe_queries,
)
from tests.mqtt_broker import wait_until
from tests.support import Held, meanwhile

D = 128
MODEL = "mobilefacenet@1"
DEADLINE_S = 30.0  # every wait on another thread: a rebuild that hangs fails the test instead


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gaussian(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    """(n, d) float32, not normalised (the index must normalise)."""
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32) * 3


def identities(n: int, per_identity: int = 3, d: int = D, seed: int = 1) -> np.ndarray:
    """(n, d) float32 unit templates: random identity centres, each template cos ≈ 0.8 to its centre."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal(((n + per_identity - 1) // per_identity, d)))
    noise = rng.standard_normal((n, d)) * (0.75 / np.sqrt(d))
    return unit(centres[np.arange(n) // per_identity] + noise)


def brute_force(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    scores = unit(q) @ unit(x).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def some_ids(n: int, seed: int = 2) -> np.ndarray:
    """Unique, unordered, large int64 ids (not 0..n-1, so ids and positions cannot be confused)."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.arange(10**12, 10**12 + 50 * n, dtype=np.int64), size=n, replace=False)


# -- search --------------------------------------------------------------------------------------


def test_exact_search_equals_numpy_brute_force() -> None:
    x, ids, q = gaussian(3000), some_ids(3000), gaussian(40, seed=9)
    index = TemplateIndex.build(D, ids, x)
    assert index.kind == "exact" and len(index) == 3000 and index.dim == D
    scores, found = index.search(q, k=10)
    ref_scores, ref_ids = brute_force(x, ids, q, 10)
    assert scores.dtype == np.float32 and found.dtype == np.int64 and found.shape == (40, 10)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_top2_is_the_template_itself_then_the_next_best() -> None:
    x, ids = identities(600), some_ids(600)
    index = TemplateIndex.build(D, ids, x)
    scores, found = index.search(x[:50])  # k=2 by default
    assert found.shape == (50, 2)
    np.testing.assert_array_equal(found[:, 0], ids[:50])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (scores[:, 0] >= scores[:, 1]).all()
    _, ref_ids = brute_force(x, ids, x[:50], 2)
    np.testing.assert_array_equal(found[:, 1], ref_ids[:, 1])


def test_scores_are_cosine_and_inputs_are_not_modified() -> None:
    x = gaussian(100)
    before = x.copy()
    index = TemplateIndex.build(D, np.arange(100), x)
    np.testing.assert_array_equal(x, before)  # normalised on a copy
    query = x[7:8] * 0.01  # same direction, another norm
    scores, found = index.search(query, 1)
    assert found[0, 0] == 7
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(query, x[7:8] * 0.01)


def test_fewer_templates_than_k_gives_minus_one_and_minus_inf() -> None:
    index = TemplateIndex.build(D, [5, 6, 7], gaussian(3))
    scores, found = index.search(gaussian(2, seed=3), k=5)
    assert (found[:, 3:] == -1).all() and (found[:, :3] >= 5).all()
    assert np.isneginf(scores[:, 3:]).all() and np.isfinite(scores[:, :3]).all()


def test_empty_index_finds_nothing() -> None:
    for index in (TemplateIndex(D), TemplateIndex.build(D, [], np.empty((0, D), np.float32))):
        scores, found = index.search(gaussian(2), k=2)
        assert len(index) == 0 and index.kind == "exact"
        assert (found == -1).all() and np.isneginf(scores).all()


def test_exact_top_k_helper_matches_brute_force_across_chunks() -> None:
    x, q = unit(gaussian(1000)), unit(gaussian(7, seed=4))
    scores, rows = exact_top_k(x, q, 4, chunk_rows=128)
    ref_scores, ref_rows = brute_force(x, np.arange(1000), q, 4)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


# -- approximate index ---------------------------------------------------------------------------


def test_hnsw_reaches_recall_at_1_of_0_99_on_20k_templates() -> None:
    x, ids = identities(20_000), some_ids(20_000)
    index = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=500)
    assert index.kind == "hnsw" and len(index) == 20_000
    assert index.recall_at_1 is not None and index.recall_at_1 >= 0.99  # measured and logged by build
    fresh = identities(20_000, seed=1)[::20] + np.random.default_rng(5).standard_normal((1000, D)) * 0.05
    assert measure_recall(index, x, ids, fresh, k=1) >= 0.99
    assert measure_recall(index, x, ids, probe_queries(x, 1000, seed=6), k=1) >= 0.99


def test_measure_recall_is_one_for_exact_and_counts_ties() -> None:
    x, ids = identities(2000), some_ids(2000)
    exact = TemplateIndex.build(D, ids, x)
    q = probe_queries(x, 200)
    assert measure_recall(exact, x, ids, q) == 1.0
    assert measure_recall(exact, x, ids, q, k=5) == 1.0
    # a duplicated template: whichever of the two copies comes back is a hit
    twins = np.concatenate([x, x[:1]])
    twin_ids = np.concatenate([ids, [7]])
    assert measure_recall(TemplateIndex.build(D, twin_ids, twins), twins, twin_ids, x[:1]) == 1.0
    # an index over different templates finds none of the exact neighbours
    other = TemplateIndex.build(D, ids, identities(2000, seed=8))
    assert measure_recall(other, x, ids, q) < 0.05


def test_hnsw_ef_search_is_applied_and_changeable() -> None:
    x = identities(3000)
    index = TemplateIndex.build(D, np.arange(3000), x, approximate_above=1000, ef_search=40, recall_sample=0)
    assert index.ef_search == 40 and index.recall_at_1 is None
    index.ef_search = 200
    assert index.ef_search == 200
    with pytest.raises(ValueError, match="ef_search"):
        index.ef_search = 0


# -- add and remove ------------------------------------------------------------------------------


def _all_found(index: TemplateIndex, queries: np.ndarray) -> np.ndarray:
    return index.search(queries, k=min(len(index), 200))[1].ravel()


@pytest.mark.parametrize("approximate_above", [10_000, 500], ids=["exact", "hnsw"])
def test_removed_ids_never_come_back(approximate_above: int) -> None:
    x, ids = identities(2000), some_ids(2000)
    index = TemplateIndex.build(D, ids, x, approximate_above=approximate_above, recall_sample=0)
    kind = index.kind
    gone = ids[::7]
    assert index.remove(np.concatenate([gone, [123]])) == gone.shape[0]  # unknown ids are ignored
    assert len(index) == 2000 - gone.shape[0] and index.kind == kind
    assert not np.isin(_all_found(index, x[::7]), gone).any()
    assert not np.isin(index.ids(), gone).any()
    kept = np.setdiff1d(np.arange(2000), np.arange(0, 2000, 7))
    _, found = index.search(x[kept[:100]], 1)
    np.testing.assert_array_equal(found[:, 0], ids[kept[:100]])
    assert index.remove(gone) == 0


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_an_exact_removal_leaves_nothing_of_the_templates_in_memory(precision: str) -> None:
    """The removed rows are filled with the last ones and the rows given up are zeroed before the
    arrays shrink: no byte of a removed template is left in the buffer, its spare capacity included
    (Faiss's own removal left the last rows there), and the index searches as one built without them."""
    x, ids = identities(500), some_ids(500)
    index = TemplateIndex.build(D, ids, x, precision=precision)
    inner = faiss.downcast_index(index._index.index)
    size, row = inner.codes.size(), inner.code_size
    before = faiss.rev_swig_ptr(inner.codes.data(), size).tobytes()  # the rows as the index holds them
    doomed = np.array([0, 3, 250, 496, 499])  # the first, the middle, among the rows that move, the last
    assert index.remove(np.concatenate([ids[doomed], [7]])) == doomed.shape[0]  # unknown ids are ignored
    kept = np.setdiff1d(np.arange(500), doomed)
    assert len(index) == index._index.ntotal == inner.ntotal == kept.shape[0]
    assert inner.codes.size() == kept.shape[0] * row and index._index.id_map.size() == kept.shape[0]
    assert sorted(index.ids().tolist()) == sorted(ids[kept].tolist())
    buffer = faiss.rev_swig_ptr(inner.codes.data(), size).tobytes()  # a shrunk vector keeps its buffer
    assert not any(before[r * row : (r + 1) * row] in buffer for r in doomed)
    assert all(before[r * row : (r + 1) * row] in buffer for r in kept[::25])  # the check can find rows
    scores, found = index.search(x[:60], 3)
    reference = TemplateIndex.build(D, ids[kept], x[kept], precision=precision)
    ref_scores, ref_found = reference.search(x[:60], 3)
    np.testing.assert_array_equal(found, ref_found)
    np.testing.assert_array_equal(scores, ref_scores)
    index.add(ids[doomed[:2]], x[doomed[:2]])  # a removed id may come back
    assert index.search(x[doomed[:2]], 1)[1][:, 0].tolist() == ids[doomed[:2]].tolist()
    assert index.remove(ids) == kept.shape[0] + 2 and len(index) == 0 and inner.codes.size() == 0
    assert not faiss.rev_swig_ptr(inner.codes.data(), size).any()
    assert (index.search(x[:2], 1)[1] == -1).all()


@pytest.mark.parametrize("approximate_above", [10_000, 100], ids=["exact", "hnsw"])
def test_a_file_of_formats_1_and_2_is_read_and_saved_as_format_3(
    tmp_path: Path, approximate_above: int
) -> None:
    """Formats 1 and 2 held an IndexIDMap2 (an IndexIDMap with a reverse map): it is read into an
    IndexIDMap over the same templates, searches as the file's index does, changes, and the next
    save writes format 3."""
    x, ids = identities(300), some_ids(300)
    kind = "exact" if approximate_above > 300 else "hnsw"
    inner = (
        faiss.IndexFlatIP(D) if kind == "exact" else faiss.IndexHNSWFlat(D, 16, faiss.METRIC_INNER_PRODUCT)
    )
    old = faiss.IndexIDMap2(inner)  # as the software before this one built it
    old.add_with_ids(unit(x), ids)
    path = tmp_path / "old.index"
    payload = faiss.serialize_index(old).tobytes()
    assert payload[:4] == b"IxM2"
    _forge(path, payload, count=300, kind=kind, approximate_above=approximate_above, hnsw_m=16)
    loaded = TemplateIndex.load(path, MODEL, 3)
    assert type(loaded._index) is faiss.IndexIDMap and loaded.kind == kind and len(loaded) == 300
    scores, found = loaded.search(x[:40], 1)  # each template finds itself, as in the file's index
    assert found[:, 0].tolist() == old.search(unit(x[:40]), 1)[1][:, 0].tolist() == ids[:40].tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert loaded.remove(ids[:5]) == 5 and not np.isin(_all_found(loaded, x[:5]), ids[:5]).any()
    loaded.save(path, MODEL, 4)
    header = index_module.read_snapshot_header(path)
    assert header["format"] == index_module.FORMAT_VERSION == 3
    assert path.read_bytes()[_payload_start(path) :][:4] == b"IxMp"
    again = TemplateIndex.load(path, MODEL, 4)
    assert len(again) == 295 and sorted(again.ids().tolist()) == sorted(ids[5:].tolist())


def test_hnsw_removal_below_the_threshold_becomes_exact_and_stays_correct() -> None:
    x, ids = identities(1200), some_ids(1200)
    index = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0)
    assert index.kind == "hnsw"
    assert index.remove(ids[:300]) == 300
    assert index.kind == "exact" and len(index) == 900
    scores, found = index.search(x[:400], 3)
    ref_scores, ref_ids = brute_force(x[300:], ids[300:], x[:400], 3)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_add_then_search_and_growth_past_the_threshold_becomes_hnsw() -> None:
    x, ids = identities(1500), some_ids(1500)
    index = TemplateIndex(D, approximate_above=1000, recall_sample=0)
    index.add(ids[:800], x[:800])
    index.add([], np.empty((0, D), np.float32))
    assert index.kind == "exact" and len(index) == 800
    with pytest.raises(ValueError, match="already in the index"):
        index.add(ids[799:801], x[799:801])
    assert len(index) == 800  # nothing of the refused batch went in
    index.add(ids[800:], x[800:])
    assert len(index) == 1500 and index.wait_rebuilt(DEADLINE_S) and index.kind == "hnsw"
    _, found = index.search(x, 1)
    assert np.mean(found[:, 0] == ids) >= 0.99
    assert sorted(index.ids().tolist()) == sorted(ids.tolist())


def test_growth_past_the_threshold_builds_the_graph_on_its_own_thread_and_replays_the_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The addition that crosses ``approximate_above`` returns with the exact index holding it; the
    graph is built meanwhile from the templates of that moment, and the additions and removals made
    while it was built are replayed on it before it replaces the exact index."""
    x, ids = identities(1600), some_ids(1600)
    index = TemplateIndex(D, approximate_above=1000, recall_sample=0)
    held = Held(monkeypatch, index, "_build_replacement", DEADLINE_S)  # the rebuild, before it builds
    index.add(ids[:1200], x[:1200])
    assert held.entered.wait(DEADLINE_S) and index.rebuilding and (index.kind, len(index)) == ("exact", 1200)
    np.testing.assert_array_equal(index.search(x[:50], 1)[1][:, 0], ids[:50])  # the exact index serves
    index.add(ids[1200:], x[1200:])  # meanwhile: templates added,
    assert index.remove(ids[:30]) == 30  # removed from those the graph is built from,
    assert index.remove(ids[1500:1510]) == 10  # and from those added meanwhile
    assert (index.kind, len(index)) == ("exact", 1560)
    held.release()
    assert index.wait_rebuilt(DEADLINE_S) and not index.rebuilding
    assert (index.kind, len(index), index.detached) == ("hnsw", 1560, 40)
    gone = np.concatenate([ids[:30], ids[1500:1510]])
    assert sorted(index.ids().tolist()) == sorted(np.setdiff1d(ids, gone).tolist())
    assert not np.isin(_all_found(index, np.concatenate([x[:30], x[1500:1510]])), gone).any()
    kept = np.setdiff1d(np.arange(1600), np.r_[0:30, 1500:1510])
    _, found = index.search(x[kept], 1)
    assert np.mean(found[:, 0] == ids[kept]) >= 0.99


def test_past_the_detached_share_the_graph_is_rebuilt_on_its_own_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The removal that takes detached nodes past MAX_DETACHED_SHARE detaches them too, and returns:
    they are gone from the searches at once. The graph is rebuilt without the detached nodes
    meanwhile, and the changes made in between are replayed on it."""
    x, ids = identities(3000), some_ids(3000)
    index = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0)
    held = Held(monkeypatch, index, "_build_replacement", DEADLINE_S)  # the rebuild, before it builds
    bound = int(index_module.MAX_DETACHED_SHARE * 3000)
    assert index.remove(ids[:bound]) == bound and not index.rebuilding  # up to the bound: detached
    assert index.remove(ids[bound : bound + 1]) == 1  # one more: detached, and the graph rebuilt
    assert held.entered.wait(DEADLINE_S) and index.rebuilding and index.detached == bound + 1
    assert not np.isin(_all_found(index, x[: bound + 1]), ids[: bound + 1]).any()
    index.add(ids[:5], x[:5])  # meanwhile: removed ids come back,
    assert index.remove(ids[bound + 1 : bound + 11]) == 10  # and more go
    held.release()
    assert index.wait_rebuilt(DEADLINE_S)
    assert (index.kind, index.detached, len(index)) == ("hnsw", 10, 3000 - (bound + 11) + 5)
    assert index._index.ntotal == 3000 - (bound + 1) + 5  # the graph holds none of the first removals
    assert not np.isin(_all_found(index, x[bound + 1 : bound + 11]), ids[bound + 1 : bound + 11]).any()
    kept = np.r_[0:5, bound + 11 : 3000]
    _, found = index.search(x[kept], 1)
    assert np.mean(found[:, 0] == ids[kept]) >= 0.99


def test_a_graph_no_longer_needed_when_built_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Removals during the growth's rebuild took the index back under ``approximate_above``: the
    graph is dropped and the exact index stays; the same when a removal rebuilt it as exact."""
    x, ids = identities(1100), some_ids(1100)
    index = TemplateIndex(D, approximate_above=1000, recall_sample=0)
    held = Held(monkeypatch, index, "_build_replacement", DEADLINE_S)  # the rebuild, before it builds
    index.add(ids, x)
    assert held.entered.wait(DEADLINE_S)
    assert index.remove(ids[:200]) == 200
    held.release()
    assert index.wait_rebuilt(DEADLINE_S) and (index.kind, len(index)) == ("exact", 900)
    np.testing.assert_array_equal(index.search(x[200:300], 1)[1][:, 0], ids[200:300])

    x, ids = identities(3000), some_ids(3000)
    graph = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0)
    held = Held(monkeypatch, graph, "_build_replacement", DEADLINE_S)  # the rebuild, before it builds
    assert graph.remove(ids[:400]) == 400 and held.entered.wait(
        DEADLINE_S
    )  # past the share: rebuilt meanwhile
    assert graph.remove(ids[400:2100]) == 1700  # 900 left: rebuilt as exact here, the graph not wanted
    assert (graph.kind, len(graph), graph.rebuilding) == ("exact", 900, False)
    held.release()
    assert graph.wait_rebuilt(DEADLINE_S)
    for thread in threading.enumerate():  # the abandoned build ends, and logs so, within this test
        if thread.name == "gallery-index-rebuild":
            thread.join(DEADLINE_S)
    assert (graph.kind, len(graph)) == ("exact", 900)
    np.testing.assert_array_equal(graph.search(x[2100:2200], 1)[1][:, 0], ids[2100:2200])


def test_close_stops_a_rebuild_between_two_chunks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    x, ids = identities(1500), some_ids(1500)
    index = TemplateIndex(D, approximate_above=1000, recall_sample=0)
    held = Held(monkeypatch, index, "_build_replacement", DEADLINE_S)  # the rebuild, before it builds
    index.add(ids, x)
    assert held.entered.wait(DEADLINE_S)
    caplog.set_level(logging.INFO, logger=index_module.__name__)
    ended: List[bool] = []
    closer = threading.Thread(target=lambda: ended.append(index.close(DEADLINE_S)), name="closer")
    closer.start()
    try:
        wait_until(lambda: index._rebuild is None, DEADLINE_S, "close to take the rebuild and set its stop")
    finally:
        held.release()
        closer.join(DEADLINE_S)
    assert ended == [True] and not index.rebuilding and (index.kind, len(index)) == ("exact", 1500)
    assert "a rebuild of the gallery index was abandoned" in caplog.text
    assert "rebuilt gallery index is in use" not in caplog.text
    np.testing.assert_array_equal(index.search(x[:20], 1)[1][:, 0], ids[:20])


def test_searches_continue_while_an_hnsw_index_is_rebuilt() -> None:
    """A removal past the detached share has the graph rebuilt on its own thread; searches on
    another thread go on throughout, and so do changes."""
    x, ids = identities(3000), some_ids(3000)
    index = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0)
    errors: List[BaseException] = []
    stop = threading.Event()

    def searching() -> None:
        try:
            while not stop.is_set():
                index.search(x[:4], 2)
        except BaseException as err:  # reported to the test below
            errors.append(err)

    worker = threading.Thread(target=searching, name="searcher")
    worker.start()
    try:
        assert index.remove(ids[:400]) == 400 and index.rebuilding
        index.add(ids[:50], x[:50])
        assert index.wait_rebuilt(DEADLINE_S)
    finally:
        stop.set()
        worker.join()
    assert errors == [] and len(index) == 2650 and (index.kind, index.detached) == ("hnsw", 0)


def _graph(index: TemplateIndex) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """An HNSW index's neighbour slots (int32), node offsets, node levels and the HNSW object."""
    hnsw = faiss.downcast_index(index._index.index).hnsw
    neighbors = faiss.vector_to_array(hnsw.neighbors)
    return (
        neighbors,
        faiss.vector_to_array(hnsw.offsets).astype(np.int64),
        faiss.vector_to_array(hnsw.levels),
        hnsw,
    )


def _lists(index: TemplateIndex) -> Iterator[np.ndarray]:
    """Every node's neighbour list at every level it is on."""
    neighbors, offsets, levels, hnsw = _graph(index)
    for node in range(len(levels)):
        for level in range(int(levels[node])):
            start = offsets[node] + hnsw.cum_nb_neighbors(level)
            yield neighbors[start : offsets[node] + hnsw.cum_nb_neighbors(level + 1)]


@pytest.mark.parametrize("compared_nodes", [0, 64], ids=["links-looked-up", "links-compared"])
def test_an_hnsw_removal_detaches_the_nodes_and_leaves_nothing_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compared_nodes: int
) -> None:
    """No search reaches a removed template, no link leads to or from it, its vector is gone from
    memory and from the saved file, and the graph's entry point moves when it is the one removed.
    Both ways of finding the links (a table of the nodes, or a comparison with each), over chunks
    that end inside neighbour lists."""
    monkeypatch.setattr(index_module, "_COMPARED_NODES", compared_nodes)
    monkeypatch.setattr(index_module, "_LINK_CHUNK", 1000)
    x, ids = identities(3000), some_ids(3000)
    index = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0)  # float32: bytes as given
    _, _, _, hnsw = _graph(index)
    entry = int(hnsw.entry_point)
    doomed = np.unique(
        np.concatenate([[entry], np.arange(5, 3000, 150)])
    )  # 21 nodes, the entry point's first
    stored = index._all_vectors()  # the vectors as the index holds them (normalised again, float32)
    before = tmp_path / "before.index"
    index.save(before, MODEL, 1)
    assert all(stored[row].tobytes() in before.read_bytes() for row in doomed)  # what the check below seeks
    lists_before = [links.copy() for links in _lists(index)]
    assert index.remove(ids[doomed]) == doomed.shape[0]
    owners = np.repeat(np.arange(3000), _graph(index)[2])  # the node of each list, in _lists' order
    for node, links, was in zip(owners, _lists(index), lists_before):  # the others' links kept, in order
        expected = (
            [] if node in doomed else [link for link in was.tolist() if link >= 0 and link not in doomed]
        )
        assert links.tolist() == expected + [-1] * (links.shape[0] - len(expected))
    assert (index.kind, index.detached, len(index)) == ("hnsw", doomed.shape[0], 3000 - doomed.shape[0])
    assert not np.isin(index.ids(), ids[doomed]).any() and index.ids().shape[0] == len(index)
    assert not np.isin(_all_found(index, x[doomed]), ids[doomed]).any()
    kept = np.setdiff1d(np.arange(3000), doomed)
    _, found = index.search(x[kept], 1)
    assert np.mean(found[:, 0] == ids[kept]) >= 0.99
    neighbors, offsets, levels, hnsw = _graph(index)
    assert not np.isin(neighbors, doomed).any()  # no link to a detached node
    assert all((neighbors[offsets[node] : offsets[node + 1]] == -1).all() for node in doomed)  # none from one
    for links in _lists(index):  # Faiss reads a list up to its first -1: each is packed
        assert not (links[1:] >= 0)[links[:-1] < 0].any()
    assert hnsw.entry_point not in doomed and hnsw.max_level == levels[hnsw.entry_point] - 1
    after = tmp_path / "after.index"
    index.save(after, MODEL, 2)
    assert not any(stored[row].tobytes() in after.read_bytes() for row in doomed)
    loaded = TemplateIndex.load(after, MODEL, 2)
    assert (loaded.detached, len(loaded)) == (doomed.shape[0], len(index))
    for a, b in zip(index.search(x[:50], 3), loaded.search(x[:50], 3)):
        np.testing.assert_array_equal(a, b)
    loaded.add(ids[doomed[:3]], x[doomed[:3]])  # a removed id may come back, as a new node
    assert (
        len(loaded) == len(index) + 3
        and loaded.search(x[doomed[:3]], 1)[1][:, 0].tolist() == ids[doomed[:3]].tolist()
    )


def test_searches_go_on_while_a_removal_scans_the_graph_for_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan for the links to detached nodes (0.5 s at 10⁶ templates) holds no search; other
    changes wait for the removal, and the graph they then see has the nodes detached."""
    x, ids = identities(3000), some_ids(3000)
    index = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0)
    doomed = np.arange(0, 3000, 100)
    scanning = Held(monkeypatch, index_module, "_links_to")
    removal = threading.Thread(target=index.remove, args=(ids[doomed],))
    addition = threading.Thread(target=index.add, args=(some_ids(1, seed=7), x[:1]))
    removal.start()
    try:
        assert scanning.entered.wait(10)
        searched = meanwhile(lambda: index.search(x[doomed], 1))  # the nodes are still in the graph
        assert searched and searched[0][1][:, 0].tolist() == ids[doomed].tolist()
        addition.start()
        addition.join(0.3)
        assert addition.is_alive()  # writers wait
    finally:
        scanning.release()
        removal.join(10)
        addition.join(10)
    assert not removal.is_alive() and not addition.is_alive()
    assert (index.detached, len(index)) == (doomed.shape[0], 3000 - doomed.shape[0] + 1)
    assert not np.isin(_all_found(index, x[doomed]), ids[doomed]).any()
    neighbors, _, _, _ = _graph(index)
    assert not np.isin(neighbors, doomed).any()


def test_a_header_whose_detached_count_disagrees_with_the_payload_is_corrupt(tmp_path: Path) -> None:
    x, ids = identities(1200), some_ids(1200)
    index = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0)
    index.remove(ids[:5])
    saved = tmp_path / "saved.index"
    index.save(saved, MODEL, 3)
    payload = saved.read_bytes()[_payload_start(saved) :]
    common = {"kind": "hnsw", "approximate_above": 1000, "snapshot_id": "0" * 32}
    path = tmp_path / "forged.index"
    _forge(path, payload, count=1195, detached=5, **common)
    assert (TemplateIndex.load(path, MODEL, 3).detached, len(TemplateIndex.load(path, MODEL, 3))) == (5, 1195)
    _forge(path, payload, count=1200, **common)  # the detached nodes counted as templates
    with pytest.raises(IndexCorruptError, match="header says 0 detached nodes, the hnsw payload holds 5"):
        TemplateIndex.load(path, MODEL, 3)
    _forge(path, payload, count=1194, detached=6, **common)
    with pytest.raises(IndexCorruptError, match="6 detached nodes"):
        TemplateIndex.load(path, MODEL, 3)
    _forge(path, payload, count=1195, detached=-5, **common)
    with pytest.raises(IndexCorruptError, match="'detached' is not a count"):
        TemplateIndex.load(path, MODEL, 3)


# -- persistence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("approximate_above", [10_000, 1000], ids=["exact", "hnsw"])
def test_save_load_round_trip(tmp_path: Path, approximate_above: int) -> None:
    x, ids, q = identities(2000), some_ids(2000), probe_queries(identities(2000), 100)
    index = TemplateIndex.build(D, ids, x, approximate_above=approximate_above, ef_search=64, recall_sample=0)
    path = tmp_path / "sub" / "gallery.index"
    size = index.save(path, MODEL, generation=7)
    assert path.stat().st_size == size
    assert [p.name for p in path.parent.iterdir()] == ["gallery.index"]  # no temporary left over
    loaded = TemplateIndex.load(path, MODEL, 7)
    assert (loaded.kind, len(loaded), loaded.dim, loaded.ef_search) == (index.kind, 2000, D, 64)
    for a, b in zip(index.search(q, 3), loaded.search(q, 3)):
        np.testing.assert_array_equal(a, b)
    assert TemplateIndex.load(path, MODEL, 7, ef_search=128).ef_search == 128
    # the loaded index keeps working: add, remove, save again
    assert loaded.remove(ids[:10]) == 10
    loaded.add(ids[:5], x[:5])
    loaded.save(path, MODEL, generation=8)
    assert len(TemplateIndex.load(path, MODEL, 8)) == 1995


def test_save_replaces_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "gallery.index"
    TemplateIndex.build(D, [1, 2], gaussian(2)).save(path, MODEL, 1)
    TemplateIndex.build(D, [1, 2, 3], gaussian(3)).save(path, MODEL, 2)
    assert len(TemplateIndex.load(path, MODEL, 2)) == 3


class _FullDisk:
    """A stream that fails like a full disk once ``limit`` bytes have been written."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream, self.left = stream, limit

    def write(self, data: bytes) -> int:
        self.left -= len(data)
        if self.left < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.stream.write(data)


def test_a_failed_save_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gallery.index"
    TemplateIndex.build(D, [1, 2], gaussian(2)).save(path, MODEL, 1)
    before = path.read_bytes()
    real = index_module.atomic_writer

    @contextlib.contextmanager
    def full_disk(final: Path, mode: int = 0o644) -> Iterator[_FullDisk]:
        with real(final, mode) as stream:
            yield _FullDisk(stream, limit=5000)

    monkeypatch.setattr(index_module, "atomic_writer", full_disk)
    with pytest.raises(OSError, match="No space left"):
        TemplateIndex.build(D, np.arange(100), gaussian(100)).save(path, MODEL, 2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.index"]
    assert len(TemplateIndex.load(path, MODEL, 1)) == 2


def test_save_refuses_bad_arguments(tmp_path: Path) -> None:
    index = TemplateIndex.build(D, [1], gaussian(1))
    with pytest.raises(ValueError, match="model_version"):
        index.save(tmp_path / "i", "", 1)
    with pytest.raises(ValueError, match="generation"):
        index.save(tmp_path / "i", MODEL, -1)
    assert not (tmp_path / "i").exists()


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "gallery.index"
    TemplateIndex.build(D, some_ids(500), identities(500)).save(path, MODEL, generation=3)
    return path


def test_stale_model_version_or_generation(saved: Path) -> None:
    with pytest.raises(IndexStaleError, match="model 'mobilefacenet@1' generation 3"):
        TemplateIndex.load(saved, "mobilefacenet@2", 3)
    with pytest.raises(IndexStaleError, match="expected model 'mobilefacenet@1' generation 4"):
        TemplateIndex.load(saved, MODEL, 4)
    graph = saved.with_name("graph.index")
    TemplateIndex.build(D, some_ids(500), identities(500), approximate_above=100, recall_sample=0).save(
        graph, MODEL, generation=3
    )
    with pytest.raises(
        IndexStaleError, match="an hnsw index of 500 templates, but approximate_above=500 calls"
    ):
        TemplateIndex.load(graph, MODEL, 3, approximate_above=500)  # an exact index: a copy, made at once
    assert issubclass(IndexStaleError, GalleryIndexError) and issubclass(GalleryIndexError, ApplianceError)


def test_a_saved_exact_index_above_the_threshold_is_used_and_builds_its_graph_when_let(saved: Path) -> None:
    """Saved while its graph was being built, or the threshold lowered since: not stale. Loaded, it
    serves as it is and starts no rebuild — not even for a delta's additions — until its owner has
    it in place and calls rebuild_if_due, whose ``on_rebuilt`` then runs once the graph is in use."""
    index = TemplateIndex.load(saved, MODEL, 3, approximate_above=100)
    assert (index.kind, len(index), index.rebuilding) == ("exact", 500, False)
    x, ids = identities(500), some_ids(500)
    more, more_ids = identities(100, seed=9), some_ids(100) + 10**11
    index.add(more_ids, more)  # a delta replayed
    assert (index.kind, len(index), index.rebuilding) == ("exact", 600, False)
    np.testing.assert_array_equal(index.search(x[:10], 1)[1][:, 0], ids[:10])
    np.testing.assert_array_equal(index.search(more[:10], 1)[1][:, 0], more_ids[:10])
    rebuilt: List[str] = []
    assert index.rebuild_if_due(lambda: rebuilt.append(index.kind))
    assert index.wait_rebuilt(DEADLINE_S) and (index.kind, len(index), rebuilt) == ("hnsw", 600, ["hnsw"])
    assert not index.rebuild_if_due()  # nothing due now


def test_built_with_graph_later_an_index_is_exact_until_rebuild_if_due() -> None:
    x, ids = identities(1200), some_ids(1200)
    index = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0, graph_later=True)
    assert (index.kind, len(index), index.rebuilding) == ("exact", 1200, False)
    np.testing.assert_array_equal(index.search(x[:20], 1)[1][:, 0], ids[:20])
    assert index.rebuild_if_due() and index.wait_rebuilt(DEADLINE_S) and index.kind == "hnsw"
    small = TemplateIndex.build(D, ids[:10], x[:10], approximate_above=1000, graph_later=True)
    assert not small.rebuild_if_due() and small.kind == "exact"


def test_a_graph_saved_past_the_detached_share_is_rebuilt_once_let(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal saves a snapshot while the rebuild it started is under way; a restart then loads a
    graph whose detached nodes are past MAX_DETACHED_SHARE, and rebuilds it on its own thread."""
    x, ids = identities(1500), some_ids(1500)
    index = TemplateIndex.build(D, ids, x, approximate_above=1000, recall_sample=0)
    held = Held(monkeypatch, index, "_build_replacement", DEADLINE_S)
    assert index.remove(ids[:200]) == 200 and held.entered.wait(DEADLINE_S)
    path = tmp_path / "gallery.index"
    index.save(path, MODEL, generation=5)
    held.release()
    assert index.close(DEADLINE_S)  # the held rebuild is abandoned at its first chunk
    loaded = TemplateIndex.load(path, MODEL, 5)
    assert (loaded.kind, loaded.detached, loaded.rebuilding) == ("hnsw", 200, False)
    assert loaded.rebuild_if_due() and loaded.wait_rebuilt(DEADLINE_S)
    assert (loaded.kind, loaded.detached, len(loaded)) == ("hnsw", 0, 1300)
    assert not np.isin(loaded.search(x[:200], 5)[1], ids[:200]).any()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IndexMissingError) as caught:
        TemplateIndex.load(tmp_path / "absent", MODEL, 1)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, GalleryIndexError)


def _payload_start(path: Path) -> int:
    _, _, length = struct.unpack("<8sHI", path.read_bytes()[:14])
    return 14 + length + 4


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    start = _payload_start(path)
    if how == "empty":
        data = bytearray()
    elif how == "magic":
        data[:8] = b"NOTANIDX"
    elif how == "version":
        data[8:10] = struct.pack("<H", max(index_module.READABLE_VERSIONS) + 1)
    elif how == "header byte":
        data[20] ^= 0x01
    elif how == "header length":
        data[10:14] = struct.pack("<I", 1 << 30)
    elif how.startswith("truncated"):
        data = data[
            : {"in prefix": 5, "in header": 30, "in payload": start + 100, "by one": len(data) - 1}[how[10:]]
        ]
    elif how == "payload byte":
        data[start + (len(data) - start) // 2] ^= 0x40
    elif how == "last byte":
        data[-1] ^= 0x01
    elif how == "trailing data":
        data += b"\0"
    elif how == "garbage":
        data = bytearray(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how",
    [
        "empty",
        "magic",
        "version",
        "header byte",
        "header length",
        "truncated in prefix",
        "truncated in header",
        "truncated in payload",
        "truncated by one",
        "payload byte",
        "last byte",
        "trailing data",
        "garbage",
    ],
)
def test_corrupt_files_are_detected(saved: Path, how: str) -> None:
    _corrupt(saved, how)
    with pytest.raises(IndexCorruptError):
        TemplateIndex.load(saved, MODEL, 3)


def _forge(path: Path, payload: bytes, **overrides: object) -> None:
    """A file with a consistent header and checksum around an arbitrary payload."""
    header = {
        "model_version": MODEL,
        "generation": 3,
        "count": 10,
        "dim": D,
        "kind": "exact",
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "approximate_above": 200_000,
        "ef_search": 96,
        "hnsw_m": 32,
        "ef_construction": 80,
    }
    header.update(overrides)
    encoded = json.dumps(header).encode()
    prefix = struct.pack("<8sHI", MAGIC, 1, len(encoded))
    path.write_bytes(prefix + encoded + struct.pack("<I", zlib.crc32(encoded)) + payload)


def test_consistent_files_with_a_wrong_payload_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "forged.index"
    _forge(path, b"\x00" * 64)  # checksum right, Faiss cannot read it
    with pytest.raises(IndexCorruptError, match="Faiss cannot read"):
        TemplateIndex.load(path, MODEL, 3)
    flat = faiss.IndexFlatL2(D)  # readable, but not an IndexIDMap of inner product
    flat.add(unit(gaussian(10)))
    _forge(path, faiss.serialize_index(flat).tobytes())
    with pytest.raises(IndexCorruptError, match="header says exact"):
        TemplateIndex.load(path, MODEL, 3)
    good = TemplateIndex.build(D, np.arange(10), gaussian(10))
    good.save(tmp_path / "good.index", MODEL, 3)
    payload = (tmp_path / "good.index").read_bytes()[_payload_start(tmp_path / "good.index") :]
    _forge(path, payload, count=11)
    with pytest.raises(IndexCorruptError, match="header says 11"):
        TemplateIndex.load(path, MODEL, 3)
    _forge(path, payload, generation="3")
    with pytest.raises(IndexCorruptError, match="'generation'"):
        TemplateIndex.load(path, MODEL, 3)
    _forge(path, payload, kind="ivf")
    with pytest.raises(IndexCorruptError, match="unknown index kind"):
        TemplateIndex.load(path, MODEL, 3)
    _forge(path, payload)
    assert len(TemplateIndex.load(path, MODEL, 3)) == 10


# -- invalid input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    ["float32", "float64", "int", "fortran", "every other row", "one row"],
)
def test_vectors_are_normalised_into_a_c_contiguous_float32_copy(layout: str) -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(size=(8, D)) * rng.uniform(0.01, 100.0, size=(8, 1))
    given = {
        "float32": base.astype(np.float32),
        "float64": base,
        "int": np.rint(base * 100).astype(np.int64),
        "fortran": np.asfortranarray(base.astype(np.float32)),
        "every other row": base.astype(np.float32)[::2],
        "one row": base.astype(np.float32)[:1],
    }[layout]
    before = given.copy()
    unit = index_module.as_unit_vectors(given, D)
    assert unit.dtype == np.float32 and unit.flags.c_contiguous and unit.shape == given.shape
    np.testing.assert_allclose(np.linalg.norm(unit.astype(np.float64), axis=1), 1.0, atol=1e-6)
    expected = given / np.linalg.norm(given.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(unit, expected, atol=1e-6)
    np.testing.assert_array_equal(given, before)  # the input is never modified
    assert not np.shares_memory(unit, given)
    empty = index_module.as_unit_vectors(np.empty((0, D), np.float32), D)
    assert empty.shape == (0, D) and empty.dtype == np.float32


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy's, on the 1e19 row
def test_vectors_are_normalised_in_chunks_and_faults_name_the_callers_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vectors = gaussian(10)
    whole = index_module.as_unit_vectors(vectors, D)
    monkeypatch.setattr(index_module, "_CHUNK_ROWS", 3)
    np.testing.assert_array_equal(index_module.as_unit_vectors(vectors, D), whole)
    for row, fault, match in [
        (7, np.nan, "row 7 has non-finite"),
        (5, 0.0, "row 5 is a zero vector"),
        (4, 1e19, "row 4's norm"),
    ]:
        damaged = vectors.copy()
        damaged[row] = fault
        with pytest.raises(ValueError, match=match):
            index_module.as_unit_vectors(damaged, D)


@pytest.mark.parametrize(
    ("ids", "vectors", "match"),
    [
        (np.arange(3), np.ones((3, D + 1), np.float32), r"expected shape \(n, 128\)"),
        (np.arange(3), np.ones(D, np.float32), r"expected shape \(n, 128\)"),
        (np.arange(3), np.full((3, D), np.nan, np.float32), "row 0 has non-finite"),
        (np.arange(3), np.array([[1.0] * D, [np.inf] * D, [1.0] * D]), "row 1 has non-finite"),
        (np.arange(3), np.full((3, D), 1e300), "non-finite"),  # beyond float32
        (np.arange(3), np.vstack([np.ones((2, D)), np.zeros((1, D))]), "row 2 is a zero vector"),
        # Finite float32 values whose norm overflows float32 (they used to become zero vectors).
        (
            np.arange(3),
            np.vstack([np.ones((1, D)), np.full((2, D), 1e19)]).astype(np.float32),
            "row 1's norm is beyond",
        ),
        (
            np.arange(3),
            np.vstack([np.ones((2, D)), np.full((1, D), np.nan)]).astype(np.float32),
            "row 2 has non-finite",
        ),
        (np.arange(3), np.full((3, D), "a"), "expected a float array"),
        (np.arange(3), [[1.0, 2.0], [3.0]], "not an array of numbers|expected"),
        (np.arange(3.0), np.ones((3, D)), "ids must be integers"),
        (np.array([True, False, True]), np.ones((3, D)), "ids must be integers"),
        (np.array([1, -1, 2]), np.ones((3, D)), "ids must be ≥ 0"),
        (np.array([2**64 - 1, 1, 2], dtype=np.uint64), np.ones((3, D)), "does not fit in int64"),
        (np.array([2**70, 1, 2], dtype=object), np.ones((3, D)), "fits in int64"),
        (np.array([1.5, 1, 2], dtype=object), np.ones((3, D)), "must be an integer"),
        (np.arange(6).reshape(3, 2), np.ones((3, D)), r"expected shape \(n,\)"),
        (np.arange(4), np.ones((3, D)), "4 ids for 3 vectors"),
        (np.array([4, 5, 4]), np.ones((3, D)), r"duplicated ids \[4\]"),
    ],
)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy's, on the 1e19 rows
def test_invalid_inputs_are_refused(ids: object, vectors: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TemplateIndex.build(D, ids, vectors)
    index = TemplateIndex.build(D, [1000], gaussian(1))
    with pytest.raises(ValueError, match=match):
        index.add(ids, vectors)
    assert len(index) == 1


def test_invalid_queries_and_parameters_are_refused() -> None:
    index = TemplateIndex.build(D, np.arange(5), gaussian(5))
    with pytest.raises(ValueError, match=r"queries: expected shape \(n, 128\), got \(128,\)"):
        index.search(gaussian(1)[0])
    with pytest.raises(ValueError, match="queries: row 0 has non-finite"):
        index.search(np.full((1, D), np.nan))
    with pytest.raises(ValueError, match="k must be"):
        index.search(gaussian(1), k=0)
    with pytest.raises(ValueError, match="k must be"):
        index.search(gaussian(1), k=10**9)
    with pytest.raises(ValueError, match="ids must be ≥ 0"):
        index.remove([-1])
    for bad in (0, True, 2.0, "128"):
        with pytest.raises(ValueError, match="dim"):
            TemplateIndex(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="approximate_above"):
        TemplateIndex(D, approximate_above=0)
    with pytest.raises(ValueError, match="ef_search"):
        TemplateIndex.build(D, [1], gaussian(1), ef_search=0)


# -- float16 storage -----------------------------------------------------------------------------


def test_float16_exact_index_agrees_with_float32_removes_and_round_trips(tmp_path: Path) -> None:
    x, ids = identities(3000), some_ids(3000)
    queries = probe_queries(x, 200)
    half = TemplateIndex.build(D, ids, x, precision="float16")
    assert half.kind == "exact" and half.precision == "float16"
    scores, found = half.search(queries, k=5)
    ref_scores, ref_ids = brute_force(x, ids, queries, 5)
    np.testing.assert_allclose(scores, ref_scores, atol=2e-3)  # float16 storage, float32 arithmetic
    assert np.mean(found[:, 0] == ref_ids[:, 0]) >= 0.99
    assert measure_recall(half, x, ids, queries, 1) >= 0.99

    gone = ids[:100]
    assert half.remove(gone) == 100 and len(half) == 2900
    assert not np.isin(half.search(queries, k=5)[1], gone).any()

    path = tmp_path / "gallery.index"
    half.save(path, MODEL, 7)
    loaded = TemplateIndex.load(path, MODEL, 7, precision="float16")
    assert loaded.precision == "float16" and len(loaded) == 2900
    np.testing.assert_array_equal(loaded.search(queries, k=5)[1], half.search(queries, k=5)[1])
    # A file of the other precision is stale: the gallery rebuilds it from the store.
    with pytest.raises(IndexStaleError, match="float16 index, but float32"):
        TemplateIndex.load(path, MODEL, 7, precision="float32")
    with pytest.raises(ValueError, match="precision"):
        TemplateIndex(D, precision="int8")
