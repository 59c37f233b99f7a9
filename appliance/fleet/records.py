"""The fleet's record format: what the enrolment authority publishes and every door verifies and applies.

Pure (no MQTT, no models): sealing and opening records, tombstones and the manifest, the topics, the
digest both sides compute, the door's digest document, and the site's fleet key file.

Topics (``prefix`` defaults to ``face-appliance-fleet``; ``site`` and ids are single topic levels)::

    {prefix}/{site}/records/{id}     retained, QoS 1: the identity's record, or its tombstone
    {prefix}/{site}/manifest         retained, QoS 1: the signed list of live ids and tombstones
    {prefix}/{site}/doors/{device}   retained: each door's digest document (what it applied)

Only the authority writes records and the manifest; doors read them and write their own digest
document. Identity ids are opaque (the authority draws ``p-`` and 12 random hex digits unless told
otherwise) so that a topic names nobody.

**Record envelope** (UTF-8 JSON, at most :data:`MAX_RECORD_BYTES`)::

    {"format": 1, "site", "kind": "identity" | "tombstone", "id", "revision", "key_id",
     "nonce": base64 (12 bytes), "ciphertext": base64, "signature": base64 (64 bytes)}

* ``signature`` is Ed25519 (the authority's key, named by ``key_id`` as in
  :func:`appliance.updates.keys.key_id`) over ``b"face-appliance fleet record v1\\0"`` followed by the
  canonical JSON (sorted keys, no spaces, ASCII) of every other field. It is verified *before*
  anything is decrypted.
* ``ciphertext`` is AES-256-GCM under the site's fleet key, with the canonical JSON of the header
  (``format, site, kind, id, revision, key_id``) as associated data: a ciphertext moved to another id,
  revision or site does not open even with a valid signature.
* The plaintext of an identity is ``{"name", "external_id", "consent_at", "policy", "crops": [base64
  PNG, 112×112], "qualities": [number]}`` (0–:data:`MAX_CROPS` aligned crops, the door embeds them
  with its own embedder); of a tombstone ``{"removed_at"}``. A name or a face is never in the clear.
  Unknown keys are refused: a new field is a new format, never silently ignored by an older door.
* An identity with no crop (``"crops": [], "qualities": []``) has no face: it passes with the cards
  and PIN of its policy only. A door applying it holds no template of it, and one that held some (a
  record going from N crops to 0: consent withdrawn) deletes them for real. A door older than that
  refuses such a record as ``invalid`` and keeps what it applied before — its templates too — so
  update every door of the site before publishing one (``fleet status`` names the doors that refused).

**Manifest** (signed, not encrypted: its ids are opaque)::

    {"format": 1, "site", "kind": "manifest", "revision", "key_id",
     "body": canonical JSON of {"entries": {id: revision}, "tombstones": {id: revision},
                                "published_at"},
     "signature": Ed25519 over b"face-appliance fleet manifest v1\\0" ‖ canonical JSON of the rest}

**Convergence.** Revisions come from one counter of the authority and only grow; a door applies a
record or tombstone only when its revision is above the one it holds for that id. Tombstones stay
retained for the authority's ``tombstone_days`` (30 by default) and are then cleared (``fleet
prune``). A door offline longer than that misses the tombstone but not the removal: the manifest
lists the live ids, and a door removes every fleet identity that a newer manifest does not list.
Each door publishes ``fleet_digest`` of the ``(id, revision)`` pairs it holds; ``fleet status``
compares it with the manifest's.

**Door digest document** (:func:`door_document`, :func:`parse_door_document`)::

    {"device_id", "site", "manifest_revision": int | null, "applied": int,
     "digest": fleet_digest(applied entries), "refused": {"count": int,
     "last": {"id", "reason", "at"} | null}, "ts"}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engines.errors import FileReadError
from engines.files import read_bounded, write_new_file

from ..access.errors import PolicyError
from ..access.policy import IdentityPolicy, parse_instant
from ..gallery.store import IDENTITY_ID_PATTERN
from ..gallery.text import MAX_EXTERNAL_ID, MAX_NAME, printable, text_problem
from ..updates.keys import KEY_ID_HEX, key_id
from ..vision.image import image_dimensions
from .errors import (
    BAD_SIGNATURE,
    DECRYPT_FAILED,
    INVALID,
    MALFORMED,
    TOO_LARGE,
    UNTRUSTED_KEY,
    WRONG_ID,
    WRONG_SITE,
    FleetError,
    FleetRecordError,
)

logger = logging.getLogger(__name__)

RECORD_FORMAT = 1
#: Largest record payload accepted (20 crops of ~30 KB as base64 need about 1 MiB).
MAX_RECORD_BYTES = 4 * 2**20
#: Largest manifest payload (about 30 bytes an identity: some 500 000 identities).
MAX_MANIFEST_BYTES = 16 * 2**20
#: Largest door digest document.
MAX_DOOR_DOCUMENT_BYTES = 64 * 1024
#: Look-alike pairs a door's digest document lists, at most (the best scores; it counts them all).
MAX_LOOK_ALIKES_LISTED = 20
#: Aligned crops one identity record carries, at most.
MAX_CROPS = 20
#: Largest PNG of one 112×112 crop (its raw pixels are 37 632 bytes).
MAX_CROP_PNG_BYTES = 256 * 1024
#: Crop side in pixels (the aligned face the embedders take).
CROP_SIDE = 112
#: Revisions stay exact in every JSON reader.
MAX_REVISION = 2**53 - 1
#: A site, a device id: one topic level of letters, digits, ``_ . -``.
LEVEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
#: The fleet key: 32 bytes, written as 64 hex digits on one line.
FLEET_KEY_BYTES = 32
MAX_FLEET_KEY_FILE_BYTES = 4 * 1024
NONCE_BYTES = 12
SIGNATURE_BYTES = 64

IDENTITY = "identity"
TOMBSTONE = "tombstone"
MANIFEST = "manifest"

_RECORD_DOMAIN = b"face-appliance fleet record v1\0"
_MANIFEST_DOMAIN = b"face-appliance fleet manifest v1\0"
_ENVELOPE_KEYS = frozenset(
    ("format", "site", "kind", "id", "revision", "key_id", "nonce", "ciphertext", "signature")
)
_HEADER_KEYS = ("format", "site", "kind", "id", "revision", "key_id")
_MANIFEST_KEYS = frozenset(("format", "site", "kind", "revision", "key_id", "body", "signature"))
_IDENTITY_KEYS = frozenset(("name", "external_id", "consent_at", "policy", "crops", "qualities"))
_TOMBSTONE_KEYS = frozenset(("removed_at",))
_DOOR_KEYS = frozenset(("device_id", "site", "manifest_revision", "applied", "digest", "refused", "ts"))
_KEY_ID = re.compile(rf"^[0-9a-f]{{{KEY_ID_HEX}}}\Z")
_DIGEST = re.compile(r"^[0-9a-f]{64}\Z")
_HEX_KEY = re.compile(rf"^[0-9a-fA-F]{{{2 * FLEET_KEY_BYTES}}}\Z")


# -- the records ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityRecord:
    """One identity as the authority publishes it.

    Attributes:
        id: the identity id (:data:`appliance.gallery.store.IDENTITY_ID_PATTERN`), opaque.
        revision: the authority's revision when published (1 to :data:`MAX_REVISION`).
        name, external_id: the person's name and an id in another system (e.g. a badge number).
        consent_at: when consent was given, RFC 3339.
        policy: validity, suspension, groups.
        crops: 0–:data:`MAX_CROPS` aligned faces, each ``(112, 112, 3)`` uint8 BGR (none: an
            identity without a face, card and PIN only).
        qualities: one enrolment quality score per crop, in [0, 1].
    """

    id: str
    revision: int
    name: str
    external_id: Optional[str]
    consent_at: str
    policy: IdentityPolicy
    crops: Tuple[np.ndarray, ...] = field(compare=False, repr=False)
    qualities: Tuple[float, ...]


@dataclass(frozen=True)
class Tombstone:
    """The removal of an identity: every door deletes it for real."""

    id: str
    revision: int
    removed_at: str


@dataclass(frozen=True)
class Manifest:
    """The site's live identities and retained tombstones, signed by the authority.

    Attributes:
        revision: the authority's revision when published (at least every entry's).
        entries: live identity id → its record's revision (tombstoned ids are absent).
        tombstones: id → tombstone revision, for the tombstones still retained.
        published_at: RFC 3339.
    """

    revision: int
    entries: Mapping[str, int]
    tombstones: Mapping[str, int]
    published_at: str

    @property
    def digest(self) -> str:
        """:func:`fleet_digest` of :attr:`entries`: what a door in step publishes."""
        return fleet_digest(self.entries)


def fleet_key_id(fleet_key: bytes) -> str:
    """16 hex digits that name a fleet key without giving it away: which key a door holds (its
    ``…/state``), told apart from the site's by ``fleet status`` after ``fleet rotate-key``."""
    return hashlib.sha256(b"face-appliance fleet key id v1\x00" + fleet_key).hexdigest()[:16]


def fleet_digest(entries: Mapping[str, int]) -> str:
    """sha256 (hex) over the lines ``f"{id}:{revision}\\n"`` sorted by id; ``{}`` gives sha256 of nothing."""
    digest = hashlib.sha256()
    for identity_id in sorted(entries):
        digest.update(f"{identity_id}:{int(entries[identity_id])}\n".encode())
    return digest.hexdigest()


# -- topics -----------------------------------------------------------------------------------------------


def record_topic(prefix: str, site: str, identity_id: str) -> str:
    """Where the record (or tombstone) of ``identity_id`` is retained."""
    return f"{prefix}/{site}/records/{identity_id}"


def records_filter(prefix: str, site: str) -> str:
    """Every record topic of the site."""
    return f"{prefix}/{site}/records/+"


def manifest_topic(prefix: str, site: str) -> str:
    """Where the site's manifest is retained."""
    return f"{prefix}/{site}/manifest"


def door_topic(prefix: str, site: str, device_id: str) -> str:
    """Where door ``device_id`` retains its digest document."""
    return f"{prefix}/{site}/doors/{device_id}"


def doors_filter(prefix: str, site: str) -> str:
    """Every door's digest document of the site."""
    return f"{prefix}/{site}/doors/+"


def topic_level(topic: str, filter_: str) -> Optional[str]:
    """The level a ``…/+`` filter's wildcard matched in ``topic``, or ``None`` when it does not match.

    ``topic_level("f/hq/records/p-1", records_filter("f", "hq")) == "p-1"``.
    """
    head = filter_[: -len("+")]
    if not filter_.endswith("/+") or not topic.startswith(head):
        return None
    level = topic[len(head) :]
    return level if level and "/" not in level else None


# -- canonical bytes --------------------------------------------------------------------------------------


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _refuse(reason: str, message: str) -> FleetRecordError:
    return FleetRecordError(reason, message)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    document: Dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"key {key[:40]!r} appears twice")
        document[key] = value
    return document


def _json(data: Union[bytes, str], reason: str, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN or Infinity; any failure is ``reason``."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _refuse(reason, f"the {what} is not valid JSON ({str(err)[:120]})") from None


def _decode_b64(value: Any, name: str, limit: int, reason: str = MALFORMED) -> bytes:
    if not isinstance(value, str) or not value or len(value) > limit * 4 // 3 + 4:
        raise _refuse(reason, f"{name}: expected base64 of at most {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(reason, f"{name}: not base64") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _revision(value: Any, name: str, reason: str) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_REVISION:
        raise _refuse(reason, f"{name}: expected an integer from 1 to {MAX_REVISION}")
    return int(value)


def _level(value: Any, name: str, reason: str) -> str:
    if not isinstance(value, str) or not LEVEL_PATTERN.match(value):
        raise _refuse(reason, f"{name} {str(value)[:70]!r} is not a topic level (letters, digits, _ . -)")
    return value


def _identity_id(value: Any, name: str, reason: str) -> str:
    if not isinstance(value, str) or not IDENTITY_ID_PATTERN.match(value):
        raise _refuse(reason, f"{name} {printable(str(value)[:70])!r} is not an allowed identity id")
    return value


def _instant(value: Any, name: str, reason: str = INVALID) -> str:
    try:
        parse_instant(value, name)
    except PolicyError as err:
        raise _refuse(reason, str(err)) from None
    return str(value)


def _person_text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise _refuse(INVALID, f"{what}: expected a text")
    problem = text_problem(value, what, limit)
    if problem is not None:
        raise _refuse(INVALID, problem)
    return value


def _open_envelope(payload: Any, limit: int, keys: FrozenSet[str], what: str) -> Dict[str, Any]:
    """The JSON object of a payload of at most ``limit`` bytes with exactly ``keys`` and this format."""
    if not isinstance(payload, (bytes, bytearray)):
        raise _refuse(MALFORMED, f"expected bytes, got {type(payload).__name__}")
    if len(payload) > limit:
        raise _refuse(TOO_LARGE, f"{len(payload)} bytes is more than the {limit} accepted")
    envelope = _json(bytes(payload), MALFORMED, what)
    if not isinstance(envelope, dict) or set(envelope) != keys:
        found = sorted(map(str, envelope))[:12] if isinstance(envelope, dict) else type(envelope).__name__
        raise _refuse(MALFORMED, f"{what} holds exactly {sorted(keys)}, found {found}")
    if not _is_int(envelope["format"]) or envelope["format"] != RECORD_FORMAT:
        raise _refuse(MALFORMED, f"format {str(envelope['format'])[:20]!r} is not {RECORD_FORMAT}")
    return envelope


def _trusted_key(key_id_value: Any, trusted: Mapping[str, Ed25519PublicKey]) -> Tuple[str, Ed25519PublicKey]:
    if not isinstance(key_id_value, str) or not _KEY_ID.match(key_id_value):
        raise _refuse(MALFORMED, f"key_id: expected {KEY_ID_HEX} lowercase hex digits")
    public = trusted.get(key_id_value)
    if public is None:
        raise _refuse(UNTRUSTED_KEY, f"signed with key {key_id_value}, which is not a trusted authority key")
    return key_id_value, public


def _verify(public: Ed25519PublicKey, signature: bytes, domain: bytes, signed: Mapping[str, Any]) -> None:
    try:
        public.verify(signature, domain + _canonical(signed))
    except InvalidSignature:
        raise _refuse(
            BAD_SIGNATURE, "the signature does not verify (forged, or a field was altered)"
        ) from None


def fleet_aead(fleet_key: bytes) -> AESGCM:
    """AES-256-GCM under the site's fleet key (records, and the PIN hashes of :mod:`.sealed_pin`).

    Raises:
        FleetError: the key is not 32 bytes.
    """
    if not isinstance(fleet_key, bytes) or len(fleet_key) != FLEET_KEY_BYTES:
        raise FleetError(f"the fleet key must be {FLEET_KEY_BYTES} bytes")
    return AESGCM(fleet_key)


# -- crops ------------------------------------------------------------------------------------------------


def _check_crop(crop: Any, where: str) -> np.ndarray:
    if not isinstance(crop, np.ndarray) or crop.shape != (CROP_SIDE, CROP_SIDE, 3) or crop.dtype != np.uint8:
        shape = getattr(crop, "shape", None)
        raise _refuse(INVALID, f"{where}: expected a (112, 112, 3) uint8 image, got {shape}")
    return crop


def _encode_crop(crop: np.ndarray, where: str) -> str:
    ok, png = cv2.imencode(".png", np.ascontiguousarray(_check_crop(crop, where)))
    if not ok:
        raise _refuse(INVALID, f"{where}: cannot be encoded as PNG")
    return _b64(png.tobytes())


def _decode_crop(value: Any, where: str) -> np.ndarray:
    png = _decode_b64(value, where, MAX_CROP_PNG_BYTES, INVALID)
    # The size is read from the header first: a crop declaring 30 000 × 30 000 pixels (a
    # decompression bomb of a few kilobytes) is refused without being decoded.
    if image_dimensions(png) != ("PNG", (CROP_SIDE, CROP_SIDE)):
        raise _refuse(INVALID, f"{where}: not a {CROP_SIDE}×{CROP_SIDE} PNG image")
    try:
        crop = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        crop = None
    if crop is None or crop.shape != (CROP_SIDE, CROP_SIDE, 3) or crop.dtype != np.uint8:
        raise _refuse(INVALID, f"{where}: the PNG does not decode to a {CROP_SIDE}×{CROP_SIDE} image")
    return np.ascontiguousarray(crop)


def _qualities(values: Any, count: int) -> Tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or len(values) != count:
        raise _refuse(INVALID, f"qualities: expected {count} numbers, one per crop")
    checked = []
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _refuse(INVALID, f"qualities[{position}]: expected a finite number")
        if not 0.0 <= float(value) <= 1.0:
            raise _refuse(INVALID, f"qualities[{position}]: {value} is outside [0, 1]")
        checked.append(float(value))
    return tuple(checked)


# -- identity and tombstone plaintexts --------------------------------------------------------------------


def _identity_plaintext(record: IdentityRecord) -> Dict[str, Any]:
    """The checked plaintext of ``record`` (what a door will accept, or :class:`FleetRecordError`)."""
    crops = record.crops
    if not isinstance(crops, (list, tuple)) or len(crops) > MAX_CROPS:
        raise _refuse(INVALID, f"crops: expected 0–{MAX_CROPS} aligned crops")
    external_id = record.external_id
    if not isinstance(record.policy, IdentityPolicy):
        raise _refuse(INVALID, "policy: expected an IdentityPolicy")
    return {
        "name": _person_text(record.name, "name", MAX_NAME),
        "external_id": None
        if external_id is None
        else _person_text(external_id, "external id", MAX_EXTERNAL_ID),
        "consent_at": _instant(record.consent_at, "consent_at"),
        "policy": record.policy.document(),
        "crops": [_encode_crop(crop, f"crops[{i}]") for i, crop in enumerate(crops)],
        "qualities": list(_qualities(record.qualities, len(crops))),
    }


def _parse_identity(document: Any, identity_id: str, revision: int) -> IdentityRecord:
    if not isinstance(document, dict) or set(document) != _IDENTITY_KEYS:
        keys = sorted(map(str, document)) if isinstance(document, dict) else type(document).__name__
        raise _refuse(INVALID, f"an identity holds exactly {sorted(_IDENTITY_KEYS)}, found {keys}")
    crops = document["crops"]
    if not isinstance(crops, list) or len(crops) > MAX_CROPS:
        raise _refuse(INVALID, f"crops: expected a list of 0–{MAX_CROPS} aligned crops")
    qualities = _qualities(document["qualities"], len(crops))
    name = _person_text(document["name"], "name", MAX_NAME)
    external_id = document["external_id"]
    if external_id is not None:
        external_id = _person_text(external_id, "external id", MAX_EXTERNAL_ID)
    consent_at = _instant(document["consent_at"], "consent_at")
    policy = document["policy"]
    try:
        if not isinstance(policy, dict):
            raise PolicyError("policy: expected an object")
        parsed_policy = IdentityPolicy.from_document(policy, "policy")
    except PolicyError as err:
        raise _refuse(INVALID, str(err)) from None
    decoded = tuple(_decode_crop(crop, f"crops[{i}]") for i, crop in enumerate(crops))
    return IdentityRecord(
        identity_id, revision, name, external_id, consent_at, parsed_policy, decoded, qualities
    )


def _parse_tombstone(document: Any, identity_id: str, revision: int) -> Tombstone:
    if not isinstance(document, dict) or set(document) != _TOMBSTONE_KEYS:
        raise _refuse(INVALID, "a tombstone holds exactly ['removed_at']")
    return Tombstone(identity_id, revision, _instant(document["removed_at"], "removed_at"))


# -- records ----------------------------------------------------------------------------------------------


def seal_record(
    record: Union[IdentityRecord, Tombstone],
    site: str,
    fleet_key: bytes,
    signing_key: Ed25519PrivateKey,
) -> bytes:
    """Encrypt ``record`` under the fleet key and sign it (see the module docstring).

    Returns:
        The UTF-8 JSON envelope to retain on :func:`record_topic`.

    Raises:
        FleetRecordError: ``invalid`` — a field a door would refuse (a name with control characters,
            a crop that is not ``(112, 112, 3)`` uint8, too many crops, a bad revision or id);
            ``too_large`` — the sealed record is over :data:`MAX_RECORD_BYTES`.
        FleetError: the fleet key is not 32 bytes.
    """
    aead = fleet_aead(fleet_key)
    _level(site, "site", INVALID)
    identity_id = _identity_id(record.id, "id", INVALID)
    revision = _revision(record.revision, "revision", INVALID)
    if isinstance(record, IdentityRecord):
        kind, plaintext = IDENTITY, _identity_plaintext(record)
    elif isinstance(record, Tombstone):
        kind, plaintext = TOMBSTONE, {"removed_at": _instant(record.removed_at, "removed_at")}
    else:
        raise TypeError(f"cannot seal a {type(record).__name__}")
    header: Dict[str, Any] = {
        "format": RECORD_FORMAT,
        "site": site,
        "kind": kind,
        "id": identity_id,
        "revision": revision,
        "key_id": key_id(signing_key.public_key()),
    }
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = aead.encrypt(nonce, _canonical(plaintext), _RECORD_DOMAIN + _canonical(header))
    envelope: Dict[str, Any] = {**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    envelope["signature"] = _b64(signing_key.sign(_RECORD_DOMAIN + _canonical(envelope)))
    payload = json.dumps(envelope, separators=(",", ":")).encode("ascii")
    if len(payload) > MAX_RECORD_BYTES:
        raise _refuse(
            TOO_LARGE, f"the sealed record is {len(payload)} bytes, more than the {MAX_RECORD_BYTES} accepted"
        )
    return payload


def open_record(
    payload: bytes,
    site: str,
    fleet_key: bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    topic_id: Optional[str] = None,
    previous_key: Optional[bytes] = None,
) -> Union[IdentityRecord, Tombstone]:
    """Verify, decrypt and validate a record envelope.

    Checks, in this order: the size, the envelope's form, the signing key is trusted, the signature
    (before any decryption), the site, the id against the topic's, the decryption (the header is the
    associated data), every field of the plaintext (names, policy, crops from their PNG header first).

    Args:
        payload: the retained message's bytes.
        site: this door's site.
        fleet_key: the site's 32-byte fleet key.
        trusted: the authority keys accepted, by key id (:func:`appliance.updates.keys.load_trusted_keys`).
        topic_id: the id the record was published under (the last level of its topic); a record
            published on another id's topic is refused with ``wrong_id``.
        previous_key: the fleet key before the last rotation (``fleet rotate-key``): a record that does
            not open with ``fleet_key`` is tried with it.

    Raises:
        FleetRecordError: with its ``reason``; no other exception for any ``payload``.
        FleetError: a fleet key is not 32 bytes (a configuration problem, not the record's).
    """
    envelope, plaintext, _ = _open_record_envelope(
        payload, site, (fleet_key, previous_key), trusted, topic_id
    )
    document = _json(plaintext, INVALID, "decrypted record")
    if envelope["kind"] == IDENTITY:
        return _parse_identity(document, envelope["id"], envelope["revision"])
    return _parse_tombstone(document, envelope["id"], envelope["revision"])


def record_policy(
    payload: bytes, site: str, fleet_key: bytes, trusted: Mapping[str, Ed25519PublicKey], topic_id: str
) -> Optional[IdentityPolicy]:
    """The access policy a record gives (``None`` for a tombstone), verified and decrypted as
    :func:`open_record` does but without decoding its crops (about half its cost: 9.1 ms against
    16.6 ms for a record of 20 crops, 0.86 MB, on a 2-vCPU AMD EPYC VM).

    Raises:
        FleetRecordError: as :func:`open_record`, or a policy a door would refuse (``invalid``).
    """
    envelope, plaintext, _ = _open_record_envelope(payload, site, (fleet_key,), trusted, topic_id)
    if envelope["kind"] != IDENTITY:
        return None
    document = _json(plaintext, INVALID, "decrypted record")
    try:
        return IdentityPolicy.from_document(document["policy"], "policy")
    except (KeyError, TypeError, PolicyError) as err:
        raise _refuse(INVALID, f"policy: {err}") from None


def reseal_record(
    payload: bytes,
    site: str,
    old_keys: Sequence[bytes],
    fleet_key: bytes,
    signing_key: Ed25519PrivateKey,
    trusted: Mapping[str, Ed25519PublicKey],
) -> Tuple[bytes, bool]:
    """A sealed record under ``fleet_key`` (``fleet rotate-key``): the same header — id, revision —
    and plaintext, a new nonce, signed again. The plaintext is not parsed (no crop decoded or
    encoded): 17.8 ms for a record of 20 crops (0.86 MB) on a 2-vCPU AMD EPYC VM, against 21.1 ms to
    seal it anew; the time goes to the megabyte's base64, JSON and AES-GCM.

    Args:
        old_keys: the keys it may be sealed under now, tried after ``fleet_key``.

    Returns:
        ``(the payload, whether it changed)``: one that opens with ``fleet_key`` already is returned as
        it is.

    Raises:
        FleetRecordError: not a record of ``site`` signed by a trusted key that opens with one of the keys.
    """
    envelope, plaintext, opened_with = _open_record_envelope(
        payload, site, (fleet_key, *old_keys), trusted, None
    )
    if opened_with == 0:
        return payload, False
    header: Dict[str, Any] = {
        **{key: envelope[key] for key in _HEADER_KEYS},
        "key_id": key_id(signing_key.public_key()),
    }
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = fleet_aead(fleet_key).encrypt(nonce, plaintext, _RECORD_DOMAIN + _canonical(header))
    resealed: Dict[str, Any] = {**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    resealed["signature"] = _b64(signing_key.sign(_RECORD_DOMAIN + _canonical(resealed)))
    return json.dumps(resealed, separators=(",", ":")).encode("ascii"), True


def _open_record_envelope(
    payload: bytes,
    site: str,
    fleet_keys: Sequence[Optional[bytes]],
    trusted: Mapping[str, Ed25519PublicKey],
    topic_id: Optional[str],
) -> Tuple[Dict[str, Any], bytes, int]:
    """Verify a record envelope and decrypt it: ``(envelope, plaintext bytes, index in fleet_keys of
    the key that opened it)``; a ``None`` key is skipped (see :func:`open_record`)."""
    aeads = [(index, fleet_aead(key)) for index, key in enumerate(fleet_keys) if key is not None]
    envelope = _open_envelope(payload, MAX_RECORD_BYTES, _ENVELOPE_KEYS, "a record envelope")
    kind = envelope["kind"]
    if kind not in (IDENTITY, TOMBSTONE):
        raise _refuse(MALFORMED, f"kind {str(kind)[:20]!r} is not identity or tombstone")
    record_site = _level(envelope["site"], "site", MALFORMED)
    identity_id = _identity_id(envelope["id"], "id", MALFORMED)
    _revision(envelope["revision"], "revision", MALFORMED)
    nonce = _decode_b64(envelope["nonce"], "nonce", NONCE_BYTES)
    ciphertext = _decode_b64(envelope["ciphertext"], "ciphertext", MAX_RECORD_BYTES)
    signature = _decode_b64(envelope["signature"], "signature", SIGNATURE_BYTES)
    if len(nonce) != NONCE_BYTES or len(signature) != SIGNATURE_BYTES:
        raise _refuse(MALFORMED, f"nonce or signature: expected {NONCE_BYTES} and {SIGNATURE_BYTES} bytes")
    _, public = _trusted_key(envelope["key_id"], trusted)
    signed = {key: value for key, value in envelope.items() if key != "signature"}
    _verify(public, signature, _RECORD_DOMAIN, signed)
    if record_site != site:
        raise _refuse(WRONG_SITE, f"a record of site {record_site!r}, not of {site!r}")
    if topic_id is not None and topic_id != identity_id:
        raise _refuse(
            WRONG_ID,
            f"the record of {identity_id!r} was published on the topic of {printable(str(topic_id)[:70])!r}",
        )
    associated = _RECORD_DOMAIN + _canonical({key: envelope[key] for key in _HEADER_KEYS})
    for index, aead in aeads:
        try:
            return envelope, aead.decrypt(nonce, ciphertext, associated), index
        except InvalidTag:
            continue
    raise _refuse(
        DECRYPT_FAILED,
        "the ciphertext does not open with this site's fleet key and this header (sealed under another "
        "site's key, or a newer one this door has not been given: fleet rotate-key)",
    )


# -- the manifest -----------------------------------------------------------------------------------------


def _revisions(value: Any, name: str, ceiling: int) -> Dict[str, int]:
    if not isinstance(value, Mapping):
        raise _refuse(INVALID, f"{name}: expected an object of id → revision")
    checked: Dict[str, int] = {}
    for identity_id, revision in value.items():
        checked[_identity_id(identity_id, f"{name} id", INVALID)] = _revision(
            revision, f"{name}[{identity_id}]", INVALID
        )
        if revision > ceiling:
            raise _refuse(
                INVALID, f"{name}[{identity_id}]: revision {revision} is above the manifest's {ceiling}"
            )
    return checked


def _manifest_body(manifest: Manifest) -> Dict[str, Any]:
    revision = _revision(manifest.revision, "revision", INVALID)
    entries = _revisions(manifest.entries, "entries", revision)
    tombstones = _revisions(manifest.tombstones, "tombstones", revision)
    both = set(entries) & set(tombstones)
    if both:
        raise _refuse(INVALID, f"{len(both)} id(s) are both live and tombstoned, e.g. {sorted(both)[0]!r}")
    published_at = _instant(manifest.published_at, "published_at")
    return {"entries": entries, "tombstones": tombstones, "published_at": published_at}


def seal_manifest(manifest: Manifest, site: str, signing_key: Ed25519PrivateKey) -> bytes:
    """Sign ``manifest`` for ``site`` (not encrypted: the ids are opaque).

    Raises:
        FleetRecordError: ``invalid`` (an id or a revision a door would refuse, an entry above the
            manifest's revision, an id both live and tombstoned) or ``too_large``.
    """
    _level(site, "site", INVALID)
    body = _manifest_body(manifest)
    envelope: Dict[str, Any] = {
        "format": RECORD_FORMAT,
        "site": site,
        "kind": MANIFEST,
        "revision": int(manifest.revision),
        "key_id": key_id(signing_key.public_key()),
        "body": _canonical(body).decode("ascii"),
    }
    envelope["signature"] = _b64(signing_key.sign(_MANIFEST_DOMAIN + _canonical(envelope)))
    payload = json.dumps(envelope, separators=(",", ":")).encode("ascii")
    if len(payload) > MAX_MANIFEST_BYTES:
        raise _refuse(TOO_LARGE, f"the manifest is {len(payload)} bytes, more than {MAX_MANIFEST_BYTES}")
    return payload


def open_manifest(payload: bytes, site: str, trusted: Mapping[str, Ed25519PublicKey]) -> Manifest:
    """Verify and validate a manifest.

    Raises:
        FleetRecordError: ``too_large``, ``malformed``, ``untrusted_key``, ``bad_signature``,
            ``wrong_site`` or ``invalid``; no other exception for any ``payload``.
    """
    envelope = _open_envelope(payload, MAX_MANIFEST_BYTES, _MANIFEST_KEYS, "a manifest")
    if envelope["kind"] != MANIFEST:
        raise _refuse(MALFORMED, f"kind {str(envelope['kind'])[:20]!r} is not manifest")
    manifest_site = _level(envelope["site"], "site", MALFORMED)
    revision = _revision(envelope["revision"], "revision", MALFORMED)
    if not isinstance(envelope["body"], str):
        raise _refuse(MALFORMED, "body: expected a JSON text")
    signature = _decode_b64(envelope["signature"], "signature", SIGNATURE_BYTES)
    if len(signature) != SIGNATURE_BYTES:
        raise _refuse(MALFORMED, f"signature: expected {SIGNATURE_BYTES} bytes")
    _, public = _trusted_key(envelope["key_id"], trusted)
    _verify(public, signature, _MANIFEST_DOMAIN, {k: v for k, v in envelope.items() if k != "signature"})
    if manifest_site != site:
        raise _refuse(WRONG_SITE, f"the manifest of site {manifest_site!r}, not of {site!r}")
    body = _json(envelope["body"], INVALID, "manifest body")
    if not isinstance(body, dict) or set(body) != {"entries", "tombstones", "published_at"}:
        raise _refuse(INVALID, "the manifest body holds exactly entries, tombstones, published_at")
    manifest = Manifest(revision, body["entries"], body["tombstones"], body["published_at"])
    checked = _manifest_body(manifest)
    return Manifest(revision, checked["entries"], checked["tombstones"], checked["published_at"])


# -- the door's digest document ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """The last record a door refused: the id of its topic, the reason code, when (RFC 3339)."""

    id: Optional[str]
    reason: str
    at: str


@dataclass(frozen=True)
class LookAlikeNote:
    """A look-alike a door found: fleet identity ``id``'s faces matched fleet identity ``like`` at
    cosine ``score``, at or above the door's ``gallery.duplicate_threshold``, when its record was
    applied. ``like`` is ``None`` for an identity enrolled at that door: a local id (often made from
    the person's name) stays on the door."""

    id: str
    like: Optional[str]
    score: float

    def document(self) -> Dict[str, Any]:
        return {"id": self.id, "like": self.like, "score": round(self.score, 4)}


@dataclass(frozen=True)
class DoorDigest:
    """A door's digest document, parsed (:func:`parse_door_document`).

    ``look_alikes``: the best-scored :data:`MAX_LOOK_ALIKES_LISTED` of the door's ``look_alike_count``
    pairs (none from a door older than the look-alikes).
    """

    device_id: str
    site: str
    manifest_revision: Optional[int]
    applied: int
    digest: str
    refused: int
    last_refused: Optional[Refusal]
    ts: str
    look_alike_count: int = 0
    look_alikes: Tuple[LookAlikeNote, ...] = ()

    def document(self) -> Dict[str, Any]:
        """The JSON-ready document (as :func:`door_document` builds it)."""
        last = self.last_refused
        return {
            "device_id": self.device_id,
            "site": self.site,
            "manifest_revision": self.manifest_revision,
            "applied": self.applied,
            "digest": self.digest,
            "refused": {
                "count": self.refused,
                "last": None if last is None else {"id": last.id, "reason": last.reason, "at": last.at},
            },
            "look_alikes": {
                "count": self.look_alike_count,
                "listed": [note.document() for note in self.look_alikes],
            },
            "ts": self.ts,
        }


def door_document(
    device_id: str,
    site: str,
    manifest_revision: Optional[int],
    applied: Mapping[str, int],
    refused: int,
    last_refused: Optional[Refusal],
    ts: str,
    look_alikes: Sequence[LookAlikeNote] = (),
    look_alike_count: Optional[int] = None,
) -> Dict[str, Any]:
    """What a door retains on :func:`door_topic`: its digest over the fleet entries it applied.

    Args:
        applied: identity id → revision of every fleet identity the door holds.
        refused: records refused since the door started.
        last_refused: the last of them, or ``None``.
        ts: RFC 3339 UTC.
        look_alikes: the look-alike pairs the door holds, best score first; the document lists the
            first :data:`MAX_LOOK_ALIKES_LISTED`.
        look_alike_count: how many pairs the door holds (``None``: ``len(look_alikes)``).
    """
    return DoorDigest(
        device_id,
        site,
        manifest_revision,
        len(applied),
        fleet_digest(applied),
        refused,
        last_refused,
        ts,
        len(look_alikes) if look_alike_count is None else look_alike_count,
        tuple(look_alikes[:MAX_LOOK_ALIKES_LISTED]),
    ).document()


def _short_text(value: Any, name: str, limit: int, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise _refuse(INVALID, f"{name}: expected a text of at most {limit} characters")
    return value


def _count(value: Any, name: str) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_REVISION:
        raise _refuse(INVALID, f"{name}: expected a count")
    return int(value)


def parse_door_document(payload: Union[bytes, str, Mapping[str, Any]]) -> DoorDigest:
    """Validate a door's digest document (the retained payload on :func:`door_topic`).

    Unknown keys are ignored (a newer door may say more); the ones of the format are checked.

    Raises:
        FleetRecordError: ``too_large``, ``malformed`` (not a JSON object) or ``invalid`` (a field).
    """
    if isinstance(payload, (bytes, bytearray, str)):
        if len(payload) > MAX_DOOR_DOCUMENT_BYTES:
            raise _refuse(TOO_LARGE, f"a door document of {len(payload)} bytes is too large")
        document = _json(
            bytes(payload) if not isinstance(payload, str) else payload, MALFORMED, "door document"
        )
    else:
        document = dict(payload)
    if not isinstance(document, dict):
        raise _refuse(MALFORMED, "a door document is a JSON object")
    missing = _DOOR_KEYS - set(document)
    if missing:
        raise _refuse(INVALID, f"the door document lacks {', '.join(sorted(missing))}")
    revision = document["manifest_revision"]
    refused = document["refused"]
    if not isinstance(refused, dict) or not {"count", "last"} <= set(refused):
        raise _refuse(INVALID, "refused: expected an object with count and last")
    last = refused["last"]
    last_refusal = None
    if last is not None:
        if not isinstance(last, dict):
            raise _refuse(INVALID, "refused.last: expected an object or null")
        last_refusal = Refusal(
            _short_text(last.get("id"), "refused.last.id", 200, optional=True),
            _short_text(last.get("reason"), "refused.last.reason", 64) or "",
            _short_text(last.get("at"), "refused.last.at", 64) or "",
        )
    digest = document["digest"]
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise _refuse(INVALID, "digest: expected 64 lowercase hex digits")
    look_alike_count, look_alikes = _look_alikes(document.get("look_alikes"))
    return DoorDigest(
        device_id=_level(document["device_id"], "device_id", INVALID),
        site=_level(document["site"], "site", INVALID),
        manifest_revision=None if revision is None else _revision(revision, "manifest_revision", INVALID),
        applied=_count(document["applied"], "applied"),
        digest=digest,
        refused=_count(refused["count"], "refused.count"),
        last_refused=last_refusal,
        ts=_short_text(document["ts"], "ts", 64) or "",
        look_alike_count=look_alike_count,
        look_alikes=look_alikes,
    )


def _look_alikes(value: Any) -> Tuple[int, Tuple[LookAlikeNote, ...]]:
    """A door document's ``look_alikes`` (absent from a door older than them: none)."""
    if value is None:
        return 0, ()
    if not isinstance(value, dict) or not {"count", "listed"} <= set(value):
        raise _refuse(INVALID, "look_alikes: expected an object with count and listed")
    count, listed = _count(value["count"], "look_alikes.count"), value["listed"]
    if not isinstance(listed, list) or len(listed) > min(count, MAX_LOOK_ALIKES_LISTED):
        raise _refuse(
            INVALID,
            f"look_alikes.listed: expected a list of at most {MAX_LOOK_ALIKES_LISTED} pairs, and no more "
            "than look_alikes.count",
        )
    notes = []
    for position, item in enumerate(listed):
        name = f"look_alikes.listed[{position}]"
        if not isinstance(item, dict) or not {"id", "like", "score"} <= set(item):
            raise _refuse(INVALID, f"{name}: expected an object with id, like (or null) and score")
        score = item.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not -1.0 <= score <= 1.0:
            raise _refuse(INVALID, f"{name}.score: expected a number from -1 to 1")
        notes.append(
            LookAlikeNote(
                _identity_id(item.get("id"), f"{name}.id", INVALID),
                None if item.get("like") is None else _identity_id(item["like"], f"{name}.like", INVALID),
                float(score),
            )
        )
    return count, tuple(notes)


# -- the fleet key ----------------------------------------------------------------------------------------


def _under_credentials(path: Path) -> bool:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return bool(directory) and Path(str(directory)).resolve() in path.resolve().parents


def read_fleet_key(path: Path) -> bytes:
    """The site's fleet key: 64 hex digits on one line (a line end is allowed).

    Only a regular file of at most 4 KiB is read (a device or a FIFO named by mistake is refused).

    Raises:
        FleetError: missing, unreadable, readable by group or others (outside systemd's credentials
            folder), or not 32 bytes as hex; the message names the path (never the key).
    """
    key_path = Path(path)
    try:
        data = read_bounded(key_path, MAX_FLEET_KEY_FILE_BYTES)
        mode = key_path.stat().st_mode
    except FileReadError as err:
        raise FleetError(f"the fleet key {err}") from None
    except OSError as err:
        raise FleetError(f"cannot read the fleet key {key_path}: {err.strerror or err}") from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and not _under_credentials(key_path):
        raise FleetError(
            f"the fleet key {key_path} is readable by other users (mode {stat.filemode(mode)}); "
            f"chmod 600 {key_path}"
        )
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if not _HEX_KEY.match(text):
        raise FleetError(
            f"{key_path} does not hold a fleet key: expected {2 * FLEET_KEY_BYTES} hex digits on one line "
            f"(`face-appliance fleet init` creates one)"
        )
    return bytes.fromhex(text)


def read_previous_fleet_key(path: Optional[Path]) -> Optional[bytes]:
    """The fleet key before the last rotation (``fleet.previous_fleet_key_file``), or ``None``: no file
    named, or an empty one (blank: the systemd credential and the Compose secret are created so).

    Raises:
        FleetError: as :func:`read_fleet_key`, for a file that is not blank.
    """
    if path is None:
        return None
    try:
        blank = not read_bounded(path, MAX_FLEET_KEY_FILE_BYTES).strip()
    except FileReadError:
        blank = False  # read_fleet_key says why
    return None if blank else read_fleet_key(path)


def create_fleet_key(path: Path) -> bytes:
    """Create a new random fleet key file (64 hex digits and a line end, mode 0600).

    The file appears whole or not at all, and an existing file is never replaced.

    Raises:
        FleetError: the file exists (a dangling link included) or cannot be written.
    """
    key_path = Path(path)
    key = os.urandom(FLEET_KEY_BYTES)
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        write_new_file(key_path, key.hex().encode("ascii") + b"\n", 0o600)
    except FileExistsError:
        raise FleetError(f"refusing to overwrite the existing fleet key {key_path}") from None
    except OSError as err:
        raise FleetError(f"cannot create the fleet key {key_path}: {err.strerror or err}") from err
    logger.info("created a fleet key at %s; copy it to every door of the site (a credential)", key_path)
    return key


__all__ = [
    "MAX_CROPS",
    "MAX_LOOK_ALIKES_LISTED",
    "MAX_MANIFEST_BYTES",
    "MAX_RECORD_BYTES",
    "RECORD_FORMAT",
    "DoorDigest",
    "FleetRecordError",
    "IdentityRecord",
    "LookAlikeNote",
    "Manifest",
    "Refusal",
    "Tombstone",
    "create_fleet_key",
    "door_document",
    "door_topic",
    "doors_filter",
    "fleet_digest",
    "manifest_topic",
    "open_manifest",
    "open_record",
    "parse_door_document",
    "read_fleet_key",
    "record_topic",
    "records_filter",
    "seal_manifest",
    "seal_record",
    "topic_level",
]
