"""Template search: inner product (= cosine) over L2-normalised embeddings, exact or HNSW by size.

The index is derived data (DESIGN §5.5): the encrypted template store is the truth, and whenever the
file below is missing, stale or damaged the caller rebuilds the index from the store.

Shapes and dtypes follow Faiss: ``x: (n, d) float32, C-contiguous; ids: (n,) int64; -1 means no
match``. Inputs of other float or integer dtypes are converted; every vector is L2-normalised on a
copy (``faiss.normalize_L2`` works in place), so scores are cosine similarities in [-1, 1].

Two kinds of index, chosen by the number of templates, each storing its templates in the
``precision`` asked for (``gallery.index_precision``):

``exact``  a scan of every template. ``float16`` (the appliance's default):
           ``IndexIDMap(IndexScalarQuantizer(d, QT_fp16))``, 2·d bytes per template; float32:
           ``IndexIDMap(IndexFlatIP(d))``, 4·d. Bandwidth-bound: one query reads n·d·2 (or ·4) bytes
           (100 k × 128: 26 MB, or 51 MB), so float16 is about twice as fast. A float16 score is
           within 2⁻¹¹ ≈ 0.00049 of the float32 one (:data:`FLOAT16_SCORE_BOUND`: each component is
           rounded to 11 significant bits, and Σ|qᵢ||xᵢ| ≤ 1 for unit vectors), so the top-1 can differ
           from float32's only between templates within 0.001 of each other — far inside the decision
           margin that must separate the best identity from the runner-up. A removal edits it in
           place: the last templates move into the removed ones' rows (a scan does not care about
           order) and the rows given up are zeroed, so searches wait for a few row copies, not for
           the whole index to shift: 0.2 ms at 10⁵ templates, where Faiss's ``remove_ids`` with
           ``IndexIDMap2``'s reverse map held them 8.5–8.9 ms (16 ms at 2·10⁵). From
           ``prefilter_above`` templates a search goes through a prefilter (:mod:`.prefilter`): a
           32-byte code per row picks 256 candidates, which the rows score exactly. It is built on
           a thread of its own, follows additions, and makes a removal's row moves in its codes
           (rebuilt instead after one of more than ``prefilter.MAX_FOLLOWED_REMOVALS`` rows).
``hnsw``   above ``approximate_above`` templates, a graph search whose breadth is ``ef_search``
           (``gallery.hnsw_ef_search``): ``IndexIDMap(IndexHNSWSQ(d, QT_fp16, M))`` in float16,
           ``IndexIDMap(IndexHNSWFlat(d, M))`` in float32, inner product; the graph adds ≈ 8·M bytes
           per template. Scores are the inner products (float16-bounded as above) of the templates
           it finds, but it may miss the best one; :func:`measure_recall` says how often (logged
           whenever one is built). ``ef_construction`` (200) builds a graph that reaches a given
           recall with about half the breadth that 100 needs (``python -m bench.gallery``), at twice
           the build time. Faiss's HNSW cannot remove vectors, so a removal *detaches* the node: its
           stored vector is overwritten with zeros, its id becomes -1, its own links are cleared and
           every link to it is taken out of its neighbours' lists (which stay packed, as Faiss's
           search reads them), so no search can reach it and nothing of the removed face is left
           in memory or in the next file. That costs a scan of the graph's links, linear in the
           graph (about 10 ms per identity at 10⁵ templates on the 2-core AMD host), instead of a
           rebuild (minutes at 10⁶); the scan only reads the graph, so searches go on meanwhile and
           wait only for the edit of the lists it found (:func:`_detachment`). The graph keeps the
           detached nodes' slots, and their neighbours keep one link fewer each, until detached
           nodes pass :data:`MAX_DETACHED_SHARE` of it: that removal detaches its nodes too, and
           has the graph rebuilt from the kept vectors on a thread of its own (below). One that
           leaves no more than ``approximate_above`` templates rebuilds the index as exact, at once
           (a copy, not a graph). A saved HNSW index is used in the precision it was built in (a
           rebuild of a large graph takes minutes); an exact one of another precision is stale and
           rebuilt. A saved exact index above ``approximate_above`` (saved while its graph was being
           built, or the threshold lowered since) is used, and the graph built on its own thread.

Building a graph takes minutes at 10⁶ templates (667 s on two cores of the development Xeon), so
it never holds the change that asks for it: the addition that takes the index past
``approximate_above`` returns with the exact index holding it, and a removal past the detached share
once its nodes are detached. The graph is built on a thread of its own (``gallery-index-rebuild``,
on half the cores: the door's frames need the rest), from a copy of the live templates; searches and
changes go on with the live index meanwhile, the changes are replayed on the new graph (additions
added, removals detached) and it is swapped in, then :attr:`TemplateIndex.on_rebuilt` runs (the
gallery saves a snapshot). A rebuild that removals made needless (the index back under
``approximate_above``) is dropped; :meth:`TemplateIndex.close` stops one between two chunks of
templates. An index loaded from a file, or built with ``graph_later`` (an exact index whatever its
size), starts no rebuild until its owner calls :meth:`TemplateIndex.rebuild_if_due`, which starts
the one it is due: so a gallery opening over 10⁶ templates serves with an exact index at once.

Persistence (:meth:`TemplateIndex.save`, :meth:`TemplateIndex.load`): one file, the snapshot; the
gallery appends enrolments to a delta file beside it (:mod:`.delta`). Format, little-endian::

    8 bytes   magic b"FAGALIDX"
    uint16    format version (3; versions 1 and 2 are still read)
    uint32    header length H
    H bytes   header, UTF-8 JSON: model_version, generation, count, dim, kind, payload_bytes,
              payload_sha256, approximate_above, ef_search, hnsw_m, ef_construction, snapshot_id
              (32 hex digits, since version 2: what a delta names to extend this snapshot), and
              ``detached`` (HNSW nodes of removed templates, id -1; absent means 0): the payload
              holds count + detached vectors
    uint32    CRC-32 of the H header bytes
    payload   ``faiss.write_index`` of the IndexIDMap, payload_bytes long, then end of file

Versions 1 and 2 held an ``IndexIDMap2``: the same, with a reverse map from id to row that nothing
here reads, which cost a hash map entry per template in memory and a rebuild of that map at every
removal. Such a payload is read and taken over by an ``IndexIDMap`` (no copy of the templates), and
the next save writes version 3.

An unknown version, kind or storage is refused (IndexCorruptError): the gallery rebuilds from the
store. The file is written atomically (:func:`engines.files.atomic_writer`) and streamed through Faiss's
Python I/O callbacks in both directions, so saving or loading never holds a second copy of the index
in memory. Thread safety: every method may be called from any thread; searches run against the
current index while a rebuild (an HNSW removal past :data:`MAX_DETACHED_SHARE`, or growth past
``approximate_above``) builds its replacement, which is swapped in before the call returns; an
exact removal and an HNSW detachment edit the index in place while holding searches off (a
detachment's scan for the links to edit comes before, with searches going on).
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import struct
import threading
import time
import zlib
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, Union

import faiss
import numpy as np

from engines.files import atomic_writer

from . import prefilter as prefilters
from .errors import GalleryError
from .prefilter import Prefilter

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

EXACT = "exact"
HNSW = "hnsw"
KINDS = (EXACT, HNSW)
FLOAT32 = "float32"
FLOAT16 = "float16"
PRECISIONS = (FLOAT32, FLOAT16)

DEFAULT_APPROXIMATE_ABOVE = 200_000
#: From this many templates an exact index searches through a prefilter (:mod:`.prefilter`): at 10⁴
#: float16 templates a full scan costs 0.38 ms on the development VM, the prefilter 0.21 ms; at
#: 5·10³ 0.21 and 0.18 ms, where its build and 32 B per template are not worth it.
DEFAULT_PREFILTER_ABOVE = 10_000
#: HNSW search breadth: with efConstruction 200, recall@1 ≥ 0.99 at 10⁶ identity-like templates
#: (``python -m bench.gallery --large``).
DEFAULT_EF_SEARCH = 192
#: HNSW graph degree (level 0 keeps 2·M links: ≈ 8·M bytes per vector on top of the vector itself).
DEFAULT_HNSW_M = 32
#: HNSW construction breadth: higher builds a better graph, more slowly (200: the ef_search that
#: reaches recall@1 0.99 at 10⁶ templates halves against 100, for twice the build time).
DEFAULT_EF_CONSTRUCTION = 200
#: Perturbed stored templates used to measure an HNSW index's recall@1 when it is built (0: skip).
DEFAULT_RECALL_SAMPLE = 1000
#: Recall@1 below which building an HNSW index logs a warning.
RECALL_WARNING_BELOW = 0.99
#: Largest difference between a float16 score and the float32 one, for unit vectors (2⁻¹¹).
FLOAT16_SCORE_BOUND = 2.0**-11
MAX_K = 1024
MAX_DIM = 65_536

MAGIC = b"FAGALIDX"
#: Version 2 adds the header field ``snapshot_id``, which binds a delta file to its snapshot
#: (:mod:`.delta`); version 3's payload is an ``IndexIDMap`` where 1 and 2 had an ``IndexIDMap2``
#: (the same, with a reverse map). Versions 1 (without a delta) and 2 are still read; this software
#: writes version 3, which software that reads only 1 and 2 refuses, and rebuilds from the store.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_PREFIX = struct.Struct("<8sHI")
_CRC = struct.Struct("<I")
_MAX_HEADER_BYTES = 64 * 1024
_CHUNK_BYTES = 1 << 20
_HEADER_FIELDS = {
    "model_version": str,
    "generation": int,
    "count": int,
    "dim": int,
    "kind": str,
    "payload_bytes": int,
    "payload_sha256": str,
    "approximate_above": int,
    "ef_search": int,
    "hnsw_m": int,
    "ef_construction": int,
}
#: Fields a version-2 header has on top of the version-1 ones.
_HEADER_FIELDS_V2 = {"snapshot_id": str}
#: Links of an HNSW graph scanned at a time when nodes are detached (int32: 1 MB, which stays in the
#: cache while it is compared with each node).
_LINK_CHUNK = 1 << 18
#: Up to this many detached at once, the links are compared with each node in turn (14 ms per node
#: at 10⁶ templates on the 2-core AMD host); more are looked up in a table of the detached nodes
#: (about 0.3 s there, whatever their number).
_COMPARED_NODES = 16
#: The id a detached HNSW node keeps (a removed template's; Faiss's own "no match").
DETACHED_ID = -1
#: The share of an HNSW graph's nodes that may be detached (removed templates) before a removal
#: has the graph rebuilt: each detached node leaves its neighbours one link short.
MAX_DETACHED_SHARE = 0.1
#: Templates added to a graph being rebuilt on its own thread at a time; between two, the rebuild
#: checks that it is still wanted (a stop, a newer index). About a second of one core at 10⁶.
_REBUILD_CHUNK = 1024
_SNAPSHOT_ID_HEX = 32
#: Noise added to stored templates to make recall probes (relative norm ≈ 0.75: cosine ≈ 0.8 to the
#: template, about what a new capture of an enrolled person scores).
_PROBE_NOISE = 0.75
_TIE_TOLERANCE = 1e-5
#: Rows of a whole gallery handled at a time (normalising, exact top-k, reading vectors back), so that
#: numpy's temporaries do not grow with the gallery.
_CHUNK_ROWS = 16_384


class _RebuildAbandonedError(Exception):
    """A rebuild on its own thread was stopped between two chunks (:meth:`TemplateIndex.close`, or a
    newer index replaced the one it was for)."""


class _Rebuild:
    """A replacement index being built on a thread of its own, and the changes made meanwhile to the
    live index, in order: ``(ids, vectors)`` for an addition, ``(ids, None)`` for a removal."""

    def __init__(self) -> None:
        self.changes: List[Tuple[np.ndarray, Optional[np.ndarray]]] = []
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def forget(self, ids: np.ndarray) -> None:
        """Record a removal; vectors of these ids added meanwhile are zeroed (nothing of a removed
        face stays in memory) and detached from the replacement once it is built."""
        for added, vectors in self.changes:
            if vectors is not None:
                vectors[np.isin(added, ids)] = 0.0
        self.changes.append((ids, None))


class GalleryIndexError(GalleryError):
    """The saved template index cannot be used; the caller rebuilds it from the template store."""


class IndexMissingError(GalleryIndexError, FileNotFoundError):
    """There is no saved index file (first start, or it was deleted)."""


class IndexStaleError(GalleryIndexError):
    """A well-formed index file built for another embedding model version or store generation.

    Example scenarios: the embedder was swapped over CAN; templates were enrolled or removed after
    the index was saved and the process died before saving it again.
    """


class IndexCorruptError(GalleryIndexError):
    """An index file that is not one: wrong magic or format version, a damaged or inconsistent
    header, a checksum mismatch, or a payload Faiss cannot read.

    Example scenarios: a file truncated by power loss on a medium that ignores fsync, a flipped bit,
    an empty file, some other file under the index's name.
    """


def _check_int(value: object, name: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        upper = f" and ≤ {high}" if high is not None else ""
        raise ValueError(f"{name} must be ≥ {low}{upper}, got {number}")
    return number


def as_ids(ids: Any, name: str = "ids") -> np.ndarray:
    """Validate template ids and return them as ``(n,) int64``, C-contiguous.

    Accepts any integer array or sequence whose values fit in int64 and are ≥ 0 (-1 means no
    match in results, so negative ids are refused). Floats, booleans and other types are refused
    rather than truncated.
    """
    try:
        array = np.asarray(ids)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: not an array of integers ({err})") from err
    if array.ndim != 1:
        raise ValueError(f"{name}: expected shape (n,), got {array.shape}")
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    kind = array.dtype.kind
    if kind == "O":
        try:
            values = [operator.index(value) for value in array]
            array = np.array(values, dtype=np.int64)
        except (TypeError, OverflowError) as err:
            raise ValueError(f"{name}: every id must be an integer that fits in int64 ({err})") from err
    elif kind == "u":
        if int(array.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"{name}: id {int(array.max())} does not fit in int64")
    elif kind != "i":
        raise ValueError(f"{name}: ids must be integers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.int64)
    if int(array.min()) < 0:
        raise ValueError(f"{name}: ids must be ≥ 0 (-1 means no match), got {int(array.min())}")
    return array


def _duplicates(ids: np.ndarray) -> np.ndarray:
    ordered = np.sort(ids)
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])


def as_unit_vectors(vectors: Any, dim: int, name: str = "vectors") -> np.ndarray:
    """Validate embeddings and return an L2-normalised copy: ``(n, dim) float32``, C-contiguous.

    Refuses a wrong rank or dimension, non-numeric dtypes, non-finite values (including float64
    values beyond float32's range), zero vectors and vectors whose norm float32 cannot hold. The
    input is never modified.
    """
    try:
        array = np.asarray(vectors)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: not an array of numbers ({err})") from err
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a float array, got dtype {array.dtype}")
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (n, {dim}), got {array.shape}")
    rows = array.shape[0]
    unit = np.empty((rows, dim), dtype=np.float32)
    # Every frame's search comes this way right after the embedder, whose run leaves the caches
    # cold: then each numpy call costs several microseconds, and one the frame has not made yet
    # (isfinite, einsum, Faiss's own normalisation) 13–35. So the norms are taken as the embedder
    # takes them, and one row norm carries every fault: NaN or inf anywhere makes it NaN or inf, a
    # zero vector makes it 0, float32 values of 1.8e19 or more overflow it (with numpy's warning).
    for start in range(0, rows, _CHUNK_ROWS):
        part = array[start : start + _CHUNK_ROWS]
        if part.dtype != np.float32:
            with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range → inf, refused below
                part = part.astype(np.float32)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        if not (norms.min() > 0 and norms.max() < np.inf):
            _refuse_rows(part, norms[:, 0], name, start)
        np.divide(part, norms, out=unit[start : start + _CHUNK_ROWS])
    return unit


def _refuse_rows(x: np.ndarray, norms: np.ndarray, name: str, first_row: int) -> None:
    """Raise for the first row of ``x`` ((n, d) float32, L2 norms ``(n,)``; row ``first_row`` of the
    caller's array) that cannot be normalised."""
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = first_row + int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name}: row {row} has non-finite values (NaN, inf, or beyond float32)")
    if not (norms > 0).all():
        row = first_row + int(np.flatnonzero(~(norms > 0))[0])
        raise ValueError(f"{name}: row {row} is a zero vector (cannot be normalised)")
    row = first_row + int(np.flatnonzero(~(norms < np.inf))[0])
    raise ValueError(
        f"{name}: row {row}'s norm is beyond float32's range (1.8e19 or more); scale the vector down"
    )


def _new_faiss_index(
    kind: str, dim: int, hnsw_m: int, ef_construction: int, ef_search: int, precision: str = FLOAT32
) -> Any:
    """An empty ``IndexIDMap`` of the given kind and storage precision that owns its inner index."""
    if kind == EXACT and precision == FLOAT16:
        inner = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    elif kind == EXACT:
        inner = faiss.IndexFlatIP(dim)
    else:
        if precision == FLOAT16:
            inner = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = ef_construction
        inner.hnsw.efSearch = ef_search
    index = faiss.IndexIDMap(inner)
    inner.this.disown()  # the C++ IndexIDMap deletes it, as for an index read from a file
    index.own_fields = True
    return index


def _kind_of(index: Any) -> Optional[str]:
    """``exact``, ``hnsw``, or None when the Faiss index is not one this module builds."""
    if not isinstance(index, faiss.IndexIDMap):
        return None
    inner = faiss.downcast_index(index.index)
    if inner.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    if isinstance(inner, faiss.IndexHNSWFlat):
        return HNSW
    if isinstance(inner, faiss.IndexHNSWSQ) and _is_fp16(faiss.downcast_index(inner.storage)):
        return HNSW
    if isinstance(inner, faiss.IndexFlatIP) or _is_fp16(inner):
        return EXACT
    return None


def _is_fp16(index: Any) -> bool:
    return (
        isinstance(index, faiss.IndexScalarQuantizer)
        and index.sq.qtype == faiss.ScalarQuantizer.QT_fp16
        and index.metric_type == faiss.METRIC_INNER_PRODUCT
    )


def _precision_of(index: Any) -> str:
    """``float16`` for templates stored as float16 (exact or HNSW), else ``float32``."""
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSWSQ):
        return FLOAT16
    return FLOAT16 if isinstance(inner, faiss.IndexScalarQuantizer) else FLOAT32


def _stored_ids(index: Any) -> np.ndarray:
    """``(ntotal,) int64``: the id of each stored vector, in storage order (:data:`DETACHED_ID` for a
    detached HNSW node)."""
    return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)


def _links_to(neighbors: np.ndarray, nodes: np.ndarray, gone: np.ndarray) -> np.ndarray:
    """``(m,) int64``: the slots of ``neighbors`` (an HNSW graph's links, ``(slots,) int32``) that
    lead to one of ``nodes`` (``(n,) int64``), which ``gone`` marks too (``(total + 1,) bool``, indexed
    by node + 1, so that a list's -1 padding reads False). Reads the graph only: searches may go on
    meanwhile."""
    # In chunks: at 10⁶ templates the links are 260 MB, and a whole-array temporary would double
    # that on a Jetson. Python ints keep the comparisons in int32 (a NumPy int64 would widen them).
    compared = [int(node) for node in nodes] if nodes.shape[0] <= _COMPARED_NODES else None
    found = np.empty(_LINK_CHUNK, bool)
    one = np.empty(_LINK_CHUNK, bool)
    links = [np.zeros(0, np.int64)]
    for start in range(0, neighbors.shape[0], _LINK_CHUNK):
        chunk = neighbors[start : start + _LINK_CHUNK]
        mask, other = found[: chunk.shape[0]], one[: chunk.shape[0]]
        if compared is None:
            np.take(gone, chunk + 1, out=mask)
        else:
            mask.fill(False)
            for node in compared:
                mask |= np.equal(chunk, node, out=other)
        links.append(np.flatnonzero(mask) + start)
    return np.concatenate(links)


def _detachment(index: Any, nodes: np.ndarray) -> Callable[[], None]:
    """The edit that takes ``nodes`` (``(n,) int64``, positions in storage order) out of an HNSW
    ``IndexIDMap``, in place: once it has run no link leads to them or from them, their vectors are
    zeros and their ids :data:`DETACHED_ID`.

    This finds the links to the nodes — a scan of the graph, linear in it (a removal of one identity
    took 74 ms at 10⁶ templates on the 2-core AMD host) — and works out the lists that lose them. That only reads
    the graph, so searches go on meanwhile; the caller keeps every other change out until the edit
    has run (the writer lock), so the graph cannot change in between. The edit writes what was
    worked out, and is all that searches must wait for. Faiss's search reads a node's neighbour
    list up to its first -1, so each list that loses a link is packed again. Where the graph's
    entry point goes, the remaining node on the most levels takes its place.
    """
    inner = faiss.downcast_index(index.index)
    hnsw = inner.hnsw
    total = int(index.ntotal)
    neighbors = faiss.rev_swig_ptr(hnsw.neighbors.data(), hnsw.neighbors.size())  # (slots,) int32, in place
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)  # (total + 1,) node i's first slot
    levels = faiss.vector_to_array(hnsw.levels)  # (total,) int32: levels node i is on
    gone = np.zeros(total + 1, bool)  # indexed by node + 1, so that a list's -1 padding reads False
    gone[nodes + 1] = True
    # Every list holding a link to a detached node: its node, and its level from the node's slot.
    links = _links_to(neighbors, nodes, gone)
    owner = np.searchsorted(offsets, links, side="right") - 1
    first_slot = np.array([hnsw.cum_nb_neighbors(level) for level in range(int(levels.max()) + 1)], np.int64)
    level = np.searchsorted(first_slot, links - offsets[owner], side="right") - 1
    starts, first = np.unique(offsets[owner] + first_slot[level], return_index=True)
    lengths = first_slot[level + 1][first] - first_slot[level][first]
    # Each list packed again without the detached links, kept ones in their order, grouped by length
    # (a level-0 list holds 2·M links, the others M): ((lists, length) slots, the same shape of links).
    packed_lists: List[Tuple[np.ndarray, np.ndarray]] = []
    for length in np.unique(lengths).tolist():
        slots = starts[lengths == length][:, None] + np.arange(length)
        links_of = neighbors[slots]
        kept = (links_of >= 0) & ~gone[links_of + 1]
        order = np.argsort(~kept, axis=1, kind="stable")
        packed = np.take_along_axis(links_of, order, axis=1)
        packed[~np.take_along_axis(kept, order, axis=1)] = -1
        packed_lists.append((slots, packed))
    # The detached nodes' own lists: node i's slots are offsets[i] .. offsets[i + 1].
    sizes = offsets[nodes + 1] - offsets[nodes]
    own = np.arange(int(sizes.sum())) + np.repeat(offsets[nodes] - (np.cumsum(sizes) - sizes), sizes)
    reach = np.where(gone[1:], -1, levels) if gone[hnsw.entry_point + 1] else None
    storage = faiss.downcast_index(inner.storage)
    codes = faiss.rev_swig_ptr(storage.codes.data(), storage.codes.size()).reshape(total, -1)
    id_map = faiss.rev_swig_ptr(index.id_map.data(), total)

    def edit() -> None:
        for slots, packed in packed_lists:
            neighbors[slots] = packed
        neighbors[own] = -1  # after the lists above: a detached node may have linked to another
        if reach is not None:
            hnsw.entry_point = int(reach.argmax())
            hnsw.max_level = int(reach[hnsw.entry_point]) - 1
        codes[nodes] = 0
        id_map[nodes] = DETACHED_ID

    return edit


def _remove_rows(index: Any, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """Take ``rows`` (ascending positions in storage order) out of an exact ``IndexIDMap``, in place;
    returns the moves made, ``(holes, movers, kept)``: row ``movers[i]`` went to ``holes[i]`` (both
    ``(h,) int64``), and the rows from ``kept`` on were dropped — what a prefilter follows.

    Faiss's ``remove_ids`` moves every later row down, a pass over the whole index while searches
    wait. A scan does not care about order, so the last kept rows move into the removed ones'
    places instead: as many row copies as rows removed. The rows given up are zeroed before the
    arrays shrink (a vector keeps its capacity), so nothing of a removed face stays in memory. The
    caller holds searches off.
    """
    inner = faiss.downcast_index(index.index)
    total = int(index.ntotal)
    kept = total - rows.shape[0]
    codes = faiss.rev_swig_ptr(inner.codes.data(), inner.codes.size()).reshape(total, -1)
    id_map = faiss.rev_swig_ptr(index.id_map.data(), total)
    holes = rows[rows < kept]
    movers = np.setdiff1d(np.arange(kept, total), rows, assume_unique=True)  # as many as the holes
    codes[holes] = codes[movers]
    id_map[holes] = id_map[movers]
    codes[kept:] = 0
    inner.codes.resize(kept * inner.code_size)
    index.id_map.resize(kept)
    inner.ntotal = kept
    index.ntotal = kept
    return holes, movers, kept


def _without_reverse_map(index: Any) -> Any:
    """The Faiss index of a file: an ``IndexIDMap2`` (formats 1 and 2) taken over by an ``IndexIDMap``
    over the same inner index and ids, without its reverse map; any other index as it is."""
    if not isinstance(index, faiss.IndexIDMap2):
        return index
    inner = index.index
    total = inner.ntotal
    inner.ntotal = 0  # Faiss wraps only an empty index; the rows are the same either way
    try:
        plain = faiss.IndexIDMap(inner)
    finally:
        inner.ntotal = total
    faiss.copy_array_to_vector(faiss.vector_to_array(index.id_map), plain.id_map)
    plain.ntotal = index.ntotal
    index.own_fields, plain.own_fields = False, True  # the inner index changes hands
    return plain


def exact_top_k(
    vectors: np.ndarray, queries: np.ndarray, k: int, chunk_rows: int = _CHUNK_ROWS
) -> Tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k with numpy (BLAS), in chunks of stored rows.

    vectors: (n, d) float32; queries: (q, d) float32. Returns scores (q, k) float32, descending,
    and row numbers (q, k) int64 into ``vectors``; -inf and -1 where n < k.
    """
    q = queries.shape[0]
    best_scores = np.full((q, k), -np.inf, dtype=np.float32)
    best_rows = np.full((q, k), -1, dtype=np.int64)
    for start in range(0, vectors.shape[0], chunk_rows):
        scores = queries @ vectors[start : start + chunk_rows].T
        take = min(k, scores.shape[1])
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        merged_rows = np.concatenate([best_rows, top + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_rows = np.take_along_axis(merged_rows, keep, axis=1)
    return best_scores, best_rows


def measure_recall(index: TemplateIndex, exact_vectors: Any, ids: Any, queries: Any, k: int = 1) -> float:
    """Recall@k of ``index`` against exact search over the same templates.

    exact_vectors: (n, d) float32, the templates ``index`` holds (normalised here on a copy);
    ids: (n,) int64, their ids; queries: (q, d) float32. For each query, a result counts when it is
    one of the exact top k, where a template whose true similarity equals the k-th best within 1e-5
    also counts (duplicate templates tie). Returns hits / (q · min(k, n)); 1.0 when there is nothing
    to find.
    """
    k = _check_int(k, "k", 1, MAX_K)
    vectors = as_unit_vectors(exact_vectors, index.dim, "exact_vectors")
    id_array = as_ids(ids)
    if id_array.shape[0] != vectors.shape[0]:
        raise ValueError(f"ids: {id_array.shape[0]} ids for {vectors.shape[0]} exact_vectors")
    return _recall(index, vectors, id_array, as_unit_vectors(queries, index.dim, "queries"), k)


def _recall(
    index: TemplateIndex, vectors: np.ndarray, id_array: np.ndarray, probes: np.ndarray, k: int
) -> float:
    """:func:`measure_recall` on inputs already validated and normalised (no copy of ``vectors``)."""
    wanted = min(k, vectors.shape[0])
    if wanted == 0 or probes.shape[0] == 0:
        return 1.0
    exact_scores, _ = exact_top_k(vectors, probes, wanted)
    threshold = exact_scores[:, wanted - 1] - _TIE_TOLERANCE
    _, found = index.search(probes, k)
    order = np.argsort(id_array, kind="stable")
    sorted_ids = id_array[order]
    hits = 0
    for row in range(probes.shape[0]):
        candidates = np.unique(found[row][found[row] >= 0])
        where = np.searchsorted(sorted_ids, candidates)
        where = np.minimum(where, sorted_ids.shape[0] - 1)
        known = sorted_ids[where] == candidates
        true_scores = vectors[order[where[known]]] @ probes[row]
        hits += min(wanted, int(np.count_nonzero(true_scores >= threshold[row])))
    return hits / (probes.shape[0] * wanted)


def probe_queries(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Perturbed copies of ``count`` stored templates, for recall probes: (count, d) float32, unit.

    Each is a template plus isotropic Gaussian noise of relative norm ≈ 0.75 (cosine ≈ 0.8 to
    the template), renormalised: roughly how a new capture of an enrolled person scores.
    """
    rng = np.random.default_rng(seed)
    n, d = vectors.shape
    rows = rng.choice(n, size=min(count, n), replace=False)
    noise = rng.standard_normal((rows.shape[0], d)).astype(np.float32) * (_PROBE_NOISE / np.sqrt(d))
    probes = np.ascontiguousarray(vectors[rows] + noise, dtype=np.float32)
    faiss.normalize_L2(probes)
    return probes


def _prefilter_probes(rows: np.ndarray, count: int = prefilters.PROBES) -> np.ndarray:
    """(count, d) float32 unit probes for a prefilter's check: half new captures of stored rows
    (:func:`probe_queries`), half random directions (strangers, whose best templates crowd)."""
    captures = probe_queries(rows, count // 2)
    strangers = np.random.default_rng(1).standard_normal((count - captures.shape[0], rows.shape[1]))
    strangers = np.ascontiguousarray(strangers, dtype=np.float32)
    faiss.normalize_L2(strangers)
    return np.concatenate([captures, strangers])


class TemplateIndex:
    """Nearest-template search over L2-normalised embeddings by inner product (cosine).

    Holds an exact index up to ``approximate_above`` templates and an HNSW graph above (both storing
    the templates in ``precision``: see the module's docstring); it switches kind by rebuilding when
    an addition or removal crosses that size — to a graph on a thread of its own, to exact at once.
    Ids are the store's template ids: int64, ≥ 0, unique.
    """

    def __init__(
        self,
        dim: int,
        approximate_above: int = DEFAULT_APPROXIMATE_ABOVE,
        ef_search: int = DEFAULT_EF_SEARCH,
        *,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        recall_sample: int = DEFAULT_RECALL_SAMPLE,
        precision: str = FLOAT32,
        prefilter_above: int = DEFAULT_PREFILTER_ABOVE,
    ) -> None:
        """An empty exact index for ``dim``-dimensional embeddings (use :meth:`build` to fill one)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self._dim = _check_int(dim, "dim", 1, MAX_DIM)
        self.approximate_above = _check_int(approximate_above, "approximate_above", 1)
        self._ef_search = _check_int(ef_search, "ef_search", 1, 1 << 20)
        self.hnsw_m = _check_int(hnsw_m, "hnsw_m", 2, 512)
        self.ef_construction = _check_int(ef_construction, "ef_construction", 1, 1 << 20)
        self.recall_sample = _check_int(recall_sample, "recall_sample", 0)
        #: An exact index of at least this many templates searches through a prefilter, once built.
        self.prefilter_above = _check_int(prefilter_above, "prefilter_above", 1)
        #: recall@1 measured when the current HNSW index was built; None for exact or unmeasured.
        self.recall_at_1: Optional[float] = None
        self._index = _new_faiss_index(
            EXACT, self._dim, self.hnsw_m, self.ef_construction, self._ef_search, precision
        )
        self._kind = EXACT
        self._detached = 0  # HNSW nodes of removed templates still in the graph (see _detachment)
        self._index_lock = threading.Lock()  # held while the Faiss index is read or changed in place
        self._writer_lock = threading.Lock()  # serialises add, remove, save and a rebuild's swap
        self._rebuild: Optional[_Rebuild] = None  # a replacement being built on its own thread
        #: Loaded or built for a gallery (``graph_later``): rebuilds wait for :meth:`rebuild_if_due`,
        #: which the owner calls once the index is in place and ``on_rebuilt`` is set.
        self._rebuilds_held = False
        #: In use: a code per row of the exact index, in its order (None: every search scans all).
        self._prefilter: Optional[Prefilter] = None
        #: Codebooks trained for this index's templates (no rows): the next prefilter's.
        self._codebook: Optional[Prefilter] = None
        #: The thread building a prefilter; one no longer named here is superseded.
        self._prefilter_job: Optional[threading.Thread] = None
        #: A prefilter was built and did not find the exact top-1 often enough: scan every template.
        self._prefilter_refused = False
        #: Called on the rebuild's thread once a replacement built there is in use (the gallery saves
        #: it as a new snapshot); outside this index's locks.
        self.on_rebuilt: Optional[Callable[[], None]] = None

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        dim: int,
        ids: Any,
        vectors: Any,
        approximate_above: int = DEFAULT_APPROXIMATE_ABOVE,
        ef_search: int = DEFAULT_EF_SEARCH,
        *,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        recall_sample: int = DEFAULT_RECALL_SAMPLE,
        precision: str = FLOAT32,
        graph_later: bool = False,
        prefilter_above: int = DEFAULT_PREFILTER_ABOVE,
    ) -> TemplateIndex:
        """An index over ``vectors``: exact when n ≤ ``approximate_above``, HNSW above.

        ids: (n,) int64, ≥ 0, unique; vectors: (n, dim) float32 (normalised here on a copy).
        Building HNSW also measures its recall@1 on ``recall_sample`` perturbed templates and logs
        it (INFO; WARNING below 0.99). ``graph_later``: build the exact index whatever n (a copy of
        the templates: a second at 10⁶), so that a gallery opening over a store that calls for a
        graph serves at once; :meth:`rebuild_if_due` then builds the graph on its own thread.
        """
        index = cls(
            dim,
            approximate_above,
            ef_search,
            hnsw_m=hnsw_m,
            ef_construction=ef_construction,
            recall_sample=recall_sample,
            precision=precision,
            prefilter_above=prefilter_above,
        )
        id_array, x = index._validated(ids, vectors)
        index._rebuilds_held = graph_later
        if id_array.shape[0]:
            index._replace(id_array, x, EXACT if graph_later else None)
        return index

    def _validated(self, ids: Any, vectors: Any) -> Tuple[np.ndarray, np.ndarray]:
        id_array = as_ids(ids)
        x = as_unit_vectors(vectors, self._dim)
        if id_array.shape[0] != x.shape[0]:
            raise ValueError(f"{id_array.shape[0]} ids for {x.shape[0]} vectors")
        duplicated = _duplicates(id_array)
        if duplicated.size:
            raise ValueError(f"ids: duplicated ids {duplicated[:10].tolist()}")
        return id_array, x

    def _make(
        self,
        ids: np.ndarray,
        x: np.ndarray,
        stop: Optional[threading.Event] = None,
        kind: Optional[str] = None,
    ) -> Tuple[Any, str, Optional[float]]:
        """A new Faiss index over ``x`` (unit rows) of ``kind`` (None: the one its size calls for),
        not yet installed.

        With ``stop`` (a rebuild on its own thread) the templates go in by :data:`_REBUILD_CHUNK`,
        and :class:`_RebuildAbandonedError` is raised once ``stop`` is set.
        """
        if kind is None:
            kind = HNSW if ids.shape[0] > self.approximate_above else EXACT
        index = _new_faiss_index(
            kind, self._dim, self.hnsw_m, self.ef_construction, self._ef_search, self.precision
        )
        started = time.monotonic()
        step = ids.shape[0] if stop is None else _REBUILD_CHUNK
        for start in range(0, ids.shape[0], max(step, 1)):
            if stop is not None and stop.is_set():
                raise _RebuildAbandonedError()
            index.add_with_ids(x[start : start + step], ids[start : start + step])
        if kind == EXACT:
            logger.debug("exact index over %d templates built", ids.shape[0])
            return index, kind, None
        built_s = time.monotonic() - started
        recall = None
        if self.recall_sample:
            probe = TemplateIndex(self._dim, self.approximate_above, self._ef_search, recall_sample=0)
            probe._index, probe._kind = index, kind
            recall = _recall(probe, x, ids, probe_queries(x, self.recall_sample), 1)
        level = logging.WARNING if recall is not None and recall < RECALL_WARNING_BELOW else logging.INFO
        logger.log(
            level,
            "HNSW index over %d templates (M=%d, efConstruction=%d, efSearch=%d) built in %.1f s; "
            "recall@1 vs exact on %d perturbed templates: %s%s",
            ids.shape[0],
            self.hnsw_m,
            self.ef_construction,
            self._ef_search,
            built_s,
            min(self.recall_sample, ids.shape[0]),
            "not measured" if recall is None else f"{recall:.4f}",
            " (raise gallery.hnsw_ef_search)" if level == logging.WARNING else "",
        )
        return index, kind, recall

    def _replace(self, ids: np.ndarray, x: np.ndarray, kind: Optional[str] = None) -> None:
        """Build the index over ``ids``/``x`` on this thread and install it; a rebuild under way on
        its own thread is superseded (the caller holds the writer lock, or owns the index alone)."""
        index, kind, recall = self._make(ids, x, kind=kind)
        with self._index_lock:
            self._index, self._kind, self.recall_at_1 = index, kind, recall
            self._detached = 0
            self._drop_prefilter()
        self._abandon_rebuild()
        self._prefilter_later()

    # -- rebuilding on a thread of its own ------------------------------------------------------

    def _rebuild_later(self) -> None:
        """Start building an HNSW graph over the live templates on a thread of its own (the caller
        holds the writer lock): at 10⁶ templates that takes minutes, which neither the change that
        asks for it — an addition past ``approximate_above``, a removal past
        :data:`MAX_DETACHED_SHARE` — nor the changes and searches after it should wait for. They go
        on with the live index; the changes are replayed on the new graph before it is swapped in.
        One rebuild at a time: one under way already takes this change in with the others; none
        while rebuilds are held (:meth:`rebuild_if_due` starts the one due then; the same holds
        for a prefilter's build)."""
        if self._rebuild is not None or self._rebuilds_held:
            return
        stored = _stored_ids(self._index)
        keep = stored != DETACHED_ID if self._detached else None
        ids = stored if keep is None else np.ascontiguousarray(stored[keep])
        rebuild = _Rebuild()
        rebuild.thread = threading.Thread(
            target=self._build_replacement,
            args=(rebuild, ids, self._all_vectors(keep)),
            name="gallery-index-rebuild",
            daemon=True,
        )
        self._rebuild = rebuild
        logger.info(
            "rebuilding the gallery index as an HNSW graph over %d templates on its own thread "
            "(%d detached nodes); searching the one in memory meanwhile",
            ids.shape[0],
            self._detached,
        )
        rebuild.thread.start()

    def _build_replacement(self, rebuild: _Rebuild, ids: np.ndarray, x: np.ndarray) -> None:
        """The rebuild's thread: build, then replay the changes made meanwhile and swap it in."""
        # Half the cores (OpenMP's count is per thread): the door's frames need the rest meanwhile.
        faiss.omp_set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        try:
            index, kind, recall = self._make(ids, x, rebuild.stop)
        except _RebuildAbandonedError:
            logger.info("a rebuild of the gallery index was abandoned (stopped, or superseded)")
            return
        except Exception:  # the live index goes on serving; the next trigger tries again
            logger.exception("rebuilding the gallery index failed; searching the one in memory")
            with self._writer_lock:
                if self._rebuild is rebuild:
                    self._rebuild = None
            return
        finally:
            x.fill(0.0)  # this copy of the templates: nothing of one removed meanwhile stays in memory
        with self._writer_lock:
            if self._rebuild is not rebuild or rebuild.stop.is_set():
                return  # superseded: the live index was replaced meanwhile
            self._rebuild = None
            for changed, vectors in rebuild.changes:
                if vectors is not None:
                    index.add_with_ids(vectors, changed)
                else:
                    gone = np.flatnonzero(np.isin(_stored_ids(index), changed))
                    if gone.shape[0]:
                        _detachment(index, gone)()
            stored = _stored_ids(index)
            detached = int(np.count_nonzero(stored == DETACHED_ID))
            if stored.shape[0] - detached <= self.approximate_above:  # removals took it back under
                logger.info("the rebuilt gallery index is not needed any more (%d templates)", len(self))
                return
            with self._index_lock:
                self._index, self._kind, self.recall_at_1 = index, kind, recall
                self._detached = detached
                self._drop_prefilter()
        logger.info("the rebuilt gallery index is in use: %d templates", stored.shape[0] - detached)
        if self.on_rebuilt is not None:
            try:
                self.on_rebuilt()
            except Exception:  # the index in memory is right; only its file lags
                logger.exception("after the gallery index was rebuilt")

    def rebuild_if_due(self, on_rebuilt: Optional[Callable[[], None]] = None) -> bool:
        """Set :attr:`on_rebuilt`, let rebuilds start from now on, and start the one this index is
        due, if any; returns whether one is under way.

        An index loaded from a file, or built with ``graph_later``, holds its rebuilds until this is
        called: its owner calls it once the index is in place, so a rebuild cannot end before
        ``on_rebuilt`` is there to save it. Due: an exact index above ``approximate_above`` (a
        snapshot saved while a graph was being built, a delta replayed past the threshold, the
        threshold lowered, or ``graph_later``), or an HNSW graph whose detached nodes pass
        :data:`MAX_DETACHED_SHARE` (a snapshot saved while it was being rebuilt). An exact index
        of ``prefilter_above`` templates or more also starts building its prefilter (not saved:
        about a second at 10⁵ templates).
        """
        with self._writer_lock:
            self.on_rebuilt = on_rebuilt
            self._rebuilds_held = False
            total = self._index.ntotal
            if (self._kind == EXACT and total > self.approximate_above) or (
                self._kind == HNSW and self._detached > MAX_DETACHED_SHARE * total
            ):
                self._rebuild_later()
            self._prefilter_later()
            return self._rebuild is not None

    def _abandon_rebuild(self) -> None:
        if self._rebuild is not None:
            self._rebuild.stop.set()
            self._rebuild = None

    @property
    def rebuilding(self) -> bool:
        """Whether a replacement is being built on its own thread (see :meth:`add`, :meth:`remove`)."""
        return self._rebuild is not None

    def wait_rebuilt(self, timeout: Optional[float] = None) -> bool:
        """Wait until no rebuild is under way; returns whether none is."""
        rebuild = self._rebuild
        if rebuild is not None and rebuild.thread is not None:
            rebuild.thread.join(timeout)
        return self._rebuild is None

    def close(self, timeout: Optional[float] = 0.0) -> bool:
        """Stop a rebuild under way (it ends at its next chunk) and a prefilter's build (its result is
        dropped), and wait up to ``timeout`` seconds (None: as long as they take) for their threads;
        returns whether they have ended. The index stays usable; safe to call again."""
        with self._writer_lock:
            rebuild = self._rebuild
            self._abandon_rebuild()
            job, self._prefilter_job = self._prefilter_job, None
        threads = [thread for thread in (rebuild and rebuild.thread, job) if thread is not None]
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    # -- the prefilter: a first pass for large exact indexes ----------------------------------------

    def _stored_rows(self) -> np.ndarray:
        """(ntotal, d) float16 or float32: a view of the exact index's rows (valid until it changes)."""
        inner = faiss.downcast_index(self._index.index)
        total = int(self._index.ntotal)
        if not total:
            return np.empty((0, self._dim), dtype=np.float32)
        flat = faiss.rev_swig_ptr(inner.codes.data(), inner.codes.size())
        return flat.view(np.float16 if _is_fp16(inner) else np.float32).reshape(total, self._dim)

    def _prefilter_later(self) -> None:
        """Start building a prefilter over the rows of this moment on a thread of its own (the caller
        holds the writer lock, or owns the index alone), when it is due: an exact index of
        ``prefilter_above`` templates or more with none in use or under way, rebuilds not held."""
        if (
            self._prefilter is not None
            or self._prefilter_job is not None
            or self._prefilter_refused
            or self._rebuilds_held
            or self._kind != EXACT
            or self._index.ntotal < max(self.prefilter_above, prefilters.MIN_TRAINING_ROWS)
            or self._dim % 2
        ):
            return
        rows = self._stored_rows().copy()  # the index may change meanwhile (a removal moves rows)
        job = threading.Thread(
            target=self._build_prefilter, args=(rows,), name="gallery-prefilter", daemon=True
        )
        self._prefilter_job = job
        job.start()

    def _build_prefilter(self, rows: np.ndarray) -> None:
        """The prefilter's thread: train (once per index), encode ``rows`` ((n, d) copy of the exact
        rows, zeroed afterwards), measure, then append the rows added meanwhile and put it in use.
        A removal or a new index meanwhile supersedes it: it is wiped, and the next one built."""
        faiss.omp_set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        job = threading.current_thread()
        started = time.monotonic()
        prefilter = None
        try:
            codebook = self._codebook
            if codebook is None:
                picked = np.random.default_rng(0).choice(
                    rows.shape[0], min(rows.shape[0], prefilters.TRAINING_ROWS), replace=False
                )
                sample = rows[np.sort(picked)].astype(np.float32)
                codebook = Prefilter.trained(sample)
                sample.fill(0)
            prefilter = codebook.emptied()
            prefilter.add(rows)
            probes = _prefilter_probes(rows)
            best, _ = exact_top_k(rows, probes, 1)
            agreement = prefilters.top1_agreement(prefilter, rows, probes, best[:, 0], prefilters.CANDIDATES)
        except Exception:  # searches go on scanning every template
            logger.exception(
                "building the gallery index's prefilter failed; every search scans all templates"
            )
            if prefilter is not None:
                prefilter.wipe()
            with self._writer_lock:
                if self._prefilter_job is job:
                    self._prefilter_job, self._prefilter_refused = None, True
            return
        finally:
            rows.fill(0)
        with self._writer_lock:
            if self._prefilter_job is not job:
                prefilter.wipe()
                return
            self._prefilter_job, self._codebook = None, codebook
            if agreement < prefilters.MIN_AGREEMENT:
                prefilter.wipe()
                self._prefilter_refused = True
                logger.warning(
                    "the gallery index's prefilter found the exact top-1 for %.3f of %d probes (< %.3f): "
                    "every search scans all %d templates",
                    agreement,
                    probes.shape[0],
                    prefilters.MIN_AGREEMENT,
                    rows.shape[0],
                )
                return
            if self._index.ntotal > rows.shape[0]:  # additions meanwhile (a removal supersedes)
                prefilter.add(self._stored_rows()[rows.shape[0] :])
            prefilter.score_from(faiss.downcast_index(self._index.index))
            with self._index_lock:
                self._prefilter = prefilter
        logger.info(
            "gallery index prefilter in use: %d templates, exact top-1 found for %.3f of %d probes, built in %.1f s",
            len(prefilter),
            agreement,
            probes.shape[0],
            time.monotonic() - started,
        )

    def _drop_prefilter(self) -> None:
        """Wipe the prefilter in use and supersede one being built (the caller holds both locks, or
        owns the index alone): the exact index's rows are about to move, or it was replaced."""
        if self._prefilter is not None:
            self._prefilter.wipe()
            self._prefilter = None
        self._prefilter_job = None

    @property
    def prefiltered(self) -> bool:
        """Whether searches go through a prefilter now (:mod:`.prefilter`)."""
        return self._prefilter is not None

    def wait_prefilter(self, timeout: Optional[float] = None) -> bool:
        """Wait for a prefilter being built; returns whether one is in use."""
        job = self._prefilter_job
        if job is not None:
            job.join(timeout)
        return self._prefilter is not None

    def _all_vectors(self, keep: Optional[np.ndarray] = None) -> np.ndarray:
        """(m, d) float32: the stored vectors (where ``keep`` is True; never a detached node's),
        reconstructed in chunks."""
        total = self._index.ntotal
        if keep is None and self._detached:
            keep = _stored_ids(self._index) != DETACHED_ID
        inner = faiss.downcast_index(self._index.index)
        parts: List[np.ndarray] = []
        for start in range(0, total, _CHUNK_ROWS * 4):
            count = min(_CHUNK_ROWS * 4, total - start)
            part = inner.reconstruct_n(start, count)
            parts.append(part if keep is None else part[keep[start : start + count]])
        if not parts:
            return np.empty((0, self._dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    # -- properties --------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Embedding dimension d."""
        return self._dim

    @property
    def kind(self) -> str:
        """``"exact"`` or ``"hnsw"``."""
        return self._kind

    @property
    def ef_search(self) -> int:
        """HNSW search breadth (used when ``kind == "hnsw"``): higher is more exact and slower."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        value = _check_int(value, "ef_search", 1, 1 << 20)
        with self._index_lock:
            self._ef_search = value
            if self._kind == HNSW:
                faiss.downcast_index(self._index.index).hnsw.efSearch = value

    def __len__(self) -> int:
        """Number of templates (detached HNSW nodes are not templates any more)."""
        with self._index_lock:
            return int(self._index.ntotal) - self._detached

    @property
    def detached(self) -> int:
        """Removed templates whose HNSW nodes the graph still holds, detached (0 for exact)."""
        return self._detached

    def __repr__(self) -> str:
        return f"<TemplateIndex {self._kind} dim={self._dim} n={len(self)}>"

    def ids(self) -> np.ndarray:
        """(n,) int64: the stored template ids, in storage order."""
        with self._index_lock:
            stored = _stored_ids(self._index)
            return stored[stored != DETACHED_ID] if self._detached else stored

    # -- search ------------------------------------------------------------------------------

    def search(self, queries: Any, k: int = 2) -> Tuple[np.ndarray, np.ndarray]:
        """The k most similar templates of each query.

        queries: (q, d) float32 (normalised here on a copy); 1 ≤ k ≤ 1024.
        Returns scores: (q, k) float32, cosine similarity, descending; ids: (q, k) int64.
        Where fewer than k templates are found the ids are -1 and the scores -inf.
        """
        k = _check_int(k, "k", 1, MAX_K)
        x = as_unit_vectors(queries, self._dim, "queries")
        scores = np.empty((x.shape[0], k), dtype=np.float32)
        ids = np.empty((x.shape[0], k), dtype=np.int64)
        if x.shape[0]:
            with self._index_lock:
                depth = max(prefilters.CANDIDATES, 8 * k)
                if self._prefilter is not None and depth < self._index.ntotal:
                    self._search_prefiltered(self._prefilter, x, depth, scores, ids)
                else:
                    # Faiss's Python `search` checks again what as_unit_vectors has checked and
                    # reads the index's dimension through SWIG: 20–30 µs per frame on the cold cache
                    # the embedder leaves. Its C++ entry point fills our buffers; an empty index
                    # gives ids -1.
                    self._index.search_c(
                        x.shape[0], faiss.swig_ptr(x), k, faiss.swig_ptr(scores), faiss.swig_ptr(ids)
                    )
        scores[ids < 0] = -np.inf
        return scores, ids

    def _search_prefiltered(
        self, prefilter: Prefilter, x: np.ndarray, depth: int, scores: np.ndarray, ids: np.ndarray
    ) -> None:
        """Fill ``scores``/``ids`` ((q, k)) for the unit queries ``x`` ((q, d) float32): the prefilter's
        ``depth`` candidates scored exactly from the stored rows (the caller holds the index lock)."""
        prefilter.search(x, depth, scores, ids)  # ids holds storage rows until mapped here
        found = ids >= 0
        ids[found] = faiss.rev_swig_ptr(self._index.id_map.data(), int(self._index.ntotal))[ids[found]]

    # -- changes -----------------------------------------------------------------------------

    def add(self, ids: Any, vectors: Any) -> None:
        """Add templates. ids: (n,) int64, ≥ 0, not already present; vectors: (n, d) float32.

        Growing past ``approximate_above`` has the index rebuilt as HNSW on a thread of its own
        (:meth:`_rebuild_later`): the exact index takes the templates now, and serves until the
        graph is ready.
        """
        id_array, x = self._validated(ids, vectors)
        if id_array.shape[0] == 0:
            return
        with self._writer_lock:
            present = np.isin(id_array, _stored_ids(self._index))
            if present.any():
                raise ValueError(f"ids: already in the index: {id_array[present][:10].tolist()}")
            with self._index_lock:
                self._index.add_with_ids(x, id_array)
                if self._prefilter is not None:
                    self._prefilter.add(x)  # its rows follow the exact index's
            if self._rebuild is not None:
                self._rebuild.changes.append((id_array, x))
            elif self._kind == EXACT and len(self) > self.approximate_above:
                self._rebuild_later()
            self._prefilter_later()

    def remove(self, ids: Any) -> int:
        """Remove the templates with these ids (unknown ids are ignored); returns how many went.

        ids: (m,) int64. The exact index removes in place; HNSW detaches the templates' nodes (see the
        module's docstring), and once detached nodes pass :data:`MAX_DETACHED_SHARE` of the graph
        has it rebuilt on a thread of its own (:meth:`_rebuild_later`). When no more than
        ``approximate_above`` templates are left the index is rebuilt as exact, here (a copy of
        the templates, not a graph). Either way a removed template is gone from memory, not
        merely hidden, once this returns.
        """
        id_array = np.unique(as_ids(ids))
        if id_array.shape[0] == 0:
            return 0
        with self._writer_lock:
            stored = _stored_ids(self._index)
            doomed = np.flatnonzero(np.isin(stored, id_array))
            if not doomed.shape[0]:
                return 0
            if self._rebuild is not None:
                self._rebuild.forget(stored[doomed])
            if self._kind == EXACT:
                with self._index_lock:
                    moves = _remove_rows(self._index, doomed)
                    if self._prefilter is not None and doomed.shape[0] <= prefilters.MAX_FOLLOWED_REMOVALS:
                        self._prefilter.remove_rows(*moves)  # its codes move as the rows did
                    else:  # searches scan all until the next one is built
                        self._drop_prefilter()
                self._prefilter_later()
                return int(doomed.shape[0])
            detached = self._detached + doomed.shape[0]
            if stored.shape[0] - detached <= self.approximate_above:
                keep = stored != DETACHED_ID
                keep[doomed] = False
                self._replace(np.ascontiguousarray(stored[keep]), self._all_vectors(keep))
                return int(doomed.shape[0])
            started = time.monotonic()
            edit = _detachment(self._index, doomed)  # searches go on while it scans the graph
            with self._index_lock:
                edit()
                self._detached = detached
            logger.debug(
                "%d HNSW node(s) detached in %.3f s (%d detached of %d)",
                doomed.shape[0],
                time.monotonic() - started,
                detached,
                stored.shape[0],
            )
            if detached > MAX_DETACHED_SHARE * stored.shape[0]:
                self._rebuild_later()
            return int(doomed.shape[0])

    # -- persistence -------------------------------------------------------------------------

    def save(
        self, path: PathLike, model_version: str, generation: int, *, snapshot_id: Optional[str] = None
    ) -> int:
        """Write the index to ``path`` atomically; returns the file's size in bytes.

        model_version: the embedding model's version string; generation: the template store's
        change counter (≥ 0). :meth:`load` refuses the file when either differs. snapshot_id: 32
        lowercase hex digits naming this snapshot (a delta file names the snapshot it extends, see
        :mod:`.delta`); random when not given.
        """
        if not isinstance(model_version, str) or not model_version:
            raise ValueError(f"model_version must be a non-empty string, got {model_version!r}")
        generation = _check_int(generation, "generation", 0)
        if snapshot_id is None:
            snapshot_id = os.urandom(_SNAPSHOT_ID_HEX // 2).hex()
        elif not _is_snapshot_id(snapshot_id):
            raise ValueError(
                f"snapshot_id must be {_SNAPSHOT_ID_HEX} lowercase hex digits, got {snapshot_id!r}"
            )
        with self._writer_lock:
            digest, size = _hash_payload(self._index)
            header = {
                "model_version": model_version,
                "generation": generation,
                "count": len(self),
                "dim": self._dim,
                "kind": self._kind,
                "payload_bytes": size,
                "payload_sha256": digest,
                "approximate_above": self.approximate_above,
                "ef_search": self._ef_search,
                "hnsw_m": self.hnsw_m,
                "ef_construction": self.ef_construction,
                "snapshot_id": snapshot_id,
                "detached": self._detached,
            }
            encoded = json.dumps(header, sort_keys=True).encode("utf-8")
            # 0600: the payload holds the embeddings of the active model in the clear.
            with atomic_writer(path, mode=0o600) as stream:
                stream.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(encoded)))
                stream.write(encoded)
                stream.write(_CRC.pack(zlib.crc32(encoded)))
                written = _write_payload(self._index, stream)
                if written != (digest, size):
                    raise RuntimeError("the index changed while it was being saved")
        total = _PREFIX.size + len(encoded) + _CRC.size + size
        logger.info(
            "saved %s index of %d templates to %s (%.1f MiB, generation %d)",
            self._kind,
            header["count"],
            path,
            total / 2**20,
            generation,
        )
        return total

    @classmethod
    def load(
        cls,
        path: PathLike,
        model_version: str,
        generation: int,
        *,
        approximate_above: Optional[int] = None,
        ef_search: Optional[int] = None,
        precision: Optional[str] = None,
    ) -> TemplateIndex:
        """Read an index written by :meth:`save` for this model version and store generation.

        The snapshot alone: a delta file beside it is not replayed (:class:`.delta.SavedIndex` does
        that). ``approximate_above`` and ``ef_search`` override the saved ones (pass the
        configuration's). Raises IndexMissingError (no file), IndexStaleError (another model version
        or generation), IndexCorruptError (anything else wrong with the file); OSError for a file
        that exists but cannot be read. The index starts no rebuild until :meth:`rebuild_if_due`.
        """
        index, _ = cls._read(path, model_version, generation, approximate_above, ef_search, precision)
        return index

    @classmethod
    def load_snapshot(
        cls,
        path: PathLike,
        model_version: str,
        *,
        approximate_above: Optional[int] = None,
        ef_search: Optional[int] = None,
        precision: Optional[str] = None,
    ) -> Tuple[TemplateIndex, Dict[str, Any]]:
        """As :meth:`load`, whatever the store generation it was saved at; returns the index and its
        header (``generation``, ``snapshot_id`` — None for a version-1 file — ``count``, ``dim`` …).
        """
        return cls._read(path, model_version, None, approximate_above, ef_search, precision)

    @classmethod
    def _read(
        cls,
        path: PathLike,
        model_version: str,
        generation: Optional[int],
        approximate_above: Optional[int],
        ef_search: Optional[int],
        precision: Optional[str],
    ) -> Tuple[TemplateIndex, Dict[str, Any]]:
        where = os.fspath(path)
        try:
            stream = open(where, "rb")
        except FileNotFoundError as err:
            raise IndexMissingError(f"{where}: no saved gallery index") from err
        with stream:
            header = _read_header(stream, where)
            if header["model_version"] != model_version or (
                generation is not None and header["generation"] != generation
            ):
                expected = f" generation {generation}" if generation is not None else ""
                raise IndexStaleError(
                    f"{where}: index of model {header['model_version']!r} generation "
                    f"{header['generation']}, expected model {model_version!r}{expected}; "
                    f"rebuild it from the template store"
                )
            payload_start = stream.tell()
            _verify_payload(stream, where, header)
            stream.seek(payload_start)
            faiss_index = _without_reverse_map(_read_payload(stream, where))
        kind = _kind_of(faiss_index)
        problems = []
        if kind != header["kind"]:
            problems.append(
                f"payload is a {kind or type(faiss_index).__name__} index, header says {header['kind']}"
            )
        detached = header["detached"]
        if faiss_index.d != header["dim"] or faiss_index.ntotal != header["count"] + detached:
            problems.append(
                f"payload holds {faiss_index.ntotal} × {faiss_index.d}, header says "
                f"{header['count']} (+ {detached} detached) × {header['dim']}"
            )
        elif kind is not None:
            holds = int(np.count_nonzero(_stored_ids(faiss_index) == DETACHED_ID))
            if holds != detached or (holds and kind != HNSW):
                problems.append(f"header says {detached} detached nodes, the {kind} payload holds {holds}")
        if problems:
            raise IndexCorruptError(f"{where}: {'; '.join(problems)}")
        threshold = header["approximate_above"] if approximate_above is None else approximate_above
        if kind == HNSW and header["count"] <= threshold:
            # An exact index is a copy of the templates: rebuilt at once. The other way round (an
            # exact snapshot that calls for a graph) is used as it is, and the graph built on its
            # own thread once the owner calls rebuild_if_due: the door serves meanwhile.
            raise IndexStaleError(
                f"{where}: an hnsw index of {header['count']} templates, but approximate_above="
                f"{threshold} calls for exact; rebuild it from the template store"
            )
        stored_precision = _precision_of(faiss_index)
        if kind == EXACT and precision is not None and precision != stored_precision:
            raise IndexStaleError(
                f"{where}: a {stored_precision} index, but {precision} is asked for; rebuild it from the "
                "template store"
            )
        index = cls(
            header["dim"],
            threshold,
            header["ef_search"] if ef_search is None else ef_search,
            hnsw_m=header["hnsw_m"],
            ef_construction=header["ef_construction"],
            precision=stored_precision if precision is None else precision,
        )
        index._index, index._kind, index._detached = faiss_index, header["kind"], detached
        index._rebuilds_held = True
        index.ef_search = index._ef_search  # applies it to the HNSW graph
        logger.info("loaded %s index of %d templates from %s", index.kind, len(index), where)
        return index, header


def read_snapshot_header(path: PathLike) -> Dict[str, Any]:
    """The validated header of an index file, its payload neither read nor verified.

    Besides the header's fields: ``format`` (the file's format version) and ``snapshot_id`` (None
    in a version-1 file).

    Raises:
        IndexMissingError: there is no file. IndexCorruptError: the header is not a valid one.
        OSError: the file exists but cannot be read.
    """
    where = os.fspath(path)
    try:
        stream = open(where, "rb")
    except FileNotFoundError as err:
        raise IndexMissingError(f"{where}: no saved gallery index") from err
    with stream:
        return _read_header(stream, where)


def saved_generation(path: PathLike) -> int:
    """The template-store generation an index file was saved for, from its header alone.

    The payload is neither read nor verified: this is how a gallery whose store vanished tells that
    the store once held changes (see :meth:`Gallery.open <appliance.gallery.gallery.Gallery.open>`).

    Raises:
        IndexMissingError: there is no file. IndexCorruptError: the header is not a valid one.
        OSError: the file exists but cannot be read.
    """
    return int(read_snapshot_header(path)["generation"])


# -- file helpers ------------------------------------------------------------------------------


class _Sink:
    """Faiss writer callback: hashes and counts the bytes, and optionally writes them.

    Exceptions from ``stream.write`` (a full disk) are kept and re-raised after Faiss returns,
    rather than thrown through Faiss's C++ frames.
    """

    def __init__(self, stream: Optional[BinaryIO]) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: Optional[BaseException] = None

    def __call__(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            if self.stream is not None:
                self.stream.write(data)
        except BaseException as err:  # re-raised by _drain after faiss.write_index returns
            self.error = err
            return
        self.digest.update(data)
        self.size += len(data)


def _drain(index: Any, sink: _Sink) -> Tuple[str, int]:
    writer = faiss.PyCallbackIOWriter(sink)
    try:
        faiss.write_index(index, writer)
    finally:
        del writer
    if sink.error is not None:
        raise sink.error
    return sink.digest.hexdigest(), sink.size


def _hash_payload(index: Any) -> Tuple[str, int]:
    """Hex sha256 and length of ``faiss.write_index(index)``, without keeping the bytes."""
    return _drain(index, _Sink(None))


def _write_payload(index: Any, stream: BinaryIO) -> Tuple[str, int]:
    return _drain(index, _Sink(stream))


def _read_exactly(stream: BinaryIO, size: int, where: str, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise IndexCorruptError(f"{where}: truncated {what} ({len(data)} of {size} bytes)")
    return data


def _read_header(stream: BinaryIO, where: str) -> Dict[str, Any]:
    prefix = stream.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise IndexCorruptError(f"{where}: {len(prefix)} bytes, too short to be a gallery index")
    magic, version, length = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise IndexCorruptError(f"{where}: not a gallery index (magic {magic!r}, expected {MAGIC!r})")
    if version not in READABLE_VERSIONS:
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise IndexCorruptError(f"{where}: format version {version}, this software reads {readable}")
    if not 0 < length <= _MAX_HEADER_BYTES:
        raise IndexCorruptError(f"{where}: header length {length} out of range")
    encoded = _read_exactly(stream, length, where, "header")
    (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, where, "header checksum"))
    if zlib.crc32(encoded) != crc:
        raise IndexCorruptError(f"{where}: header checksum mismatch")
    try:
        header = json.loads(encoded.decode("utf-8"))
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise IndexCorruptError(f"{where}: unreadable header ({err})") from err
    if not isinstance(header, dict):
        raise IndexCorruptError(f"{where}: header is not an object")
    fields = dict(_HEADER_FIELDS, **_HEADER_FIELDS_V2) if version >= 2 else _HEADER_FIELDS
    for field, kind in fields.items():
        value = header.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise IndexCorruptError(f"{where}: header field {field!r} missing or not {kind.__name__}")
    if header["kind"] not in KINDS:
        raise IndexCorruptError(f"{where}: unknown index kind {header['kind']!r}")
    if version >= 2 and not _is_snapshot_id(header["snapshot_id"]):
        raise IndexCorruptError(f"{where}: header field 'snapshot_id' is not {_SNAPSHOT_ID_HEX} hex digits")
    detached = header.setdefault("detached", 0)  # written since detaching was added; absent means none
    if not isinstance(detached, int) or isinstance(detached, bool) or detached < 0:
        raise IndexCorruptError(f"{where}: header field 'detached' is not a count ({detached!r})")
    header["format"] = version
    if version < 2:
        header["snapshot_id"] = None  # a version-1 file has no delta
    return header


def _is_snapshot_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == _SNAPSHOT_ID_HEX
        and all(c in "0123456789abcdef" for c in value)
    )


def _verify_payload(stream: BinaryIO, where: str, header: Dict[str, Any]) -> None:
    """Hash the payload in 1 MiB chunks; it must be exactly payload_bytes long and match the hash."""
    digest = hashlib.sha256()
    remaining = header["payload_bytes"]
    while remaining:
        chunk = stream.read(min(remaining, _CHUNK_BYTES))
        if not chunk:
            raise IndexCorruptError(
                f"{where}: truncated payload ({header['payload_bytes'] - remaining} of "
                f"{header['payload_bytes']} bytes)"
            )
        digest.update(chunk)
        remaining -= len(chunk)
    if stream.read(1):
        raise IndexCorruptError(f"{where}: data after the payload")
    if digest.hexdigest() != header["payload_sha256"]:
        raise IndexCorruptError(f"{where}: payload checksum mismatch")


def _read_payload(stream: BinaryIO, where: str) -> Any:
    reader = faiss.PyCallbackIOReader(stream.read)
    try:
        return faiss.read_index(reader)
    except RuntimeError as err:  # Faiss's C++ exceptions
        raise IndexCorruptError(f"{where}: Faiss cannot read the payload ({err})") from err
    finally:
        del reader


__all__ = [
    "EXACT",
    "HNSW",
    "GalleryIndexError",
    "IndexCorruptError",
    "IndexMissingError",
    "IndexStaleError",
    "TemplateIndex",
    "as_ids",
    "as_unit_vectors",
    "exact_top_k",
    "measure_recall",
    "probe_queries",
    "saved_generation",
]
