"""Temporary files of killed atomic writes do not stay forever.

Found by the crash-consistency sweep (``python -m bench.reliability``): a writer killed between
creating its temporary file and renaming it left ``.gallery.index.*.tmp`` (the index: embeddings in
plain text), ``.active.json.*.tmp`` or ``.releases.json.*.tmp`` behind, and nothing ever removed
them: a removed identity's embedding could outlive its removal there. The next write of the same
file now removes such leftovers once they are :data:`~engines.files.STALE_TEMPORARY_S` old. Here the
kill is real (``RLIMIT_FSIZE`` with the default action of ``SIGXFSZ`` kills the writer mid-write).
"""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path
from typing import List

from engines.files import STALE_TEMPORARY_S, atomic_writer, remove_stale_temporaries, write_new_file


def _killed_while_writing(final: Path, limit: int) -> int:
    """Fork a child that writes 64 KiB to ``final`` and is killed past ``limit`` bytes; its signal."""
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            with atomic_writer(final) as stream:
                for _ in range(64):
                    stream.write(b"embedding " * 103)
                    stream.flush()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


def _temporaries(folder: Path) -> List[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    index = tmp_path / "gallery.index"
    assert _killed_while_writing(index, 8192) == signal.SIGXFSZ
    left = _temporaries(tmp_path)
    assert len(left) == 1 and left[0].startswith(".gallery.index.") and not index.exists()
    with atomic_writer(index) as stream:  # soon after the kill: it could still be a live writer's
        stream.write(b"new")
    assert _temporaries(tmp_path) == left
    aged = time.time() - STALE_TEMPORARY_S - 60
    os.utime(tmp_path / left[0], (aged, aged))
    with atomic_writer(index) as stream:
        stream.write(b"newer")
    assert _temporaries(tmp_path) == [] and index.read_bytes() == b"newer"


def test_only_old_regular_leftovers_of_that_file_are_removed(tmp_path: Path) -> None:
    old = time.time() - STALE_TEMPORARY_S - 60
    names = [".active.json.abcd1234.tmp", ".releases.json.abcd1234.tmp", ".active.json.dir.tmp"]
    for name in names[:2]:
        (tmp_path / name).write_bytes(b"{")
        os.utime(tmp_path / name, (old, old))
    (tmp_path / names[2]).mkdir()
    removed = remove_stale_temporaries(tmp_path / "active.json")
    assert [path.name for path in removed] == [names[0]]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names[1:])
    write_new_file(tmp_path / "releases.json", b"{}", 0o600)  # a new file's writer cleans up too
    assert not (tmp_path / names[1]).exists()
