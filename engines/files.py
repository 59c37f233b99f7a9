"""File helpers shared by everything that must never leave a half-written file under its final name."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

CHUNK_BYTES = 1 << 20


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


@contextlib.contextmanager
def atomic_writer(final: PathLike, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write a file so that readers see either the old content or the complete new one.

    Yields a binary stream on a temporary file in the same directory; on a clean exit the file is
    fsynced and renamed over ``final``; on an exception it is removed and ``final`` is untouched.
    """
    final_path = Path(final)
    final_path.parent.mkdir(parents=True, exist_ok=True)
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
