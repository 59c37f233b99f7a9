"""Where each identity last passed: the state anti-passback follows (``presence.db`` in the storage
directory), kept across restarts.

One row per identity — its last *granted* passage: the direction (``in`` or ``out``), the camera and
the instant (Unix seconds, the wall clock) — and, after an operator's reset, when they (or everyone)
were last forgotten, so that another door's older passage is not taken again. It names people and
where they are, so it holds nothing more than that, deleted rows are overwritten (``secure_delete``), and with anti-passback off the
daemon empties it. A row whose identity left the gallery is deleted once the daemon sees the
gallery change (:meth:`appliance.command_service.CommandService.watch_store`).

The daemon's pipeline thread writes it; the command line reads and resets it beside the running
daemon (SQLite in WAL mode, one connection per process, a lock per connection).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import ApplianceError
from ..sqlite_files import open_private_database
from .policy import format_instant

logger = logging.getLogger(__name__)

PRESENCE_FILE = "presence.db"
DIRECTIONS = ("in", "out")
_SCHEMA_VERSION = 1
#: The ``forgotten`` row of a reset of everyone (no identity id is empty).
_EVERYONE = ""
#: The most rows one listing returns (a gallery of 100 000 people is listed in pages of this).
MAX_LISTED = 100_000


class PresenceError(ApplianceError):
    """The presence store cannot be opened, read or written (a damaged file, a newer schema, a full
    disk, permissions).

    Example scenarios: the file is not SQLite; it was written by newer firmware; the disk is full."""


@dataclass(frozen=True)
class Presence:
    """One identity's last granted passage.

    Attributes:
        identity_id: the gallery identity.
        direction: ``in`` or ``out``.
        camera_id: the camera that saw it.
        at: when (Unix seconds, wall clock).
    """

    identity_id: str
    direction: str
    camera_id: str
    at: float

    def document(self) -> Dict[str, Any]:
        """JSON-ready: ``{"id", "direction", "camera_id", "since"}`` (``since``: RFC 3339 UTC)."""
        since = format_instant(datetime.fromtimestamp(self.at, timezone.utc))
        return {
            "id": self.identity_id,
            "direction": self.direction,
            "camera_id": self.camera_id,
            "since": since,
        }


class PresenceStore:
    """The identities' last passages on disk (see the module). Thread-safe: one connection behind a lock.

    Open it with :meth:`open`.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db: Optional[sqlite3.Connection] = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: Path) -> PresenceStore:
        """Open (or create, mode 0600) the store at ``path``.

        Raises:
            PresenceError: not a usable database, or one of a newer schema.
        """
        path = Path(path)
        db: Optional[sqlite3.Connection] = None
        try:
            # A passage is written on the pipeline thread at each grant: NORMAL spares it an fsync per
            # grant (0.5 ms on the development VM, tens of ms on a busy eMMC). A power cut may lose
            # the last passages: those people then pass either way once, as after a reset.
            db = open_private_database(path, synchronous="NORMAL", timeout_s=10.0)
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > _SCHEMA_VERSION:
                raise PresenceError(
                    f"{path} has schema version {version}, newer than this firmware's {_SCHEMA_VERSION}; "
                    "update the firmware, or delete the file (everyone's anti-passback state starts afresh)"
                )
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "CREATE TABLE IF NOT EXISTS presence ("
                " identity_id TEXT PRIMARY KEY,"
                " direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),"
                " camera_id TEXT NOT NULL,"
                " at REAL NOT NULL)"
            )
            # When an operator last forgot someone ('' for everyone): a passage of another door stamped
            # before it (a late delivery, a replay) is not taken again. Added within schema 1: a firmware
            # that does not know it ignores it, which only gives up that check.
            db.execute(
                "CREATE TABLE IF NOT EXISTS forgotten (identity_id TEXT PRIMARY KEY, at REAL NOT NULL)"
            )
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            db.execute("COMMIT")
            return cls(db, path)
        except BaseException as err:
            if db is not None:
                db.close()
            if isinstance(err, (OSError, sqlite3.OperationalError)):  # permissions, a lock, I/O
                raise PresenceError(f"cannot open the presence store {path}: {err}") from err
            if isinstance(err, sqlite3.DatabaseError):
                raise PresenceError(
                    f"{path} is not a usable presence database: {err}; delete it to start everyone's "
                    "anti-passback state afresh"
                ) from err
            raise

    def _run(self, what: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            if self._db is None:
                raise PresenceError(f"the presence store {self.path} is closed")
            try:
                return work(self._db)
            except sqlite3.Error as err:
                raise PresenceError(f"cannot {what} the presence store {self.path}: {err}") from err

    def last(self, identity_id: str) -> Optional[Presence]:
        """The identity's last granted passage, or ``None``."""
        row = self._run(
            "read",
            lambda db: db.execute(
                "SELECT identity_id, direction, camera_id, at FROM presence WHERE identity_id = ?",
                (identity_id,),
            ).fetchone(),
        )
        return None if row is None else Presence(*row)

    def record(self, presence: Presence) -> None:
        """Keep ``presence`` as its identity's last passage (replacing the one before).

        Raises:
            ValueError: a direction other than ``in`` / ``out``.
            PresenceError: it cannot be written (a full disk).
        """
        if presence.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {presence.direction!r}")
        self._run(
            "write to",
            lambda db: db.execute(
                "INSERT OR REPLACE INTO presence VALUES (?, ?, ?, ?)",
                (presence.identity_id, presence.direction, presence.camera_id, float(presence.at)),
            ),
        )

    def entries(self, direction: Optional[str] = None, since: Optional[float] = None) -> List[Presence]:
        """The kept passages, oldest first (at most :data:`MAX_LISTED`): all, or those in ``direction``;
        with ``since``, only those at or after it (older ones were reset)."""
        query = "SELECT identity_id, direction, camera_id, at FROM presence WHERE at >= ?"
        arguments: List[Any] = [float("-inf") if since is None else since]
        if direction is not None:
            query += " AND direction = ?"
            arguments.append(direction)
        query += f" ORDER BY at, identity_id LIMIT {MAX_LISTED}"
        rows = self._run("read", lambda db: db.execute(query, arguments).fetchall())
        return [Presence(*row) for row in rows]

    def reset(
        self,
        identity_ids: Optional[Sequence[str]] = None,
        before: Optional[float] = None,
        forgotten_at: Optional[float] = None,
    ) -> int:
        """Forget passages: of ``identity_ids`` (``None``: everyone's), or with ``before`` only those
        older than it (a daily reset, which also ends the operators' resets it supersedes). Returns how
        many were forgotten.

        Args:
            forgotten_at: an operator's reset (Unix seconds, now): kept, so that a passage of another door
                stamped at or before it is not taken again (:meth:`forgotten_since`). Without it (a removed
                identity, anti-passback turned off) nothing is kept about them at all.
        """

        def delete(db: sqlite3.Connection) -> int:
            db.execute("BEGIN IMMEDIATE")
            try:
                if before is not None:
                    db.execute("DELETE FROM forgotten WHERE at < ?", (before,))
                    count = db.execute("DELETE FROM presence WHERE at < ?", (before,)).rowcount
                elif identity_ids is None:
                    db.execute("DELETE FROM forgotten")
                    count = db.execute("DELETE FROM presence").rowcount
                else:
                    count = 0
                    for identity_id in identity_ids:
                        db.execute("DELETE FROM forgotten WHERE identity_id = ?", (identity_id,))
                        count += db.execute(
                            "DELETE FROM presence WHERE identity_id = ?", (identity_id,)
                        ).rowcount
                if forgotten_at is not None and before is None:
                    db.executemany(
                        "INSERT OR REPLACE INTO forgotten VALUES (?, ?)",  # an id named twice
                        [
                            (identity_id, float(forgotten_at))
                            for identity_id in ([_EVERYONE] if identity_ids is None else identity_ids)
                        ],
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return int(count)

        return int(self._run("write to", delete))

    def identity_ids(self) -> List[str]:
        """Every identity the store keeps anything about: a passage, or an operator's reset."""
        rows = self._run(
            "read",
            lambda db: db.execute(
                "SELECT identity_id FROM presence UNION SELECT identity_id FROM forgotten WHERE identity_id != ?",
                (_EVERYONE,),
            ).fetchall(),
        )
        return [row[0] for row in rows]

    def forgotten_since(self, identity_id: str) -> Optional[float]:
        """When an operator last forgot ``identity_id`` (or everyone), or ``None``."""
        row = self._run(
            "read",
            lambda db: db.execute(
                "SELECT MAX(at) FROM forgotten WHERE identity_id IN (?, ?)", (identity_id, _EVERYONE)
            ).fetchone(),
        )
        return None if row is None or row[0] is None else float(row[0])

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> PresenceStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


__all__ = ["DIRECTIONS", "MAX_LISTED", "PRESENCE_FILE", "Presence", "PresenceError", "PresenceStore"]
