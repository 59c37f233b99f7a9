"""The gallery's lock: its changes one at a time, and the door's searches beside a file being written.

A change (an enrolment, a removal, a fleet record, a refresh) edits the store, the index in memory
and the maps around them: it holds the lock *exclusively*. A search only reads them, and so does
writing the index files: both hold it *shared*. So the door's search does not wait while a removal's
snapshot reaches the disk — 26 MB at 10⁵ float16 templates (75 ms here), 536 MB for an HNSW graph
of 10⁶ (seconds on a Jetson's eMMC) — and no change can slip between the state a file describes
and its writing.

Readers are preferred: a shared request waits only while a change is in progress, never for one
that is waiting. A change waits until no reader holds the lock; the pipeline's searches are short
(under a millisecond) and a frame apart, so a waiting change gets in between two of them.

The exclusive side is reentrant (a change may refresh the whole gallery), and its holder may take
the shared side too. A thread holding only the shared side must not ask for the exclusive one: it
would wait for itself. The lock does not track readers per thread (that would cost the search path
a dictionary per call), so that misuse is not detected: :class:`~.gallery.Gallery` takes the
shared side only in leaf methods that call no change.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional


class SharedLock:
    """A reader–writer lock preferring readers, with a reentrant writer (see the module)."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._writer: Optional[int] = None  # the thread holding the exclusive side
        self._writer_depth = 0
        self._readers = 0

    def acquire_exclusive(self, blocking: bool = True) -> bool:
        """Take the exclusive side; with ``blocking`` false, return ``False`` at once when it is held
        (by a change, or shared by a search or a file being written)."""
        me = threading.get_ident()
        with self._condition:
            if self._writer == me:
                self._writer_depth += 1
                return True
            while self._writer is not None or self._readers:
                if not blocking:
                    return False
                self._condition.wait()
            self._writer, self._writer_depth = me, 1
            return True

    def release_exclusive(self) -> None:
        with self._condition:
            if self._writer != threading.get_ident():
                raise RuntimeError(
                    "release_exclusive: this thread does not hold the gallery lock exclusively"
                )
            self._writer_depth -= 1
            if not self._writer_depth:
                self._writer = None
                self._condition.notify_all()

    def acquire_shared(self) -> None:
        """Take the shared side: waits only while another thread holds the exclusive one."""
        with self._condition:
            if self._writer is not None and self._writer != threading.get_ident():
                while self._writer is not None:
                    self._condition.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._condition:
            if self._readers <= 0:
                raise RuntimeError("release_shared: the gallery lock is not held shared")
            self._readers -= 1
            if not self._readers:
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        self.acquire_exclusive()
        try:
            yield
        finally:
            self.release_exclusive()

    @contextmanager
    def shared(self) -> Iterator[None]:
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()
