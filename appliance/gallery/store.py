"""The template store: identities and their encrypted templates in SQLite.

* WAL journal, ``synchronous=FULL``: a transaction that returned is on disk; a process killed at any
  point leaves the previous or the next state, never a mix (enrolment and removal are one
  transaction each).
* ``secure_delete`` plus a WAL checkpoint after removals: deleted embeddings, crops and names are
  overwritten in the database file and no copy stays in the WAL.
* Embeddings (float32) and aligned crops (PNG) are sealed with AES-256-GCM (:mod:`.crypto`).
* The schema is versioned (``meta.schema_version``) and migrated forward in a transaction; a
  database from a newer firmware is refused rather than guessed at.
* ``meta.generation`` increases with every change, so the derived search index knows it is stale.

All methods are thread-safe (one connection behind a lock): the daemon's pipeline reads while
commands enroll or remove.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import cv2
import numpy as np

from ..access.errors import PolicyError
from ..access.policy import CREDENTIAL_KEYS, AccessGroup, HolidayCalendar, IdentityPolicy, PolicyTables
from ..sqlite_files import open_private_database
from .crypto import SEAL_OVERHEAD_BYTES, Sealer, create_key, read_key
from .errors import FleetIdentityError, GalleryKeyError, GalleryStoreError, IdentityError
from .migrations import migrate, schema_version
from .text import check_external_id, check_name
from .transaction import write_transaction

logger = logging.getLogger(__name__)

#: ``\Z``, not ``$``: ``$`` would also accept a trailing newline.
IDENTITY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
KEY_CHECK_PLAINTEXT = b"face-appliance gallery key check v1"

#: Schema migrations: version → statements that bring version-1 to version.
MIGRATIONS: Dict[int, Sequence[str]] = {
    1: (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE identities (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            external_id TEXT,
            consent_at TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE templates (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            model_version TEXT NOT NULL,
            embedding BLOB NOT NULL,
            crop BLOB,
            quality REAL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX templates_by_identity ON templates(identity_id)",
        "CREATE INDEX templates_by_model ON templates(model_version)",
    ),
    # The access policy (appliance.access.policy): per identity, and the groups and calendars.
    2: (
        "ALTER TABLE identities ADD COLUMN valid_from TEXT",
        "ALTER TABLE identities ADD COLUMN valid_until TEXT",
        "ALTER TABLE identities ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE identities ADD COLUMN groups TEXT NOT NULL DEFAULT '[]'",
        "CREATE TABLE access_groups (name TEXT PRIMARY KEY, schedule TEXT NOT NULL, holidays TEXT NOT NULL)",
        "CREATE TABLE holiday_calendars (name TEXT PRIMARY KEY, days TEXT NOT NULL)",
    ),
    # The fleet (appliance.fleet): the revision last applied per identity id, of a record or a tombstone.
    3: (
        """CREATE TABLE fleet_records (
            id TEXT PRIMARY KEY,
            revision INTEGER NOT NULL,
            kind TEXT NOT NULL,
            applied_at TEXT NOT NULL
        )""",
    ),
    # Template origins (appliance.template_update): ``enrolled`` from photos, or ``adaptive`` from a
    # confident granted passage, with the access event, its score and its margin over the runner-up.
    4: (
        "ALTER TABLE templates ADD COLUMN kind TEXT NOT NULL DEFAULT 'enrolled'",
        "ALTER TABLE templates ADD COLUMN source_event TEXT",
        "ALTER TABLE templates ADD COLUMN score REAL",
        "ALTER TABLE templates ADD COLUMN margin REAL",
        "CREATE INDEX templates_by_kind ON templates(identity_id, kind)",
    ),
    # Impostor examples ("this is not X", appliance.sightings.impostors): a face wrongly granted to an
    # identity, sealed, so that a face closer to it than to the identity's templates is not granted to
    # it; deleted with the identity.
    5: (
        """CREATE TABLE impostors (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            model_version TEXT NOT NULL,
            embedding BLOB NOT NULL,
            crop BLOB,
            source_event TEXT NOT NULL,
            score REAL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX impostors_by_identity ON impostors(identity_id)",
    ),
    # Fleet look-alikes (appliance.fleet.member): a fleet identity whose faces match another identity
    # of this gallery at the duplicate threshold when its record was applied (two badges of one
    # person, or twins), for the door's digest; deleted with either identity.
    6: (
        """CREATE TABLE look_alikes (
            id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            like_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            score REAL NOT NULL,
            found_at TEXT NOT NULL,
            PRIMARY KEY (id, like_id)
        )""",
        "CREATE INDEX look_alikes_by_like ON look_alikes(like_id)",
    ),
    # Look-alike pairs marked as two people at this door (``gallery distinct``): a pair with an
    # identity enrolled here, which the fleet's authority cannot name; the pair (smaller id first)
    # is no longer listed, until the mark is undone, and the mark goes with either identity.
    7: (
        """CREATE TABLE distinct_pairs (
            id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            like_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            marked_at TEXT NOT NULL,
            PRIMARY KEY (id, like_id)
        )""",
        "CREATE INDEX distinct_pairs_by_like ON distinct_pairs(like_id)",
    ),
    # The second factors a door may ask for (appliance.access.credentials): the identity's cards and
    # PIN hashes, a JSON object holding only what is set.
    8: ("ALTER TABLE identities ADD COLUMN credentials TEXT NOT NULL DEFAULT '{}'",),
    # Who holds a card, found by the card: a card read at the reader looks it up on the pipeline
    # thread (scanning every identity's credentials took 25 ms at 10⁵ identities here). Written with
    # the credentials (_write_policy); filled from them when an older store is migrated (_migrate).
    9: (
        """CREATE TABLE cards (
            card TEXT NOT NULL,
            identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
            PRIMARY KEY (card, identity_id)
        )""",
        "CREATE INDEX cards_by_identity ON cards(identity_id)",
    ),
}
SCHEMA_VERSION = max(MIGRATIONS)


def utc_now() -> str:
    """RFC 3339 UTC timestamp with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def slugify(name: str) -> str:
    """An identity id derived from a name: ``"Ada Lovelace"`` → ``"ada-lovelace"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64]
    return slug or "person"


@dataclass(frozen=True)
class Identity:
    """One enrolled person (no biometric data here); ``templates`` 0 is an identity without a face,
    which passes with its cards and PIN only (:meth:`TemplateStore.add_identity`)."""

    id: str
    name: str
    external_id: Optional[str]
    consent_at: str
    created_at: str
    templates: int = 0
    policy: IdentityPolicy = field(default_factory=IdentityPolicy)

    def document(self) -> Dict[str, object]:
        """JSON-ready form (``gallery list --json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "external_id": self.external_id,
            "consent_at": self.consent_at,
            "created_at": self.created_at,
            "templates": self.templates,
            "policy": self.policy.public_document(),
        }


#: A template made from an enrolment photo (``gallery enroll``, the MQTT ``enroll``, a bundle, the fleet).
ENROLLED = "enrolled"
#: A template added from a confident granted passage (:mod:`appliance.template_update`).
ADAPTIVE = "adaptive"
TEMPLATE_KINDS = (ENROLLED, ADAPTIVE)


@dataclass(frozen=True)
class TemplateOrigin:
    """Where a template came from (no biometric data).

    ``kind``: :data:`ENROLLED` or :data:`ADAPTIVE`; for an adaptive one, ``source_event`` is the
    access event's ``event_id``, ``score`` the passage's mean score for the identity and ``margin``
    its lead over the runner-up (``None``: no runner-up was listed). ``created_at``: kept across a
    re-embedding for another model (``None``: now).
    """

    kind: str = ENROLLED
    source_event: Optional[str] = None
    score: Optional[float] = None
    margin: Optional[float] = None
    created_at: Optional[str] = None


@dataclass(frozen=True)
class Template:
    """One stored template, decrypted.

    ``embedding``: ``(D,)`` float32, unit norm. ``crop``: ``(112, 112, 3)`` uint8 BGR or ``None``.
    """

    id: int
    identity_id: str
    model_version: str
    embedding: np.ndarray
    crop: Optional[np.ndarray]
    quality: Optional[float]
    created_at: str
    origin: TemplateOrigin = field(default_factory=TemplateOrigin)


@dataclass(frozen=True)
class TemplateInfo:
    """One template as ``gallery templates ID`` lists it: no embedding, no crop."""

    id: int
    identity_id: str
    model_version: str
    quality: Optional[float]
    created_at: str
    origin: TemplateOrigin

    def document(self) -> Dict[str, object]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "kind": self.origin.kind,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "quality": None if self.quality is None else round(float(self.quality), 4),
            "source_event": self.origin.source_event,
            "score": None if self.origin.score is None else round(float(self.origin.score), 4),
            "margin": None if self.origin.margin is None else round(float(self.origin.margin), 4),
        }


@dataclass(frozen=True)
class LookAlike:
    """A fleet identity ``id`` whose faces matched identity ``like_id`` at ``score`` (cosine) when its
    record was applied (no biometric data)."""

    id: str
    like_id: str
    score: float
    found_at: str


@dataclass(frozen=True)
class ImpostorInfo:
    """One impostor example of an identity ("this is not X"), without biometric data."""

    id: int
    identity_id: str
    model_version: str
    source_event: str
    score: Optional[float]
    created_at: str

    def document(self) -> Dict[str, object]:
        return {
            "id": self.id,
            "identity_id": self.identity_id,
            "model_version": self.model_version,
            "source_event": self.source_event,
            "score": None if self.score is None else round(float(self.score), 4),
            "created_at": self.created_at,
        }


#: What a change refused at a fleet door (:meth:`TemplateStore.check_local_change`) is done with at the
#: site's enrolment authority, by the change refused.
_AT_THE_AUTHORITY = {
    "policy": "`face-appliance fleet set {id} …`",
    "remove": "`face-appliance fleet remove {id}`",
    "forget_face": "`face-appliance fleet set {id} --forget-face`",
    "photos": "`face-appliance fleet enroll --id {id} --replace PHOTOS…`",
}


class TemplateStore:
    """The gallery database. Use :meth:`open`; :meth:`close` is idempotent."""

    def __init__(
        self, connection: sqlite3.Connection, sealer: Sealer, path: Path, fleet_managed: bool = False
    ) -> None:
        self._db = connection
        self._sealer = sealer
        self._lock = threading.RLock()
        self.path = path
        #: Whether this door takes part in a fleet (``[fleet] enabled``): then the identities its records
        #: brought are the site authority's, and a change made here to their details, policy, photos or
        #: existence is refused (:class:`FleetIdentityError`): the identity's next record would undo it
        #: without a word, and the other doors would never have it.
        self.fleet_managed = fleet_managed
        #: Write transactions this process committed (its own changes; :meth:`data_version` tells
        #: another process's). Written under the lock; read as one int.
        self.commits = 0

    # -- opening -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, key_file: Path, fleet_managed: bool = False) -> TemplateStore:
        """Open (or create) the store at ``path`` with the key in ``key_file``; ``fleet_managed``: see
        :attr:`fleet_managed`.

        Raises:
            GalleryKeyError: the key is missing while the store holds data, exposed, or not this store's.
            GalleryStoreError: the file is not a usable database, or its schema is newer than ours.
        """
        try:
            existed = path.exists() and path.stat().st_size > 0
            connection = open_private_database(path, synchronous="FULL", timeout_s=30.0)
        except (OSError, sqlite3.OperationalError) as err:  # permissions, a lock, I/O
            raise GalleryStoreError(f"cannot open the gallery {path}: {err}") from err
        except sqlite3.DatabaseError as err:
            raise GalleryStoreError(f"{path} is not a usable gallery database: {err}") from err
        try:
            version = schema_version(connection)
            key_check = cls._meta(connection, "key_check") if version else None
            if key_file.exists():
                key = read_key(key_file)
            elif existed and key_check is not None:
                raise GalleryKeyError(
                    f"the gallery {path} is encrypted but its key {key_file} is missing; restore the key "
                    f"from its backup (a new key would make every stored template unreadable)"
                )
            else:
                key = create_key(key_file)
            sealer = Sealer(key)
            store = cls(connection, sealer, path, fleet_managed)
            store._migrate(version)
            store._check_key()
        except BaseException:
            connection.close()
            raise
        return store

    @staticmethod
    def _meta(connection: sqlite3.Connection, key: str) -> Optional[str]:
        row = connection.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def _migrate(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise GalleryStoreError(
                f"{self.path} has schema version {version}, newer than this firmware's {SCHEMA_VERSION}; "
                f"update the firmware or restore an older backup"
            )
        if version == SCHEMA_VERSION:
            return
        with self._transaction() as db:
            migrate(db, MIGRATIONS, version, f"gallery {self.path}")
            if 0 < version < 9:
                self._index_cards(db)
            if version == 0:
                check = self._sealer.seal(KEY_CHECK_PLAINTEXT, "key-check")
                db.execute("INSERT INTO meta VALUES ('key_check', ?)", (base64.b64encode(check).decode(),))
                db.execute("INSERT INTO meta VALUES ('generation', '0')")
                db.execute("INSERT INTO meta VALUES ('created_at', ?)", (utc_now(),))

    @staticmethod
    def _index_cards(db: sqlite3.Connection) -> None:
        """Fill the ``cards`` table from every identity's stored credentials (a schema-8 store); a
        damaged row adds nothing (it reads as suspended, and ``gallery check`` names it)."""
        rows = db.execute("SELECT id, credentials FROM identities WHERE credentials LIKE '%cards%'")
        for identity_id, credentials in rows.fetchall():
            try:
                cards = json.loads(credentials).get("cards", [])
            except (ValueError, AttributeError):
                continue
            if isinstance(cards, list):
                db.executemany(
                    "INSERT OR IGNORE INTO cards (card, identity_id) VALUES (?, ?)",
                    [(card, identity_id) for card in cards if isinstance(card, str)],
                )

    def _check_key(self) -> None:
        stored = self._meta(self._db, "key_check")
        if stored is None:
            raise GalleryStoreError(
                f"{self.path} has no key check record; it was not created by this firmware"
            )
        try:
            plaintext = self._sealer.open(base64.b64decode(stored), "key-check")
        except GalleryStoreError:
            raise GalleryKeyError(
                f"the gallery key does not open {self.path}: it was encrypted with another key"
            ) from None
        if plaintext != KEY_CHECK_PLAINTEXT:
            raise GalleryKeyError(f"the gallery key check of {self.path} does not match")

    # -- plumbing ------------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the store's lock; SQLite failures (a full disk, an I/O error)
        come out as :class:`GalleryStoreError`, after a rollback, with nothing of it written."""
        with self._lock:
            with write_transaction(
                self._lock, lambda: self._db, GalleryStoreError, f"the gallery {self.path}"
            ) as db:
                yield db
            self.commits += 1

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")

    @property
    def generation(self) -> int:
        """Increases with every change of identities or templates."""
        with self._lock:
            return int(self._meta(self._db, "generation") or 0)

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` of this connection: it changes when *another* connection
        commits to the database (the command line, while the daemon runs), never for this one's own
        commits."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def change_mark(self) -> Tuple[int, int]:
        """What moves with every change of the store: this process's commits and SQLite's data version
        (every commit of another process: the command line beside the daemon). Compare two marks to
        learn that something changed, not what."""
        return self.commits, self.data_version()

    def close(self) -> None:
        """Checkpoint the WAL and close. Safe to call more than once."""
        with self._lock:
            if self._db is None:  # type: ignore[comparison-overlap]
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as err:
                logger.warning("gallery checkpoint at close failed: %s", err)
            self._db.close()
            self._db = None  # type: ignore[assignment]

    def __enter__(self) -> TemplateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sealing -------------------------------------------------------------------------------------

    def _insert_template(
        self,
        db: sqlite3.Connection,
        identity_id: str,
        model_version: str,
        embedding: np.ndarray,
        crop: Optional[np.ndarray],
        quality: Optional[float],
        created_at: str,
        origin: TemplateOrigin = TemplateOrigin(),
    ) -> int:
        """Seal and insert one template (``embedding`` ``(D,)`` float32, ``crop`` ``(112, 112, 3)``
        uint8 or ``None``) inside the caller's transaction; returns its id."""
        cursor = db.execute(
            "INSERT INTO templates (identity_id, model_version, embedding, crop, quality, created_at, "
            "kind, source_event, score, margin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                identity_id,
                model_version,
                self._seal_embedding(identity_id, model_version, embedding),
                self._seal_crop(identity_id, model_version, crop),
                quality,
                created_at,
                origin.kind,
                origin.source_event,
                origin.score,
                origin.margin,
            ),
        )
        return int(cursor.lastrowid or 0)

    def _seal_embedding(self, identity_id: str, model_version: str, embedding: np.ndarray) -> bytes:
        data = np.ascontiguousarray(embedding, dtype="<f4").tobytes()
        return self._sealer.seal(data, f"embedding:{identity_id}:{model_version}")

    def _seal_crop(self, identity_id: str, model_version: str, crop: Optional[np.ndarray]) -> Optional[bytes]:
        if crop is None:
            return None
        ok, png = cv2.imencode(".png", crop)
        if not ok:
            raise GalleryStoreError("cannot encode an enrolment crop")
        return self._sealer.seal(png.tobytes(), f"crop:{identity_id}:{model_version}")

    #: The columns :meth:`_template` reads, in its order.
    _TEMPLATE_COLUMNS = "id, identity_id, model_version, embedding, crop, quality, created_at, kind, source_event, score, margin"

    def _template(self, row: Tuple) -> Template:
        template_id, identity_id, model_version, embedding, crop, quality, created_at = row[:7]
        vector = np.frombuffer(
            self._sealer.open(embedding, f"embedding:{identity_id}:{model_version}"), "<f4"
        )
        image = None
        if crop is not None:
            png = self._sealer.open(crop, f"crop:{identity_id}:{model_version}")
            image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        return Template(
            int(template_id),
            identity_id,
            model_version,
            vector.astype(np.float32),
            image,
            quality,
            created_at,
            _origin(row[7:]),
        )

    # -- identities ----------------------------------------------------------------------------------

    _POLICY_COLUMNS = "i.valid_from, i.valid_until, i.suspended, i.groups, i.credentials"
    _IDENTITY_COLUMNS = (
        "i.id, i.name, i.external_id, i.consent_at, i.created_at, "
        f"(SELECT COUNT(*) FROM templates t WHERE t.identity_id = i.id), {_POLICY_COLUMNS}"
    )

    def identities(self) -> List[Identity]:
        """Every identity with its template count and policy, by id."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._IDENTITY_COLUMNS} FROM identities i ORDER BY i.id"
            ).fetchall()
        return [self._identity(row) for row in rows]

    def identity(self, identity_id: str) -> Optional[Identity]:
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._IDENTITY_COLUMNS} FROM identities i WHERE i.id=?", (identity_id,)
            ).fetchone()
        return None if row is None else self._identity(row)

    def _identity(self, row: Tuple) -> Identity:
        identity_id, name, external_id, consent_at, created_at, templates = row[:6]
        return Identity(
            identity_id,
            name,
            external_id,
            consent_at,
            created_at,
            int(templates),
            self._policy(identity_id, row[6:]),
        )

    @staticmethod
    def _parse_policy(identity_id: str, columns: Sequence) -> IdentityPolicy:
        """The policy of the identity row's policy columns (:data:`_POLICY_COLUMNS`).

        Raises:
            PolicyError, ValueError, TypeError: a damaged row.
        """
        valid_from, valid_until, suspended, groups, credentials = columns
        credentials = json.loads(credentials)
        if not isinstance(credentials, dict) or not set(credentials) <= set(CREDENTIAL_KEYS):
            raise PolicyError(f"its credentials are not an object of {', '.join(CREDENTIAL_KEYS)}")
        return IdentityPolicy.from_document(
            {
                "valid_from": valid_from,
                "valid_until": valid_until,
                "suspended": bool(suspended),
                "groups": json.loads(groups),
                **credentials,
            },
            f"the stored policy of {identity_id!r}",
        )

    def _policy(self, identity_id: str, columns: Sequence) -> IdentityPolicy:
        try:
            return self._parse_policy(identity_id, columns)
        except (PolicyError, ValueError, TypeError) as err:
            # A damaged row must not grant: the identity is treated as suspended, and `gallery check` says why.
            logger.error(
                "identity %r: its stored access policy is unreadable (%s); treated as suspended",
                identity_id,
                err,
            )
            return IdentityPolicy(suspended=True)

    def names(self) -> Dict[str, str]:
        """identity id → name."""
        with self._lock:
            return dict(self._db.execute("SELECT id, name FROM identities").fetchall())

    def add(
        self,
        identity_id: str,
        name: str,
        model_version: str,
        embeddings: np.ndarray,
        crops: Optional[np.ndarray] = None,
        qualities: Optional[Sequence[float]] = None,
        external_id: Optional[str] = None,
        consent_at: Optional[str] = None,
        create: bool = True,
        policy: Optional[IdentityPolicy] = None,
    ) -> List[int]:
        """Add templates to an identity, creating it when ``create`` and it does not exist. One transaction.

        Args:
            embeddings: ``(N, D)`` float32 unit vectors.
            crops: ``(N, 112, 112, 3)`` uint8 aligned crops, or ``None``.
            policy: the new identity's access policy (ignored for an existing one: see :meth:`set_policy`).

        Returns:
            The new template ids.

        Raises:
            IdentityError: bad id, a name or external id that is empty, too long or holds control
                characters (:mod:`.text`), the id belongs to someone with another name, it does
                not exist and ``create`` is false, or the new identity's policy gives it another's card.
        """
        check_identity_id(identity_id)
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2 or not len(embeddings) or not np.isfinite(embeddings).all():
            raise IdentityError(f"need (N, D) finite embeddings, got shape {embeddings.shape}")
        now = utc_now()
        ids: List[int] = []
        with self._transaction() as db:
            row = db.execute("SELECT name FROM identities WHERE id=?", (identity_id,)).fetchone()
            if row is None:
                if not create:
                    raise IdentityError(f"no identity {identity_id!r}")
                # Checked for new identities only: one stored before the check existed keeps its
                # name (printed escaped) and can still get photos.
                check_name(name)
                check_external_id(external_id)
                db.execute(
                    "INSERT INTO identities (id, name, external_id, consent_at, created_at) VALUES (?, ?, ?, ?, ?)",
                    (identity_id, name, external_id, consent_at or now, now),
                )
                policy = policy or IdentityPolicy()
                self._refuse_card_clash(db, identity_id, policy)
                self._write_policy(db, identity_id, policy)
            elif row[0] != name:
                raise IdentityError(f"identity {identity_id!r} belongs to another name; choose another id")
            else:
                self._refuse_fleet_identity(db, identity_id, "photos")
            for index, embedding in enumerate(embeddings):
                crop = None if crops is None else crops[index]
                quality = None if qualities is None else float(qualities[index])
                ids.append(
                    self._insert_template(db, identity_id, model_version, embedding, crop, quality, now)
                )
            self._bump(db)
        return ids

    def add_identity(
        self,
        identity_id: str,
        name: str,
        external_id: Optional[str] = None,
        consent_at: Optional[str] = None,
        policy: Optional[IdentityPolicy] = None,
    ) -> None:
        """Create an identity without a face: no template, only its access policy (its cards and PIN,
        with which it passes a door that takes them). One transaction.

        For a person who declines face enrolment (GDPR art. 9 asks for a non-biometric way in); photos
        enrolled later with :meth:`add` give the same identity templates.

        Raises:
            IdentityError: a bad id, a name or external id that is empty, too long or holds control
                characters (:mod:`.text`), an id that exists already, or a policy that gives it
                another identity's card.
        """
        check_identity_id(identity_id)
        check_name(name)
        check_external_id(external_id)
        policy = policy or IdentityPolicy()
        now = utc_now()
        with self._transaction() as db:
            row = db.execute("SELECT name FROM identities WHERE id=?", (identity_id,)).fetchone()
            if row is not None:
                raise IdentityError(
                    f"identity {identity_id!r} exists already; change its policy with `gallery set "
                    f"{identity_id}` (or the set_policy command), or choose another id"
                )
            db.execute(
                "INSERT INTO identities (id, name, external_id, consent_at, created_at) VALUES (?, ?, ?, ?, ?)",
                (identity_id, name, external_id, consent_at or now, now),
            )
            self._refuse_card_clash(db, identity_id, policy)
            self._write_policy(db, identity_id, policy)
            self._bump(db)

    def forget_face(self, identity_id: str) -> int:
        """Consent withdrawn: delete every template of an identity (every model version, enrolled and
        adaptive, their crops) and its impostor examples, for real (``secure_delete``, WAL
        checkpoint), keeping the identity, its name and its access policy (cards, PIN). Its
        look-alike pairs (found by its face) go too. One transaction.

        Returns:
            The templates deleted (0 for an identity without any: nothing changes).

        Raises:
            IdentityError: no such identity.
        """
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM identities WHERE id=?", (identity_id,)).fetchone() is None:
                raise IdentityError(f"no identity {identity_id!r}")
            self._refuse_fleet_identity(db, identity_id, "forget_face")
            removed, impostors = self._delete_face(db, identity_id)
            if removed or impostors:
                self._bump(db)
        if removed or impostors:
            self._purge()
        return len(removed)

    @staticmethod
    def _delete_face(db: sqlite3.Connection, identity_id: str) -> Tuple[List[int], int]:
        """Delete what an identity's face left (inside the caller's transaction): its templates of
        every kind and version, its impostor examples and its look-alike pairs. Returns ``(the
        template ids deleted, the impostor examples deleted)``."""
        removed = [
            int(row[0]) for row in db.execute("SELECT id FROM templates WHERE identity_id=?", (identity_id,))
        ]
        db.execute("DELETE FROM templates WHERE identity_id=?", (identity_id,))
        impostors = db.execute("DELETE FROM impostors WHERE identity_id=?", (identity_id,)).rowcount
        db.execute("DELETE FROM look_alikes WHERE id=? OR like_id=?", (identity_id, identity_id))
        return removed, int(impostors)

    def remove(self, identity_id: str) -> int:
        """Delete an identity with all its templates and crops, for real. Returns the templates removed.

        Raises:
            IdentityError: no such identity.
        """
        with self._transaction() as db:
            self._refuse_fleet_identity(db, identity_id, "remove")
            count = db.execute(
                "SELECT COUNT(*) FROM templates WHERE identity_id=?", (identity_id,)
            ).fetchone()[0]
            deleted = db.execute("DELETE FROM identities WHERE id=?", (identity_id,)).rowcount
            if not deleted:
                raise IdentityError(f"no identity {identity_id!r}")
            db.execute("DELETE FROM templates WHERE identity_id=?", (identity_id,))
            self._bump(db)
        self._purge()
        return int(count)

    # -- access policy (appliance.access.policy) ------------------------------------------------------

    @staticmethod
    def _write_policy(db: sqlite3.Connection, identity_id: str, policy: IdentityPolicy) -> None:
        document = policy.document()
        credentials = {key: document[key] for key in CREDENTIAL_KEYS if key in document}
        db.execute(
            "UPDATE identities SET valid_from=?, valid_until=?, suspended=?, groups=?, credentials=? "
            "WHERE id=?",
            (
                document["valid_from"],
                document["valid_until"],
                int(policy.suspended),
                json.dumps(list(policy.groups)),
                json.dumps(credentials, sort_keys=True),
                identity_id,
            ),
        )
        db.execute("DELETE FROM cards WHERE identity_id=?", (identity_id,))
        db.executemany(
            "INSERT INTO cards (card, identity_id) VALUES (?, ?)",
            [(card, identity_id) for card in policy.cards],
        )

    def set_policy(self, identity_id: str, policy: IdentityPolicy) -> None:
        """Replace an identity's access policy (one transaction).

        Raises:
            IdentityError: no such identity, or one of its cards is another identity's (a card names
                one person).
        """
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM identities WHERE id=?", (identity_id,)).fetchone() is None:
                raise IdentityError(f"no identity {identity_id!r}")
            self._refuse_fleet_identity(db, identity_id, "policy")
            self._refuse_card_clash(db, identity_id, policy)
            self._write_policy(db, identity_id, policy)

    @classmethod
    def _refuse_card_clash(cls, db: sqlite3.Connection, identity_id: str, policy: IdentityPolicy) -> None:
        """An operator's change (enrolment, ``gallery set``, ``set_policy``) may not give ``identity_id``
        a card another identity holds: a card names one person here. (A fleet record is the
        authority's word and is taken as it is.)

        Raises:
            IdentityError: naming the holder and the way out.
        """
        holder = cls._card_holder(db, policy.cards, identity_id) if policy.cards else None
        if holder is not None:
            raise IdentityError(
                f"a card given is already {holder!r}'s: remove it there first "
                "(gallery set ID --remove-card CARD, or the set_policy command's remove_cards)"
            )

    def card_holders(self, card: str) -> List[Identity]:
        """The identities that hold ``card`` (canonical text, :func:`appliance.access.credentials.parse_card`):
        one, or none; more only when fleet records clash (the authority's word is taken as it is)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._IDENTITY_COLUMNS} FROM cards c JOIN identities i ON i.id = c.identity_id "
                "WHERE c.card=? ORDER BY i.id",
                (card,),
            ).fetchall()
        holders = (self._identity(row) for row in rows)
        return [identity for identity in holders if card in identity.policy.cards]

    @staticmethod
    def _card_holder(db: sqlite3.Connection, cards: Sequence[str], other_than: str) -> Optional[str]:
        """The first identity other than ``other_than`` that holds one of ``cards``, or ``None``."""
        for card in sorted(set(cards)):
            row = db.execute(
                "SELECT identity_id FROM cards WHERE card=? AND identity_id<>? ORDER BY identity_id LIMIT 1",
                (card, other_than),
            ).fetchone()
            if row is not None:
                return str(row[0])
        return None

    def policy_tables(self) -> PolicyTables:
        """The defined access groups and holiday calendars (a damaged row is logged and left out)."""
        groups: Dict[str, AccessGroup] = {}
        calendars: Dict[str, HolidayCalendar] = {}
        with self._lock:
            group_rows = self._db.execute("SELECT name, schedule, holidays FROM access_groups").fetchall()
            calendar_rows = self._db.execute("SELECT name, days FROM holiday_calendars").fetchall()
        for name, schedule, holidays in group_rows:
            try:
                groups[name] = AccessGroup.from_parts(name, json.loads(schedule), json.loads(holidays))
            except (PolicyError, ValueError, TypeError) as err:
                logger.error("access group %r is unreadable (%s): it admits nobody", name, err)
        for name, days in calendar_rows:
            try:
                calendars[name] = HolidayCalendar.from_parts(name, json.loads(days))
            except (PolicyError, ValueError, TypeError) as err:
                logger.error("holiday calendar %r is unreadable (%s): it is ignored", name, err)
        return PolicyTables(groups, calendars)

    def put_group(self, group: AccessGroup) -> None:
        """Define or replace an access group."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO access_groups VALUES (?, ?, ?)",
                (group.name, json.dumps(list(group.schedule.texts())), json.dumps(list(group.holidays))),
            )

    def put_calendar(self, calendar: HolidayCalendar) -> None:
        """Define or replace a holiday calendar."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO holiday_calendars VALUES (?, ?)",
                (calendar.name, json.dumps(calendar.document()["days"])),
            )

    def remove_group(self, name: str) -> bool:
        """Delete a group's definition (identities keep naming it; it then admits nobody)."""
        with self._transaction() as db:
            return bool(db.execute("DELETE FROM access_groups WHERE name=?", (name,)).rowcount)

    def remove_calendar(self, name: str) -> bool:
        """Delete a holiday calendar (groups naming it are then open on those days)."""
        with self._transaction() as db:
            return bool(db.execute("DELETE FROM holiday_calendars WHERE name=?", (name,)).rowcount)

    # -- fleet records (appliance.fleet) -------------------------------------------------------------

    def check_local_change(self, identity_id: str, change: str) -> None:
        """Refuse a change made at this door to a fleet identity (see :attr:`fleet_managed`).

        Args:
            change: ``policy`` (validity, groups, suspension, cards, PINs), ``remove``, ``forget_face``
                or ``photos`` (enrolled templates added or removed; adaptive ones stay the door's).

        Raises:
            FleetIdentityError: naming the record's revision and the authority's command.
        """
        with self._lock:
            self._refuse_fleet_identity(self._db, identity_id, change)

    def fleet_revision(self, identity_id: str) -> Optional[int]:
        """The revision of the fleet record that brought ``identity_id`` here, ``None`` for an identity
        enrolled here (or none)."""
        with self._lock:
            return self._fleet_revision(self._db, identity_id)

    @staticmethod
    def _fleet_revision(db: sqlite3.Connection, identity_id: str) -> Optional[int]:
        row = db.execute(
            "SELECT f.revision FROM fleet_records f JOIN identities i ON i.id = f.id "
            "WHERE f.id=? AND f.kind='identity'",
            (identity_id,),
        ).fetchone()
        return None if row is None else int(row[0])

    def _refuse_fleet_identity(self, db: sqlite3.Connection, identity_id: str, change: str) -> None:
        revision = self._fleet_revision(db, identity_id) if self.fleet_managed else None
        if revision is not None:
            how = _AT_THE_AUTHORITY[change].format(id=identity_id)
            raise FleetIdentityError(
                f"identity {identity_id!r} is the site's (fleet record r{revision}): change it at the "
                f"enrolment authority with {how}; a change made at this door would be undone by its next "
                "record, and the other doors would never have it"
            )

    def fleet_revisions(self) -> Dict[str, Tuple[int, str]]:
        """identity id → ``(revision, kind)`` of the fleet record last applied (``identity`` or ``tombstone``)."""
        with self._lock:
            rows = self._db.execute("SELECT id, revision, kind FROM fleet_records").fetchall()
        return {str(row[0]): (int(row[1]), str(row[2])) for row in rows}

    def fleet_identities(self) -> Dict[str, int]:
        """The fleet's identities present in this gallery: id → revision (what the door's digest covers)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.id, f.revision FROM fleet_records f JOIN identities i ON i.id = f.id WHERE f.kind='identity'"
            ).fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    def put_fleet_identity(
        self,
        identity_id: str,
        revision: int,
        name: str,
        external_id: Optional[str],
        consent_at: str,
        policy: IdentityPolicy,
        model_version: str,
        embeddings: np.ndarray,
        crops: np.ndarray,
        qualities: Sequence[float],
        look_alikes: Sequence[Tuple[str, float]] = (),
    ) -> Tuple[List[int], List[int]]:
        """Apply a fleet record in one transaction: the identity, its policy and its templates replace
        what an older revision stored.

        A record without crops is an identity without a face (card and PIN only): every template it
        held here — this door's adaptive ones too — its impostor examples and its look-alikes are
        deleted for real (:meth:`forget_face`), in the same transaction.

        Args:
            embeddings: ``(N, D)`` float32 unit vectors of this door's embedder, from ``crops`` (any
                empty array when there is no crop).
            crops: ``(N, 112, 112, 3)`` uint8 aligned crops (kept: a model swap re-embeds them); N may be 0.
            look_alikes: ``(identity id, score)`` of the other identities these embeddings match at
                the duplicate threshold; they replace every look-alike this identity had, either
                way round. One that is gone by now is left out.

        Returns:
            ``(template ids removed, template ids added)``, for the search index.

        Raises:
            IdentityError: the id belongs to a local enrolment (the fleet never overwrites one), or a
                name, external id or embedding that the store refuses.
        """
        check_identity_id(identity_id)
        check_name(name)
        check_external_id(external_id)
        embeddings = np.asarray(embeddings, np.float32)
        faceless = not len(crops)
        if faceless and not embeddings.size:
            embeddings = np.zeros((0, 0), np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(crops) or not np.isfinite(embeddings).all():
            raise IdentityError(
                f"need (N, D) finite embeddings for {len(crops)} crops, got {embeddings.shape}"
            )
        now = utc_now()
        added: List[int] = []
        impostors = 0
        with self._transaction() as db:
            local = db.execute(
                "SELECT 1 FROM identities i WHERE i.id=? AND NOT EXISTS "
                "(SELECT 1 FROM fleet_records f WHERE f.id = i.id AND f.kind='identity')",
                (identity_id,),
            ).fetchone()
            if local:
                raise IdentityError(
                    f"identity {identity_id!r} was enrolled locally; the fleet does not replace it"
                )
            if faceless:  # no face (declined, or consent withdrawn): nothing of one stays here
                removed, impostors = self._delete_face(db, identity_id)
            else:
                # The record's templates replace the enrolled ones; this door's adaptive templates of the
                # identity stay (they are local: no fleet record carries them, so none is duplicated).
                removed = [
                    int(row[0])
                    for row in db.execute(
                        "SELECT id FROM templates WHERE identity_id=? AND kind=?", (identity_id, ENROLLED)
                    )
                ]
                db.execute("DELETE FROM templates WHERE identity_id=? AND kind=?", (identity_id, ENROLLED))
            db.execute(
                "INSERT INTO identities (id, name, external_id, consent_at, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, external_id=excluded.external_id, "
                "consent_at=excluded.consent_at",
                (identity_id, name, external_id, consent_at, now),
            )
            self._write_policy(db, identity_id, policy)
            for embedding, crop, quality in zip(embeddings, crops, qualities):
                added.append(
                    self._insert_template(
                        db, identity_id, model_version, embedding, crop, float(quality), now
                    )
                )
            self._note_fleet(db, identity_id, revision, "identity", now)
            db.execute("DELETE FROM look_alikes WHERE id=? OR like_id=?", (identity_id, identity_id))
            db.executemany(
                "INSERT INTO look_alikes (id, like_id, score, found_at) SELECT ?, id, ?, ? "
                "FROM identities WHERE id=? AND id<>?",
                [(identity_id, float(score), now, other, identity_id) for other, score in look_alikes],
            )
            self._bump(db)
        if removed or impostors:
            self._purge()
        return removed, added

    #: The look-alike pairs not marked distinct here.
    _UNMARKED = (
        "FROM look_alikes a WHERE NOT EXISTS (SELECT 1 FROM distinct_pairs d WHERE "
        "d.id = MIN(a.id, a.like_id) AND d.like_id = MAX(a.id, a.like_id))"
    )

    def look_alikes(self, most: int = -1) -> Tuple[int, List[LookAlike]]:
        """The look-alike pairs (:meth:`put_fleet_identity`) not marked distinct (:meth:`mark_distinct`):
        how many, and the ``most`` best-scored (all with ``-1``), best first."""
        with self._lock:
            count = self._db.execute(f"SELECT COUNT(*) {self._UNMARKED}").fetchone()[0]
            rows = self._db.execute(
                f"SELECT a.id, a.like_id, a.score, a.found_at {self._UNMARKED} "
                "ORDER BY a.score DESC, a.id, a.like_id LIMIT ?",
                (int(most),),
            ).fetchall()
        return int(count), [LookAlike(str(row[0]), str(row[1]), float(row[2]), str(row[3])) for row in rows]

    def distinct_pairs(self) -> List[Tuple[str, str, str]]:
        """The pairs marked distinct here: ``(id, other id, marked_at)``, the smaller id first, sorted."""
        with self._lock:
            rows = self._db.execute("SELECT id, like_id, marked_at FROM distinct_pairs ORDER BY id, like_id")
            return [(str(row[0]), str(row[1]), str(row[2])) for row in rows]

    def mark_distinct(self, first: str, second: str, distinct: bool = True) -> bool:
        """Mark two identities as two people (``distinct``) or undo the mark; returns whether it changed.

        A pair of the fleet's own identities is marked at its authority (``fleet distinct``, which
        every door's pair follows); here only a pair with an identity enrolled at this door, whose id
        never leaves it. The look-alikes found stay stored: an undone mark lists them again at once.

        Raises:
            IdentityError: an id this gallery does not hold, the same id twice, or two fleet identities.
        """
        if first == second:
            raise IdentityError(f"{first!r} twice: a pair of two identities is marked distinct")
        low, high = sorted((first, second))
        with self._transaction() as db:
            held = {
                str(row[0]): row[1] is not None
                for row in db.execute(
                    "SELECT i.id, f.id FROM identities i LEFT JOIN fleet_records f "
                    "ON f.id = i.id AND f.kind='identity' WHERE i.id IN (?, ?)",
                    (low, high),
                )
            }
            missing = [identity for identity in (first, second) if identity not in held]
            if missing:
                raise IdentityError(f"no identity {missing[0]!r} in this gallery")
            if all(held.values()):
                raise IdentityError(
                    f"{first!r} and {second!r} are both the fleet's: mark them at the authority "
                    "(fleet distinct), which every door follows"
                )
            if distinct:
                changed = db.execute(
                    "INSERT OR IGNORE INTO distinct_pairs (id, like_id, marked_at) VALUES (?, ?, ?)",
                    (low, high, utc_now()),
                ).rowcount
            else:
                changed = db.execute(
                    "DELETE FROM distinct_pairs WHERE id=? AND like_id=?", (low, high)
                ).rowcount
        return changed > 0

    def remove_fleet_identity(self, identity_id: str, revision: int) -> List[int]:
        """Apply a fleet tombstone: delete the identity for real (as :meth:`remove`) and remember the
        revision, so an older record never brings it back. Returns the template ids removed.

        Raises:
            IdentityError: the id belongs to a local enrolment.
        """
        now = utc_now()
        with self._transaction() as db:
            fleet = db.execute("SELECT kind FROM fleet_records WHERE id=?", (identity_id,)).fetchone()
            exists = db.execute("SELECT 1 FROM identities WHERE id=?", (identity_id,)).fetchone()
            if exists and (fleet is None or fleet[0] != "identity"):
                raise IdentityError(
                    f"identity {identity_id!r} was enrolled locally; a fleet tombstone does not remove it"
                )
            removed = [
                int(row[0])
                for row in db.execute("SELECT id FROM templates WHERE identity_id=?", (identity_id,))
            ]
            db.execute("DELETE FROM templates WHERE identity_id=?", (identity_id,))
            db.execute("DELETE FROM identities WHERE id=?", (identity_id,))
            self._note_fleet(db, identity_id, revision, "tombstone", now)
            self._bump(db)
        self._purge()
        return removed

    @staticmethod
    def _note_fleet(db: sqlite3.Connection, identity_id: str, revision: int, kind: str, now: str) -> None:
        db.execute(
            "INSERT OR REPLACE INTO fleet_records (id, revision, kind, applied_at) VALUES (?, ?, ?, ?)",
            (identity_id, int(revision), kind, now),
        )

    def put_version(self, model_version: str, rows: Sequence[Tuple]) -> int:
        """Replace every template of ``model_version`` with ``rows``, in one transaction.

        This is how a new embedder's templates are written (re-embedded from the enrolment crops): an
        interrupted attempt leaves either the old set of that version or the new one. Rows of identities
        that no longer exist are skipped.

        Args:
            rows: ``(identity id, (D,) float32 unit embedding, (112, 112, 3) uint8 crop or None, quality)``,
                optionally followed by the template's :class:`TemplateOrigin` (default: enrolled now),
                so an adaptive template stays adaptive, with its event, under the new model.

        Returns:
            The templates written.
        """
        now = utc_now()
        written = 0
        with self._transaction() as db:
            db.execute("DELETE FROM templates WHERE model_version=?", (model_version,))
            existing = {row[0] for row in db.execute("SELECT id FROM identities")}
            for row in rows:
                identity_id, embedding, crop, quality = row[:4]
                origin = row[4] if len(row) > 4 else TemplateOrigin()
                if identity_id not in existing:
                    continue
                vector = np.asarray(embedding, np.float32).reshape(-1)
                if not np.isfinite(vector).all():
                    raise IdentityError(f"a re-embedded template of {identity_id!r} is not finite")
                self._insert_template(
                    db, identity_id, model_version, vector, crop, quality, origin.created_at or now, origin
                )
                written += 1
            self._bump(db)
        return written

    def drop_versions(self, keep: str) -> int:
        """Delete the templates (and impostor examples) of every model version but ``keep`` (after a model
        switch). Returns how many templates."""
        with self._transaction() as db:
            dropped = db.execute("DELETE FROM templates WHERE model_version<>?", (keep,)).rowcount
            impostors = db.execute("DELETE FROM impostors WHERE model_version<>?", (keep,)).rowcount
            if dropped:
                self._bump(db)
        if dropped or impostors:
            self._purge()
        return int(dropped)

    def _purge(self) -> None:
        """Copy the WAL into the database and empty it, so deleted pages survive nowhere.

        The deletion itself is committed already; a checkpoint that fails (a full disk) is retried
        by the next removal and at close, so it is logged, not raised.
        """
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as err:
                logger.warning("gallery %s: the WAL checkpoint after a removal failed: %s", self.path, err)

    # -- templates -----------------------------------------------------------------------------------

    def template_infos(self, identity_id: str) -> List[TemplateInfo]:
        """An identity's templates without their biometric data, oldest first.

        Raises:
            IdentityError: no such identity.
        """
        with self._lock:
            if self._db.execute("SELECT 1 FROM identities WHERE id=?", (identity_id,)).fetchone() is None:
                raise IdentityError(f"no identity {identity_id!r}")
            rows = self._db.execute(
                "SELECT id, identity_id, model_version, quality, created_at, kind, source_event, score, margin "
                "FROM templates WHERE identity_id=? ORDER BY id",
                (identity_id,),
            ).fetchall()
        return [
            TemplateInfo(int(row[0]), str(row[1]), str(row[2]), row[3], str(row[4]), _origin(row[5:]))
            for row in rows
        ]

    def add_adaptive(
        self,
        identity_id: str,
        model_version: str,
        embedding: np.ndarray,
        crop: Optional[np.ndarray],
        quality: float,
        origin: TemplateOrigin,
        keep: int,
    ) -> Tuple[int, List[int]]:
        """Add one adaptive template and evict the identity's oldest adaptive ones of ``model_version``
        beyond ``keep``, in one transaction. Enrolled templates are never evicted.

        Args:
            embedding: ``(D,)`` float32 unit vector; ``crop``: ``(112, 112, 3)`` uint8 (kept, so a model
                swap re-embeds it like an enrolled one) or ``None``.
            origin: its event, score and margin (``kind`` is set to :data:`ADAPTIVE`).
            keep: adaptive templates the identity may hold per model version (≥ 1).

        Returns:
            ``(the new template id, the template ids evicted)``.

        Raises:
            IdentityError: no such identity (removed meanwhile), a bad ``keep`` or a non-finite embedding.
        """
        if keep < 1:
            raise IdentityError(f"an identity must be allowed at least 1 adaptive template, got {keep}")
        vector = np.asarray(embedding, np.float32).reshape(-1)
        if not len(vector) or not np.isfinite(vector).all():
            raise IdentityError(f"need a finite (D,) embedding, got shape {np.shape(embedding)}")
        now = utc_now()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM identities WHERE id=?", (identity_id,)).fetchone() is None:
                raise IdentityError(f"no identity {identity_id!r}")
            added = self._insert_template(
                db,
                identity_id,
                model_version,
                vector,
                crop,
                float(quality),
                now,
                replace(origin, kind=ADAPTIVE),
            )
            evicted = [
                int(row[0])
                for row in db.execute(
                    "SELECT id FROM templates WHERE identity_id=? AND model_version=? AND kind=? "
                    "ORDER BY id DESC LIMIT -1 OFFSET ?",
                    (identity_id, model_version, ADAPTIVE, int(keep)),
                )
            ]
            if evicted:
                db.execute(f"DELETE FROM templates WHERE id IN ({', '.join('?' * len(evicted))})", evicted)
            self._bump(db)
        if evicted:
            self._purge()
        return added, evicted

    def remove_template(self, identity_id: str, template_id: int) -> TemplateInfo:
        """Delete one template of an identity, for real (``secure_delete``, WAL checkpoint).

        The last enrolled template of a model version is refused: an identity known only from what
        the door learned has nothing left that adaptive templates are checked against
        (:mod:`appliance.template_update`); remove the identity, or enrol a photo first.

        Returns:
            What was removed.

        Raises:
            IdentityError: no such identity or template of it, or the last enrolled one.
        """
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM identities WHERE id=?", (identity_id,)).fetchone() is None:
                raise IdentityError(f"no identity {identity_id!r}")
            row = db.execute(
                "SELECT id, identity_id, model_version, quality, created_at, kind, source_event, score, margin "
                "FROM templates WHERE id=? AND identity_id=?",
                (int(template_id), identity_id),
            ).fetchone()
            if row is None:
                raise IdentityError(
                    f"identity {identity_id!r} has no template {template_id}; list them with "
                    f"`face-appliance gallery templates {identity_id}`"
                )
            info = TemplateInfo(int(row[0]), str(row[1]), str(row[2]), row[3], str(row[4]), _origin(row[5:]))
            if info.origin.kind == ENROLLED:
                self._refuse_fleet_identity(db, identity_id, "photos")
                others = db.execute(
                    "SELECT COUNT(*) FROM templates WHERE identity_id=? AND model_version=? AND kind=? AND id<>?",
                    (identity_id, info.model_version, ENROLLED, info.id),
                ).fetchone()[0]
                if not others:
                    raise IdentityError(
                        f"template {info.id} is the last enrolled template of {identity_id!r}; enrol another "
                        f"photo first, or remove the whole identity with `face-appliance gallery remove {identity_id}`"
                    )
            db.execute("DELETE FROM templates WHERE id=?", (info.id,))
            self._bump(db)
        self._purge()
        return info

    def templates(
        self, model_version: Optional[str] = None, identity_id: Optional[str] = None
    ) -> Iterator[Template]:
        """Decrypted templates, optionally of one model version and/or one identity, by id."""
        query = f"SELECT {self._TEMPLATE_COLUMNS} FROM templates"
        clauses, args = [], []
        if model_version is not None:
            clauses.append("model_version=?")
            args.append(model_version)
        if identity_id is not None:
            clauses.append("identity_id=?")
            args.append(identity_id)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        for row in rows:
            yield self._template(row)

    def embeddings(self, model_version: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """All embeddings of one model version without their crops.

        Returns:
            ``(ids (N,) int64, vectors (N, D) float32, identity ids)``.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, identity_id, embedding FROM templates WHERE model_version=? ORDER BY id",
                (model_version,),
            ).fetchall()
        if not rows:
            return np.zeros((0,), np.int64), np.zeros((0, 0), np.float32), []
        vectors = np.stack(
            [
                np.frombuffer(self._sealer.open(blob, f"embedding:{owner}:{model_version}"), "<f4")
                for _, owner, blob in rows
            ]
        ).astype(np.float32)
        return np.array([row[0] for row in rows], np.int64), vectors, [row[1] for row in rows]

    def model_versions(self) -> Dict[str, int]:
        """Template counts per embedder model version."""
        with self._lock:
            return dict(
                self._db.execute("SELECT model_version, COUNT(*) FROM templates GROUP BY model_version")
            )

    def embedding_lengths(self) -> Dict[str, Set[int]]:
        """The embedding lengths stored per model version, from the sealed sizes (nothing is decrypted)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT model_version, length(embedding) FROM templates"
            ).fetchall()
        lengths: Dict[str, Set[int]] = {}
        for version, size in rows:
            lengths.setdefault(str(version), set()).add((int(size) - SEAL_OVERHEAD_BYTES) // 4)
        return lengths

    # -- impostor examples ("this is not X", appliance.sightings.impostors) ---------------------------

    def add_impostor(
        self,
        identity_id: str,
        model_version: str,
        embedding: np.ndarray,
        crop: Optional[np.ndarray],
        source_event: str,
        score: Optional[float],
    ) -> int:
        """Store a face wrongly granted to ``identity_id`` as an impostor example of it.

        Args:
            embedding: ``(D,)`` float32 unit vector of ``model_version``.
            crop: ``(112, 112, 3)`` uint8 aligned crop (kept, sealed, so a new embedder can re-embed it).
            source_event: the access event the operator marked.
            score: that event's score for the identity.

        Returns:
            The impostor example's id.

        Raises:
            IdentityError: no such identity, or an embedding that is not finite.
        """
        vector = np.asarray(embedding, np.float32).reshape(-1)
        if not vector.size or not np.isfinite(vector).all():
            raise IdentityError("an impostor example's embedding is empty or not finite")
        with self._transaction() as db:
            if not db.execute("SELECT 1 FROM identities WHERE id=?", (identity_id,)).fetchone():
                raise IdentityError(f"no identity {identity_id!r}")
            cursor = db.execute(
                "INSERT INTO impostors (identity_id, model_version, embedding, crop, source_event, score, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    identity_id,
                    model_version,
                    self._sealer.seal(
                        np.ascontiguousarray(vector, "<f4").tobytes(),
                        f"impostor-embedding:{identity_id}:{model_version}",
                    ),
                    self._seal_impostor_crop(identity_id, crop),
                    source_event,
                    None if score is None else float(score),
                    utc_now(),
                ),
            )
        return int(cursor.lastrowid or 0)

    def _seal_impostor_crop(self, identity_id: str, crop: Optional[np.ndarray]) -> Optional[bytes]:
        if crop is None:
            return None
        ok, png = cv2.imencode(".png", crop)
        if not ok:
            raise GalleryStoreError("cannot encode an impostor example's crop")
        return self._sealer.seal(png.tobytes(), f"impostor-crop:{identity_id}")

    def impostors(self, identity_id: Optional[str] = None) -> List[ImpostorInfo]:
        """The impostor examples (no biometric data), of one identity or of all, by id."""
        query = "SELECT id, identity_id, model_version, source_event, score, created_at FROM impostors"
        args: List[str] = []
        if identity_id is not None:
            query += " WHERE identity_id=?"
            args.append(identity_id)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [ImpostorInfo(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5])) for r in rows]

    def impostor_vectors(self, model_version: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """identity id → ``(impostor ids (K,) int64, embeddings (K, D) float32)`` of one embedder version."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, identity_id, embedding FROM impostors WHERE model_version=? ORDER BY id",
                (model_version,),
            ).fetchall()
        grouped: Dict[str, Tuple[List[int], List[np.ndarray]]] = {}
        for impostor_id, owner, blob in rows:
            vector = np.frombuffer(
                self._sealer.open(blob, f"impostor-embedding:{owner}:{model_version}"), "<f4"
            ).astype(np.float32)
            ids, vectors = grouped.setdefault(str(owner), ([], []))
            ids.append(int(impostor_id))
            vectors.append(vector)
        return {
            owner: (np.asarray(ids, np.int64), np.stack(vectors)) for owner, (ids, vectors) in grouped.items()
        }

    def impostor_crops(self, model_version: str) -> List[Tuple[int, str, np.ndarray]]:
        """``(id, identity id, (112, 112, 3) uint8 crop)`` of the impostor examples of every other embedder
        version than ``model_version`` that have a crop (to re-embed them for it)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, identity_id, crop FROM impostors WHERE model_version<>? AND crop IS NOT NULL ORDER BY id",
                (model_version,),
            ).fetchall()
        crops = []
        for impostor_id, owner, blob in rows:
            png = self._sealer.open(blob, f"impostor-crop:{owner}")
            crops.append(
                (int(impostor_id), str(owner), cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR))
            )
        return crops

    def copy_impostors(self, model_version: str, embeddings: Dict[int, np.ndarray]) -> int:
        """Impostor examples re-embedded for another embedder (id → ``(D,)`` float32 of ``model_version``)
        stored as examples of that version too, in one transaction (the old ones go with
        :meth:`drop_versions` once the switch is final). Returns how many were written."""
        written = 0
        with self._transaction() as db:
            db.execute(
                "DELETE FROM impostors WHERE model_version=? AND source_event IN "
                f"(SELECT source_event FROM impostors WHERE id IN ({','.join('?' * len(embeddings))}))",
                (model_version, *[int(key) for key in embeddings]),
            )
            for impostor_id, vector in embeddings.items():
                row = db.execute(
                    "SELECT identity_id, crop, source_event, score, created_at FROM impostors WHERE id=?",
                    (int(impostor_id),),
                ).fetchone()
                if row is None:
                    continue
                sealed = self._sealer.seal(
                    np.ascontiguousarray(np.asarray(vector, np.float32).reshape(-1), "<f4").tobytes(),
                    f"impostor-embedding:{row[0]}:{model_version}",
                )
                db.execute(
                    "INSERT INTO impostors (identity_id, model_version, embedding, crop, source_event, score, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row[0], model_version, sealed, row[1], row[2], row[3], row[4]),
                )
                written += 1
        return written

    def remove_impostor(self, impostor_id: int) -> Optional[ImpostorInfo]:
        """Delete one impostor example (a mark made in error); returns what it was, ``None`` if absent."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT id, identity_id, model_version, source_event, score, created_at FROM impostors WHERE id=?",
                (int(impostor_id),),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM impostors WHERE id=?", (int(impostor_id),))
        self._purge()
        return ImpostorInfo(int(row[0]), str(row[1]), str(row[2]), str(row[3]), row[4], str(row[5]))

    # -- health --------------------------------------------------------------------------------------

    def check(self, progress: Optional[Callable[[int], None]] = None) -> List[str]:
        """Integrity problems: SQLite's own check, dangling templates, every identity's access policy
        read (a damaged one counts as suspended), and every sealed value opened (templates and
        impostor examples)."""
        problems: List[str] = []
        with self._lock:
            result = [row[0] for row in self._db.execute("PRAGMA integrity_check").fetchall()]
            if result != ["ok"]:
                problems.extend(f"sqlite: {line}" for line in result)
            dangling = self._db.execute("PRAGMA foreign_key_check").fetchall()
            if dangling:
                problems.append(f"{len(dangling)} template(s) without an identity")
            policies = self._db.execute(f"SELECT i.id, {self._POLICY_COLUMNS} FROM identities i").fetchall()
            rows = self._db.execute(f"SELECT {self._TEMPLATE_COLUMNS} FROM templates").fetchall()
        for identity_id, *columns in policies:
            try:
                self._parse_policy(identity_id, columns)
            except (PolicyError, ValueError, TypeError) as err:
                problems.append(
                    f"identity {identity_id}: access policy unreadable, treated as suspended ({err})"
                )
        for row in rows:
            try:
                self._template(row)
            except GalleryStoreError as err:
                problems.append(f"template {row[0]}: {err}")
            if progress is not None:
                progress(1)
        with self._lock:
            impostors = self._db.execute(
                "SELECT id, identity_id, model_version, embedding, crop FROM impostors"
            ).fetchall()
        for impostor_id, owner, version, embedding, crop in impostors:
            try:
                self._sealer.open(embedding, f"impostor-embedding:{owner}:{version}")
                if crop is not None:
                    self._sealer.open(crop, f"impostor-crop:{owner}")
            except GalleryStoreError as err:
                problems.append(f"impostor example {impostor_id}: {err}")
        return problems


def _origin(columns: Sequence) -> TemplateOrigin:
    """A :class:`TemplateOrigin` from the ``kind, source_event, score, margin`` columns."""
    kind, source_event, score, margin = columns
    return TemplateOrigin(
        str(kind),
        None if source_event is None else str(source_event),
        None if score is None else float(score),
        None if margin is None else float(margin),
    )


def check_identity_id(identity_id: str) -> str:
    """Return ``identity_id`` when allowed, else raise :class:`IdentityError`."""
    if not IDENTITY_ID_PATTERN.match(identity_id):
        raise IdentityError(
            f"identity id {identity_id!r} is not allowed: 1–64 letters, digits, '_', '.', '@', '-'"
        )
    return identity_id


__all__ = [
    "ADAPTIVE",
    "ENROLLED",
    "GalleryKeyError",
    "Identity",
    "LookAlike",
    "Template",
    "TemplateInfo",
    "TemplateOrigin",
    "TemplateStore",
    "check_identity_id",
    "slugify",
    "utc_now",
]
