"""Opening the appliance's own SQLite files: the gallery, the outbox, the sightings and presence stores.

They hold names, passages and sealed templates, so each is opened the same way:

* the folder is created 0700 and the file 0600 before SQLite sees it (SQLite gives its ``-wal`` and
  ``-shm`` files the database file's mode), whatever the umask of the process: the daemon runs with
  ``UMask=0077``, but the command line may run from an administrator's shell;
* WAL journaling, checked, since every store relies on readers that do not block the writer and on
  a transaction that is all or nothing after a crash;
* ``secure_delete``: a deleted row is overwritten in the file, not left in a free page (not every
  SQLite build has it on by default);
* foreign keys enforced;
* one connection in autocommit mode (each store opens its own transactions), usable from the
  thread that holds the store's lock rather than only from the one that opened it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from typing_extensions import Literal

Synchronous = Literal["FULL", "NORMAL"]


def open_private_database(path: Path, synchronous: Synchronous, timeout_s: float) -> sqlite3.Connection:
    """Open (creating it if needed) the SQLite database at ``path`` with the pragmas above.

    Args:
        path: the database file; its folder is created (0700) when missing.
        synchronous: ``FULL`` (a commit that returned is on disk) or ``NORMAL`` (a commit costs no
            fsync; a power cut may lose the last ones, never the file's consistency).
        timeout_s: how long a statement waits for another connection's lock.

    Raises:
        OSError: the folder or the file cannot be created.
        sqlite3.DatabaseError: the file is not a database (``sqlite3.DatabaseError`` itself).
        sqlite3.OperationalError: it is locked, unreadable, or cannot be switched to WAL.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(str(path), os.O_CREAT | os.O_RDWR, 0o600))
    connection = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
    try:
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {path} to WAL journaling (got {mode!r})")
        connection.execute(f"PRAGMA synchronous={synchronous}")
        connection.execute("PRAGMA secure_delete=ON")
        connection.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        connection.close()
        raise
    return connection
