"""File helpers: bounded reads of regular files only, and writes that never leave a half-written file.

Every file named by the configuration or the command line is read through :func:`read_bounded`
(or opened through :func:`open_regular` when it is streamed): a device (``/dev/zero``), a FIFO, a
directory, a symlink loop or a file larger than the reader accepts is refused with
:class:`~engines.errors.FileReadError` instead of exhausting memory or hanging. A systemd credential
(``$CREDENTIALS_DIRECTORY/...``) is a regular file and reads like any other.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Iterator, List, Tuple, Union

from .errors import FileReadError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

CHUNK_BYTES = 1 << 20

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a special file"


def _open_error(path: str, err: OSError) -> FileReadError:
    """A :class:`FileReadError` for an ``open`` that failed."""
    if err.errno == errno.ENOENT:
        return FileReadError(path, "does not exist", missing=True)
    if err.errno == errno.ELOOP:
        return FileReadError(path, "is a symlink loop (or too many levels of links); name a regular file")
    return FileReadError(path, f"cannot be read: {err.strerror or err}")


def open_regular(path: PathLike) -> BinaryIO:
    """Open a regular file for reading in binary mode; anything else is refused before a byte is read.

    ``O_NONBLOCK`` keeps the open of a FIFO from waiting for a writer; ``fstat`` on the open file
    (links followed, so a link to ``/dev/zero`` is seen as the device) refuses it just after.

    Raises:
        FileReadError: the file is missing, unreadable, a symlink loop, or not a regular file.
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags)
    except OSError as err:
        raise _open_error(name, err) from None
    except ValueError:  # a NUL character
        raise FileReadError(repr(name), "is not a valid file name (it holds a NUL character)") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as err:
        os.close(fd)
        raise _open_error(name, err) from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FileReadError(name, f"is not a regular file ({_kind(mode)}); name a regular file")
    return os.fdopen(fd, "rb")


def read_bounded(path: PathLike, max_bytes: int) -> bytes:
    """All bytes of a regular file of at most ``max_bytes`` (at most ``max_bytes + 1`` are ever read).

    Raises:
        FileReadError: missing, unreadable, not a regular file, or larger than ``max_bytes``.
    """
    name = os.fspath(path)
    with open_regular(name) as stream:
        try:
            data = stream.read(max_bytes + 1)
        except OSError as err:
            raise FileReadError(name, f"cannot be read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise FileReadError(name, f"is larger than the {max_bytes} bytes accepted here")
    return data


def read_bounded_text(path: PathLike, max_bytes: int) -> str:
    """A regular file of at most ``max_bytes`` decoded as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        FileReadError: as :func:`read_bounded`, or the bytes are not UTF-8.
    """
    data = read_bounded(path, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FileReadError(
            os.fspath(path), f"is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None


def digest_and_size(path: PathLike) -> Tuple[str, int]:
    """Hex sha256 and length of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    return digest_and_size(path)[0]


def fsync_dir(directory: PathLike) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_file(temporary: PathLike, final: PathLike) -> None:
    """Flush ``temporary`` to disk and rename it over ``final`` atomically, then sync the directory."""
    with open(temporary, "rb+") as stream:
        os.fsync(stream.fileno())
    os.replace(temporary, final)
    fsync_dir(Path(final).parent)


#: A writer's temporary file (``.NAME.*.tmp``) unchanged this long was left by a writer that died (a
#: live writer's file changes as it writes): the next write of ``NAME`` removes it.
STALE_TEMPORARY_S = 300.0


def remove_stale_temporaries(final: PathLike, now: float = 0.0) -> List[Path]:
    """Remove the temporary files that writers of ``final`` killed mid-write left beside it.

    A kill between creating the temporary file and renaming it leaves a full or partial copy of
    what was being written (for the gallery index: embeddings in plain text) that nothing would
    ever delete. Only regular files unchanged for :data:`STALE_TEMPORARY_S` are removed.

    Returns:
        The files removed.
    """
    target = Path(final)
    now = now or time.time()
    removed: List[Path] = []
    for name in glob.glob(
        os.path.join(glob.escape(str(target.parent)), f".{glob.escape(target.name)}.*.tmp")
    ):
        path = Path(name)
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > STALE_TEMPORARY_S:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        logger.info(
            "removed %d temporary file(s) an interrupted write of %s left behind", len(removed), target
        )
    return removed


def write_new_file(path: PathLike, data: bytes, mode: int) -> None:
    """Create ``path`` holding ``data``, whole or not at all; never replace an existing file.

    The bytes go to a temporary file beside ``path`` (fsync'd), which is then hard-linked to the name
    (``link`` fails when the name exists, so nothing is replaced, even by a concurrent writer), and
    the directory is synced. A process killed at any point leaves no ``path`` or the complete one,
    never an empty or partial file (a key created on first start must not become one that no later
    start accepts).

    Raises:
        FileExistsError: ``path`` exists (a dangling symbolic link included).
        OSError: it cannot be written.
    """
    final = Path(path)
    remove_stale_temporaries(final)
    fd, temporary = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.link(temporary, final)
        fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


@contextlib.contextmanager
def atomic_writer(final: PathLike, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write a file so that readers see either the old content or the complete new one.

    Yields a binary stream on a temporary file in the same directory; on a clean exit the file is
    fsynced and renamed over ``final``; on an exception it is removed and ``final`` is untouched.
    Temporary files of earlier writers that were killed are removed first
    (:func:`remove_stale_temporaries`).
    """
    final_path = Path(final)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final_path)
    fd, temporary = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
        os.chmod(temporary, mode)
        commit_file(temporary, final_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
