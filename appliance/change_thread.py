"""The ``gallery-change`` thread: gallery work that needs no model, taken off the pipeline thread.

Some gallery changes cost milliseconds to seconds of disk or of index editing while needing no
model: a removal's new index snapshot (26 MB at 10⁵ templates), a reading of the store changed by
another process, an adaptive template replacing the oldest one in an HNSW graph (a detachment, tens
of milliseconds at 10⁶ templates). The door's frames must not wait for them, so they run here, one at
a time, while the pipeline thread goes on with its frames and searches (the gallery's locks allow
it: see :mod:`appliance.gallery.gallery`).

One :class:`ChangeThread` per daemon, shared by everything that hands work to it (the command
service, the template update). The thread starts with the first piece of work and then waits for the
next until :meth:`ChangeThread.close`: handing work over is a queue's put. A thread per piece would
make the pipeline thread wait for the new thread's start handshake, and CPython hands the GIL back
to the starter only when the new thread blocks or its switch interval (5 ms) ends — 2.7 ms at the
99th percentile on the AMD host. Only the pipeline thread hands work over, so "is one under way,
else take this one" needs no lock; anyone may ask :meth:`ChangeThread.busy` or wait for it.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Optional, Tuple

logger = logging.getLogger(__name__)

#: A piece of work and its arguments; ``None`` ends the thread.
_Work = Optional[Tuple[Callable[..., Any], Tuple[Any, ...]]]


class ChangeThread:
    """Runs one piece of gallery work at a time on a thread named ``gallery-change``."""

    def __init__(self) -> None:
        self._work = queue.SimpleQueue()  # of _Work
        self._idle = threading.Event()
        self._idle.set()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def busy(self) -> bool:
        """Whether a piece of work is under way (or handed over and not yet begun)."""
        return not self._idle.is_set()

    def start(self, work: Callable[..., Any], *args: Any) -> bool:
        """Hand ``work(*args)`` to the thread unless another piece is under way or the thread was
        closed (pipeline thread only); returns whether it was taken. ``work`` handles its own
        errors: one that escapes is logged, and the thread goes on with the next piece."""
        if self.busy() or self._closed:
            return False
        self._idle.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="gallery-change", daemon=True)
            self._thread.start()
        self._work.put((work, args))
        return True

    def _serve(self) -> None:
        while True:
            piece = self._work.get()
            if piece is None:
                return
            work, args = piece
            try:
                work(*args)
            except Exception:
                logger.exception("a gallery change off the pipeline thread failed")
            finally:
                self._idle.set()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the work under way; returns whether none is left."""
        return self._idle.wait(max(0.0, timeout))

    def close(self) -> None:
        """Take no more work; the thread ends after the piece under way (not waited for here: see
        :meth:`join`)."""
        self._closed = True
        if self._thread is not None:
            self._work.put(None)


__all__ = ["ChangeThread"]
