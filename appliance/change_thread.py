"""The ``gallery-change`` thread: gallery work that needs no model, taken off the pipeline thread.

Some gallery changes cost milliseconds to seconds of disk or of index editing while needing no
model: a removal's new index snapshot (26 MB at 10⁵ templates), a reading of the store changed by
another process, an adaptive template replacing the oldest one in an HNSW graph (a detachment, tens
of milliseconds at 10⁶ templates). The door's frames must not wait for them, so they run here, one at
a time, while the pipeline thread goes on with its frames and searches (the gallery's locks allow
it: see :mod:`appliance.gallery.gallery`).

One :class:`ChangeThread` per daemon, shared by everything that hands work to it (the command
service, the template update). Only the pipeline thread starts work, so "is one running, else start
this one" needs no lock; anyone may ask :meth:`ChangeThread.busy` or join it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional


class ChangeThread:
    """Runs one piece of gallery work at a time on a thread named ``gallery-change``."""

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None

    def busy(self) -> bool:
        """Whether a piece of work is under way."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, work: Callable[..., Any], *args: Any) -> bool:
        """Start ``work(*args)`` unless another piece is under way (pipeline thread only); returns
        whether it started. ``work`` handles its own errors: one that escapes ends the thread with
        Python's traceback in the log, and the next piece starts as usual."""
        if self.busy():
            return False
        self._thread = threading.Thread(target=work, args=args, name="gallery-change", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the work under way; returns whether none is left."""
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout))
        return not self.busy()


__all__ = ["ChangeThread"]
