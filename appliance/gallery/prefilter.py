"""A first pass for the exact index that fits in the CPU's cache: 4-bit product-quantised codes of
its templates, searched with Faiss's fast scan, pick the candidates its own rows then score.

An exact scan reads every template: 25.6 MB per query at 10⁵ float16 templates of 128 values.
Where that outgrows the last-level cache, or Faiss's float16 kernel is slow, the scan costs
milliseconds (4.2 / 4.5 ms p50 / p99 on the 2-core AMD EPYC development VM with its 8 MiB L3,
2026-12-06). Here each template also has a 32-byte code (64 sub-vectors of 2 values, 16 centroids
each: ``IndexPQFastScan(d, d/2, 4)``), 3.2 MB at 10⁵; the fast scan ranks every code against the
query with SIMD table lookups, and the :data:`CANDIDATES` best rows are scored exactly from the
index's own float16 (or float32) rows: 0.7 / 0.9 ms at 10⁵ on that VM, with the top-1 of an exact
scan on every one of 500 enrolled people's new captures and 500 strangers (a one-off script,
identity-like synthetic templates as in ``bench.gallery``). The scores reported are the exact
ones; only the choice of candidates is approximate, and it is measured each time a prefilter is
built (:func:`top1_agreement`): one that does not find the exact scan's top-1 on at least
:data:`MIN_AGREEMENT` of its probes is not used.

The candidates are scored inside Faiss (``IndexRefine`` over the codes and the exact index's
storage, :meth:`Prefilter.score_from`): gathering 256 float16 rows into NumPy and casting them cost
0.12 ms a query, and each NumPy view of Faiss's buffers 0.03 ms, on the VM above, a quarter of the
search at 2·10⁴ templates.

Rows: a prefilter's row i is the exact index's storage position i. The owner
(:class:`~.index.TemplateIndex`) appends to both together; a removal moves the last rows of the
exact index into the removed ones' places, and the prefilter's codes make the same moves
(:meth:`Prefilter.remove_rows`: a few microseconds a row, where building another took 0.9 s at 10⁵
templates with searches scanning every row meanwhile). A removal of more than
:data:`MAX_FOLLOWED_REMOVALS` templates drops it instead (:meth:`Prefilter.wipe`), and another is
built from the rows left.
"""

from __future__ import annotations

from typing import Any, Optional

import faiss
import numpy as np

#: Rows scored exactly per query (at least; 8·k for k results).
CANDIDATES = 256
#: Templates the codebooks are trained on, at most (0.8 s at 64 sub-vectors on one core).
TRAINING_ROWS = 20_000
#: Fewest templates to train on: 16 centroids per sub-vector want about 40 points each.
MIN_TRAINING_ROWS = 640
#: Probes whose top-1 is compared with an exact scan's when a prefilter is built: half perturbed
#: templates (a new capture of someone enrolled), half random directions (a stranger).
PROBES = 400
#: Share of the probes whose exact top-1 the prefilter must find for it to be used.
MIN_AGREEMENT = 0.995
#: Templates encoded at a time (float32 temporaries bounded).
_CHUNK_ROWS = 16_384
#: Rows removed at once whose codes are moved one by one (each a few microseconds, searches waiting);
#: past this the prefilter is dropped and built again on its own thread.
MAX_FOLLOWED_REMOVALS = 1024


class Prefilter:
    """Candidate rows for one query, from a 32-byte code per template (``d = 128``), in row order.

    Not thread-safe by itself: its owner reads and changes it under the exact index's lock.
    """

    def __init__(self, fast_scan: faiss.IndexPQFastScan) -> None:
        self._codes = fast_scan
        self._scored: Optional[faiss.IndexRefine] = None  # codes, then the rows: see score_from

    @classmethod
    def trained(cls, sample: np.ndarray) -> Prefilter:
        """A prefilter with no rows, its codebooks trained on ``sample``: (m, d) float32 unit rows, m ≥
        :data:`MIN_TRAINING_ROWS` (the first :data:`TRAINING_ROWS` are used). d must be even."""
        dim = sample.shape[1]
        if dim % 2 or sample.shape[0] < MIN_TRAINING_ROWS:
            raise ValueError(
                f"a prefilter needs an even dimension and {MIN_TRAINING_ROWS} rows, got {sample.shape}"
            )
        fast_scan = faiss.IndexPQFastScan(dim, dim // 2, 4, faiss.METRIC_INNER_PRODUCT)
        fast_scan.train(np.ascontiguousarray(sample[:TRAINING_ROWS], dtype=np.float32))
        return cls(fast_scan)

    def emptied(self) -> Prefilter:
        """A prefilter with the same codebooks and no rows (call it on one that has none: a clone
        copies the codes too). Encoding 10⁵ templates takes 0.34 s, training 0.8 s."""
        return Prefilter(faiss.clone_index(self._codes))

    def __len__(self) -> int:
        return int(self._codes.ntotal)

    def add(self, rows: np.ndarray) -> None:
        """Append rows: (n, d) float16 or float32 (unit vectors), encoded by chunks. Once bound to the
        exact storage (:meth:`score_from`), call it after the storage's own addition."""
        for start in range(0, rows.shape[0], _CHUNK_ROWS):
            part = np.ascontiguousarray(rows[start : start + _CHUNK_ROWS], dtype=np.float32)
            self._codes.add(part)
        if self._scored is not None:
            exact_rows = int(self._scored.refine_index.ntotal)
            if exact_rows != len(self):
                raise ValueError(f"prefilter rows {len(self)} and exact rows {exact_rows} differ")
            self._scored.ntotal = len(self)  # IndexRefine refuses candidates past the count it knows

    def remove_rows(self, holes: np.ndarray, movers: np.ndarray, kept: int) -> None:
        """Follow the exact index's removal (``_remove_rows`` in :mod:`.index`): the code of row
        ``movers[i]`` moves to row ``holes[i]`` (``(h,) int64`` each), then the rows from ``kept`` on
        are overwritten with zeros (a code is a coarse copy of a face's template) and dropped."""
        fast_scan = self._codes
        total = len(self)
        packer = fast_scan.get_CodePacker()  # codes are packed in blocks of 32 rows, interleaved
        table = fast_scan.codes.get()
        code = np.empty(fast_scan.code_size, np.uint8)
        for hole, mover in zip(holes.tolist(), movers.tolist()):
            packer.unpack_1_c(table, mover, faiss.swig_ptr(code))
            packer.pack_1_c(faiss.swig_ptr(code), hole, table)
        code.fill(0)
        for row in range(kept, total):
            packer.pack_1_c(faiss.swig_ptr(code), row, table)
        # Rows only at the end: Faiss moves none, and shrinks its count and table.
        fast_scan.remove_ids(faiss.IDSelectorRange(kept, total))
        if self._scored is not None:
            self._scored.ntotal = kept

    def score_from(self, storage: Any) -> None:
        """Score candidates from ``storage``: the exact index's own (an ``IndexFlat`` or float16
        ``IndexScalarQuantizer``, inner product), whose row i is this prefilter's row i, as many
        rows as this one has. It must outlive the binding: its owner drops the prefilter before
        replacing it."""
        scored = faiss.IndexRefine(self._codes, storage)  # Faiss checks d, metric and counts
        self._scored = scored

    def search(self, queries: np.ndarray, depth: int, scores: np.ndarray, rows: np.ndarray) -> None:
        """Fill ``scores`` ((q, k) float32, exact inner products, descending) and ``rows`` ((q, k)
        int64, -1 past what was found) for ``queries`` ((q, d) float32, C-contiguous unit rows):
        the k best of each query's ``depth`` candidates (depth ≥ k), scored from the storage bound
        by :meth:`score_from`."""
        scored = self._scored
        if scored is None:
            raise RuntimeError("a prefilter searched before score_from bound it to the exact rows")
        count, k = rows.shape
        scored.k_factor = (depth + 0.5) / k  # Faiss takes int(k · k_factor) candidates: depth
        scored.search_c(count, faiss.swig_ptr(queries), k, faiss.swig_ptr(scores), faiss.swig_ptr(rows))

    def candidates(self, query: np.ndarray, count: int) -> np.ndarray:
        """(≤ count,) int64: the rows whose codes score highest against ``query`` ((1, d) float32)."""
        scores = np.empty((1, count), dtype=np.float32)
        rows = np.empty((1, count), dtype=np.int64)
        self._codes.search_c(1, faiss.swig_ptr(query), count, faiss.swig_ptr(scores), faiss.swig_ptr(rows))
        found = rows[0]
        return found[found >= 0]

    def wipe(self) -> None:
        """Overwrite every code with zeros (a code is a coarse copy of a face's template) and drop the
        rows; the codebooks stay, and the buffer stays allocated until this prefilter is dropped."""
        table = self._codes.codes
        if table.size():
            faiss.rev_swig_ptr(table.get(), table.size())[:] = 0
        self._codes.ntotal = 0
        self._scored = None

    def code_bytes(self) -> np.ndarray:
        """(bytes,) uint8: a view of the packed codes, for tests that check :meth:`wipe`."""
        table = self._codes.codes
        return faiss.rev_swig_ptr(table.get(), table.size())


def top1_agreement(
    prefilter: Prefilter, stored: np.ndarray, probes: np.ndarray, best: np.ndarray, depth: int
) -> float:
    """Share of ``probes`` ((q, d) float32) whose exact top-1 score over ``stored`` ((n, d) float16
    or float32), ``best`` ((q,) float32), the prefilter reaches among its ``depth`` candidates (a tie
    within 1e-5 counts)."""
    if not probes.shape[0]:
        return 1.0
    found = 0
    for query, wanted in zip(probes, best):
        rows = prefilter.candidates(query[None, :], depth)
        if rows.shape[0] and float(np.max(stored[rows].astype(np.float32) @ query)) >= wanted - 1e-5:
            found += 1
    return found / probes.shape[0]
