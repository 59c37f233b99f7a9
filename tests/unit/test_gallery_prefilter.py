"""The exact index's prefilter: 4-bit PQ fast-scan codes choose the candidates, the stored rows score
them. Real Faiss on identity-like synthetic templates; the thresholds are lowered so that a few
thousand templates get a prefilter."""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.gallery import prefilter as prefilters
from appliance.gallery.gallery import Gallery
from appliance.gallery.index import FLOAT16_SCORE_BOUND, TemplateIndex, probe_queries
from appliance.gallery.store import TemplateStore
from tests.support import Held
from tests.synthetic import unit_vectors
from tests.unit.test_gallery_index import identities

D = 128
N = 3000
DEADLINE_S = 30.0  # every wait on another thread: a build that hangs fails the test instead


def ids_for(n: int, offset: int = 10**12) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 7 + offset


def queries(x: np.ndarray, seed: int = 5) -> np.ndarray:
    """New captures of enrolled people, then strangers."""
    strangers = np.random.default_rng(seed).standard_normal((100, D)).astype(np.float32)
    strangers /= np.linalg.norm(strangers, axis=1, keepdims=True)
    return np.concatenate([probe_queries(x, 200, seed), strangers])


def prefiltered(x: np.ndarray, ids: np.ndarray, precision: str = "float16") -> TemplateIndex:
    index = TemplateIndex.build(D, ids, x, precision=precision, prefilter_above=1000)
    assert index.wait_prefilter(DEADLINE_S) and index.prefiltered
    return index


@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_a_prefiltered_search_finds_the_top1_of_a_full_scan_with_its_exact_score(precision: str) -> None:
    x, ids = identities(N), ids_for(N)
    full = TemplateIndex.build(D, ids, x, precision=precision, prefilter_above=10**6)
    index = prefiltered(x, ids, precision)
    q = queries(x)
    want_scores, want_ids = full.search(q, 10)
    scores, found = index.search(q, 10)
    np.testing.assert_array_equal(found[:, 0], want_ids[:, 0])
    np.testing.assert_allclose(scores[:, 0], want_scores[:, 0], atol=1e-5)
    # Every score reported is the stored template's own (within float16's rounding), not the codes'
    # estimate, which is off by about 0.02.
    true_scores = np.einsum("qkd,qd->qk", x[np.searchsorted(ids, found)], q)
    bound = FLOAT16_SCORE_BOUND if precision == "float16" else 1e-5
    np.testing.assert_allclose(scores, true_scores, rtol=0, atol=bound)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert not full.prefiltered and not full.wait_prefilter(DEADLINE_S)  # under prefilter_above: none


def row_codes(prefilter: prefilters.Prefilter) -> np.ndarray:
    """(rows, 32) uint8: each row's code, unpacked from Faiss's blocks of 32 interleaved rows; then
    the rows of the last block past the count (padding), which must be zeros."""
    fast_scan = prefilter._codes
    packer = fast_scan.get_CodePacker()
    rows = -(-len(prefilter) // packer.nvec) * packer.nvec
    out = np.empty((rows, fast_scan.code_size), np.uint8)
    for row in range(rows):
        packer.unpack_1_c(fast_scan.codes.get(), row, faiss.swig_ptr(out[row]))
    assert prefilter.code_bytes().shape == (rows * fast_scan.code_size,)
    return out


def test_additions_join_the_prefilter_and_a_removal_moves_its_codes_as_the_rows() -> None:
    """After a removal each row holds the code its template had, the rows given up are zeros, and
    searches find what a full scan finds."""
    x, ids = identities(N), ids_for(N)
    index = prefiltered(x, ids)
    more, more_ids = identities(30, seed=9), ids_for(30, offset=5 * 10**12)
    index.add(more_ids, more)
    prefilter = index._prefilter
    assert prefilter is not None and len(prefilter) == N + 30  # its rows follow the exact index's
    np.testing.assert_array_equal(index.search(more, 1)[1][:, 0], more_ids)
    codes_of = dict(zip(index.ids().tolist(), row_codes(prefilter)[: N + 30].tolist()))
    gone = np.concatenate([ids[5:3000:97], more_ids[-3:-1]])  # scattered, and among the last rows
    assert index.remove(gone) == gone.shape[0]
    kept = N + 30 - gone.shape[0]
    assert index.prefiltered and index._prefilter is prefilter and len(prefilter) == kept
    after = row_codes(prefilter)
    assert after[:kept].tolist() == [codes_of[i] for i in index.ids().tolist()]
    assert not after[kept:].any()
    every, every_id = np.concatenate([x, more]), np.concatenate([ids, more_ids])
    assert not np.isin(index.search(every[np.isin(every_id, gone)], 10)[1], gone).any()
    left = ~np.isin(every_id, gone)
    np.testing.assert_array_equal(index.search(every[left], 1)[1][:, 0], every_id[left])
    index.add(ids_for(5, offset=9 * 10**12), identities(5, seed=11))  # appended after the moves
    assert len(prefilter) == kept + 5
    np.testing.assert_array_equal(index.search(every[left][-50:], 1)[1][:, 0], every_id[left][-50:])


def test_a_large_removal_drops_the_prefilter_until_the_next_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefilters, "MAX_FOLLOWED_REMOVALS", 100)
    x, ids = identities(N), ids_for(N)
    index = prefiltered(x, ids)
    gone = ids[:300]
    assert index.remove(gone) == 300
    assert not index.prefiltered  # every search scans all meanwhile
    assert not np.isin(index.search(x[:300], 10)[1], gone).any()
    assert index.wait_prefilter(DEADLINE_S) and len(index._prefilter) == N - 300
    assert not np.isin(index.search(x[:300], 10)[1], gone).any()
    np.testing.assert_array_equal(index.search(x[300:400], 1)[1][:, 0], ids[300:400])


def test_a_removal_zeroes_the_codes_of_the_prefilter_it_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A code is a coarse copy of a face's template: none outlives the removal in memory."""
    monkeypatch.setattr(prefilters, "MAX_FOLLOWED_REMOVALS", 2)
    x, ids = identities(N), ids_for(N)
    index = prefiltered(x, ids)
    dropped = index._prefilter
    assert dropped is not None
    codes = dropped.code_bytes()
    assert codes.any()
    index.remove(ids[:3])
    assert not codes.any() and len(dropped) == 0
    index.close(DEADLINE_S)


def test_changes_while_a_prefilter_is_built_are_in_the_one_put_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, ids = identities(N), ids_for(N)
    held = Held(monkeypatch, prefilters, "top1_agreement", DEADLINE_S)
    index = TemplateIndex.build(D, ids[:2000], x[:2000], prefilter_above=1000)
    assert held.entered.wait(DEADLINE_S) and not index.prefiltered
    index.add(ids[2000:], x[2000:])  # appended to it once it is built
    held.release()
    assert index.wait_prefilter(DEADLINE_S) and len(index._prefilter) == N
    np.testing.assert_array_equal(index.search(x[2500:2600], 1)[1][:, 0], ids[2500:2600])


def test_a_removal_while_a_prefilter_is_built_supersedes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    x, ids = identities(N), ids_for(N)
    held = Held(monkeypatch, prefilters, "top1_agreement", DEADLINE_S)
    index = TemplateIndex.build(D, ids, x, prefilter_above=1000)
    assert held.entered.wait(DEADLINE_S)
    first = index._prefilter_job
    assert index.remove(ids[:90]) == 90
    assert index._prefilter_job is not first  # a new one, over the rows left
    held.release()
    assert index.wait_prefilter(DEADLINE_S) and len(index._prefilter) == N - 90
    assert first is not None
    first.join(DEADLINE_S)
    assert not first.is_alive()
    assert not np.isin(index.search(x[:90], 10)[1], ids[:90]).any()
    np.testing.assert_array_equal(index.search(x[90:190], 1)[1][:, 0], ids[90:190])


def test_a_prefilter_that_misses_the_exact_top1_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(prefilters, "MIN_AGREEMENT", 1.01)  # no prefilter can pass
    x, ids = identities(N), ids_for(N)
    with caplog.at_level(logging.WARNING):
        index = TemplateIndex.build(D, ids, x, prefilter_above=1000)
        assert not index.wait_prefilter(DEADLINE_S)
    assert "every search scans all 3000 templates" in caplog.text
    index.add(ids_for(10, offset=7 * 10**12), identities(10, seed=3))
    assert index._prefilter_job is None  # refused once: not built again at every change
    np.testing.assert_array_equal(index.search(x[:50], 1)[1][:, 0], ids[:50])


def test_close_waits_for_a_prefilter_being_built(monkeypatch: pytest.MonkeyPatch) -> None:
    x, ids = identities(N), ids_for(N)
    held = Held(monkeypatch, prefilters, "top1_agreement", DEADLINE_S)
    index = TemplateIndex.build(D, ids, x, prefilter_above=1000)
    assert held.entered.wait(DEADLINE_S)
    assert not index.close(0.05)  # still held
    held.release()
    assert index.close(DEADLINE_S) and not index.prefiltered  # ended, and not put in use


def test_the_gallery_builds_a_prefilter_from_its_configuration(tmp_path: Path) -> None:
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        for number in range(600):
            store.add(f"p{number}", f"P {number}", "m@1", unit_vectors(2, 100 + number, dim=D))

    def opened(prefilter_above: int) -> Gallery:
        config = validate_config(
            {"storage": {"dir": str(tmp_path)}, "gallery": {"prefilter_above": prefilter_above}}
        )
        return Gallery.open(config, "m@1", D)

    with opened(1000) as gallery:
        assert gallery._index is not None and gallery._index.wait_prefilter(DEADLINE_S)
        hits = gallery.search(unit_vectors(2, 107, dim=D)[:1], 1)
        assert hits[0][0].identity_id == "p7"
    with opened(2000) as gallery:  # 1 200 templates: under it
        assert gallery._index is not None and not gallery._index.wait_prefilter(DEADLINE_S)
