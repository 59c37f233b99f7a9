"""The durable outbox: access events kept on disk until the broker has acknowledged them.

An event is written here (and the write is on disk: SQLite in WAL mode with ``synchronous=FULL``)
before anything tries to publish it; :class:`appliance.mqtt_link.MqttLink` reads the pending
events oldest first, publishes them with QoS 1 and deletes each one only when its PUBACK arrives.
A power cut, a broker outage or a restart therefore loses nothing that was accepted; it may cause
an event to be delivered twice, so consumers de-duplicate by ``event_id``.

Overflow policy
---------------
The outbox is bounded, because a broker that stays away for weeks must not fill the disk:

* by count (``outbox.max_events``): when a new event would exceed it, the **oldest** events are
  dropped. At a door the newest access events matter most (who is in the building now); a
  week-old backlog is worth less than today's;
* by age (``outbox.max_age_h``): events older than that are dropped.

Before anything is dropped, the outbox says it is filling: at :data:`NEARLY_FULL` of
``outbox.max_events`` (terminals alarm at "offline events 90 % full") a WARNING is logged once, and
:meth:`Outbox.stats` reports ``nearly_full`` (the ``…/state`` document's ``degraded`` names it) until
it is back under half full, so the operator hears of a broker that stays away while no event is lost
yet.

Nothing is dropped silently. Both kinds of drop are counted, the counters are kept in the
database (they survive restarts) and are reported by :meth:`Outbox.stats` for the retained
``…/state`` document. Each overflow episode is logged once at WARNING (an episode ends when the
outbox has been drained; that is logged at INFO with what the episode dropped).

Events stamped before 2020 are never dropped for their age: such a stamp means the clock was not
yet set when the event was written (a device without a battery-backed clock boots in the past and
jumps forward once NTP answers), and dropping them would lose the events of every early boot.

Privacy
-------
Events name the people who passed the door. Deleted events are overwritten in the database file
(``secure_delete``), and whenever the outbox has drained, the WAL is checkpointed and truncated, so
no copy of an acknowledged event survives in the WAL either (the state a power cut would leave).

The outbox is owned by one process; it is thread-safe (one connection behind a lock).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional

from .errors import ApplianceError
from .sqlite_files import open_private_database

logger = logging.getLogger(__name__)

#: The share of ``max_events`` at which the outbox warns that it is filling (it stops warning under half).
NEARLY_FULL = 0.9

_SCHEMA_VERSION = 1
#: Stamps before this (2020-01-01T00:00:00Z) come from a clock that was not set yet.
_CLOCK_SANE_AFTER = 1_577_836_800.0
#: How often :meth:`Outbox.pending` looks for expired events, at most.
_EXPIRY_CHECK_S = 1.0
_COUNTERS = ("put_total", "acked_total", "dropped_overflow", "dropped_age")


class OutboxError(ApplianceError):
    """The outbox cannot be used: the database cannot be opened or written (disk full, I/O error,
    permissions), or the outbox was closed.

    Example scenarios: ``put`` on a full disk; ``open`` on a folder the service may not write.
    """


class OutboxEntry(NamedTuple):
    """One pending event."""

    #: Position in the outbox: increases with every ``put``, never reused.
    seq: int
    #: The event's id (a UUID), which consumers de-duplicate on.
    event_id: str
    #: Published on ``{topic_root}/{topic_suffix}``.
    topic_suffix: str
    #: The event document as it goes on the wire (JSON, UTF-8).
    payload: bytes
    #: When it was put (Unix time, seconds).
    created_at: float


def check_topic_suffix(suffix: str) -> str:
    """Return ``suffix`` if it is a valid topic tail (levels without wildcards), else raise.

    Raises:
        ValueError: empty, with an empty level, a wildcard (``+``, ``#``) or a NUL character.
    """
    if not suffix or any(not level for level in suffix.split("/")):
        raise ValueError(f"topic suffix {suffix!r} is empty or has an empty level")
    if any(char in suffix for char in "+#\x00"):
        raise ValueError(f"topic suffix {suffix!r} contains a wildcard or a NUL character")
    return suffix


class Outbox:
    """Access events on disk, in order, until acknowledged (see the module docstring).

    Open it with :meth:`open`; every method may be called from any thread.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        max_events: int,
        max_age_s: float,
        clock: Callable[[], float],
    ) -> None:
        """Use :meth:`open`."""
        self._db: Optional[sqlite3.Connection] = connection
        self._path = path
        self._max_events = max_events
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._depth = int(connection.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        self._counters: Dict[str, int] = {name: 0 for name in _COUNTERS}
        for key, value in connection.execute("SELECT key, value FROM meta"):
            if key in self._counters:
                self._counters[key] = int(value)
        self._overflow_episode = 0  # events dropped for the count bound in the current episode
        self._age_episode = 0  # events dropped for their age in the current episode
        self._next_expiry_check = 0.0
        #: Whether the depth reached NEARLY_FULL of max_events and has not been under half since.
        self.nearly_full = False
        self._note_fill_locked()

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        max_events: int,
        max_age_s: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> Outbox:
        """Open (or create) the outbox database at ``path``.

        A file that is not an SQLite database, or a corrupt one, is moved aside to
        ``{path}.corrupt-{unix time}`` (kept for inspection, logged at ERROR) and a new outbox is
        started, so that a damaged file does not keep the door's events from being recorded.

        Args:
            path: the database file; its folder is created (mode 0700) if needed; the file is
                created with mode 0600 (events may carry names).
            max_events: most events kept; above it the oldest are dropped (and counted).
            max_age_s: events older than this are dropped (and counted).
            clock: the wall clock (Unix seconds); tests pass their own.

        Raises:
            ValueError: a bound is not positive.
            OutboxError: the database cannot be opened or created.
        """
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be positive, not {max_age_s}")
        path = Path(path)
        try:
            connection = _connect(path)
        except OSError as err:
            raise OutboxError(f"cannot create the outbox {path}: {err}") from err
        except sqlite3.OperationalError as err:  # locked, I/O error, permissions: not corruption
            raise OutboxError(f"cannot open the outbox {path}: {err}") from err
        except sqlite3.DatabaseError as err:
            quarantined = _quarantine(path, clock())
            logger.error(
                "Outbox %s is not a usable SQLite database (%s); moved it to %s and started an empty one",
                path,
                err,
                quarantined,
            )
            try:
                connection = _connect(path)
            except (OSError, sqlite3.DatabaseError) as again:
                raise OutboxError(f"cannot open the outbox {path}: {again}") from again
        outbox = cls(connection, path, max_events, max_age_s, clock)
        with outbox._lock:
            outbox._expire_locked(clock())
        logger.debug("Outbox %s opened: %d pending", path, outbox._depth)
        return outbox

    def close(self) -> None:
        """Close the database. Idempotent; other methods raise :class:`OutboxError` afterwards."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.close()
            except sqlite3.Error as err:
                logger.warning("Closing the outbox %s failed: %s", self._path, err)
            self._db = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # -- writing -----------------------------------------------------------------------------------

    def put(self, event_id: str, payload: bytes, topic_suffix: str = "events") -> int:
        """Store an event; it is committed to disk when this returns.

        Enforces the bounds in the same transaction: expired events and, if the outbox is then
        above ``max_events``, the oldest events are dropped and counted (possibly the new one's
        predecessors, never the new one).

        Args:
            event_id: the event's id (a UUID string); consumers de-duplicate on it.
            payload: the serialized event.
            topic_suffix: published on ``{topic_root}/{topic_suffix}``.

        Returns:
            The event's sequence number (increasing, never reused).

        Raises:
            ValueError: ``topic_suffix`` is not a valid topic tail, or the payload is not bytes.
            OutboxError: the write failed (disk full, I/O error) or the outbox is closed.
        """
        check_topic_suffix(topic_suffix)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise ValueError(f"payload must be bytes, not {type(payload).__name__}")
        with self._lock:
            now = self._clock()
            with self._write() as db:
                cursor = db.execute(
                    "INSERT INTO events (event_id, topic_suffix, payload, created_at) VALUES (?, ?, ?, ?)",
                    (event_id, topic_suffix, bytes(payload), now),
                )
                seq = int(cursor.lastrowid or 0)
                expired = self._delete_expired(db, now)
                overflow = max(0, self._depth + 1 - expired - self._max_events)
                if overflow:
                    db.execute(
                        "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                        (overflow,),
                    )
                changes = {"put_total": 1, "dropped_age": expired, "dropped_overflow": overflow}
                self._write_counters(db, changes)
            self._depth += 1 - expired - overflow
            self._apply_counters(changes)
            self._note_drops(expired, overflow)
            self._note_fill_locked()
            return seq

    def ack(self, seq: int) -> bool:
        """Delete the event ``seq`` (its PUBACK arrived).

        Returns:
            True if it was still there (it may have been dropped meanwhile).

        Raises:
            OutboxError: the write failed or the outbox is closed.
        """
        return self.ack_many([seq]) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Delete several acknowledged events in one transaction.

        Returns:
            How many of them were still there.

        Raises:
            OutboxError: the write failed or the outbox is closed.
        """
        wanted = [(int(seq),) for seq in seqs]
        if not wanted:
            return 0
        with self._lock:
            with self._write() as db:
                deleted = 0
                for row in wanted:
                    deleted += max(0, db.execute("DELETE FROM events WHERE seq = ?", row).rowcount)
                self._write_counters(db, {"acked_total": deleted})
            self._depth -= deleted
            self._apply_counters({"acked_total": deleted})
            self._note_fill_locked()
            self._note_drained_locked()
            return deleted

    # -- reading -----------------------------------------------------------------------------------

    def pending(self, limit: int, after_seq: int = 0) -> List[OutboxEntry]:
        """Up to ``limit`` pending events with ``seq > after_seq``, oldest first.

        Expired events are dropped (and counted) first, at most once a second.

        Raises:
            OutboxError: the database failed or the outbox is closed.
        """
        if limit <= 0:
            return []
        with self._lock:
            db = self._connection()
            now = self._clock()
            if now >= self._next_expiry_check:
                self._next_expiry_check = now + _EXPIRY_CHECK_S
                self._expire_locked(now)
            try:
                rows = db.execute(
                    "SELECT seq, event_id, topic_suffix, payload, created_at FROM events "
                    "WHERE seq > ? ORDER BY seq LIMIT ?",
                    (int(after_seq), int(limit)),
                ).fetchall()
            except sqlite3.Error as err:
                raise OutboxError(f"cannot read the outbox {self._path}: {err}") from err
        return [OutboxEntry(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), float(r[4])) for r in rows]

    def depth(self) -> int:
        """How many events are pending."""
        with self._lock:
            return self._depth

    def stats(self) -> Dict[str, Any]:
        """Figures for the ``…/state`` document.

        Returns:
            ``depth`` (pending events), ``capacity`` (``outbox.max_events``), ``nearly_full`` (see
            the module), ``oldest_age_s`` (age of the oldest pending event in
            seconds, None when empty), ``dropped_overflow`` and ``dropped_age`` (events dropped for
            each bound, ever), ``put_total`` and ``acked_total`` (ever, across restarts).

        Raises:
            OutboxError: the database failed or the outbox is closed.
        """
        with self._lock:
            db = self._connection()
            try:
                row = db.execute("SELECT MIN(created_at) FROM events").fetchone()
            except sqlite3.Error as err:
                raise OutboxError(f"cannot read the outbox {self._path}: {err}") from err
            oldest = None if row is None or row[0] is None else max(0.0, self._clock() - float(row[0]))
            stats: Dict[str, Any] = {
                "depth": self._depth,
                "capacity": self._max_events,
                "nearly_full": self.nearly_full,
                "oldest_age_s": oldest,
            }
            for name in ("dropped_overflow", "dropped_age", "put_total", "acked_total"):
                stats[name] = self._counters[name]
            return stats

    # -- internals ---------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"the outbox {self._path} is closed")
        return self._db

    def _delete_expired(self, db: sqlite3.Connection, now: float) -> int:
        cutoff = now - self._max_age_s
        if cutoff <= _CLOCK_SANE_AFTER:
            return 0
        cursor = db.execute(
            "DELETE FROM events WHERE created_at < ? AND created_at >= ?", (cutoff, _CLOCK_SANE_AFTER)
        )
        return max(0, cursor.rowcount)

    def _expire_locked(self, now: float) -> None:
        db = self._connection()
        cutoff = now - self._max_age_s
        try:
            found = db.execute(
                "SELECT 1 FROM events WHERE created_at < ? AND created_at >= ? LIMIT 1",
                (cutoff, _CLOCK_SANE_AFTER),
            ).fetchone()
            if found is None:
                return
        except sqlite3.Error as err:
            raise OutboxError(f"cannot read the outbox {self._path}: {err}") from err
        with self._write() as db:
            expired = self._delete_expired(db, now)
            self._write_counters(db, {"dropped_age": expired})
        self._depth -= expired
        self._apply_counters({"dropped_age": expired})
        self._note_drops(expired, 0)
        self._note_fill_locked()
        self._note_drained_locked()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``); rolled back on any error."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error as err:  # the original error is the one worth raising
                        logger.debug("Outbox rollback failed: %s", err)
                raise
        except sqlite3.Error as err:
            raise OutboxError(f"cannot write to the outbox {self._path}: {err}") from err

    @staticmethod
    def _write_counters(db: sqlite3.Connection, changes: Dict[str, int]) -> None:
        for name, delta in changes.items():
            if delta:
                db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (delta, name))

    def _apply_counters(self, changes: Dict[str, int]) -> None:
        for name, delta in changes.items():
            self._counters[name] += delta

    def _note_drops(self, expired: int, overflow: int) -> None:
        if overflow:
            if not self._overflow_episode:
                logger.warning(
                    "Outbox full (%d events): dropping the oldest events to keep the newest; drops are "
                    "counted in the state (dropped_overflow). Is the broker reachable?",
                    self._max_events,
                )
            self._overflow_episode += overflow
        if expired:
            if not self._age_episode:
                logger.warning(
                    "Outbox: dropping events older than %.1f h that were never acknowledged; drops are "
                    "counted in the state (dropped_age). Is the broker reachable?",
                    self._max_age_s / 3600.0,
                )
            self._age_episode += expired

    def _note_fill_locked(self) -> None:
        """Warn once when the depth reaches :data:`NEARLY_FULL` of ``max_events``; clear under half."""
        if not self.nearly_full and self._depth >= NEARLY_FULL * self._max_events:
            self.nearly_full = True
            logger.warning(
                "Outbox %d %% full: %d of %d events wait for the broker's acknowledgement; at %d the "
                "oldest are dropped. Is the broker reachable?",
                round(100 * NEARLY_FULL),
                self._depth,
                self._max_events,
                self._max_events,
            )
        elif self.nearly_full and self._depth <= self._max_events // 2:
            self.nearly_full = False
            logger.info("Outbox under half full again (%d of %d events)", self._depth, self._max_events)

    def _note_drained_locked(self) -> None:
        if self._depth > 0:
            return
        self._truncate_wal_locked()
        if not (self._overflow_episode or self._age_episode):
            return
        logger.info(
            "Outbox drained; %d event(s) were dropped while it was backed up (%d for the count bound, "
            "%d for their age)",
            self._overflow_episode + self._age_episode,
            self._overflow_episode,
            self._age_episode,
        )
        self._overflow_episode = 0
        self._age_episode = 0

    def _truncate_wal_locked(self) -> None:
        """Copy the WAL into the database and empty it: acknowledged events leave no copy behind."""
        db = self._db
        if db is None:
            return
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as err:  # the events are safe either way; only the old copies stay longer
            logger.debug("Outbox WAL checkpoint failed: %s", err)


def _connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the database and create or check the schema."""
    db = open_private_database(path, synchronous="FULL", timeout_s=10.0)
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > _SCHEMA_VERSION:
            raise sqlite3.OperationalError(
                f"schema version {version} is newer than this firmware's ({_SCHEMA_VERSION})"
            )
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "CREATE TABLE IF NOT EXISTS events ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " event_id TEXT NOT NULL,"
            " topic_suffix TEXT NOT NULL,"
            " payload BLOB NOT NULL,"
            " created_at REAL NOT NULL)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS events_created_at ON events (created_at)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        db.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)", [(k,) for k in _COUNTERS])
        db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        db.execute("COMMIT")
        db.execute("SELECT COUNT(*) FROM events").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def _quarantine(path: Path, now: float) -> Path:
    """Move a damaged database (and its WAL and shared-memory files) aside."""
    target = path.with_name(f"{path.name}.corrupt-{int(now)}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            try:
                os.replace(str(source), f"{target}{suffix}")
            except OSError as err:
                raise OutboxError(f"cannot move the damaged outbox {source} aside: {err}") from err
    return target
