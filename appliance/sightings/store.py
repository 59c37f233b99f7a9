"""The store of faces seen at the door: encrypted, kept for a bounded time, bounded in size.

Separate from the gallery (its own SQLite file, ``{storage.dir}/sightings.db``), sealed with the
gallery key (:class:`appliance.gallery.crypto.Sealer`). It holds three kinds of rows:

* **faces**: one per access event whose face was kept (``events.keep_crops_h``, or an ``unknown``
  face kept for ``unknowns``): the event id, when, which camera, the decision, the identity and score,
  the aligned crop (PNG) and the embedding (float32) with the embedder's version — both sealed;
* **face views**: an ``unknown`` face's other views (``events.walk_up_views``, for walk-up
  enrolment), sealed aligned crops only, deleted with their face;
* **clusters** of unknown faces (``unknowns.enabled``): a sealed centroid per cluster; its members are
  face rows pointing at it.

Retention: every face row has ``expires_at`` (deleted then) and, as a cluster member,
``cluster_until`` (it leaves its cluster then, and the cluster's centroid is computed again from the
members left; a cluster left without members is deleted). Expiry runs when the store is opened, before
every write and read of the listing, and from :meth:`SightingStore.expire` (the daemon's keeper calls
it periodically). The row count is bounded (``max_faces``): the oldest rows go first, counted.

No trace: ``secure_delete`` overwrites deleted rows in the database file, and every deletion (expiry,
a purge, a crop dropped from a full cluster) is followed by a WAL checkpoint that truncates the WAL.

Thread-safe (one connection behind a lock). The clock is injectable (tests move time, never sleep).
"""

from __future__ import annotations

import base64
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..gallery.crypto import Sealer, create_key, read_key
from ..gallery.errors import GalleryKeyError, GalleryStoreError
from ..gallery.migrations import migrate, schema_version
from ..gallery.transaction import write_transaction
from ..sqlite_files import open_private_database
from .errors import SightingStoreError

logger = logging.getLogger(__name__)

STORE_FILE = "sightings.db"
KEY_CHECK_PLAINTEXT = b"face-appliance sightings key check v1"
#: Most faces kept when the caller does not say (``events.keep_crops_max``).
DEFAULT_MAX_FACES = 2000
#: Other views kept with a face at most (``events.walk_up_views`` is at most 5: the face and 4 more).
MAX_VIEWS = 4

#: Schema migrations: version → statements that bring version-1 to version.
MIGRATIONS: Dict[int, Sequence[str]] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE clusters (
            id TEXT PRIMARY KEY,
            model_version TEXT NOT NULL,
            centroid BLOB NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE faces (
            event_id TEXT PRIMARY KEY,
            seen_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            camera_id TEXT NOT NULL,
            decision TEXT NOT NULL,
            identity_id TEXT,
            score REAL,
            quality REAL NOT NULL,
            model_version TEXT NOT NULL,
            embedding BLOB NOT NULL,
            crop BLOB,
            cluster_id TEXT REFERENCES clusters(id) ON DELETE CASCADE,
            cluster_until REAL
        )""",
        "CREATE INDEX faces_by_expiry ON faces(expires_at)",
        "CREATE INDEX faces_by_cluster ON faces(cluster_id)",
        "CREATE INDEX faces_by_time ON faces(seen_at)",
    ),
    # An unknown face's other views (appliance.face_views) for walk-up enrolment: sealed crops only,
    # deleted with their face (and with its crop when a full cluster drops it).
    2: (
        """CREATE TABLE face_views (
            event_id TEXT NOT NULL REFERENCES faces(event_id) ON DELETE CASCADE,
            rank INTEGER NOT NULL,
            crop BLOB NOT NULL,
            PRIMARY KEY (event_id, rank)
        )""",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)


@dataclass(frozen=True)
class SeenFace:
    """A face to keep: one access event's.

    Attributes:
        event_id: the access event's id.
        seen_at: Unix time of the decision.
        camera_id, decision, identity_id, score: as in the event (``identity_id`` ``None`` for unknown).
        quality: the crop's face quality in ``[0, 1]``.
        model_version: the embedder that computed ``embedding``.
        embedding: ``(D,)`` float32 unit vector.
        crop: ``(112, 112, 3)`` uint8 BGR aligned face.
        views: the face's other views, ``(112, 112, 3)`` uint8 BGR aligned crops, best first (an unknown
            face's, for walk-up enrolment: :mod:`appliance.face_views`).
    """

    event_id: str
    seen_at: float
    camera_id: str
    decision: str
    identity_id: Optional[str]
    score: Optional[float]
    quality: float
    model_version: str
    embedding: np.ndarray
    crop: np.ndarray
    views: Tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class KeptFace:
    """A kept face, decrypted (``crop`` ``None`` when a full cluster dropped it)."""

    event_id: str
    seen_at: float
    expires_at: float
    camera_id: str
    decision: str
    identity_id: Optional[str]
    score: Optional[float]
    quality: float
    model_version: str
    embedding: np.ndarray
    crop: Optional[np.ndarray]
    cluster_id: Optional[str]


@dataclass(frozen=True)
class ClusterSettings:
    """How unknown faces are grouped (``[unknowns]``).

    Attributes:
        threshold: cosine to a cluster's centroid a face needs to join it (else it starts one).
        retention_s: how long a face stays a member (and its cluster exists with it).
        max_clusters: clusters at most; a new one then replaces the one seen least recently.
        max_crops: crops kept per cluster (the best-quality ones); the other members keep only their
            embedding (for the centroid) and their time (for the counts).
    """

    threshold: float
    retention_s: float
    max_clusters: int
    max_crops: int


@dataclass(frozen=True)
class Cluster:
    """One cluster of unknown faces, without biometric data: ``seen`` faces, ``crops`` of them kept."""

    id: str
    model_version: str
    seen: int
    first_seen: float
    last_seen: float
    crops: int
    expires_at: float

    def document(self) -> Dict[str, object]:
        return {
            "id": self.id,
            "seen": self.seen,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "expires_at": _iso(self.expires_at),
            "crops": self.crops,
            "model_version": self.model_version,
        }


def _iso(unix: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


class SightingStore:
    """The sightings database. Use :meth:`open`; :meth:`close` is idempotent.

    Args (of :meth:`open`):
        max_faces: face rows kept at most (the oldest are deleted first, counted in ``dropped_full``).
        clock: Unix seconds; tests pass their own.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        sealer: Sealer,
        path: Path,
        max_faces: int,
        clock: Callable[[], float],
    ) -> None:
        self._db: Optional[sqlite3.Connection] = connection
        self._sealer = sealer
        self._lock = threading.RLock()
        self.path = path
        self.max_faces = max_faces
        self.clock = clock

    # -- opening -------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        key_file: Path,
        max_faces: int = DEFAULT_MAX_FACES,
        clock: Callable[[], float] = time.time,
    ) -> SightingStore:
        """Open (or create, mode 0600) the store at ``path``, sealed with the gallery key ``key_file``.

        Raises:
            SightingStoreError: not a usable database, a newer schema, or the key is missing (while
                the store holds faces), exposed, or not the one that sealed it.
        """
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, not {max_faces}")
        path = Path(path)
        try:
            existed = path.exists() and path.stat().st_size > 0
            connection = open_private_database(path, synchronous="FULL", timeout_s=30.0)
        except (OSError, sqlite3.OperationalError) as err:  # permissions, a lock, I/O
            raise SightingStoreError(f"cannot open the sightings store {path}: {err}") from err
        except sqlite3.DatabaseError as err:
            raise SightingStoreError(f"{path} is not a usable sightings database: {err}") from err
        try:
            version = schema_version(connection)
            if version > SCHEMA_VERSION:
                raise SightingStoreError(
                    f"{path} has schema version {version}, newer than this firmware's {SCHEMA_VERSION}; "
                    "update the firmware, or delete the file (it holds only faces kept for a while)"
                )
            try:
                if key_file.exists():
                    key = read_key(key_file)
                elif existed and version:
                    raise SightingStoreError(
                        f"the sightings store {path} is sealed with the gallery key {key_file}, which is "
                        "missing; restore the key, or delete the store (it holds only faces kept for a while)"
                    )
                else:
                    key = create_key(key_file)
                sealer = Sealer(key)
            except GalleryKeyError as err:
                raise SightingStoreError(str(err)) from None
            store = cls(connection, sealer, path, max_faces, clock)
            if version:
                store._check_key()  # before a migration writes to it
            store._migrate(version)
            store.expire()
        except sqlite3.Error as err:
            connection.close()
            raise SightingStoreError(f"{path} is not a usable sightings database: {err}") from err
        except BaseException:
            connection.close()
            raise
        return store

    def _migrate(self, version: int) -> None:
        """Bring a store of schema ``version`` (0: a new file) to :data:`SCHEMA_VERSION`, in one
        transaction: an interrupted migration leaves the store as it was."""
        if version == SCHEMA_VERSION:
            return
        with self._write() as db:
            migrate(db, MIGRATIONS, version, f"sightings {self.path}")
            if version == 0:
                check = self._sealer.seal(KEY_CHECK_PLAINTEXT, "sightings-key-check")
                db.execute("INSERT INTO meta VALUES ('key_check', ?)", (base64.b64encode(check).decode(),))
                db.execute("INSERT INTO meta VALUES ('dropped_full', '0')")

    def _check_key(self) -> None:
        row = self._conn().execute("SELECT value FROM meta WHERE key='key_check'").fetchone()
        if row is None:
            raise SightingStoreError(
                f"{self.path} has no key check record; it was not created by this firmware"
            )
        try:
            plain = self._sealer.open(base64.b64decode(row[0]), "sightings-key-check")
        except GalleryStoreError:
            plain = b""
        if plain != KEY_CHECK_PLAINTEXT:
            raise SightingStoreError(
                f"the gallery key does not open the sightings store {self.path}: it was sealed with another "
                "key; delete the store (it holds only faces kept for a while)"
            )

    # -- plumbing ------------------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise SightingStoreError(f"the sightings store {self.path} is closed")
        return self._db

    def _write(self) -> ContextManager[sqlite3.Connection]:
        return write_transaction(
            self._lock, self._conn, SightingStoreError, f"the sightings store {self.path}"
        )

    def _checkpoint(self) -> None:
        """After a deletion: the WAL copied into the database and emptied, so no old page survives."""
        with self._lock:
            try:
                self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as err:
                logger.warning("sightings %s: the WAL checkpoint after a deletion failed: %s", self.path, err)

    def close(self) -> None:
        """Checkpoint the WAL and close. Safe to call more than once."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                logger.warning("sightings checkpoint at close failed: %s", err)
            self._db.close()
            self._db = None

    def __enter__(self) -> SightingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sealing -------------------------------------------------------------------------------------

    def _seal_vector(self, vector: np.ndarray, context: str) -> bytes:
        return self._sealer.seal(np.ascontiguousarray(vector, dtype="<f4").tobytes(), context)

    def _open_vector(self, blob: bytes, context: str) -> np.ndarray:
        try:
            return np.frombuffer(self._sealer.open(bytes(blob), context), "<f4").astype(np.float32)
        except GalleryStoreError as err:
            raise SightingStoreError(f"sightings store {self.path}: {err}") from None

    def _seal_crop(self, crop: np.ndarray, context: str) -> bytes:
        ok, png = cv2.imencode(".png", np.ascontiguousarray(crop, np.uint8))
        if not ok:
            raise SightingStoreError("cannot encode a face crop")
        return self._sealer.seal(png.tobytes(), context)

    def _open_crop(self, blob: Optional[bytes], context: str) -> Optional[np.ndarray]:
        if blob is None:
            return None
        try:
            png = self._sealer.open(bytes(blob), context)
        except GalleryStoreError as err:
            raise SightingStoreError(f"sightings store {self.path}: {err}") from None
        return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)

    @staticmethod
    def _crop_context(event_id: str) -> str:
        return f"sighting-crop:{event_id}"

    @staticmethod
    def _view_context(event_id: str, rank: int) -> str:
        return f"sighting-view:{event_id}:{rank}"

    @staticmethod
    def _embedding_context(event_id: str, model_version: str) -> str:
        return f"sighting-embedding:{event_id}:{model_version}"

    @staticmethod
    def _centroid_context(cluster_id: str, model_version: str) -> str:
        return f"cluster-centroid:{cluster_id}:{model_version}"

    # -- writing -------------------------------------------------------------------------------------

    def put(self, face: SeenFace, keep_s: float, cluster: Optional[ClusterSettings] = None) -> Optional[str]:
        """Keep a face for ``keep_s`` seconds; with ``cluster``, also as a member of the nearest
        cluster of unknown faces (or of a new one) for ``cluster.retention_s``.

        The row lives until both have passed. Bounds are enforced in the same transaction: expired
        rows go, a full cluster keeps only its best crops, the oldest rows go above ``max_faces``.

        Returns:
            The cluster id the face joined or started, or ``None``.

        Raises:
            SightingStoreError: the write failed (nothing of it was written), or a duplicate event id.
        """
        embedding = _unit(face.embedding)
        if not np.isfinite(embedding).all() or not embedding.size:
            raise SightingStoreError("a face's embedding is empty or not finite; not kept")
        if len(face.views) > MAX_VIEWS:
            raise SightingStoreError(
                f"a face with {len(face.views)} other views; at most {MAX_VIEWS} are kept (not kept)"
            )
        now = self.clock()
        keep_until = now + max(0.0, keep_s)
        cluster_until = now + cluster.retention_s if cluster is not None else None
        expires_at = max(keep_until, cluster_until or 0.0)
        if expires_at <= now:
            return None
        deleted = False
        with self._write() as db:
            deleted = self._expire_in(db, now) > 0
            cluster_id: Optional[str] = None
            if cluster is not None:
                cluster_id, dropped = self._choose_cluster(db, embedding, face.model_version, cluster, now)
                deleted = deleted or dropped
            try:
                db.execute(
                    "INSERT INTO faces (event_id, seen_at, expires_at, camera_id, decision, identity_id, score, "
                    "quality, model_version, embedding, crop, cluster_id, cluster_until) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        face.event_id,
                        face.seen_at,
                        expires_at,
                        face.camera_id,
                        face.decision,
                        face.identity_id,
                        None if face.score is None else float(face.score),
                        float(face.quality),
                        face.model_version,
                        self._seal_vector(
                            embedding, self._embedding_context(face.event_id, face.model_version)
                        ),
                        self._seal_crop(face.crop, self._crop_context(face.event_id)),
                        cluster_id,
                        cluster_until,
                    ),
                )
            except sqlite3.IntegrityError as err:
                raise SightingStoreError(f"event {face.event_id} is kept already ({err})") from None
            db.executemany(
                "INSERT INTO face_views (event_id, rank, crop) VALUES (?, ?, ?)",
                [
                    (face.event_id, rank, self._seal_crop(view, self._view_context(face.event_id, rank)))
                    for rank, view in enumerate(face.views, 2)
                ],
            )
            if cluster_id is not None and cluster is not None:
                self._update_centroid(db, cluster_id, face.model_version)
                deleted = self._cap_crops(db, cluster_id, cluster.max_crops) or deleted
            deleted = self._cap_rows(db) or deleted
        if deleted:
            self._checkpoint()
        return cluster_id

    def _choose_cluster(
        self,
        db: sqlite3.Connection,
        embedding: np.ndarray,
        model_version: str,
        settings: ClusterSettings,
        now: float,
    ) -> Tuple[str, bool]:
        """The nearest cluster of this embedder at or above the threshold, or a new one (replacing the
        least recently seen when ``max_clusters`` exist). Returns ``(cluster id, whether one was dropped)``."""
        rows = db.execute(
            "SELECT id, centroid FROM clusters WHERE model_version=?", (model_version,)
        ).fetchall()
        if rows:
            centroids = np.stack(
                [self._open_vector(blob, self._centroid_context(cid, model_version)) for cid, blob in rows]
            )
            if centroids.shape[1] == embedding.shape[0]:
                scores = centroids @ embedding
                best = int(np.argmax(scores))
                if float(scores[best]) >= settings.threshold:
                    return str(rows[best][0]), False
        dropped = False
        total = int(db.execute("SELECT COUNT(*) FROM clusters").fetchone()[0])
        while total >= settings.max_clusters:
            stale = db.execute(
                "SELECT c.id FROM clusters c LEFT JOIN faces f ON f.cluster_id = c.id "
                "GROUP BY c.id ORDER BY MAX(f.seen_at) IS NOT NULL, MAX(f.seen_at) LIMIT 1"
            ).fetchone()
            db.execute("DELETE FROM clusters WHERE id=?", (stale[0],))
            logger.info(
                "unknown visitors: %d clusters kept at most; the one seen least recently was dropped",
                settings.max_clusters,
            )
            dropped = True
            total -= 1
        cluster_id = secrets.token_hex(4)
        db.execute(
            "INSERT INTO clusters (id, model_version, centroid, created_at) VALUES (?, ?, ?, ?)",
            (
                cluster_id,
                model_version,
                self._seal_vector(embedding, self._centroid_context(cluster_id, model_version)),
                now,
            ),
        )
        return cluster_id, dropped

    def _update_centroid(self, db: sqlite3.Connection, cluster_id: str, model_version: str) -> bool:
        """The centroid computed again from the members' embeddings; a cluster without members is
        deleted. Returns whether the cluster still exists."""
        rows = db.execute(
            "SELECT event_id, model_version, embedding FROM faces WHERE cluster_id=?", (cluster_id,)
        ).fetchall()
        if not rows:
            db.execute("DELETE FROM clusters WHERE id=?", (cluster_id,))
            return False
        vectors = np.stack(
            [self._open_vector(blob, self._embedding_context(eid, ver)) for eid, ver, blob in rows]
        )
        centroid = _unit(vectors.mean(axis=0))
        db.execute(
            "UPDATE clusters SET centroid=? WHERE id=?",
            (self._seal_vector(centroid, self._centroid_context(cluster_id, model_version)), cluster_id),
        )
        return True

    def _cap_crops(self, db: sqlite3.Connection, cluster_id: str, max_crops: int) -> bool:
        """Keep the ``max_crops`` best-quality crops of a cluster; the others' crops and views are
        deleted."""
        cursor = db.execute(
            "UPDATE faces SET crop=NULL WHERE cluster_id=? AND crop IS NOT NULL AND event_id NOT IN "
            "(SELECT event_id FROM faces WHERE cluster_id=? AND crop IS NOT NULL "
            "ORDER BY quality DESC, seen_at DESC LIMIT ?)",
            (cluster_id, cluster_id, max_crops),
        )
        if cursor.rowcount <= 0:
            return False
        db.execute(
            "DELETE FROM face_views WHERE event_id IN "
            "(SELECT event_id FROM faces WHERE cluster_id=? AND crop IS NULL)",
            (cluster_id,),
        )
        return True

    def _cap_rows(self, db: sqlite3.Connection) -> bool:
        count = int(db.execute("SELECT COUNT(*) FROM faces").fetchone()[0])
        over = count - self.max_faces
        if over <= 0:
            return False
        clusters = {
            row[0]
            for row in db.execute(
                "SELECT DISTINCT cluster_id FROM faces WHERE cluster_id IS NOT NULL AND event_id IN "
                "(SELECT event_id FROM faces ORDER BY seen_at LIMIT ?)",
                (over,),
            )
        }
        db.execute(
            "DELETE FROM faces WHERE event_id IN (SELECT event_id FROM faces ORDER BY seen_at LIMIT ?)",
            (over,),
        )
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key='dropped_full'", (over,))
        self._recompute(db, clusters)
        logger.warning("sightings: %d face(s) kept at most; the %d oldest were deleted", self.max_faces, over)
        return True

    def _recompute(self, db: sqlite3.Connection, clusters: Sequence[str]) -> None:
        for cluster_id in clusters:
            row = db.execute("SELECT model_version FROM clusters WHERE id=?", (cluster_id,)).fetchone()
            if row is not None:
                self._update_centroid(db, cluster_id, str(row[0]))

    def _expire_in(self, db: sqlite3.Connection, now: float) -> int:
        """Delete expired faces, end expired memberships, recompute or delete the clusters they left."""
        touched = {
            row[0]
            for row in db.execute(
                "SELECT DISTINCT cluster_id FROM faces WHERE cluster_id IS NOT NULL "
                "AND (expires_at <= ? OR cluster_until <= ?)",
                (now, now),
            )
        }
        gone = db.execute("DELETE FROM faces WHERE expires_at <= ?", (now,)).rowcount
        left = db.execute(
            "UPDATE faces SET cluster_id=NULL, cluster_until=NULL WHERE cluster_id IS NOT NULL AND cluster_until <= ?",
            (now,),
        ).rowcount
        self._recompute(db, sorted(touched))
        empty = db.execute(
            "DELETE FROM clusters WHERE id NOT IN (SELECT cluster_id FROM faces WHERE cluster_id IS NOT NULL)"
        ).rowcount
        return int(gone) + int(left) + int(empty)

    def expire(self) -> int:
        """Delete what has expired now (faces, memberships, empty clusters); returns the rows changed."""
        with self._write() as db:
            changed = self._expire_in(db, self.clock())
        if changed:
            self._checkpoint()
            logger.debug("sightings: %d expired row(s) deleted", changed)
        return changed

    def purge_cluster(self, cluster_id: str) -> int:
        """Delete a cluster and every face in it (crops, embeddings, times). Returns the faces deleted.

        Raises:
            NotKeptError: no such cluster (never existed, expired, purged).
        """
        from .errors import NotKeptError

        with self._write() as db:
            self._expire_in(db, self.clock())
            faces = int(
                db.execute("SELECT COUNT(*) FROM faces WHERE cluster_id=?", (cluster_id,)).fetchone()[0]
            )
            if not db.execute("DELETE FROM clusters WHERE id=?", (cluster_id,)).rowcount:
                raise NotKeptError(
                    f"no cluster {cluster_id!r} of unknown visitors (expired, purged, or never seen)"
                )
        self._checkpoint()
        return faces

    def forget_event(self, event_id: str) -> bool:
        """Delete one kept face (it became an impostor example in the gallery, or was asked away)."""
        with self._write() as db:
            row = db.execute("SELECT cluster_id FROM faces WHERE event_id=?", (event_id,)).fetchone()
            removed = db.execute("DELETE FROM faces WHERE event_id=?", (event_id,)).rowcount > 0
            if row is not None and row[0] is not None:
                self._recompute(db, [str(row[0])])
        if removed:
            self._checkpoint()
        return removed

    def forget_identity(self, identity_id: str) -> int:
        """Delete every kept face of ``identity_id``'s passages (granted and denied as them, crops,
        views, embeddings): the person was removed, or withdrew consent to their face, and what the
        door kept of it goes now, not when it expires. Returns the faces deleted."""
        with self._write() as db:
            clusters = [
                str(row[0])
                for row in db.execute(
                    "SELECT DISTINCT cluster_id FROM faces WHERE identity_id=? AND cluster_id IS NOT NULL",
                    (identity_id,),
                )
            ]
            removed = db.execute("DELETE FROM faces WHERE identity_id=?", (identity_id,)).rowcount
            if clusters:
                self._recompute(db, clusters)
        if removed:
            self._checkpoint()
            logger.info("sightings: %d kept face(s) of a removed or forgotten face deleted", removed)
        return int(removed)

    # -- reading -------------------------------------------------------------------------------------

    _FACE_COLUMNS = (
        "event_id, seen_at, expires_at, camera_id, decision, identity_id, score, quality, model_version, "
        "embedding, crop, cluster_id"
    )

    def _face(self, row: Tuple) -> KeptFace:
        (
            event_id,
            seen_at,
            expires_at,
            camera_id,
            decision,
            identity_id,
            score,
            quality,
            version,
            emb,
            crop,
            cid,
        ) = row
        return KeptFace(
            str(event_id),
            float(seen_at),
            float(expires_at),
            str(camera_id),
            str(decision),
            identity_id,
            score,
            float(quality),
            str(version),
            self._open_vector(emb, self._embedding_context(event_id, version)),
            self._open_crop(crop, self._crop_context(event_id)),
            cid,
        )

    def face(self, event_id: str) -> Optional[KeptFace]:
        """The face kept for an access event, decrypted, or ``None`` (not kept, expired, unknown id)."""
        now = self.clock()
        with self._lock:
            row = (
                self._conn()
                .execute(
                    f"SELECT {self._FACE_COLUMNS} FROM faces WHERE event_id=? AND expires_at > ?",
                    (event_id, now),
                )
                .fetchone()
            )
        return None if row is None else self._face(row)

    def views(self, event_id: str) -> List[np.ndarray]:
        """The other views kept with an access event's face (:attr:`SeenFace.views`), decrypted, best
        first: ``(112, 112, 3)`` uint8 BGR crops; empty when it has none, is not kept or expired."""
        now = self.clock()
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT v.rank, v.crop FROM face_views v JOIN faces f ON f.event_id = v.event_id "
                    "WHERE v.event_id=? AND f.expires_at > ? ORDER BY v.rank LIMIT ?",
                    (event_id, now, MAX_VIEWS),
                )
                .fetchall()
            )
        return [self._open_crop(blob, self._view_context(event_id, int(rank))) for rank, blob in rows]

    def clusters(self) -> List[Cluster]:
        """Every live cluster of unknown faces, the most often seen first (expired ones deleted first)."""
        self.expire()
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT c.id, c.model_version, COUNT(f.event_id), MIN(f.seen_at), MAX(f.seen_at), "
                    "SUM(f.crop IS NOT NULL), MAX(f.cluster_until) FROM clusters c JOIN faces f ON f.cluster_id = c.id "
                    "GROUP BY c.id ORDER BY COUNT(f.event_id) DESC, MAX(f.seen_at) DESC"
                )
                .fetchall()
            )
        return [
            Cluster(str(r[0]), str(r[1]), int(r[2]), float(r[3]), float(r[4]), int(r[5] or 0), float(r[6]))
            for r in rows
        ]

    def cluster_faces(self, cluster_id: str, with_crop: bool = True) -> List[KeptFace]:
        """A live cluster's members, decrypted, best quality first (only those with a crop by default).

        Raises:
            NotKeptError: no such cluster.
        """
        from .errors import NotKeptError

        now = self.clock()
        with self._lock:
            if not self._conn().execute("SELECT 1 FROM clusters WHERE id=?", (cluster_id,)).fetchone():
                raise NotKeptError(
                    f"no cluster {cluster_id!r} of unknown visitors (expired, purged, or never seen)"
                )
            query = f"SELECT {self._FACE_COLUMNS} FROM faces WHERE cluster_id=? AND cluster_until > ?"
            if with_crop:
                query += " AND crop IS NOT NULL"
            rows = (
                self._conn()
                .execute(query + " ORDER BY quality DESC, seen_at DESC", (cluster_id, now))
                .fetchall()
            )
        return [self._face(row) for row in rows]

    def faces(self) -> Iterator[KeptFace]:
        """Every live face, oldest first, decrypted."""
        now = self.clock()
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    f"SELECT {self._FACE_COLUMNS} FROM faces WHERE expires_at > ? ORDER BY seen_at", (now,)
                )
                .fetchall()
            )
        for row in rows:
            yield self._face(row)

    def counts(self) -> Dict[str, int]:
        """``faces``, their other ``views``, ``clusters`` and ``dropped_full`` (faces deleted for the size
        bound, ever)."""
        with self._lock:
            db = self._conn()
            return {
                "faces": int(db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]),
                "views": int(db.execute("SELECT COUNT(*) FROM face_views").fetchone()[0]),
                "clusters": int(db.execute("SELECT COUNT(*) FROM clusters").fetchone()[0]),
                "dropped_full": int(
                    (db.execute("SELECT value FROM meta WHERE key='dropped_full'").fetchone() or (0,))[0]
                ),
            }


__all__ = [
    "DEFAULT_MAX_FACES",
    "MAX_VIEWS",
    "STORE_FILE",
    "Cluster",
    "ClusterSettings",
    "KeptFace",
    "SeenFace",
    "SightingStore",
]
