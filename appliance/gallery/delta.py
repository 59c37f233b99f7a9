"""The saved search index: a snapshot plus an append-only delta, so an enrolment writes O(1) bytes.

Rewriting the whole index file at every enrolment cost n·d bytes per enrolment (51 MB at 100 000
float32 templates, quadratic over a fleet catch-up). Instead, beside the store (the truth):

``gallery.index``        the snapshot (:meth:`TemplateIndex.save <.index.TemplateIndex.save>`): the
                         index at one store generation, with a random ``snapshot_id``;
``gallery.index.delta``  one record per store change since, appended and fdatasync'd: the store
                         generation before and after the change, and the template ids and unit
                         vectors it added (none for a change that added none to this model version).

An enrolment appends one record (24 + n·(8 + 4·d) bytes plus an 8-byte prefix: 552 bytes for one
128-d template). When the delta outgrows ``compact_ratio`` of the snapshot (and
``compact_min_bytes``), the index is saved as a new snapshot and the delta deleted: at most
(1 + 1/ratio) record sizes per enrolment on average, whatever the gallery's size.

**Removals** are not appended: a removal saves a new snapshot and deletes the delta before it
returns, so a removed person's embedding is in neither file afterwards (the store's
``secure_delete`` does the same for the database). Both files are plaintext, mode 0600, as the index
file always was; ``gallery.persist_index = false`` writes neither.

**Opening** (:meth:`SavedIndex.load`): the snapshot is loaded and the delta's records replayed. The
result is used only when the records chain (each ``from`` is the previous ``to``, each ``to`` is its
``from`` + 1, the store bumps its generation once per change) from the snapshot's generation exactly
to the store's; anything else — a delta behind the store (killed between the store's commit and the
append), past it (a restored backup), bound to another snapshot, torn or hostile — makes the index
stale, and the gallery rebuilds it from the store and saves a new snapshot. Reads are bounded: a
record longer than :data:`MAX_RECORD_TEMPLATES` templates or a delta beyond ``max_bytes`` stops the
replay at the last good record, with a log line saying what was found.

Crash points, in the order a change writes (each re-opens correctly):

1. the store commits generation g+1 (SQLite, synchronous=FULL);
2. the record g → g+1 is appended (``write``), then fdatasync'd — killed before or during it: the
   delta ends at g (a torn record fails its CRC) → stale → rebuilt from the store;
3. compaction: the snapshot at g+1 is written to a temporary file, fsync'd and renamed over the old
   one (:func:`engines.files.atomic_writer`) — killed before the rename: old snapshot and delta, at g
   → rebuilt (or replayed, when compaction followed an append that completed);
4. the delta is deleted — killed before: the new snapshot and a delta naming the old snapshot, which
   is ignored and deleted at the next open.

A new delta is created with its header and first record through a temporary file and a rename, so
a delta file always has a whole header.

Delta file format, little-endian::

    8 bytes   magic b"FAGALDLT"
    uint16    format version (1)
    uint16    0
    uint32    dim
    uint64    the snapshot's generation
    16 bytes  the snapshot's id (its header's ``snapshot_id``, as bytes)
    uint32    CRC-32 of the 40 bytes above
    records, each:
      uint32  body length L
      uint32  CRC-32 of the body
      L bytes body: uint64 from_generation, uint64 to_generation, uint32 count n, uint32 0,
              n × int64 template ids, n × d × float32 unit vectors (row-major)
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from engines.errors import FileReadError
from engines.files import atomic_writer, fsync_dir, open_regular

from .index import (
    GalleryIndexError,
    IndexCorruptError,
    IndexMissingError,
    IndexStaleError,
    PathLike,
    TemplateIndex,
    as_ids,
    as_unit_vectors,
    read_snapshot_header,
)

logger = logging.getLogger(__name__)

DELTA_SUFFIX = ".delta"
DELTA_MAGIC = b"FAGALDLT"
DELTA_FORMAT_VERSION = 1
#: Compact (save a snapshot, delete the delta) when the delta outgrows this fraction of the snapshot.
DEFAULT_COMPACT_RATIO = 0.1
#: … and this many bytes (small galleries: about 1 900 one-template enrolments between snapshots).
DEFAULT_COMPACT_MIN_BYTES = 1 << 20
#: Most templates in one record (an enrolment adds a handful); a larger change saves a snapshot.
MAX_RECORD_TEMPLATES = 4096
#: A delta is read up to max(this, 4 × the compaction threshold); beyond, the replay stops.
DELTA_READ_FLOOR_BYTES = 64 << 20
#: … and up to this many records (a record is one store change).
MAX_DELTA_RECORDS = 1 << 20

_HEADER = struct.Struct("<8sHHIQ16s")
_CRC = struct.Struct("<I")
_RECORD_PREFIX = struct.Struct("<II")
_RECORD_HEAD = struct.Struct("<QQII")
DELTA_HEADER_BYTES = _HEADER.size + _CRC.size


class DeltaRecord(NamedTuple):
    """One store change: generations ``from_generation`` → ``to_generation`` (= from + 1) and the
    templates it added to the index: ids ``(n,) int64`` and vectors ``(n, d) float32``, unit rows."""

    from_generation: int
    to_generation: int
    ids: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class DeltaFile:
    """What :func:`read_delta` found.

    ``records``: the whole, valid records in file order; ``ends``: where each of them ends (byte
    offset); ``good_bytes``: where the last of them ends; ``size``: the file's length; ``problem``:
    why reading stopped before the end (None when it did not).
    """

    dim: int
    base_generation: int
    snapshot_id: str
    records: List[DeltaRecord]
    ends: List[int]
    good_bytes: int
    size: int
    problem: Optional[str]


class DeltaHeaderError(IndexCorruptError):
    """A delta file whose header is not one (wrong magic or version, damaged, truncated)."""


def delta_path(index_path: PathLike) -> Path:
    """``gallery.index`` → ``gallery.index.delta``."""
    path = Path(index_path)
    return path.with_name(path.name + DELTA_SUFFIX)


def _record_bytes(count: int, dim: int) -> int:
    return _RECORD_HEAD.size + count * (8 + 4 * dim)


def encode_record(record: DeltaRecord) -> bytes:
    """A record's bytes (prefix and body), as appended to the delta."""
    ids = np.ascontiguousarray(record.ids, dtype="<i8")
    vectors = np.ascontiguousarray(record.vectors, dtype="<f4")
    count = int(ids.shape[0])
    head = _RECORD_HEAD.pack(record.from_generation, record.to_generation, count, 0)
    body = head + ids.tobytes() + vectors.tobytes()
    return _RECORD_PREFIX.pack(len(body), zlib.crc32(body)) + body


def encode_header(dim: int, base_generation: int, snapshot_id: str) -> bytes:
    """The 44 header bytes of a delta extending the snapshot ``snapshot_id`` (32 hex digits)."""
    fields = _HEADER.pack(
        DELTA_MAGIC, DELTA_FORMAT_VERSION, 0, dim, base_generation, bytes.fromhex(snapshot_id)
    )
    return fields + _CRC.pack(zlib.crc32(fields))


def _parse_header(data: bytes, where: str) -> Tuple[int, int, str]:
    """(dim, base generation, snapshot id) from the first :data:`DELTA_HEADER_BYTES` bytes."""
    if len(data) < DELTA_HEADER_BYTES:
        raise DeltaHeaderError(f"{where}: {len(data)} bytes, too short for a delta header")
    fields, (crc,) = data[: _HEADER.size], _CRC.unpack(data[_HEADER.size : DELTA_HEADER_BYTES])
    magic, version, _, dim, base, snapshot = _HEADER.unpack(fields)
    if magic != DELTA_MAGIC:
        raise DeltaHeaderError(f"{where}: not a gallery index delta (magic {magic!r})")
    if version != DELTA_FORMAT_VERSION:
        raise DeltaHeaderError(
            f"{where}: delta format version {version}, this software reads {DELTA_FORMAT_VERSION}"
        )
    if zlib.crc32(fields) != crc:
        raise DeltaHeaderError(f"{where}: delta header checksum mismatch")
    return int(dim), int(base), snapshot.hex()


def read_delta(path: PathLike, max_bytes: int) -> DeltaFile:
    """Read a delta file, bounded: at most ``max_bytes`` (and one record of at most
    :data:`MAX_RECORD_TEMPLATES` templates) at a time.

    Records are read until the end, or until one is truncated, fails its checksum, is inconsistent
    (length, count, generations, non-finite values, negative or repeated ids), would take the file
    past ``max_bytes`` or be the record after :data:`MAX_DELTA_RECORDS`: reading stops there
    (``problem`` says why) and the records before it are returned.

    Raises:
        FileNotFoundError: no file. DeltaHeaderError: its header is not a delta header.
        FileReadError: not a regular file (a FIFO, a device), or unreadable.
    """
    where = os.fspath(path)
    try:
        stream = open_regular(where)
    except FileReadError as err:
        if err.missing:
            raise FileNotFoundError(where) from None
        raise
    with stream:
        size = os.fstat(stream.fileno()).st_size
        dim, base, snapshot_id = _parse_header(stream.read(DELTA_HEADER_BYTES), where)
        if not 0 < dim <= 65_536:
            raise DeltaHeaderError(f"{where}: delta header says dim {dim}")
        records: List[DeltaRecord] = []
        ends: List[int] = []
        offset = DELTA_HEADER_BYTES
        problem: Optional[str] = None
        largest = _record_bytes(MAX_RECORD_TEMPLATES, dim)
        while True:
            prefix = stream.read(_RECORD_PREFIX.size)
            if not prefix:
                break
            if len(records) == MAX_DELTA_RECORDS:
                problem = f"more than {MAX_DELTA_RECORDS} records"
                break
            if len(prefix) < _RECORD_PREFIX.size:
                problem = f"a record prefix truncated at byte {offset}"
                break
            length, crc = _RECORD_PREFIX.unpack(prefix)
            if not _RECORD_HEAD.size <= length <= largest:
                problem = f"a record at byte {offset} claims {length} bytes (at most {largest})"
                break
            if offset + _RECORD_PREFIX.size + length > max_bytes:
                problem = f"the delta goes past the {max_bytes} bytes read at byte {offset}"
                break
            body = stream.read(length)
            if len(body) < length:
                problem = f"a record truncated at byte {offset} ({len(body)} of {length} bytes)"
                break
            if zlib.crc32(body) != crc:
                problem = f"a record at byte {offset} fails its checksum"
                break
            record, why = _decode_body(body, dim)
            if record is None:
                problem = f"the record at byte {offset}: {why}"
                break
            records.append(record)
            offset += _RECORD_PREFIX.size + length
            ends.append(offset)
    return DeltaFile(dim, base, snapshot_id, records, ends, offset, size, problem)


def _decode_body(body: bytes, dim: int) -> Tuple[Optional[DeltaRecord], str]:
    start, end, count, _ = _RECORD_HEAD.unpack_from(body)
    if len(body) != _record_bytes(count, dim):
        return None, f"{len(body)} bytes for {count} templates of {dim} values"
    if end != start + 1:
        return None, f"generations {start} → {end} (a record covers one store change)"
    split = _RECORD_HEAD.size + 8 * count
    ids = np.frombuffer(body, dtype="<i8", count=count, offset=_RECORD_HEAD.size).astype(np.int64)
    vectors = np.frombuffer(body, dtype="<f4", count=count * dim, offset=split).astype(np.float32)
    vectors = vectors.reshape(count, dim)
    try:
        ids = as_ids(ids)
        vectors = as_unit_vectors(vectors, dim)
    except ValueError as err:
        return None, str(err)
    if np.unique(ids).shape[0] != count:
        return None, "repeated template ids"
    return DeltaRecord(int(start), int(end), ids, vectors), ""


def _append(path: Path, data: bytes, snapshot_id: str) -> None:
    """Append ``data`` to the delta of ``snapshot_id`` and fdatasync it.

    The file must exist and name that snapshot. A failed write is cut back to the previous length
    (when that fails too, the torn tail stops the next replay: the store decides).

    Raises:
        FileNotFoundError: no delta. DeltaHeaderError: it extends another snapshot. OSError: I/O.
    """
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
    try:
        header = os.pread(fd, DELTA_HEADER_BYTES, 0)
        _, _, found = _parse_header(header, os.fspath(path))
        if found != snapshot_id:
            raise DeltaHeaderError(f"{path}: the delta extends snapshot {found}, not {snapshot_id}")
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fdatasync(fd) if hasattr(os, "fdatasync") else os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)


class SavedIndex:
    """The index files of one gallery, for one embedder version: snapshot and delta (see above).

    Not thread-safe: the gallery calls it under its lock. Every write raises OSError when the disk
    refuses; the files are then left in a state an open reads as stale (never as a wrong index),
    and the next write saves a snapshot.

    Args:
        path: the snapshot's path (``{storage.dir}/gallery.index``); the delta is beside it.
        model_version: the embedder's ``name@version``.
        compact_ratio, compact_min_bytes: compact when the delta exceeds both
            ``compact_ratio`` × the snapshot's size and ``compact_min_bytes``. ``compact_ratio``
            0: no delta, every change saves a snapshot (the behaviour before deltas).
    """

    def __init__(
        self,
        path: PathLike,
        model_version: str,
        compact_ratio: float = DEFAULT_COMPACT_RATIO,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
    ) -> None:
        if not 0 <= compact_ratio <= 100:
            raise ValueError(f"compact_ratio must be in [0, 100], got {compact_ratio!r}")
        if compact_min_bytes < 0:
            raise ValueError(f"compact_min_bytes must be ≥ 0, got {compact_min_bytes!r}")
        self.path = Path(path)
        self.delta_path = delta_path(self.path)
        self.model_version = model_version
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        #: The store generation the files reach; None: unknown, the next write saves a snapshot.
        self.generation: Optional[int] = None
        self._snapshot_id: Optional[str] = None
        self._snapshot_generation = -1
        self._snapshot_bytes = 0
        self._delta_bytes = 0  # 0: no delta file (yet)
        #: Bytes written by this object (snapshots and delta), for the benchmarks.
        self.bytes_written = 0
        self.snapshots_written = 0

    @property
    def delta_bytes(self) -> int:
        """Length of the delta file as this object left it (0: none)."""
        return self._delta_bytes

    @property
    def compact_above(self) -> int:
        """The delta length past which the next append saves a snapshot."""
        return max(self.compact_min_bytes, int(self.compact_ratio * self._snapshot_bytes))

    # -- reading ------------------------------------------------------------------------------------

    def load(
        self,
        generation: int,
        *,
        approximate_above: Optional[int] = None,
        ef_search: Optional[int] = None,
        precision: Optional[str] = None,
    ) -> TemplateIndex:
        """The saved index at store generation ``generation``: the snapshot, its delta replayed.

        Raises:
            IndexMissingError: no snapshot. IndexStaleError: another model version, kind or
                precision, or the snapshot and delta do not reach exactly ``generation``.
            IndexCorruptError: the snapshot is damaged. OSError: it cannot be read.
        """
        self.generation = None
        index, header = TemplateIndex.load_snapshot(
            self.path,
            self.model_version,
            approximate_above=approximate_above,
            ef_search=ef_search,
            precision=precision,
        )
        start = int(header["generation"])
        if start > generation:
            raise IndexStaleError(
                f"{self.path}: index of generation {start}, newer than the store's {generation}; rebuild it "
                "from the template store"
            )
        reached, good_bytes = self._replay(index, header, generation)
        if reached != generation:
            raise IndexStaleError(
                f"{self.path}: the snapshot (generation {start}) and its delta reach generation {reached}, the "
                f"store is at {generation}; rebuild it from the template store"
            )
        self._snapshot_id = header["snapshot_id"]
        self._snapshot_generation = start
        self._snapshot_bytes = self.path.stat().st_size
        self._delta_bytes = max(good_bytes, 0)
        # A bad tail that could not be cut off would precede the next append: write a snapshot then.
        self.generation = generation if good_bytes >= 0 else None
        return index

    def _replay(self, index: TemplateIndex, header: Any, generation: int) -> Tuple[int, int]:
        """Replay the delta into ``index`` up to ``generation``: (generation reached, delta bytes kept,
        -1 when a bad tail could not be cut off).

        The records that chain from the snapshot's generation are added in one batch. A delta that
        does not extend this snapshot is deleted (it may hold an embedding removed since); one with
        an unreadable or unchained tail is cut back to its last good record when the replay reaches
        ``generation`` (else the index is stale and the gallery saves a new snapshot anyway).
        """
        start = int(header["generation"])
        if header["snapshot_id"] is None:
            self._remove_delta("the index file predates deltas")
            return start, 0
        threshold = max(self.compact_min_bytes, int(self.compact_ratio * header["payload_bytes"]))
        try:
            delta = read_delta(self.delta_path, max(DELTA_READ_FLOOR_BYTES, 4 * threshold))
        except FileNotFoundError:
            return start, 0
        except (DeltaHeaderError, FileReadError) as err:
            self._remove_delta(str(err))
            return start, 0
        if (delta.snapshot_id, delta.base_generation, delta.dim) != (header["snapshot_id"], start, index.dim):
            self._remove_delta(
                f"it extends snapshot {delta.snapshot_id} at generation {delta.base_generation}, not this one"
            )
            return start, 0
        reached, used, problem = start, 0, delta.problem
        for record in delta.records:
            if record.from_generation != reached:
                problem = f"record {used} goes from generation {record.from_generation}, expected {reached}"
                break
            if record.to_generation > generation:
                return record.to_generation, 0  # past the store: a restored backup, rebuilt from
            reached, used = record.to_generation, used + 1
        chained = delta.records[:used]
        if chained:
            try:
                index.add(
                    np.concatenate([record.ids for record in chained]),
                    np.concatenate([record.vectors for record in chained]),
                )
            except ValueError as err:  # ids already in the snapshot, or repeated across records
                logger.warning("gallery index delta %s cannot be applied: %s", self.delta_path, err)
                return start, 0
        kept = delta.ends[used - 1] if used else DELTA_HEADER_BYTES
        if problem is not None:
            logger.warning(
                "gallery index delta %s: %s; using the %d record(s) before it (to generation %d)",
                self.delta_path,
                problem,
                used,
                reached,
            )
            if reached == generation and not self._truncate_delta(kept):
                kept = -1
        if used:
            logger.info(
                "gallery index: replayed %d delta record(s), generation %d to %d", used, start, reached
            )
        return reached, kept

    # -- writing ------------------------------------------------------------------------------------

    def save(self, index: TemplateIndex, generation: int) -> int:
        """Save ``index`` (the store's state at ``generation``) as a new snapshot and delete the
        delta; returns the bytes written.

        Raises:
            OSError: the snapshot could not be written (the previous files are left, read as stale).
        """
        self.generation = None
        snapshot_id = os.urandom(16).hex()
        size = index.save(self.path, self.model_version, generation, snapshot_id=snapshot_id)
        self.bytes_written += size
        self.snapshots_written += 1
        self._snapshot_id, self._snapshot_bytes = snapshot_id, size
        self._snapshot_generation = self.generation = generation
        self._remove_delta(None)
        return size

    def append(self, index: TemplateIndex, records: Sequence[DeltaRecord]) -> int:
        """Persist the changes ``records`` (already applied to ``index``); returns the bytes written.

        Appends them to the delta when they continue the files' generation and are small enough,
        then compacts when the delta has grown past :attr:`compact_above`; saves a snapshot
        instead when the files are not known to be current.

        Raises:
            OSError: the disk refused (the files are then read as stale at the next open).
        """
        if not records:
            return 0
        target = records[-1].to_generation
        if self.compact_ratio == 0 or not self._continues(records):
            return self.save(index, target)
        data = b"".join(encode_record(record) for record in records)
        self.generation = None
        assert self._snapshot_id is not None  # _continues checked it
        try:
            if self._delta_bytes == 0:
                header = encode_header(index.dim, self._snapshot_generation, self._snapshot_id)
                with atomic_writer(self.delta_path, mode=0o600) as stream:
                    stream.write(header)
                    stream.write(data)
                written = len(header) + len(data)
            else:
                _append(self.delta_path, data, self._snapshot_id)
                written = len(data)
        except (FileNotFoundError, DeltaHeaderError) as err:  # someone else's compaction: start afresh
            logger.info("gallery index delta %s: %s; saving a snapshot", self.delta_path, err)
            return self.save(index, target)
        self.bytes_written += written
        self._delta_bytes += written
        self.generation = target
        if self._delta_bytes > self.compact_above:
            logger.info(
                "gallery index delta %s: %d bytes past %d; saving a snapshot",
                self.delta_path,
                self._delta_bytes,
                self.compact_above,
            )
            return written + self.save(index, target)
        return written

    def _continues(self, records: Sequence[DeltaRecord]) -> bool:
        """The records extend the files: they chain from :attr:`generation`, each small enough."""
        if self.generation is None or self._snapshot_id is None:
            return False
        if self._delta_bytes == 0 and self.generation != self._snapshot_generation:
            return False
        expected = self.generation
        for record in records:
            if record.from_generation != expected or record.to_generation != expected + 1:
                return False
            if record.ids.shape[0] > MAX_RECORD_TEMPLATES:
                return False
            expected = record.to_generation
        return True

    def invalidate(self) -> None:
        """The files no longer reach the index in memory (a change not written): the next write saves a snapshot."""
        self.generation = None

    def forget(self) -> None:
        """Delete the snapshot and the delta (``gallery.persist_index = false``)."""
        self.invalidate()
        self._snapshot_id, self._snapshot_bytes, self._delta_bytes = None, 0, 0
        for path in (self.path, self.delta_path):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                logger.warning("could not delete the saved gallery index %s: %s", path, err)
                continue
            logger.info("deleted the saved gallery index %s (gallery.persist_index is off)", path)

    def _remove_delta(self, why: Optional[str]) -> None:
        """Delete the delta file (``why``: logged, for a delta found unusable)."""
        self._delta_bytes = 0
        try:
            self.delta_path.unlink()
        except FileNotFoundError:
            return
        except OSError as err:
            logger.warning(
                "could not delete the gallery index delta %s (%s); it is ignored and deleted at the next open",
                self.delta_path,
                err,
            )
            return
        fsync_dir(self.delta_path.parent)
        if why is not None:
            logger.info("deleted the gallery index delta %s: %s", self.delta_path, why)

    def _truncate_delta(self, length: int) -> bool:
        """Cut the delta back to ``length`` bytes (its last good record); False when that failed."""
        try:
            os.truncate(self.delta_path, length)
        except OSError as err:
            logger.warning(
                "could not cut the gallery index delta %s back to %d bytes: %s", self.delta_path, length, err
            )
            return False
        logger.warning(
            "cut the gallery index delta %s back to its last good record (%d bytes)", self.delta_path, length
        )
        return True


def saved_generation(index_path: PathLike) -> int:
    """The latest store generation the saved index files record: the snapshot's, or the last record
    of a delta that extends it (only headers and the delta's records are read, nothing is checked
    against a store).

    Raises:
        IndexMissingError: no snapshot. IndexCorruptError: its header is not a valid one.
        OSError: it cannot be read.
    """
    header = read_snapshot_header(index_path)
    generation = int(header["generation"])
    if header["snapshot_id"] is None:
        return generation
    try:
        delta = read_delta(delta_path(index_path), DELTA_READ_FLOOR_BYTES)
    except (FileNotFoundError, GalleryIndexError, FileReadError):
        return generation
    if (delta.snapshot_id, delta.base_generation) != (header["snapshot_id"], generation):
        return generation
    for record in delta.records:
        if record.from_generation != generation:
            break
        generation = record.to_generation
    return generation


__all__ = [
    "DEFAULT_COMPACT_MIN_BYTES",
    "DEFAULT_COMPACT_RATIO",
    "DeltaFile",
    "DeltaHeaderError",
    "DeltaRecord",
    "IndexMissingError",
    "SavedIndex",
    "delta_path",
    "encode_header",
    "encode_record",
    "read_delta",
    "saved_generation",
]
