"""The staging file of an incoming model package: resumable across cut links and restarts.

Files in the staging folder (``updates.staging_dir``, default ``{storage.dir}/updates``):

``incoming.part``
    The bytes received so far, in order from offset 0.
``incoming.json``
    The sidecar: ``{"version": 1, "size": total bytes announced, "received": bytes on disk,
    "sha256": hex digest the tester announced for the whole package, "complete": bool}``. It is
    rewritten atomically (temporary file, fsync, rename, fsync of the folder) every
    ``sync_every`` blocks, when a download pauses (the session ends, the server stops) and when the
    package is complete. ``incoming.part`` is fsync'd before the sidecar names its length, so the
    sidecar never claims bytes that are not on disk.
``received.pkg``
    The last complete package whose sha256 matched; what the update handler verifies. It is replaced
    (atomically) only when the next package is complete.

On opening, the sidecar is checked against the files: a part file longer than ``received`` is cut
back to it (those bytes were never confirmed); a sidecar that does not parse, names impossible
numbers, or claims more bytes than the part file holds means **start over** (logged at WARNING,
both files removed). The tester learns the offset to resume from through the UDS "bytes received"
identifier and resumes only when its package's sha256 and size match the sidecar's.

Not thread-safe for writers (the UDS server's thread is the only one); :meth:`IncomingPackage.progress`
may be called from any thread.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Dict, Optional

from engines.files import atomic_writer, fsync_dir, sha256_file

from .errors import UpdateError

logger = logging.getLogger(__name__)

PART_NAME = "incoming.part"
SIDECAR_NAME = "incoming.json"
RECEIVED_NAME = "received.pkg"
SIDECAR_VERSION = 1
#: Blocks written between two syncs of the part file and its sidecar.
DEFAULT_SYNC_EVERY = 16
#: Free space that must remain after the announced package is stored (the handler stages a copy).
DEFAULT_RESERVE_BYTES = 32 * 1024 * 1024


class TransferError(UpdateError):
    """A download cannot go on as asked. Subclasses say why; each maps to a UDS negative response."""


class TransferRangeError(TransferError):
    """An offset or size that does not fit the download (resume offset not the bytes received, a
    different package than the one partly received, data beyond the announced size)."""


class NoSpaceError(TransferError):
    """Not enough free space in the staging folder for the announced package."""


class TransferIntegrityError(TransferError):
    """The received bytes do not hash to the announced sha256; the transfer starts over."""


class StagingIOError(TransferError):
    """Writing or syncing the staging files failed (disk full, I/O error, read-only file system)."""


class TransferState(str, enum.Enum):
    """What the staging folder holds."""

    EMPTY = "empty"
    PARTIAL = "partial"
    COMPLETE = "complete"


@dataclass(frozen=True)
class TransferProgress:
    """A snapshot of the staging folder.

    Attributes:
        state: empty, partial or complete.
        size: the announced package size in bytes (0 when empty).
        received: bytes received and kept (0 when empty).
        sha256: the announced package digest (32 bytes; zeros when empty).
    """

    state: TransferState
    size: int
    received: int
    sha256: bytes


_NO_DIGEST = bytes(32)


class IncomingPackage:
    """The resumable staging file of one package at a time.

    Args:
        directory: the staging folder (created if absent).
        sync_every: blocks written between two syncs of the data and the sidecar.
        reserve_bytes: free space that must remain after the package (see :class:`NoSpaceError`).

    Raises:
        StagingIOError: the folder cannot be created.
    """

    def __init__(
        self,
        directory: Path,
        sync_every: int = DEFAULT_SYNC_EVERY,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        if sync_every < 1:
            raise ValueError(f"sync_every must be at least 1, not {sync_every}")
        self.directory = Path(directory)
        self.sync_every = sync_every
        self.reserve_bytes = reserve_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StagingIOError(
                f"cannot create the update staging folder {self.directory}: {err.strerror}; check "
                "updates.staging_dir and the permissions of storage.dir"
            ) from err
        self._lock = threading.Lock()
        self._state = TransferState.EMPTY
        self._size = 0
        self._received = 0
        self._sha256 = _NO_DIGEST
        self._file: Optional[BinaryIO] = None
        self._unsynced_blocks = 0
        self._closed = False
        self._load()

    # -- paths and state ------------------------------------------------------------------------------

    @property
    def part_path(self) -> Path:
        return self.directory / PART_NAME

    @property
    def sidecar_path(self) -> Path:
        return self.directory / SIDECAR_NAME

    @property
    def received_path(self) -> Path:
        """The last complete package (what the handler verifies)."""
        return self.directory / RECEIVED_NAME

    @property
    def state(self) -> TransferState:
        return self._state

    @property
    def size(self) -> int:
        return self._size

    @property
    def received(self) -> int:
        return self._received

    @property
    def sha256(self) -> bytes:
        return self._sha256

    @property
    def writing(self) -> bool:
        """Whether a download is open for writing (between :meth:`begin` and :meth:`pause`/:meth:`finish`)."""
        return self._file is not None

    def progress(self) -> TransferProgress:
        """A consistent snapshot; callable from any thread."""
        with self._lock:
            return TransferProgress(self._state, self._size, self._received, self._sha256)

    # -- the download ---------------------------------------------------------------------------------

    def begin(self, offset: int, size: int, sha256: bytes) -> None:
        """Open a download of ``size`` bytes hashing to ``sha256``, starting at byte ``offset``.

        ``offset`` 0 starts over (the part file is emptied; ``received.pkg`` is kept). A non-zero
        ``offset`` resumes: it must equal the bytes received of the same package (same size and
        sha256) that is still partial.

        Raises:
            TransferRangeError: a non-zero offset that is not where the same package stopped.
            NoSpaceError: the staging folder's file system lacks room for the rest plus the reserve.
            StagingIOError: the part file cannot be opened or the sidecar written.
        """
        self._check_open()
        if len(sha256) != 32:
            raise TransferRangeError(f"a sha256 digest has 32 bytes, not {len(sha256)}")
        if size <= 0 or not 0 <= offset <= size:
            raise TransferRangeError(f"offset {offset} and size {size} do not describe a download")
        self.pause()
        if offset:
            if self._state is not TransferState.PARTIAL:
                raise TransferRangeError(
                    f"cannot resume at offset {offset}: no partial package is kept ({self._state.value}); "
                    "start at offset 0"
                )
            if size != self._size or sha256 != self._sha256:
                raise TransferRangeError(
                    f"cannot resume at offset {offset}: the partial package is another one (size "
                    f"{self._size}, sha256 {self._sha256.hex()[:16]}…); start at offset 0"
                )
            if offset != self._received:
                raise TransferRangeError(
                    f"cannot resume at offset {offset}: {self._received} bytes were received; resume at "
                    f"{self._received} or start at 0"
                )
        kept = self._received if offset else 0
        self._check_space(size - kept, kept)
        try:
            if offset:
                stream = open(self.part_path, "r+b")
                stream.seek(offset)
            else:
                stream = open(self.part_path, "wb")
        except OSError as err:
            raise StagingIOError(f"cannot open {self.part_path}: {err.strerror}") from err
        with self._lock:
            self._file = stream
            self._state = TransferState.PARTIAL
            self._size = size
            self._received = offset
            self._sha256 = bytes(sha256)
        self._unsynced_blocks = 0
        self.sync()
        logger.info("update transfer: %s at byte %d of %d", "resumed" if offset else "started", offset, size)

    def write(self, data: bytes) -> None:
        """Append one block at the received offset; every ``sync_every`` blocks, sync.

        Raises:
            TransferRangeError: no download is open, or the block goes beyond the announced size.
            StagingIOError: the write failed (nothing is counted as received).
        """
        stream = self._file
        if stream is None:
            raise TransferRangeError("no download is open; RequestDownload first")
        if self._received + len(data) > self._size:
            raise TransferRangeError(
                f"{len(data)} bytes at offset {self._received} go beyond the announced size {self._size}"
            )
        try:
            stream.write(data)
        except OSError as err:
            # The stream position may have moved: put it back where the confirmed bytes end.
            self._rewind()
            raise StagingIOError(f"cannot write {self.part_path}: {err.strerror}") from err
        with self._lock:
            self._received += len(data)
        self._unsynced_blocks += 1
        if self._unsynced_blocks >= self.sync_every:
            self.sync()

    def sync(self) -> None:
        """Make the received bytes durable, then record them in the sidecar.

        Raises:
            StagingIOError: flushing the data or writing the sidecar failed.
        """
        stream = self._file
        try:
            if stream is not None:
                stream.flush()
                os.fsync(stream.fileno())
            self._write_sidecar()
        except OSError as err:
            raise StagingIOError(
                f"cannot sync the update staging files in {self.directory}: {err.strerror}"
            ) from err
        self._unsynced_blocks = 0

    def pause(self) -> None:
        """Close an open download, keeping what was received (sync first). Idempotent."""
        if self._file is None:
            return
        try:
            self.sync()
        except StagingIOError:
            logger.warning(
                "update transfer: could not sync on pause; the next start may resume earlier", exc_info=True
            )
        finally:
            stream, self._file = self._file, None
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    logger.warning("update transfer: closing %s failed", self.part_path, exc_info=True)

    def finish(self) -> Path:
        """Check the complete download's sha256 and keep it as ``received.pkg``; returns that path.

        Takes as long as hashing the package (read once from disk).

        Raises:
            TransferRangeError: no download is open, or bytes are missing.
            TransferIntegrityError: the sha256 differs from the announced one; everything received is
                discarded (the next download starts at 0).
            StagingIOError: the files cannot be synced or renamed.
        """
        if self._file is None:
            raise TransferRangeError("no download is open; RequestDownload first")
        if self._received != self._size:
            raise TransferRangeError(f"{self._size - self._received} of {self._size} bytes are still missing")
        self.pause()
        digest = sha256_file(self.part_path)
        if digest != self._sha256.hex():
            announced = self._sha256.hex()
            self.discard()
            raise TransferIntegrityError(
                f"the {self._size} bytes received hash to sha256 {digest[:16]}…, not the announced "
                f"{announced[:16]}…; the transfer starts over"
            )
        try:
            os.replace(self.part_path, self.received_path)
            fsync_dir(self.directory)
            with self._lock:
                self._state = TransferState.COMPLETE
            self._write_sidecar()
        except OSError as err:
            raise StagingIOError(
                f"cannot keep the received package as {self.received_path}: {err.strerror}"
            ) from err
        logger.info("update transfer: complete, %d bytes, sha256 matches", self._size)
        return self.received_path

    def discard(self) -> None:
        """Forget the partial or complete download record (``received.pkg`` itself is kept)."""
        self.pause()
        for path in (self.part_path, self.sidecar_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.warning("update transfer: cannot remove %s: %s", path, err.strerror)
        with self._lock:
            self._state = TransferState.EMPTY
            self._size = self._received = 0
            self._sha256 = _NO_DIGEST

    def close(self) -> None:
        """Pause an open download (syncing it). Idempotent; the object is unusable afterwards."""
        if self._closed:
            return
        self.pause()
        self._closed = True

    # -- internals ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransferError("the staging file is closed")

    def _check_space(self, needed: int, kept: int) -> None:
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError as err:
            raise StagingIOError(f"cannot read the free space of {self.directory}: {err.strerror}") from err
        # Starting over frees what the part file holds now.
        if not kept and self.part_path.exists():
            try:
                free += self.part_path.stat().st_size
            except OSError:
                pass
        if free < needed + self.reserve_bytes:
            raise NoSpaceError(
                f"{self.directory} has {free // (1 << 20)} MiB free; the package needs {needed // (1 << 20)} "
                f"MiB more plus {self.reserve_bytes // (1 << 20)} MiB in reserve; free some space in "
                "storage.dir or move updates.staging_dir"
            )

    def _rewind(self) -> None:
        stream = self._file
        if stream is None:
            return
        try:
            stream.seek(self._received)
            stream.truncate()
        except OSError:
            logger.warning("update transfer: cannot rewind %s", self.part_path, exc_info=True)

    def _write_sidecar(self) -> None:
        with self._lock:
            document: Dict[str, Any] = {
                "version": SIDECAR_VERSION,
                "size": self._size,
                "received": self._received,
                "sha256": self._sha256.hex(),
                "complete": self._state is TransferState.COMPLETE,
            }
        with atomic_writer(self.sidecar_path, mode=0o600) as stream:
            stream.write(json.dumps(document).encode("utf-8"))

    def _load(self) -> None:
        try:
            raw = self.sidecar_path.read_bytes()
        except FileNotFoundError:
            if self.part_path.exists():
                self._start_over("a part file without its sidecar")
            return
        except OSError as err:
            self._start_over(f"the sidecar cannot be read ({err.strerror})")
            return
        problem = self._adopt(raw)
        if problem:
            self._start_over(problem)

    def _adopt(self, raw: bytes) -> str:
        """Take the sidecar's state if it agrees with the files; returns what is wrong, or ``""``."""
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "the sidecar is not JSON"
        if not isinstance(document, dict) or document.get("version") != SIDECAR_VERSION:
            return "the sidecar has an unknown layout"
        size, received = document.get("size"), document.get("received")
        digest, complete = document.get("sha256"), document.get("complete")
        if not (isinstance(size, int) and isinstance(received, int) and isinstance(complete, bool)):
            return "the sidecar's size, received or complete is missing or of the wrong type"
        try:
            sha256 = bytes.fromhex(digest) if isinstance(digest, str) else b""
        except ValueError:
            sha256 = b""
        if len(sha256) != 32:
            return "the sidecar's sha256 is not a 64-digit hex digest"
        if size <= 0 or not 0 <= received <= size:
            return f"the sidecar's numbers are impossible (received {received} of {size})"
        if complete:
            if received != size:
                return "the sidecar says complete with bytes missing"
            try:
                length = self.received_path.stat().st_size
            except OSError:
                return f"{RECEIVED_NAME} is missing"
            if length != size:
                return f"{RECEIVED_NAME} holds {length} bytes, not {size}"
            state = TransferState.COMPLETE
        else:
            try:
                length = self.part_path.stat().st_size
            except OSError:
                return f"{PART_NAME} is missing"
            if length < received:
                return f"{PART_NAME} holds {length} bytes but the sidecar claims {received}"
            if length > received:
                try:
                    os.truncate(self.part_path, received)  # bytes never confirmed by a sync
                except OSError as err:
                    return f"{PART_NAME} cannot be cut back to {received} bytes ({err.strerror})"
            state = TransferState.PARTIAL
        with self._lock:
            self._state, self._size, self._received, self._sha256 = state, size, received, sha256
        if state is TransferState.PARTIAL:
            logger.info("update transfer: %d of %d bytes kept from before; a push can resume", received, size)
        return ""

    def _start_over(self, problem: str) -> None:
        logger.warning("update transfer: %s in %s; starting over", problem, self.directory)
        self.discard()


__all__ = [
    "DEFAULT_RESERVE_BYTES",
    "DEFAULT_SYNC_EVERY",
    "IncomingPackage",
    "NoSpaceError",
    "StagingIOError",
    "TransferError",
    "TransferIntegrityError",
    "TransferProgress",
    "TransferRangeError",
    "TransferState",
]
