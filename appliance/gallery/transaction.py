"""One SQLite write transaction under a store's lock, shared by the gallery store and the sightings store.

``BEGIN IMMEDIATE`` takes the write lock at once; a failure (a full disk, an I/O error) rolls back and
comes out as the store's own error, so nothing of a failed change is written and the caller sees one
error type per store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Union

logger = logging.getLogger(__name__)


@contextmanager
def write_transaction(
    lock: Union[threading.Lock, threading.RLock],
    connection: Callable[[], sqlite3.Connection],
    error: Callable[[str], Exception],
    what: str,
) -> Iterator[sqlite3.Connection]:
    """``with write_transaction(…) as db:`` — commit at the end of the block, roll back on any error.

    Args:
        lock: the store's lock, held for the whole transaction.
        connection: the open connection (it may raise the store's "closed" error).
        error: the store's error type, built from a message.
        what: the store in messages, e.g. ``"the gallery /var/lib/…/gallery.db"``.
    """
    with lock:
        db = connection()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise error(f"cannot write to {what}: {err}") from err
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as err:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error as rollback:  # the original error is the one worth reporting
                    logger.debug("rollback of %s failed: %s", what, rollback)
            if isinstance(err, sqlite3.Error):
                raise error(f"cannot write to {what}: {err} (is the disk full?)") from err
            raise
