"""Gallery export bundles: every identity with its templates and crops, encrypted with a passphrase.

Format (version 1)::

    b"FAGALLERY\\x01" ‖ salt (16 bytes) ‖ nonce (12 bytes) ‖ AES-256-GCM(key, nonce, payload, aad=header)

where ``key = scrypt(passphrase, salt, n=2**15, r=8, p=1)`` and ``payload`` is UTF-8 JSON::

    {"format": 1, "exported_at": "...", "identities": [
        {"id", "name", "external_id", "consent_at", "created_at",
         "policy": {"valid_from", "valid_until", "suspended", "groups"},
         "templates": [{"model_version", "embedding": base64 of little-endian float32,
                        "crop": base64 PNG or null, "quality", "created_at"}]}],
     "access": {"groups": [{"name", "schedule": [window, …], "holidays": [calendar, …]}],
                "calendars": [{"name", "days": ["YYYY-MM-DD", …]}]}}

``policy`` and ``access`` (:mod:`appliance.access.policy`) were added within format 1: a bundle
without them imports with no restriction and no groups, and an older firmware ignores them.

``templates`` may be empty (0 to :data:`MAX_TEMPLATES_PER_IDENTITY`): an identity without a face, who
passes with the cards and PIN of its policy only, is carried too. A firmware older than that refuses
such a bundle whole (``templates: expected 1–1000 templates``), nothing imported; import it there
from a bundle exported without those identities, or update that firmware first.

A bundle moves a gallery between devices (each device keeps its own at-rest key). Importing validates
every field before anything is written; a wrong passphrase and a tampered file are the same error
(the tag does not verify), and nothing is imported.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..access.errors import PolicyError
from ..access.policy import AccessGroup, HolidayCalendar, IdentityPolicy, PolicyTables
from ..vision.image import image_dimensions
from .errors import BundleError
from .store import ENROLLED, IDENTITY_ID_PATTERN, TemplateStore, utc_now
from .text import MAX_NAME, text_problem

MAGIC = b"FAGALLERY\x01"
SALT_BYTES = 16
NONCE_BYTES = 12
MAX_BUNDLE_BYTES = 2 * 2**30
MAX_TEMPLATES_PER_IDENTITY = 1000
MAX_EMBEDDING_DIM = 4096
MIN_PASSPHRASE = 8


def _key(passphrase: str, salt: bytes) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise BundleError(f"the passphrase must be at least {MIN_PASSPHRASE} characters")
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode("utf-8"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def export_bundle(store: TemplateStore, passphrase: str) -> bytes:
    """Every identity of ``store`` with its enrolled templates (adaptive ones stay on this door), as an
    encrypted bundle; an identity without a face goes with none."""
    identities: List[Dict[str, Any]] = []
    for identity in store.identities():
        templates = []
        for template in store.templates(identity_id=identity.id):
            if template.origin.kind != ENROLLED:
                continue  # adaptive templates are what this door learned; they stay on it
            crop = None
            if template.crop is not None:
                ok, png = cv2.imencode(".png", template.crop)
                crop = _b64(png.tobytes()) if ok else None
            templates.append(
                {
                    "model_version": template.model_version,
                    "embedding": _b64(np.ascontiguousarray(template.embedding, "<f4").tobytes()),
                    "crop": crop,
                    "quality": template.quality,
                    "created_at": template.created_at,
                }
            )
        identities.append(
            {
                "id": identity.id,
                "name": identity.name,
                "external_id": identity.external_id,
                "consent_at": identity.consent_at,
                "created_at": identity.created_at,
                "policy": identity.policy.document(),
                "templates": templates,
            }
        )
    tables = store.policy_tables()
    access = {
        "groups": [group.document() for group in tables.groups.values()],
        "calendars": [calendar.document() for calendar in tables.calendars.values()],
    }
    payload = json.dumps(
        {"format": 1, "exported_at": utc_now(), "identities": identities, "access": access}
    ).encode("utf-8")
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    sealed = AESGCM(_key(passphrase, salt)).encrypt(nonce, payload, MAGIC)
    return MAGIC + salt + nonce + sealed


@dataclass(frozen=True)
class BundleTemplate:
    model_version: str
    embedding: np.ndarray  # (D,) float32
    crop: Optional[np.ndarray]  # (112, 112, 3) uint8 or None
    quality: Optional[float]


@dataclass(frozen=True)
class BundleIdentity:
    id: str
    name: str
    external_id: Optional[str]
    consent_at: str
    templates: List[BundleTemplate]
    policy: IdentityPolicy = field(default_factory=IdentityPolicy)


@dataclass(frozen=True)
class Bundle:
    """A bundle's validated content: the identities and the access groups and calendars."""

    identities: List[BundleIdentity]
    tables: PolicyTables = field(default_factory=PolicyTables)


def read_bundle(data: bytes, passphrase: str) -> List[BundleIdentity]:
    """The identities of a bundle (see :func:`open_bundle`)."""
    return open_bundle(data, passphrase).identities


def open_bundle(data: bytes, passphrase: str) -> Bundle:
    """Decrypt and validate a bundle.

    Raises:
        BundleError: not a bundle, wrong passphrase or tampered, or a field that is missing or invalid
            (the message names it).
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle of {len(data)} bytes is larger than the {MAX_BUNDLE_BYTES} accepted")
    header = len(MAGIC) + SALT_BYTES + NONCE_BYTES
    if len(data) < header + 16 or not data.startswith(MAGIC):
        raise BundleError("not a face-appliance gallery bundle (bad magic or too short)")
    salt = data[len(MAGIC) : len(MAGIC) + SALT_BYTES]
    nonce = data[len(MAGIC) + SALT_BYTES : header]
    try:
        payload = AESGCM(_key(passphrase, salt)).decrypt(nonce, data[header:], MAGIC)
    except InvalidTag:
        raise BundleError("the bundle does not decrypt: wrong passphrase, or the file was altered") from None
    return parse_bundle(payload)


def parse_payload(payload: bytes) -> List[BundleIdentity]:
    """The identities of a decrypted bundle (see :func:`parse_bundle`)."""
    return parse_bundle(payload).identities


def parse_bundle(payload: bytes) -> Bundle:
    """Validate the decrypted content of a bundle (UTF-8 JSON, see the module docstring).

    Raises:
        BundleError: not JSON, another format, or a field that is missing or invalid (named).
    """
    try:
        document = json.loads(payload.decode("utf-8"))
        # JSON may escape an unpaired surrogate ("\ud800") in any text (a model version, a group):
        # not text, it could go neither into the sealed values' associated data nor the database.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(
            "the bundle holds an unpaired surrogate escape (\\ud800-\\udfff): not valid text"
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError(f"the bundle's content is not valid JSON: {err}") from None
    if not isinstance(document, dict) or document.get("format") != 1:
        raise BundleError("unsupported bundle format (expected format 1)")
    entries = document.get("identities")
    if not isinstance(entries, list):
        raise BundleError("the bundle has no identities list")
    seen = set()
    identities = []
    for position, entry in enumerate(entries):
        identity = _identity(entry, f"identities[{position}]")
        if identity.id in seen:
            raise BundleError(f"identities[{position}]: identity {identity.id!r} appears twice")
        seen.add(identity.id)
        identities.append(identity)
    return Bundle(identities, _tables(document.get("access")))


def _tables(access: Any) -> PolicyTables:
    if access is None:
        return PolicyTables()
    if not isinstance(access, dict) or set(access) - {"groups", "calendars"}:
        raise BundleError("access: expected an object with 'groups' and 'calendars'")
    groups: Dict[str, AccessGroup] = {}
    calendars: Dict[str, HolidayCalendar] = {}
    for key, kind in (("groups", AccessGroup), ("calendars", HolidayCalendar)):
        entries = access.get(key, [])
        if not isinstance(entries, list) or len(entries) > 1000:
            raise BundleError(f"access.{key}: expected a list of at most 1000 entries")
        for position, entry in enumerate(entries):
            where = f"access.{key}[{position}]"
            try:
                if not isinstance(entry, dict):
                    raise PolicyError("expected an object")
                if kind is AccessGroup:
                    _only(entry, {"name", "schedule", "holidays"}, where)
                    group = AccessGroup.from_parts(
                        entry.get("name"), _strings(entry, "schedule"), _strings(entry, "holidays")
                    )
                    groups[group.name] = group
                else:
                    _only(entry, {"name", "days"}, where)
                    calendar = HolidayCalendar.from_parts(entry.get("name"), _strings(entry, "days"))
                    calendars[calendar.name] = calendar
            except PolicyError as err:
                raise BundleError(f"{where}: {err}; nothing was imported") from None
    return PolicyTables(groups, calendars)


def _only(entry: Dict[str, Any], keys: set, where: str) -> None:
    unknown = set(entry) - keys
    if unknown:
        raise PolicyError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")


def _strings(entry: Dict[str, Any], key: str) -> List[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or len(value) > 1000 or not all(isinstance(item, str) for item in value):
        raise PolicyError(f"{key}: expected a list of texts")
    return value


def _text(
    entry: Dict[str, Any], key: str, where: str, optional: bool = False, limit: int = 200
) -> Optional[str]:
    value = entry.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BundleError(f"{where}.{key}: expected a text of 1–{limit} characters")
    return value


def _person_text(value: str, where: str, what: str) -> str:
    """A name or external id, checked as every way into the gallery checks it (:mod:`.text`)."""
    problem = text_problem(value, what, MAX_NAME)
    if problem is not None:
        raise BundleError(f"{where}: {problem}; nothing was imported")
    return value


def _identity(entry: Any, where: str) -> BundleIdentity:
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: expected an object")
    identity_id = _text(entry, "id", where, limit=64) or ""
    if not IDENTITY_ID_PATTERN.match(identity_id):
        raise BundleError(f"{where}.id: {identity_id!r} is not an allowed identity id")
    templates = entry.get("templates")
    if not isinstance(templates, list) or len(templates) > MAX_TEMPLATES_PER_IDENTITY:
        raise BundleError(
            f"{where}.templates: expected a list of 0–{MAX_TEMPLATES_PER_IDENTITY} templates "
            "(0: an identity without a face)"
        )
    name = _person_text(_text(entry, "name", where) or "", f"{where}.name", "name")
    external_id = _text(entry, "external_id", where, optional=True)
    if external_id is not None:
        external_id = _person_text(external_id, f"{where}.external_id", "external id")
    policy = entry.get("policy")
    try:
        if policy is not None and not isinstance(policy, dict):
            raise PolicyError(f"{where}.policy: expected an object")
        parsed_policy = (
            IdentityPolicy() if policy is None else IdentityPolicy.from_document(policy, f"{where}.policy")
        )
    except PolicyError as err:
        raise BundleError(f"{err}; nothing was imported") from None
    return BundleIdentity(
        id=identity_id,
        name=name,
        external_id=external_id,
        consent_at=_text(entry, "consent_at", where, limit=40) or "",
        templates=[_template(t, f"{where}.templates[{i}]") for i, t in enumerate(templates)],
        policy=parsed_policy,
    )


def _template(entry: Any, where: str) -> BundleTemplate:
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: expected an object")
    model_version = _text(entry, "model_version", where) or ""
    try:
        raw = base64.b64decode(
            _text(entry, "embedding", where, limit=MAX_EMBEDDING_DIM * 8) or "", validate=True
        )
    except (binascii.Error, ValueError) as err:
        raise BundleError(f"{where}.embedding: not base64: {err}") from err
    if not raw or len(raw) % 4 or len(raw) // 4 > MAX_EMBEDDING_DIM:
        raise BundleError(f"{where}.embedding: {len(raw)} bytes is not a float32 vector")
    embedding = np.frombuffer(raw, "<f4").astype(np.float32)
    norm = float(np.linalg.norm(embedding))
    if not np.isfinite(embedding).all() or not 0.9 < norm < 1.1:
        raise BundleError(f"{where}.embedding: not a finite unit vector (norm {norm:.3f})")
    crop = None
    if entry.get("crop") is not None:
        try:
            png = base64.b64decode(_text(entry, "crop", where, limit=4 * 2**20) or "", validate=True)
        except (binascii.Error, ValueError) as err:
            raise BundleError(f"{where}.crop: not base64: {err}") from err
        # The size is read from the header first: a crop declaring 30 000 × 30 000 pixels (a
        # decompression bomb of a few kilobytes) is refused without being decoded.
        if image_dimensions(png) != ("PNG", (112, 112)):
            raise BundleError(f"{where}.crop: not a 112×112 PNG image")
        crop = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        if crop is None or crop.shape != (112, 112, 3):
            raise BundleError(f"{where}.crop: not a 112×112 image")
    quality = entry.get("quality")
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, (int, float)) or not math.isfinite(quality)
    ):
        raise BundleError(f"{where}.quality: expected a finite number or null")
    return BundleTemplate(model_version, embedding, crop, None if quality is None else float(quality))
