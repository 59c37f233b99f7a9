"""The site's enrolment authority: publishes identity records, tombstones and the manifest, and tells
which doors are in step — the operator's side of the fleet, run from the command line (no daemon).

State (``authority.state_dir``, mode 0700, every file 0600, written atomically: temporary file, fsync,
rename)::

    revision        the revision counter (one decimal line)
    index.json      what was published: live ids (revision, the keyed digests of their cards, and
                    with keep_names their name and external id) and retained tombstones (revision,
                    removal time)
    records/ID.json the sealed record or tombstone last published for each id (already encrypted and
                    signed), so `fleet republish` can restore a broker that lost its retained messages
    manifest.json   the sealed manifest last published
    lock            held (flock) by the command changing the state: one at a time

Rules:

* **Revisions only grow.** A change takes ``max(counter, newest in the index, the broker's manifest
  revision) + 1`` and writes the counter *before* anything is published, so a crash, a restored
  backup of the state or a second authority machine never reuses a revision.
* **The state is the intent.** A change is written to the state, then published (record, then
  manifest, each retained with QoS 1 and acknowledged). When the broker fails half-way the command
  says so, and ``fleet republish`` sends the state again. A batch (:meth:`Authority.enroll_many`,
  ``fleet enroll-batch``) is one change: every record into the state, then each published, then one
  manifest.
* **One person, one identity.** Without an id, a person whose external id (a badge) a live identity
  holds *is* that identity (the index keeps external ids with ``keep_names``): enrolled already,
  replaced only when asked. A badge held by another identity than the id given is refused.
* **One card, one person.** A card another live identity holds is refused (every door would let the
  card open nothing: it names nobody there). The index keeps each identity's cards as digests keyed
  with the fleet key (:func:`card_digest`), not the numbers; an index written before it has none,
  and they are filled from this state's sealed records at the next change.
* **The broker's manifest is adopted.** Before a change, a manifest on the broker (signed by this
  authority's key) that lists newer revisions than the index — this state was restored from an older
  backup — is merged into the index (ids without names), so the next manifest drops nothing.
* **Tombstones** are retained for ``tombstone_days`` and cleared by ``fleet prune`` (an empty retained
  payload on their topics); the manifest keeps doors that were away longer correct.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import (
    AbstractSet,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engines.errors import FileReadError
from engines.files import atomic_writer, read_bounded

from ..access.policy import IdentityPolicy, parse_instant
from ..config_load import read_secret_file
from ..gallery.store import IDENTITY_ID_PATTERN, utc_now
from ..gallery.text import printable
from ..updates.errors import KeyFileError
from ..updates.keys import key_id, load_private_key
from .broker import FleetBroker, Messages
from .errors import FleetError, FleetRecordError
from .records import (
    LEVEL_PATTERN,
    MAX_REVISION,
    DoorDigest,
    IdentityRecord,
    Manifest,
    Tombstone,
    door_topic,
    doors_filter,
    fleet_key_id,
    manifest_topic,
    open_manifest,
    open_record,
    parse_door_document,
    read_fleet_key,
    record_policy,
    record_topic,
    seal_manifest,
    seal_record,
    topic_level,
)
from .settings import AuthorityConfig, AuthorityFile

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
#: A door's ``…/state`` read for its fleet key id at most (a state document is a few kilobytes).
MAX_STATE_DOCUMENT_BYTES = 1024 * 1024
#: :attr:`DoorStatus.fleet_key`: the door holds the site's fleet key, or another (an older) one.
CURRENT_KEY, OTHER_KEY = "current", "other"
MAX_STATE_FILE_BYTES = 256 * 2**20
RANDOM_ID_HEX = 12


def card_digest(fleet_key: bytes, card: str) -> str:
    """What the index keeps of a card (canonical text,
    :func:`~appliance.access.credentials.parse_card`): 32 hex digits of an HMAC-SHA256 keyed with the
    site's fleet key. Enough to find who holds a card given to someone; a card number cannot be read
    from it, nor tried against it, without the key."""
    mac = hmac.new(fleet_key, b"face-appliance card\x00" + card.encode("ascii"), hashlib.sha256)
    return mac.hexdigest()[:32]


def random_identity_id() -> str:
    """An opaque identity id, ``p-`` and 12 random hex digits: the topic names nobody."""
    return "p-" + os.urandom(RANDOM_ID_HEX // 2).hex()


# -- the state folder -------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One live identity in the authority's index (no biometric data).

    ``card_digests``: :func:`card_digest` of each card its record gives, sorted; ``None`` where not
    known (an index older than them, or an id adopted from the broker's manifest).
    """

    revision: int
    published_at: str
    name: Optional[str] = None
    external_id: Optional[str] = None
    card_digests: Optional[Tuple[str, ...]] = None

    def document(self) -> Dict[str, Any]:
        return {
            "revision": self.revision,
            "published_at": self.published_at,
            "name": self.name,
            "external_id": self.external_id,
        }


@dataclass
class Removal:
    """One retained tombstone in the index."""

    revision: int
    removed_at: str

    def document(self) -> Dict[str, Any]:
        return {"revision": self.revision, "removed_at": self.removed_at}


@dataclass
class Index:
    """What the authority published: live identities and retained tombstones, by id; and the pairs
    of live identities marked distinct people (``fleet distinct``: twins the doors list as
    look-alikes), each pair sorted."""

    site: str
    identities: Dict[str, Entry] = field(default_factory=dict)
    tombstones: Dict[str, Removal] = field(default_factory=dict)
    distinct: Set[Tuple[str, str]] = field(default_factory=set)

    def distinct_live(self) -> Set[Tuple[str, str]]:
        """The pairs marked distinct whose two identities are both live (a pair goes with either)."""
        return {pair for pair in self.distinct if pair[0] in self.identities and pair[1] in self.identities}

    def newest(self) -> int:
        """The highest revision the index holds (0 for none)."""
        revisions = [e.revision for e in self.identities.values()] + [
            t.revision for t in self.tombstones.values()
        ]
        return max(revisions, default=0)

    def held(self, identity_id: str) -> int:
        """The revision held for ``identity_id``, live or tombstoned (0 for none)."""
        live = self.identities.get(identity_id)
        gone = self.tombstones.get(identity_id)
        return max(live.revision if live else 0, gone.revision if gone else 0)

    def card_clashes(
        self, people: Sequence[Tuple[Optional[str], Sequence[str]]], digest: Callable[[str], str]
    ) -> List[Tuple[int, str, Union[str, int]]]:
        """The cards of people about to be published that someone else holds.

        Args:
            people: per person, ``(identity id, or None for a new one; canonical cards)``. An identity
                among them gives up the cards it held (its record is replaced).
            digest: :func:`card_digest` with the fleet key.

        Returns:
            ``(position in people, card, holder)``: the holder is a live identity's id, or the position
            of an earlier person given the same card.
        """
        republished = {identity_id for identity_id, _ in people if identity_id is not None}
        holders: Dict[str, Union[str, int]] = {
            card: identity_id
            for identity_id, entry in self.identities.items()
            if identity_id not in republished
            for card in entry.card_digests or ()
        }
        clashes: List[Tuple[int, str, Union[str, int]]] = []
        for position, (identity_id, cards) in enumerate(people):
            for card in cards:
                key = digest(card)
                holder = holders.get(key)
                if holder is None or (
                    isinstance(holder, int) and identity_id is not None and people[holder][0] == identity_id
                ):
                    holders[key] = position
                else:
                    clashes.append((position, card, holder))
        return clashes

    def by_external_id(self) -> Dict[str, str]:
        """External id → the live identity holding it (those the index keeps: ``keep_names``)."""
        return {e.external_id: i for i, e in self.identities.items() if e.external_id is not None}

    def holder(
        self, identity_id: Optional[str], external_id: Optional[str], by_external: Mapping[str, str]
    ) -> Optional[str]:
        """The live identity a person to enrol is: ``identity_id`` when it is live, else, without an id,
        the live holder of ``external_id``; ``None`` for a new person.

        Args:
            by_external: :meth:`by_external_id` (built once for a batch).

        Raises:
            FleetError: ``external_id`` is held by another live identity than ``identity_id`` (one badge,
                two people).
        """
        other = by_external.get(external_id) if external_id is not None else None
        if identity_id is None:
            return other
        if other is not None and other != identity_id:
            raise FleetError(
                f"external id {external_id!r} is held by identity {other!r} (r{self.identities[other].revision}), "
                f"not {identity_id!r}; enrol that person with --id {other}, or change the external id"
            )
        return identity_id if identity_id in self.identities else None

    def manifest(self, revision: int, published_at: Optional[str] = None) -> Manifest:
        return Manifest(
            revision,
            {i: e.revision for i, e in self.identities.items()},
            {i: t.revision for i, t in self.tombstones.items()},
            published_at or utc_now(),
        )

    def document(self) -> Dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "site": self.site,
            "identities": {
                i: {
                    **e.document(),
                    **({} if e.card_digests is None else {"card_digests": list(e.card_digests)}),
                }
                for i, e in sorted(self.identities.items())
            },
            "tombstones": {i: t.document() for i, t in sorted(self.tombstones.items())},
            "distinct": [list(pair) for pair in sorted(self.distinct_live())],
        }

    @classmethod
    def from_document(cls, document: Any, where: str) -> Index:
        """Raises :class:`FleetError` naming ``where`` when the document is not an index."""
        try:
            if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
                raise ValueError(f"not an index of format {INDEX_FORMAT}")
            identities = {
                str(i): Entry(
                    int(e["revision"]),
                    str(e["published_at"]),
                    e.get("name"),
                    e.get("external_id"),
                    _card_digests(e.get("card_digests")),  # absent from an index older than them
                )
                for i, e in document["identities"].items()
            }
            tombstones = {
                str(i): Removal(int(t["revision"]), str(t["removed_at"]))
                for i, t in document["tombstones"].items()
            }
            distinct = set()
            for pair in document.get("distinct", []):  # absent from an index older than it
                if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(i, str) for i in pair):
                    raise ValueError(f"distinct: {str(pair)[:80]} is not a pair of identity ids")
                distinct.add(distinct_pair(pair[0], pair[1]))
            return cls(str(document["site"]), identities, tombstones, distinct)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise FleetError(f"{where} is damaged ({err}); restore it from a backup") from None


def _card_digests(value: Any) -> Optional[Tuple[str, ...]]:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(d, str) and re.fullmatch(r"[0-9a-f]{32}", d) for d in value
    ):
        raise ValueError(f"card_digests: {str(value)[:80]} is not a list of card digests")
    return tuple(sorted(value))


def distinct_pair(first: str, second: str) -> Tuple[str, str]:
    """Two identity ids as :attr:`Index.distinct` keeps them (sorted)."""
    return (first, second) if first <= second else (second, first)


class AuthorityState:
    """The authority's state folder (see the module docstring).

    Args:
        directory: ``authority.state_dir`` (created, mode 0700).
        site: the site; a folder used for another site is refused.
    """

    def __init__(self, directory: Path, site: str) -> None:
        self.directory = Path(directory)
        self.site = site
        self.counter_path = self.directory / "revision"
        self.index_path = self.directory / "index.json"
        self.manifest_path = self.directory / "manifest.json"
        self.records_dir = self.directory / "records"
        self._index: Optional[Index] = None

    # -- files --------------------------------------------------------------------------------------

    def _read(self, path: Path) -> Optional[bytes]:
        try:
            return read_bounded(path, MAX_STATE_FILE_BYTES)
        except FileReadError as err:
            if err.missing:
                return None
            raise FleetError(f"the authority's state file {err}") from None

    def _write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with atomic_writer(path, mode=0o600) as stream:
                stream.write(data)
        except OSError as err:
            raise FleetError(f"cannot write the authority's state {path}: {err.strerror or err}") from err

    @contextlib.contextmanager
    def locked(self) -> Iterator[AuthorityState]:
        """Hold the state's lock (one changing command at a time) and re-read the state.

        Raises:
            FleetError: another fleet command holds it, or the folder cannot be created.
        """
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(os.fspath(self.directory / "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise FleetError(f"cannot use the state folder {self.directory}: {err.strerror or err}") from err
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise FleetError(
                    f"another fleet command is changing {self.directory}; wait for it and try again"
                ) from None
            self._index = None
            yield self
        finally:
            os.close(fd)

    # -- the revision counter -------------------------------------------------------------------------

    @property
    def counter(self) -> int:
        """The counter file's value (0 when there is none yet).

        Raises:
            FleetError: the file is damaged (never silently reset: that would reuse revisions).
        """
        data = self._read(self.counter_path)
        if data is None:
            return 0
        text = data.decode("ascii", "replace").strip()
        if not re.match(r"^[0-9]{1,16}\Z", text) or int(text) > MAX_REVISION:
            raise FleetError(
                f"the revision counter {self.counter_path} is damaged ({text[:20]!r}); restore it from a "
                "backup, or write a number above every revision published"
            )
        return int(text)

    @property
    def revision(self) -> int:
        """The newest revision this state knows: the counter's, or a newer one in the index."""
        return max(self.counter, self.index.newest())

    def allocate(self, floor: int = 0) -> int:
        """The next revision, above the state's and ``floor`` (the broker's manifest), made durable
        before it is returned."""
        revision = max(self.revision, floor) + 1
        if revision > MAX_REVISION:
            raise FleetError("the revision counter is exhausted")
        self._write(self.counter_path, f"{revision}\n".encode("ascii"))
        return revision

    # -- the index and the sealed records -------------------------------------------------------------

    @property
    def index(self) -> Index:
        """The index (read once per lock; empty when there is none)."""
        if self._index is None:
            data = self._read(self.index_path)
            if data is None:
                self._index = Index(self.site)
            else:
                try:
                    document = json.loads(data.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError) as err:
                    raise FleetError(
                        f"{self.index_path} is not JSON ({err}); restore it from a backup"
                    ) from None
                self._index = Index.from_document(document, str(self.index_path))
            if self._index.site != self.site:
                raise FleetError(
                    f"{self.directory} is the state of site {self._index.site!r}, not of {self.site!r}; "
                    "give each site its own authority.state_dir"
                )
        return self._index

    def save_index(self) -> None:
        self._write(self.index_path, json.dumps(self.index.document(), indent=1).encode("utf-8"))

    def _record_path(self, identity_id: str) -> Path:
        if not IDENTITY_ID_PATTERN.match(identity_id):
            raise FleetError(f"identity id {identity_id!r} is not allowed")
        return self.records_dir / f"{identity_id}.json"

    def sealed(self, identity_id: str) -> Optional[bytes]:
        """The sealed record last published for ``identity_id``, if this state has it."""
        return self._read(self._record_path(identity_id))

    def put_sealed(self, identity_id: str, payload: bytes) -> None:
        self._write(self._record_path(identity_id), payload)

    def drop_sealed(self, identity_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(identity_id).unlink()

    def sealed_manifest(self) -> Optional[bytes]:
        return self._read(self.manifest_path)

    def put_manifest(self, payload: bytes) -> None:
        self._write(self.manifest_path, payload)

    def adopt(self, manifest: Manifest) -> int:
        """Merge a (verified) manifest with newer revisions than the index; returns how many ids changed.

        An id the manifest holds at a newer revision takes it (without a name: this state never saw
        that change); the sealed record kept for it, older, is dropped so that it is never republished
        over the newer one.
        """
        index = self.index
        changed = 0
        news = [(i, r, True) for i, r in manifest.entries.items()]
        news += [(i, r, False) for i, r in manifest.tombstones.items()]
        for identity_id, revision, live in news:
            if revision <= index.held(identity_id):
                continue
            index.identities.pop(identity_id, None)
            index.tombstones.pop(identity_id, None)
            if live:
                index.identities[identity_id] = Entry(revision, manifest.published_at)
            else:
                index.tombstones[identity_id] = Removal(revision, manifest.published_at)
            self.drop_sealed(identity_id)
            changed += 1
        if changed:
            self.save_index()
        return changed


# -- door status ------------------------------------------------------------------------------------------


@dataclass
class DoorStatus:
    """One door as ``fleet status`` sees it."""

    device_id: str
    reachable: Optional[bool]
    in_step: bool
    expected: int
    digest: Optional[DoorDigest] = None
    problem: Optional[str] = None
    #: Whether the door holds the site's fleet key (its ``…/state``): ``current``, ``other`` (an older
    #: one: not given the rotated key), or ``None`` when it is not known.
    fleet_key: Optional[str] = None

    @property
    def ok(self) -> bool:
        """In step, not known to be offline, not known to hold another fleet key."""
        return self.in_step and self.reachable is not False and self.fleet_key != OTHER_KEY

    def differences(self, manifest: Manifest) -> List[str]:
        """What differs from the manifest, in words (empty when in step)."""
        if self.problem is not None:
            return [self.problem]
        rotated = (
            ["holds another fleet key than the site's: give it the rotated fleet key and the previous one"]
            if self.fleet_key == OTHER_KEY
            else []
        )
        door = self.digest
        if door is None or self.in_step:
            return rotated
        notes: List[str] = rotated
        if door.applied != self.expected:
            word = "missing" if door.applied < self.expected else "extra"
            notes.append(
                f"{abs(self.expected - door.applied)} identit(ies) {word} ({door.applied} of {self.expected})"
            )
        else:
            notes.append(f"{door.applied} identities but other revisions (stale or refused records)")
        seen = door.manifest_revision
        if seen is None:
            notes.append("has not received a manifest")
        elif seen < manifest.revision:
            notes.append(f"last manifest r{seen}, the site's is r{manifest.revision}")
        elif seen > manifest.revision:
            notes.append(f"has seen manifest r{seen}, newer than r{manifest.revision}: run `fleet republish`")
        if door.refused:
            last = door.last_refused
            detail = f" (last: {last.id} {last.reason} at {last.at})" if last is not None else ""
            notes.append(f"{door.refused} record(s) refused{detail}")
        return notes

    def document(self, manifest: Manifest) -> Dict[str, Any]:
        door = self.digest
        published = {} if door is None else door.document()
        return {
            "device_id": self.device_id,
            "reachable": self.reachable,
            "in_step": self.in_step,
            "expected": self.expected,
            "applied": None if door is None else door.applied,
            "manifest_revision": None if door is None else door.manifest_revision,
            "digest": None if door is None else door.digest,
            "refused": published.get("refused"),
            "look_alikes": published.get("look_alikes"),
            "ts": None if door is None else door.ts,
            "fleet_key": self.fleet_key,
            "differences": self.differences(manifest),
        }


def compare_doors(
    manifest: Manifest,
    site: str,
    documents: Mapping[str, bytes],
    availability: Optional[Mapping[str, str]] = None,
    key_ids: Optional[Mapping[str, str]] = None,
    site_key_id: Optional[str] = None,
) -> List[DoorStatus]:
    """Each door's digest document against the manifest, sorted by device id.

    Args:
        documents: device id (the last level of its door topic) → the retained document.
        availability: device id → its ``…/availability`` payload (``online``/``offline``), when known.
        key_ids: device id → the fleet key id its ``…/state`` gives, when known.
        site_key_id: the site's fleet key id (:func:`~.records.fleet_key_id`).
    """
    availability = availability or {}
    key_ids = key_ids or {}
    expected_digest, expected = manifest.digest, len(manifest.entries)
    statuses = []
    for device_id in sorted(documents):
        state = availability.get(device_id)
        reachable = None if state is None else state == "online"
        try:
            door = parse_door_document(documents[device_id])
        except FleetRecordError as err:
            statuses.append(
                DoorStatus(device_id, reachable, False, expected, problem=f"unreadable document: {err}")
            )
            continue
        problem = None
        if door.site != site:
            problem = f"the document is of site {door.site!r}"
        elif door.device_id != device_id:
            problem = f"the document names device {door.device_id!r}"
        in_step = problem is None and door.digest == expected_digest and door.applied == expected
        held = key_ids.get(device_id)
        fleet_key = (
            None if held is None or site_key_id is None else CURRENT_KEY if held == site_key_id else OTHER_KEY
        )
        statuses.append(DoorStatus(device_id, reachable, in_step, expected, door, problem, fleet_key))
    return statuses


@dataclass(frozen=True)
class SiteLookAlike:
    """Two identities whose faces matched at one door or more (:class:`~.records.LookAlikeNote`):
    ``id`` the one whose record found it, ``like`` the other (``None``: an identity enrolled at each
    of those doors); the best ``score`` and the doors."""

    id: str
    like: Optional[str]
    score: float
    doors: Tuple[str, ...]

    def document(self) -> Dict[str, Any]:
        return {"id": self.id, "like": self.like, "score": round(self.score, 4), "doors": list(self.doors)}


@dataclass
class StatusReport:
    """``fleet status``: the manifest compared, where it came from, and every door.

    ``names``: identity id → name, of the identities the authority's index names (for the
    look-alikes' lines); ``distinct``: the pairs marked distinct people (:attr:`Index.distinct`),
    which :meth:`look_alikes` leaves out.
    """

    manifest: Manifest
    source: str
    doors: List[DoorStatus]
    notes: List[str] = field(default_factory=list)
    names: Dict[str, str] = field(default_factory=dict)
    distinct: Set[Tuple[str, str]] = field(default_factory=set)

    @property
    def all_in_step(self) -> bool:
        """At least one door, and every door in step and not offline."""
        return bool(self.doors) and all(door.ok for door in self.doors)

    def look_alikes(self) -> List[SiteLookAlike]:
        """The look-alikes the doors list, each pair once (either way round), best score first; not
        the pairs marked distinct."""
        pairs: Dict[Tuple[str, str], Tuple[str, Optional[str], float, List[str]]] = {}
        for door in self.doors:
            for note in () if door.digest is None else door.digest.look_alikes:
                # A local identity ("": no id is empty) at any door.
                key = distinct_pair(note.id, note.like or "")
                if key in self.distinct:
                    continue
                first, second, score, doors = pairs.get(key, (note.id, note.like, note.score, []))
                if note.score > score:
                    first, second, score = note.id, note.like, note.score
                pairs[key] = (first, second, score, [*doors, door.device_id])
        found = [SiteLookAlike(a, b, score, tuple(doors)) for a, b, score, doors in pairs.values()]
        return sorted(found, key=lambda pair: (-pair.score, pair.id, pair.like or ""))

    def document(self) -> Dict[str, Any]:
        return {
            "manifest": {
                "revision": self.manifest.revision,
                "entries": len(self.manifest.entries),
                "tombstones": len(self.manifest.tombstones),
                "digest": self.manifest.digest,
                "source": self.source,
            },
            "doors": [door.document(self.manifest) for door in self.doors],
            "look_alikes": [pair.document() for pair in self.look_alikes()],
            "distinct": [list(pair) for pair in sorted(self.distinct)],
            "in_step": self.all_in_step,
            "notes": list(self.notes),
        }


# -- the authority ----------------------------------------------------------------------------------------


def load_signing_key(settings: AuthorityConfig) -> Ed25519PrivateKey:
    """The authority's signing key (with its passphrase file, when one is configured).

    Raises:
        FleetError: missing or unusable; the message names the key and ``fleet init``.
    """
    passphrase = None
    if settings.signing_key_passphrase_file is not None:
        try:
            passphrase = read_secret_file(settings.signing_key_passphrase_file).encode("utf-8")
        except FileReadError as err:
            raise FleetError(f"authority.signing_key_passphrase_file: {err}") from None
    try:
        return load_private_key(settings.signing_key, passphrase)
    except KeyFileError as err:
        hint = "; `face-appliance fleet init` creates it" if not settings.signing_key.exists() else ""
        raise FleetError(f"authority.signing_key: {err}{hint}") from None


@dataclass
class Published:
    """What one change published."""

    identity_id: str
    revision: int
    kind: str
    topic: str

    def document(self) -> Dict[str, Any]:
        """The ``--json`` form of the fleet commands."""
        return {"id": self.identity_id, "revision": self.revision, "kind": self.kind, "topic": self.topic}


@dataclass(frozen=True)
class Held:
    """A person of a batch the state holds live already, left as it is (no ``replace``)."""

    identity_id: str
    revision: int


@dataclass(frozen=True)
class Enrolment:
    """One person to publish, photos checked: what ``fleet enroll`` and each roster row give.

    Attributes:
        identity_id: the id to enrol under; ``None``: the live holder of ``external_id``, else a new
            random id.
        crops: ``(112, 112, 3)`` uint8 BGR aligned faces, 0–20 (none: a person enrolled without a
            face, who passes with the cards and PIN of ``policy``; ``fleet enroll --no-face``).
        qualities: their quality scores in [0, 1].
    """

    identity_id: Optional[str]
    name: str
    external_id: Optional[str]
    consent_at: str
    policy: IdentityPolicy
    crops: Tuple[np.ndarray, ...]
    qualities: Tuple[float, ...]


def _with_policy(
    current: IdentityRecord, revision: int, policy: IdentityPolicy, forget_face: bool = False
) -> IdentityRecord:
    """``current`` at ``revision`` with ``policy`` (and without its crops with ``forget_face``)."""
    return IdentityRecord(
        current.id,
        revision,
        current.name,
        current.external_id,
        current.consent_at,
        policy,
        () if forget_face else current.crops,
        () if forget_face else current.qualities,
    )


def card_clash_text(card: str, name: str, holder: Union[str, int], index: Index, names: Sequence[str]) -> str:
    """Why ``card`` cannot be given to ``name``: ``holder`` (a live identity, or the position in
    ``names`` of another person given it too) holds it."""
    if isinstance(holder, int):
        return f"card {card} is given to {printable(name)} and to {printable(names[holder])}: one card, one person"
    entry = index.identities[holder]
    who = f" ({printable(entry.name)})" if entry.name else ""
    return (
        f"card {card} of {printable(name)} is held by identity {holder!r}{who}, r{entry.revision}: remove "
        f"it there first (`face-appliance fleet set {holder} --remove-card {card}`)"
    )


def _enrolled_already(held: Held, badge: Optional[str]) -> str:
    """Why an enrolment is refused: ``held`` is live (found by ``badge``, its external id, when given)."""
    how = f" as the holder of external id {badge!r}" if badge is not None else ""
    return (
        f"identity {held.identity_id!r} is enrolled already{how} (r{held.revision}); pass --replace to "
        "replace its photos and details, or use `fleet set` for its policy"
    )


class Authority:
    """The site's enrolment authority: its configuration, keys and state, and the broker.

    Args:
        config: the authority file.
        signing_key: the authority's Ed25519 private key.
        fleet_key: the site's 32-byte fleet key.
        broker: makes a connected-on-enter :class:`FleetBroker` (tests may replace it).
    """

    def __init__(
        self,
        config: AuthorityFile,
        signing_key: Ed25519PrivateKey,
        fleet_key: bytes,
        broker: Optional[Callable[[], FleetBroker]] = None,
    ) -> None:
        self.config = config
        self.settings = config.authority
        self.site = config.authority.site
        self.prefix = config.authority.prefix
        self.signing_key = signing_key
        self.fleet_key = fleet_key
        public = signing_key.public_key()
        self.key_id = key_id(public)
        self.trusted: Dict[str, Ed25519PublicKey] = {self.key_id: public}
        self.state = AuthorityState(config.authority.state_dir, self.site)
        self._broker = broker or (
            lambda: FleetBroker(config.mqtt, config.client_id(), config.authority.timeout_s)
        )

    @classmethod
    def open(cls, config: AuthorityFile) -> Authority:
        """Load the signing key and the fleet key named by ``config``.

        Raises:
            FleetError: a key is missing or unusable (the message names the file and ``fleet init``).
        """
        return cls(
            config, load_signing_key(config.authority), read_fleet_key(config.authority.fleet_key_file)
        )

    def broker(self) -> FleetBroker:
        """A connection to the site's broker, connected on enter (for what is not a change of the state:
        asking a door, :mod:`.door_learning`)."""
        return self._broker()

    # -- the broker's view ----------------------------------------------------------------------------

    def _broker_manifest(self, broker: FleetBroker) -> Optional[Manifest]:
        """The manifest retained on the broker, verified with this authority's key (``None`` if none)."""
        topic = manifest_topic(self.prefix, self.site)
        broker.subscribe([topic])
        payload = broker.collect(self.settings.broker_wait_s, lambda m: topic in m).get(topic)
        if payload is None:
            return None
        try:
            return open_manifest(payload, self.site, self.trusted)
        except FleetRecordError as err:
            logger.warning("the manifest retained on the broker is not usable (%s); it will be replaced", err)
            return None

    def _catch_up(self, broker: FleetBroker) -> int:
        """Adopt the broker's manifest when newer; the floor for the next revision."""
        manifest = self._broker_manifest(broker)
        if manifest is None:
            return 0
        changed = self.state.adopt(manifest)
        if changed:
            logger.warning(
                "the broker's manifest r%d holds %d change(s) this state lacks (restored from a backup, or "
                "another authority machine): adopted",
                manifest.revision,
                changed,
            )
        return manifest.revision

    def _publish_manifest(self, broker: FleetBroker, revision: int) -> Manifest:
        manifest = self.state.index.manifest(revision)
        payload = seal_manifest(manifest, self.site, self.signing_key)
        self.state.put_manifest(payload)
        self._send(broker, manifest_topic(self.prefix, self.site), payload)
        return manifest

    @contextlib.contextmanager
    def _change(self) -> Iterator[Tuple[FleetBroker, Callable[[], int]]]:
        """Lock the state, connect, adopt the broker's manifest; yields the broker and what allocates
        the change's revision (called once the change is known to be possible)."""
        with self.state.locked(), self._broker() as broker:
            self._refuse_unfinished_rotation()
            floor = self._catch_up(broker)
            self._fill_card_digests()
            yield broker, lambda: self.state.allocate(floor)

    def _key_files(self) -> Tuple[Path, Path, Path]:
        """The fleet key file, the one of the key it replaces (``.previous``) and the one a rotation
        writes first (``.next``)."""
        current = Path(self.settings.fleet_key_file)
        return (
            current,
            current.with_name(current.name + ".previous"),
            current.with_name(current.name + ".next"),
        )

    def _refuse_unfinished_rotation(self) -> None:
        pending = self._key_files()[2]
        if pending.exists():
            raise FleetError(
                f"a fleet key rotation was interrupted ({pending} is there): run `face-appliance fleet "
                "rotate-key` again to finish it before any other change"
            )

    # -- the fleet key -------------------------------------------------------------------------------

    def rotate_fleet_key(self) -> Tuple[int, int]:
        """A new fleet key for the site: every live record and retained tombstone resealed under it (same
        revisions: a door that holds them applies nothing again), kept in the state and published.

        The new key goes to ``fleet_key_file``, the old one to ``fleet_key_file.previous``; every door
        that stays in the site gets both (``fleet.fleet_key_file``, ``fleet.previous_fleet_key_file``),
        and a door that does not — lost, stolen, taken out of service — opens nothing published from
        now on. Crash-safe: the new key is written first as ``.next``, which stays until every record
        is published; running the command again after an interruption (a crash, the broker gone)
        finishes with it, and every other change is refused until then.

        Returns:
            ``(records resealed now, records published)``: fewer resealed when a rotation is finished
            after an interruption.

        Raises:
            FleetError: a record neither in this state nor on the broker, one that opens with none of the
                keys, or the broker failing (run the command again).
        """
        from .records import create_fleet_key, read_previous_fleet_key, reseal_record

        current_file, previous_file, next_file = self._key_files()
        with self.state.locked(), self._broker() as broker:
            self._catch_up(broker)
            resuming = next_file.exists()
            new_key = read_fleet_key(next_file) if resuming else create_fleet_key(next_file)
            previous = read_previous_fleet_key(previous_file) if previous_file.exists() else None
            old_keys = [self.fleet_key, *([previous] if previous is not None else [])]
            index = self.state.index
            ids = sorted(set(index.identities) | set(index.tombstones))
            payloads = self._sealed_records(broker, ids)
            resealed: Dict[str, bytes] = {}
            failed: List[str] = []
            changed = 0
            for identity_id in ids:
                try:
                    resealed[identity_id], was_old = reseal_record(
                        payloads[identity_id], self.site, old_keys, new_key, self.signing_key, self.trusted
                    )
                    changed += was_old
                except (KeyError, FleetRecordError) as err:
                    failed.append(
                        f"{identity_id} ({'not found' if isinstance(err, KeyError) else err.reason})"
                    )
            if failed:
                if not resuming:
                    next_file.unlink()
                raise FleetError(
                    f"the fleet key was not rotated: {len(failed)} record(s) neither in this state nor on the "
                    f"broker, or opening with no key of this site: {', '.join(failed[:10])}"
                )
            for identity_id, payload in resealed.items():  # the state first: it is the intent
                self.state.put_sealed(identity_id, payload)
            for entry in index.identities.values():  # keyed with the fleet key: made again at the next change
                entry.card_digests = None
            self.state.save_index()
            if self.fleet_key != new_key:  # else an interrupted rotation switched the files already
                for path, key in ((previous_file, self.fleet_key), (current_file, new_key)):
                    with atomic_writer(path, mode=0o600) as stream:
                        stream.write(key.hex().encode("ascii") + b"\n")
                self.fleet_key = new_key
            try:
                for identity_id, payload in resealed.items():
                    broker.publish(record_topic(self.prefix, self.site, identity_id), payload)
            except FleetError as err:
                raise FleetError(
                    f"{err}. The rotation is not finished: run `face-appliance fleet rotate-key` again when the "
                    "broker is back"
                ) from None
            next_file.unlink()  # done: the doors may be given the keys
            logger.warning(
                "the fleet key of site %s was rotated: give every door of the site the new %s (and %s as its "
                "previous key)",
                self.site,
                current_file,
                previous_file,
            )
        return changed, len(resealed)

    def forget_doors(self, device_ids: Sequence[str]) -> None:
        """Clear the retained digest of doors taken out of the site (``fleet forget-door``): ``fleet
        status`` no longer lists them. A door that still runs publishes its digest again at its next
        change: revoke its broker credentials first (and rotate the fleet key, :meth:`rotate_fleet_key`).

        Raises:
            FleetError: a device id that is not a topic level, or whose digest the broker does not retain
                (every one named; nothing is cleared).
        """
        bad = [device for device in device_ids if not LEVEL_PATTERN.match(device)]
        if bad:
            raise FleetError(f"not a device id: {', '.join(repr(d[:70]) for d in bad)}; nothing was cleared")
        topics = {device: door_topic(self.prefix, self.site, device) for device in dict.fromkeys(device_ids)}
        with self._broker() as broker:
            broker.subscribe(list(topics.values()))
            retained = broker.collect(
                self.settings.broker_wait_s, lambda m: all(t in m for t in topics.values())
            )
            unknown = [device for device, topic in topics.items() if topic not in retained]
            if unknown:
                raise FleetError(
                    f"no door {', '.join(unknown)} has a digest in site {self.site!r} (see `fleet status`); "
                    "nothing was cleared"
                )
            for device, topic in topics.items():
                broker.publish(topic, b"")  # an empty retained message clears the topic
                logger.info("the digest of door %s was cleared from site %s", device, self.site)

    def _sealed_records(self, broker: FleetBroker, ids: Sequence[str]) -> Dict[str, bytes]:
        """The sealed record or tombstone of each of ``ids``: this state's, else the one the broker
        retains (ids adopted from its manifest)."""
        found = {i: payload for i in ids for payload in [self.state.sealed(i)] if payload is not None}
        lacking = [record_topic(self.prefix, self.site, i) for i in ids if i not in found]
        for start in range(0, len(lacking), 500):
            topics = lacking[start : start + 500]
            broker.subscribe(topics)
            messages = broker.collect(self.settings.broker_wait_s, lambda m, t=topics: all(x in m for x in t))
            found.update({topic.rsplit("/", 1)[1]: messages[topic] for topic in topics if topic in messages})
        return found

    def card_digest(self, card: str) -> str:
        """:func:`card_digest` with this site's fleet key."""
        return card_digest(self.fleet_key, card)

    def _fill_card_digests(self) -> None:
        """Give the live identities whose cards the index does not know (an index older than them)
        their digests, from the sealed records this state keeps; those it lacks (adopted from the
        broker's manifest) stay unknown, and a card they hold is not found."""
        index = self.state.index
        unknown = [i for i, entry in index.identities.items() if entry.card_digests is None]
        filled = 0
        for identity_id in unknown:
            payload = self.state.sealed(identity_id)
            try:
                policy = (
                    None
                    if payload is None
                    else record_policy(payload, self.site, self.fleet_key, self.trusted, identity_id)
                )
            except FleetRecordError as err:
                logger.warning("the sealed record of %s kept here cannot be opened: %s", identity_id, err)
                policy = None
            if policy is not None:
                index.identities[identity_id].card_digests = self._digests(policy.cards)
                filled += 1
        if filled:
            self.state.save_index()
        if len(unknown) > filled:
            logger.warning(
                "the cards of %d identities are not known here (their records are not in this state): a "
                "card one of them holds is not found when given to someone else",
                len(unknown) - filled,
            )

    def _digests(self, cards: Sequence[str]) -> Tuple[str, ...]:
        return tuple(sorted(self.card_digest(card) for card in cards))

    def _refuse_card_clashes(self, people: Sequence[Tuple[Optional[str], str, Sequence[str]]]) -> None:
        """Refuse cards that another live identity, or another of ``people``, holds.

        Args:
            people: per person about to be published, ``(identity id or None, name, cards)``.

        Raises:
            FleetError: every clash, with the holder and the way out; nothing is published.
        """
        index = self.state.index
        clashes = index.card_clashes([(i, cards) for i, _, cards in people], self.card_digest)
        if clashes:
            raise FleetError(
                f"nothing was published to site {self.site!r}: "
                + "; ".join(
                    card_clash_text(card, people[position][1], holder, index, [n for _, n, _ in people])
                    for position, card, holder in clashes[:20]
                )
                + (f"; … and {len(clashes) - 20} more" if len(clashes) > 20 else "")
            )

    def _send(self, broker: FleetBroker, topic: str, payload: bytes) -> None:
        """Publish what the state already holds; a failure says how to finish the change."""
        try:
            broker.publish(topic, payload)
        except FleetError as err:
            raise FleetError(
                f"{err}. The change is in the authority's state: run `face-appliance fleet republish` when "
                "the broker is back"
            ) from None

    # -- changes --------------------------------------------------------------------------------------

    def enroll(self, person: Enrolment, replace: bool = False) -> Published:
        """Publish one identity record, then the manifest.

        Raises:
            FleetError: the person is live already (by id, or by external id without one) and ``replace``
                is not set; the external id is another identity's; the broker fails.
            FleetRecordError: ``invalid``: a field no door would accept.
        """
        (outcome,) = self.enroll_many([person], replace)
        if isinstance(outcome, Held):
            raise FleetError(_enrolled_already(outcome, None if person.identity_id else person.external_id))
        return outcome

    def check_enrollable(
        self,
        identity_id: Optional[str],
        external_id: Optional[str],
        replace: bool,
        name: str = "",
        cards: Sequence[str] = (),
    ) -> None:
        """Refuse before any photo is checked what :meth:`enroll` would refuse, from the state as it is
        now (read without its lock: the change itself checks again).

        Raises:
            FleetError: the person is live already and ``replace`` is not set, the badge is another's,
                or one of ``cards`` is another identity's.
        """
        index = self.state.index
        holder = index.holder(identity_id, external_id, index.by_external_id())
        if holder is not None and not replace:
            held = Held(holder, index.identities[holder].revision)
            raise FleetError(_enrolled_already(held, None if identity_id else external_id))
        self._refuse_card_clashes([(identity_id or holder, name, cards)])

    def enroll_many(self, people: Sequence[Enrolment], replace: bool = False) -> List[Union[Published, Held]]:
        """Publish the records of ``people`` under one lock and one connection, then one manifest.

        The state takes them all before the first is published (one index write), so a broker failing
        half-way leaves the whole batch for ``fleet republish``.

        Returns:
            Per person, in order: what was published, or :class:`Held` for a live one left as it is.

        Raises:
            FleetError: an external id or a card is another identity's (nothing of the batch is
                published); the broker fails.
            FleetRecordError: ``invalid``: a field no door would accept.
        """
        with self._change() as (broker, allocate):
            index = self.state.index
            by_external = index.by_external_id()
            outcomes: List[Union[Held, str]] = []  # held, or the id to publish under
            for person in people:  # every id first: a refused batch uses no revision
                holder = index.holder(person.identity_id, person.external_id, by_external)
                if holder is not None and not replace:
                    outcomes.append(Held(holder, index.identities[holder].revision))
                    continue
                batch_ids = {o for o in outcomes if isinstance(o, str)}
                identity_id = person.identity_id or holder or self._new_identity_id(batch_ids)
                before = index.identities.get(identity_id)
                if before is not None and before.external_id is not None:
                    by_external.pop(before.external_id, None)  # replaced: its old badge is free
                if person.external_id is not None:
                    by_external[person.external_id] = identity_id
                outcomes.append(identity_id)
            self._refuse_card_clashes(
                [
                    (identity_id, person.name, person.policy.cards)
                    for person, identity_id in zip(people, outcomes)
                    if isinstance(identity_id, str)
                ]
            )
            records = [
                IdentityRecord(
                    identity_id,
                    allocate(),
                    person.name,
                    person.external_id,
                    person.consent_at,
                    person.policy,
                    tuple(person.crops),
                    tuple(person.qualities),
                )
                for person, identity_id in zip(people, outcomes)
                if isinstance(identity_id, str)
            ]
            published = iter(self._publish_records(broker, records))
            return [outcome if isinstance(outcome, Held) else next(published) for outcome in outcomes]

    def _new_identity_id(self, taken: AbstractSet[str]) -> str:
        """A random id that neither the index nor ``taken`` (the batch's ids so far) holds."""
        index = self.state.index
        while True:
            identity_id = random_identity_id()
            if not (
                identity_id in index.identities or identity_id in index.tombstones or identity_id in taken
            ):
                return identity_id

    def set_policy(
        self,
        identity_id: str,
        changes: Mapping[str, object],
        forget_face: bool = False,
        pin_hashes: Optional[Mapping[str, str]] = None,
    ) -> Published:
        """Republish a live identity with its policy changed (validity, groups, suspension, cards,
        PINs), and with ``forget_face`` without its crops: consent withdrawn, every door deletes the
        identity's templates and keeps it with its cards and PIN (``fleet set ID --forget-face``).
        ``pin_hashes`` sets ``pin`` / ``duress_pin`` to hashes made at a door (``fleet learn-pin``,
        :mod:`.sealed_pin`), after ``changes``.

        The current record is taken from this state, else from the broker, and opened with the fleet
        key: the photos need not be given again. The record the state keeps, and the one the broker
        retains, are replaced by the new one: the authority holds no crop of a forgotten face.

        Raises:
            FleetError: the id is not live, its record cannot be found or opened, or a card given is
                another identity's.
            PolicyError: a malformed change.
        """
        with self._change() as (broker, allocate):
            current = self._current_record(broker, identity_id)
            policy = current.policy.changed(changes, "")
            if pin_hashes:  # checked as a record's are
                policy = IdentityPolicy.from_document({**policy.document(), **pin_hashes}, "")
            self._refuse_card_clashes([(identity_id, current.name, policy.cards)])
            record = _with_policy(current, allocate(), policy, forget_face)
            (published,) = self._publish_records(broker, [record])
            return published

    def set_policies(self, changes: Sequence[Tuple[str, Mapping[str, object]]]) -> List[Optional[Published]]:
        """:meth:`set_policy` for many identities as one change (one lock, connection, index write and
        manifest): ``(identity id, policy changes)`` each (``fleet enroll-batch --update``).

        Returns:
            Per item, what was published, or ``None`` where the policy is as it was (nothing published).

        Raises:
            FleetError: an id that is not live, a record that cannot be found or opened, or a card
                another identity holds (every clash; nothing of the batch is published).
            PolicyError: a malformed change.
        """
        with self._change() as (broker, allocate):
            updated: List[Tuple[IdentityRecord, IdentityPolicy]] = []
            for identity_id, change in changes:
                current = self._current_record(broker, identity_id)
                updated.append((current, current.policy.changed(change, "")))
            self._refuse_card_clashes([(c.id, c.name, policy.cards) for c, policy in updated])
            records = [
                _with_policy(current, allocate(), policy)
                for current, policy in updated
                if policy != current.policy
            ]
            published = iter(self._publish_records(broker, records))
            return [next(published) if policy != current.policy else None for current, policy in updated]

    def mark_distinct(self, first: str, second: str, distinct: bool = True) -> bool:
        """Mark two live identities as distinct people (twins), so that ``fleet status`` no longer
        lists them as look-alikes; ``distinct=False`` takes the mark back. Nothing is published: the
        doors keep finding the pair, the authority leaves it out. Returns whether it changed.

        Raises:
            FleetError: the same id twice, or (to mark) one of them not live.
        """
        if first == second:
            raise FleetError(f"{first!r} twice: name two identities")
        pair = distinct_pair(first, second)
        with self.state.locked():
            index = self.state.index
            if distinct:
                gone = [i for i in pair if i not in index.identities]
                if gone:
                    raise FleetError(f"not live here: {', '.join(gone)}; only live identities are marked")
                changed = pair not in index.distinct
                index.distinct.add(pair)
            else:
                changed = pair in index.distinct
                index.distinct.discard(pair)
            if changed:
                self.state.save_index()
        return changed

    def remove(self, identity_id: str, removed_at: Optional[str] = None) -> Published:
        """Publish a signed tombstone for a live identity (every door deletes it), then the manifest.

        Raises:
            FleetError: the id is not live here nor in the broker's manifest.
        """
        (published,) = self.remove_many([identity_id], (), removed_at)
        return published

    def remove_many(
        self, identity_ids: Sequence[str], external_ids: Sequence[str] = (), removed_at: Optional[str] = None
    ) -> List[Published]:
        """Publish the tombstones of live identities, named by id or by external id (a leaver's badge),
        as one change: each tombstone, then one manifest. Each identity is removed once, in the order
        named.

        Raises:
            FleetError: one of them is not live here nor in the broker's manifest, or no live identity
                holds an external id (every one is named; nothing is removed).
        """
        with self._change() as (broker, allocate):
            index = self.state.index
            by_external = index.by_external_id()
            problems = [
                f"external id {e!r}: held by no live identity" for e in external_ids if e not in by_external
            ]
            problems += [f"{i!r}: not enrolled" for i in identity_ids if i not in index.identities]
            if problems:
                shown = "; ".join(problems[:20]) + (
                    f"; … and {len(problems) - 20} more" if len(problems) > 20 else ""
                )
                raise FleetError(
                    f"nothing was removed from site {self.site!r}: {shown} (see `fleet list`; external ids "
                    "are kept with keep_names)"
                )
            named = [*identity_ids, *(by_external[e] for e in external_ids)]
            when = removed_at or utc_now()
            return self._publish_records(
                broker, [Tombstone(i, allocate(), when) for i in dict.fromkeys(named)]
            )

    def _publish_records(
        self, broker: FleetBroker, records: Sequence[Union[IdentityRecord, Tombstone]]
    ) -> List[Published]:
        """Seal ``records`` into the state (one index write), publish each, then the manifest at the last
        one's revision (the newest: they were allocated in order). Nothing to publish: nothing sent."""
        if not records:
            return []
        index = self.state.index
        sealed: List[Tuple[Published, bytes]] = []
        for record in records:
            payload = seal_record(record, self.site, self.fleet_key, self.signing_key)
            if isinstance(record, IdentityRecord):
                keep = self.settings.keep_names
                index.identities[record.id] = Entry(
                    record.revision,
                    utc_now(),
                    record.name if keep else None,
                    record.external_id if keep else None,
                    self._digests(record.policy.cards),
                )
                index.tombstones.pop(record.id, None)
                kind = "identity"
            else:
                index.identities.pop(record.id, None)
                index.tombstones[record.id] = Removal(record.revision, record.removed_at)
                kind = "tombstone"
            self.state.put_sealed(record.id, payload)
            topic = record_topic(self.prefix, self.site, record.id)
            sealed.append((Published(record.id, record.revision, kind, topic), payload))
        self.state.save_index()
        for published, payload in sealed:
            self._send(broker, published.topic, payload)
        self._publish_manifest(broker, records[-1].revision)
        for published, _ in sealed:
            logger.info(
                "published the %s of %s at revision %d",
                published.kind,
                published.identity_id,
                published.revision,
            )
        return [published for published, _ in sealed]

    def _current_record(self, broker: FleetBroker, identity_id: str) -> IdentityRecord:
        if identity_id not in self.state.index.identities:
            raise FleetError(f"identity {identity_id!r} is not enrolled in site {self.site!r} (`fleet list`)")
        payload = self.state.sealed(identity_id)
        if payload is None:
            topic = record_topic(self.prefix, self.site, identity_id)
            broker.subscribe([topic])
            payload = broker.collect(self.settings.broker_wait_s, lambda m: topic in m).get(topic)
        if payload is None:
            raise FleetError(f"the record of {identity_id!r} is neither in this state nor on the broker")
        try:
            record = open_record(payload, self.site, self.fleet_key, self.trusted, topic_id=identity_id)
        except FleetRecordError as err:
            raise FleetError(f"the current record of {identity_id!r} cannot be opened: {err}") from None
        if not isinstance(record, IdentityRecord):
            raise FleetError(f"identity {identity_id!r} was removed")
        return record

    def prune(self, now: Optional[datetime] = None) -> List[str]:
        """Clear the tombstones older than ``tombstone_days`` from the broker and the manifest.

        Returns:
            The ids whose tombstones were cleared (none: nothing is published).
        """
        moment = now or datetime.now(timezone.utc)
        limit = timedelta(days=self.settings.tombstone_days)
        with self.state.locked(), self._broker() as broker:
            self._refuse_unfinished_rotation()
            floor = self._catch_up(broker)
            index = self.state.index
            old = sorted(
                identity_id
                for identity_id, removal in index.tombstones.items()
                if moment - parse_instant(removal.removed_at, "removed_at") > limit
            )
            if not old:
                return []
            revision = self.state.allocate(floor)
            for identity_id in old:
                del index.tombstones[identity_id]
                self.state.drop_sealed(identity_id)
            self.state.save_index()
            for identity_id in old:
                self._send(broker, record_topic(self.prefix, self.site, identity_id), b"")
            self._publish_manifest(broker, revision)
        logger.info("cleared %d tombstone(s) older than %d days", len(old), self.settings.tombstone_days)
        return old

    def republish(self) -> Tuple[int, Manifest]:
        """Publish every sealed record this state holds again, and a new manifest (a broker that lost
        its retained messages is restored; doors skip what they hold already).

        Returns:
            ``(records published, the manifest)``.
        """
        with self.state.locked(), self._broker() as broker:
            self._refuse_unfinished_rotation()
            floor = self._catch_up(broker)
            index = self.state.index
            count = 0
            for identity_id in sorted(set(index.identities) | set(index.tombstones)):
                payload = self.state.sealed(identity_id)
                if payload is None:
                    continue  # adopted from the broker's manifest: the broker has it
                broker.publish(record_topic(self.prefix, self.site, identity_id), payload)
                count += 1
            manifest = self._publish_manifest(broker, self.state.allocate(floor))
        return count, manifest

    # -- reading --------------------------------------------------------------------------------------

    def status(self, wait_s: float) -> StatusReport:
        """Every door's retained digest document against the manifest.

        The manifest compared is the newer of this state's and the broker's (verified); a difference
        between the two is noted. Doors' ``{door_prefix}/{device}/availability`` tells who is offline
        (when the broker lets the authority read it).
        """
        doors = doors_filter(self.prefix, self.site)
        manifest_at = manifest_topic(self.prefix, self.site)
        availability_filter = f"{self.settings.door_prefix}/+/availability"
        state_filter = f"{self.settings.door_prefix}/+/state"
        notes: List[str] = []
        with self._broker() as broker:
            granted = broker.subscribe([doors, manifest_at, availability_filter, state_filter])
            if not granted[0]:
                raise FleetError(f"the broker does not let the authority read {doors}")
            if not granted[2]:
                notes.append(f"cannot read {availability_filter}: whether doors are online is unknown")
            if not granted[3]:
                notes.append(f"cannot read {state_filter}: which fleet key each door holds is unknown")
            messages = broker.collect(wait_s)
        on_broker: Optional[Manifest] = None
        if manifest_at in messages:
            try:
                on_broker = open_manifest(messages[manifest_at], self.site, self.trusted)
            except FleetRecordError as err:
                notes.append(f"the broker's manifest is not usable: {err}")
        local_revision = self.state.revision
        index = self.state.index
        local = index.manifest(local_revision) if local_revision else None
        manifest, source = _newest(local, on_broker, notes)
        names = {identity_id: e.name for identity_id, e in index.identities.items() if e.name}
        distinct = index.distinct_live()
        return StatusReport(
            manifest,
            source,
            compare_doors(
                manifest,
                self.site,
                _by_level(messages, doors),
                _availability(messages, self.settings.door_prefix),
                _door_key_ids(messages, self.settings.door_prefix),
                fleet_key_id(self.fleet_key),
            ),
            notes,
            names,
            distinct,
        )


def _newest(
    local: Optional[Manifest], on_broker: Optional[Manifest], notes: List[str]
) -> Tuple[Manifest, str]:
    if on_broker is None and local is None:
        notes.append("nothing published yet")
        return Manifest(0, {}, {}, utc_now()), "none"
    if on_broker is None:
        notes.append("the broker holds no manifest of this site: run `face-appliance fleet republish`")
        return local, "state"  # type: ignore[return-value]
    if local is None or on_broker.revision >= local.revision:
        if local is not None and on_broker.digest != local.digest:
            notes.append(
                f"the broker's manifest r{on_broker.revision} differs from this state's: another authority "
                "machine, or a restored state (the next change adopts it)"
            )
        return on_broker, "broker"
    if on_broker.digest != local.digest:
        notes.append(
            f"the broker's manifest r{on_broker.revision} is older than this state's r{local.revision}: "
            "run `face-appliance fleet republish`"
        )
    return local, "state"


def _by_level(messages: Messages, filter_: str) -> Dict[str, bytes]:
    found: Dict[str, bytes] = {}
    for topic, payload in messages.items():
        level = topic_level(topic, filter_)
        if level is not None:
            found[level] = payload
    return found


def _door_key_ids(messages: Messages, door_prefix: str) -> Dict[str, str]:
    """Device id → the fleet key id of its retained ``{door_prefix}/{device}/state`` (``fleet.key_id``);
    a document that is not one, or too large, says nothing."""
    found: Dict[str, str] = {}
    for device, payload in _door_documents(messages, door_prefix, "state").items():
        if len(payload) > MAX_STATE_DOCUMENT_BYTES:
            continue
        try:
            key = json.loads(payload.decode("utf-8"))["fleet"]["key_id"]
        except (UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
            continue
        if isinstance(key, str) and re.fullmatch(r"[0-9a-f]{16}", key):
            found[device] = key
    return found


def _availability(messages: Messages, door_prefix: str) -> Dict[str, str]:
    """Device id → its ``{door_prefix}/{device}/availability`` payload (``online`` / ``offline``)."""
    return {
        device: payload.decode("utf-8", "replace").strip()[:16]
        for device, payload in _door_documents(messages, door_prefix, "availability").items()
    }


def _door_documents(messages: Messages, door_prefix: str, name: str) -> Dict[str, bytes]:
    """Device id → the payload of its ``{door_prefix}/{device}/{name}`` among ``messages``."""
    head, tail = f"{door_prefix}/", f"/{name}"
    found: Dict[str, bytes] = {}
    for topic, payload in messages.items():
        device = topic[len(head) : -len(tail)] if topic.startswith(head) and topic.endswith(tail) else ""
        if device and "/" not in device:
            found[device] = payload
    return found


__all__ = [
    "Authority",
    "AuthorityState",
    "DoorStatus",
    "Enrolment",
    "Entry",
    "Held",
    "Index",
    "Published",
    "Removal",
    "SiteLookAlike",
    "StatusReport",
    "compare_doors",
    "distinct_pair",
    "load_signing_key",
    "random_identity_id",
]
