"""The fleet's record format (appliance.fleet.records): round trips, every refusal reason, and seeded
mutations that must only ever be refused with FleetRecordError."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Optional

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.access.policy import IdentityPolicy, parse_instant
from appliance.errors import ApplianceError
from appliance.fleet.errors import RECORD_REASONS, FleetError, FleetRecordError
from appliance.fleet.records import (
    MAX_CROPS,
    MAX_LOOK_ALIKES_LISTED,
    MAX_RECORD_BYTES,
    IdentityRecord,
    LookAlikeNote,
    Manifest,
    Refusal,
    Tombstone,
    create_fleet_key,
    door_document,
    door_topic,
    doors_filter,
    fleet_digest,
    manifest_topic,
    open_manifest,
    open_record,
    parse_door_document,
    read_fleet_key,
    record_policy,
    record_topic,
    records_filter,
    reseal_record,
    seal_manifest,
    seal_record,
    topic_level,
)
from appliance.updates.keys import key_id

SITE = "hq"
FLEET_KEY = bytes(range(32))
NOW = "2026-01-02T03:04:05Z"


@pytest.fixture(scope="module")
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def trusted(signer: Ed25519PrivateKey) -> Dict[str, Ed25519PublicKey]:
    return {key_id(signer.public_key()): signer.public_key()}


def _crop(seed: int) -> np.ndarray:
    """A smooth (112, 112, 3) uint8 image: a small PNG, like a real face crop."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 200, 112, dtype=np.float32)
    image = gradient[None, :, None] + gradient[:, None, None] * 0.2 + rng.integers(0, 20, (112, 112, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _record(**changes: Any) -> IdentityRecord:
    fields: Dict[str, Any] = {
        "id": "p-0123456789ab",
        "revision": 7,
        "name": "Ada Lovelace",
        "external_id": "B-1815",
        "consent_at": NOW,
        "policy": IdentityPolicy(
            valid_until=parse_instant("2027-01-01T00:00:00Z", "valid_until"), groups=("staff",)
        ),
        "crops": (_crop(1), _crop(2)),
        "qualities": (0.9, 0.75),
    }
    fields.update(changes)
    return IdentityRecord(**fields)


def _canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _envelope(payload: bytes) -> Dict[str, Any]:
    return json.loads(payload)


def _resign(envelope: Dict[str, Any], signer: Ed25519PrivateKey) -> bytes:
    """The envelope signed again (what an attacker holding the signing key but not the fleet key can do)."""
    envelope = {k: v for k, v in envelope.items() if k != "signature"}
    envelope["signature"] = _b64(signer.sign(b"face-appliance fleet record v1\0" + _canonical(envelope)))
    return json.dumps(envelope).encode("utf-8")


def _forge(
    plaintext: Any,
    signer: Ed25519PrivateKey,
    kind: str = "identity",
    identity_id: str = "p-0123456789ab",
    revision: int = 7,
    fleet_key: bytes = FLEET_KEY,
) -> bytes:
    """A record sealed by hand, from the format in the module docstring: genuine (trusted signature,
    right fleet key) whatever its plaintext holds."""
    header = {
        "format": 1,
        "site": SITE,
        "kind": kind,
        "id": identity_id,
        "revision": revision,
        "key_id": key_id(signer.public_key()),
    }
    data = plaintext if isinstance(plaintext, bytes) else _canonical(plaintext)
    nonce = os.urandom(12)
    ciphertext = AESGCM(fleet_key).encrypt(
        nonce, data, b"face-appliance fleet record v1\0" + _canonical(header)
    )
    return _resign({**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}, signer)


def _png(crop: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", crop)
    assert ok
    return _b64(data.tobytes())


def _plaintext(**changes: Any) -> Dict[str, Any]:
    document: Dict[str, Any] = {
        "name": "Ada Lovelace",
        "external_id": None,
        "consent_at": NOW,
        "policy": IdentityPolicy().document(),
        "crops": [_png(_crop(3))],
        "qualities": [0.8],
    }
    document.update(changes)
    return document


def _refused(reason: str, payload: bytes, trusted: Dict[str, Ed25519PublicKey], **kwargs: Any) -> str:
    with pytest.raises(FleetRecordError) as caught:
        open_record(payload, kwargs.pop("site", SITE), kwargs.pop("key", FLEET_KEY), trusted, **kwargs)
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


# -- round trips -------------------------------------------------------------------------------------------


def test_identity_round_trip(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    record = _record()
    payload = seal_record(record, SITE, FLEET_KEY, signer)
    opened = open_record(payload, SITE, FLEET_KEY, trusted, topic_id=record.id)
    assert isinstance(opened, IdentityRecord)
    assert opened == record  # every field but the crops (compared below)
    assert len(opened.crops) == 2
    for sent, received in zip(record.crops, opened.crops):
        assert received.shape == (112, 112, 3) and received.dtype == np.uint8
        assert np.array_equal(sent, received)  # PNG is lossless
    assert opened.policy.groups == ("staff",)


def test_an_identitys_cards_and_pin_hashes_travel_sealed(
    signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    policy = IdentityPolicy(groups=("vault",)).changed(
        {"cards": ["w26:7:12345"], "pin": "2468", "duress_pin": "1357"}
    )
    payload = seal_record(_record(policy=policy), SITE, FLEET_KEY, signer)
    for secret in (b"w26:7:12345", b"scrypt", policy.pin.encode()):  # type: ignore[union-attr]
        assert secret not in payload
    opened = open_record(payload, SITE, FLEET_KEY, trusted, topic_id="p-0123456789ab")
    assert isinstance(opened, IdentityRecord) and opened.policy == policy


def test_tombstone_round_trip(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    tombstone = Tombstone("p-0123456789ab", 9, NOW)
    payload = seal_record(tombstone, SITE, FLEET_KEY, signer)
    assert open_record(payload, SITE, FLEET_KEY, trusted, topic_id="p-0123456789ab") == tombstone
    assert _envelope(payload)["kind"] == "tombstone"


def test_nothing_personal_in_the_clear(signer: Ed25519PrivateKey) -> None:
    record = _record(name="Zebulon Quixote-Marchbanks", external_id="BADGE-998877")
    payload = seal_record(record, SITE, FLEET_KEY, signer)
    for secret in (b"Zebulon", b"Quixote", b"BADGE-998877", b"staff", b"consent", NOW.encode()):
        assert secret not in payload
    for crop in record.crops:
        png = base64.b64decode(_png(crop))
        assert png not in payload and _png(crop).encode() not in payload
    assert b"iVBORw0KGgo" not in payload  # the base64 of a PNG signature
    assert set(_envelope(payload)) == {
        "format",
        "site",
        "kind",
        "id",
        "revision",
        "key_id",
        "nonce",
        "ciphertext",
        "signature",
    }


def test_manifest_round_trip(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    manifest = Manifest(12, {"p-1": 3, "p-2": 12}, {"p-3": 10}, NOW)
    opened = open_manifest(seal_manifest(manifest, SITE, signer), SITE, trusted)
    assert opened == manifest
    assert opened.digest == fleet_digest({"p-2": 12, "p-1": 3})


def test_fleet_digest() -> None:
    assert fleet_digest({}) == hashlib.sha256(b"").hexdigest()
    assert fleet_digest({"b": 2, "a": 1}) == hashlib.sha256(b"a:1\nb:2\n").hexdigest()
    assert fleet_digest({"a": 1}) != fleet_digest({"a": 2})


def test_topics() -> None:
    assert record_topic("f", "hq", "p-1") == "f/hq/records/p-1"
    assert records_filter("f", "hq") == "f/hq/records/+"
    assert manifest_topic("f", "hq") == "f/hq/manifest"
    assert door_topic("f", "hq", "door-1") == "f/hq/doors/door-1"
    assert doors_filter("f", "hq") == "f/hq/doors/+"
    assert topic_level("f/hq/records/p-1", records_filter("f", "hq")) == "p-1"
    assert topic_level("f/hq/records/p-1/x", records_filter("f", "hq")) is None
    assert topic_level("f/hq/manifest", records_filter("f", "hq")) is None


def test_door_document_round_trip() -> None:
    look_alikes = [LookAlikeNote("p-2", "p-1", 0.912345), LookAlikeNote("p-2", None, 0.8)]
    document = door_document(
        "door-1", SITE, 12, {"p-1": 3, "p-2": 12}, 2, Refusal("p-9", "bad_signature", NOW), NOW, look_alikes
    )
    assert document == {
        "device_id": "door-1",
        "site": SITE,
        "manifest_revision": 12,
        "applied": 2,
        "digest": fleet_digest({"p-1": 3, "p-2": 12}),
        "refused": {"count": 2, "last": {"id": "p-9", "reason": "bad_signature", "at": NOW}},
        "look_alikes": {
            "count": 2,
            "listed": [
                {"id": "p-2", "like": "p-1", "score": 0.9123},
                {"id": "p-2", "like": None, "score": 0.8},  # enrolled at the door: no id
            ],
        },
        "ts": NOW,
    }
    parsed = parse_door_document(json.dumps(document).encode())
    assert parsed.document() == document
    assert parse_door_document(document) == parsed
    assert parsed.look_alikes == (LookAlikeNote("p-2", "p-1", 0.9123), look_alikes[1])
    fresh = door_document("door-2", SITE, None, {}, 0, None, NOW)
    assert parse_door_document(json.dumps(fresh)).manifest_revision is None
    # A door older than the look-alikes says nothing of them: none.
    del fresh["look_alikes"]
    assert parse_door_document(json.dumps(fresh)).look_alikes == ()


def test_a_door_lists_its_best_look_alikes_and_counts_them_all() -> None:
    many = [LookAlikeNote(f"p-{i}", "p-0", 0.99 - i / 1000) for i in range(1, 31)]
    document = door_document("door-1", SITE, 1, {"p-1": 1}, 0, None, NOW, many)
    parsed = parse_door_document(json.dumps(document).encode())
    assert parsed.look_alike_count == 30
    assert parsed.look_alikes == tuple(many[:MAX_LOOK_ALIKES_LISTED])


@pytest.mark.parametrize(
    "change",
    [
        {"digest": "xyz"},
        {"applied": -1},
        {"applied": True},
        {"manifest_revision": "3"},
        {"device_id": "a/b"},
        {"refused": {"count": 1}},
        {"refused": {"count": 1, "last": "p-1"}},
        {"ts": "x" * 100},
        {"look_alikes": []},
        {"look_alikes": {"count": 1}},
        {"look_alikes": {"count": -1, "listed": []}},
        {"look_alikes": {"count": 0, "listed": [{"id": "p-1", "like": "p-2", "score": 0.9}]}},
        {"look_alikes": {"count": 99, "listed": [{"id": "p-1", "like": "p-2", "score": 0.9}] * 21}},
        {"look_alikes": {"count": 1, "listed": ["p-1"]}},
        {"look_alikes": {"count": 1, "listed": [{"id": "p/1", "like": "p-2", "score": 0.9}]}},
        {"look_alikes": {"count": 1, "listed": [{"id": "p-1", "score": 0.9}]}},
        {"look_alikes": {"count": 1, "listed": [{"id": "p-1", "like": "p-2", "score": 1.5}]}},
        {"look_alikes": {"count": 1, "listed": [{"id": "p-1", "like": "p-2", "score": "0.9"}]}},
        {"look_alikes": {"count": 1, "listed": [{"id": "p-1", "like": "p-2", "score": True}]}},
    ],
)
def test_door_document_refused(change: Dict[str, Any]) -> None:
    document = door_document("door-1", SITE, 1, {"p-1": 1}, 0, None, NOW)
    document.update(change)
    with pytest.raises(FleetRecordError) as caught:
        parse_door_document(json.dumps(document).encode())
    assert caught.value.reason == "invalid"
    for payload in (b"[1]", b"{", b"\xff", b"x" * 70_000):
        with pytest.raises(FleetRecordError):
            parse_door_document(payload)


# -- refusals ----------------------------------------------------------------------------------------------


def test_untrusted_key(signer: Ed25519PrivateKey) -> None:
    stranger = Ed25519PrivateKey.generate()
    payload = seal_record(_record(), SITE, FLEET_KEY, stranger)
    other = {key_id(signer.public_key()): signer.public_key()}
    _refused("untrusted_key", payload, other)
    _refused("untrusted_key", payload, {})


def test_flipped_signature_byte(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    envelope = _envelope(seal_record(_record(), SITE, FLEET_KEY, signer))
    signature = bytearray(base64.b64decode(envelope["signature"]))
    signature[10] ^= 0x01
    envelope["signature"] = _b64(bytes(signature))
    _refused("bad_signature", json.dumps(envelope).encode(), trusted)


def test_flipped_ciphertext_byte(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    envelope = _envelope(seal_record(_record(), SITE, FLEET_KEY, signer))
    ciphertext = bytearray(base64.b64decode(envelope["ciphertext"]))
    ciphertext[100] ^= 0x80
    envelope["ciphertext"] = _b64(bytes(ciphertext))
    # The signature covers the ciphertext: refused before any decryption.
    _refused("bad_signature", json.dumps(envelope).encode(), trusted)
    # Signed again (the signing key alone): the AEAD tag still refuses it.
    _refused("decrypt_failed", _resign(envelope, signer), trusted)


def test_another_fleet_key(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    payload = seal_record(_record(), SITE, bytes(32), signer)
    _refused("decrypt_failed", payload, trusted)


def test_record_of_another_site(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    payload = seal_record(_record(), "annex", FLEET_KEY, signer)
    _refused("wrong_site", payload, trusted)
    # Its header relabelled to this site and signed again: the ciphertext is bound to "annex".
    envelope = _envelope(payload)
    envelope["site"] = SITE
    _refused("decrypt_failed", _resign(envelope, signer), trusted)


def test_record_on_another_ids_topic(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    payload = seal_record(_record(), SITE, FLEET_KEY, signer)
    message = _refused("wrong_id", payload, trusted, topic_id="p-ffffffffffff")
    assert "p-ffffffffffff" in message
    # The id moved in the header too (and signed again): the ciphertext is bound to its id.
    envelope = _envelope(payload)
    envelope["id"] = "p-ffffffffffff"
    _refused("decrypt_failed", _resign(envelope, signer), trusted, topic_id="p-ffffffffffff")


def test_header_revision_changed(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    envelope = _envelope(seal_record(_record(), SITE, FLEET_KEY, signer))
    envelope["revision"] = 99  # a replayed old record made to look new
    _refused("bad_signature", json.dumps(envelope).encode(), trusted)
    _refused("decrypt_failed", _resign(envelope, signer), trusted)


def test_oversize(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    _refused("too_large", b" " * (MAX_RECORD_BYTES + 1), trusted)
    with pytest.raises(FleetRecordError) as caught:
        open_manifest(b" " * (17 * 2**20), SITE, trusted)
    assert caught.value.reason == "too_large"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"format": 1}',
        b"[" * 100_000,
        b'{"a": NaN}',
    ],
)
def test_malformed(payload: bytes, trusted: Dict[str, Ed25519PublicKey]) -> None:
    _refused("malformed", payload, trusted)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("nonce", "!!!not base64!!!"),
        ("nonce", _b64(b"short")),
        ("ciphertext", "é"),
        ("signature", _b64(b"x" * 10)),
        ("revision", 0),
        ("revision", "7"),
        ("revision", True),
        ("revision", 2**60),
        ("format", 2),
        ("format", True),
        ("kind", "manifest"),
        ("id", "../etc"),
        ("key_id", "ABC"),
        ("site", "a/b"),
    ],
)
def test_malformed_fields(
    key: str, value: Any, signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    envelope = _envelope(seal_record(_record(), SITE, FLEET_KEY, signer))
    envelope[key] = value
    _refused("malformed", json.dumps(envelope).encode(), trusted)
    envelope.pop(key)
    _refused("malformed", json.dumps(envelope).encode(), trusted)


def test_duplicate_or_unknown_envelope_keys(
    signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    payload = seal_record(_record(), SITE, FLEET_KEY, signer)
    _refused("malformed", payload[:-1] + b',"revision":8}', trusted)
    _refused("malformed", payload[:-1] + b',"extra":1}', trusted)


def _huge_png() -> bytes:
    """A PNG header declaring 30 000 × 30 000 pixels (a decompression bomb's), with a tiny body."""
    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"\x00" * 32


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"crops": {}}, "crops"),
        ({"crops": []}, "qualities"),  # none (no face) with the two qualities of two crops
        ({"crops": [_png(_crop(3))] * (MAX_CROPS + 1), "qualities": [0.5] * (MAX_CROPS + 1)}, "crops"),
        ({"crops": [_png(np.zeros((64, 64, 3), np.uint8))]}, "112"),
        ({"crops": [_b64(_huge_png())]}, "112"),
        ({"crops": [_b64(cv2.imencode(".jpg", _crop(3))[1].tobytes())]}, "PNG"),
        ({"crops": [_png(_crop(3))[:-40]]}, "crops[0]"),
        ({"crops": ["@@@@"]}, "base64"),
        ({"crops": [7]}, "crops[0]"),
        ({"qualities": [0.5, 0.5]}, "qualities"),
        ({"qualities": [float("inf")]}, "Infinity"),
        ({"qualities": [1.5]}, "qualities"),
        ({"qualities": [True]}, "qualities"),
        ({"name": "\x1b[2J\x1b[HAdmin"}, "ESCAPE"),
        ({"name": "ada\u202eecila"}, "RIGHT-TO-LEFT OVERRIDE"),
        ({"name": "line\rover"}, "CARRIAGE RETURN"),
        ({"name": "   "}, "empty"),
        ({"name": "x" * 201}, "200"),
        ({"name": 5}, "name"),
        ({"external_id": "B\x00"}, "NUL"),
        ({"consent_at": "yesterday"}, "consent_at"),
        ({"policy": {"groups": ["bad group"]}}, "group"),
        ({"policy": {"flying": True}}, "unknown"),
        ({"policy": []}, "policy"),
        ({"extra": 1}, "exactly"),
    ],
)
def test_invalid_plaintext(
    changes: Dict[str, Any], words: str, signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    message = _refused("invalid", _forge(_plaintext(**changes), signer), trusted)
    assert words in message


def test_invalid_plaintext_forms(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    _refused("invalid", _forge(b"\xff not json", signer), trusted)
    _refused("invalid", _forge(b"[" * 50_000, signer), trusted)
    _refused("invalid", _forge([1, 2], signer), trusted)
    _refused("invalid", _forge({"removed_at": NOW, "name": "x"}, signer, kind="tombstone"), trusted)
    _refused("invalid", _forge({"removed_at": "soon"}, signer, kind="tombstone"), trusted)
    assert isinstance(open_record(_forge(_plaintext(), signer), SITE, FLEET_KEY, trusted), IdentityRecord)


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "\x1b]0;owned\x07"},
        {"external_id": "x\u2028y"},
        {"crops": (np.zeros((112, 112), np.uint8),)},
        {"crops": (np.zeros((112, 112, 3), np.float32),)},
        {"crops": ()},  # no face, but the qualities of two crops
        {"crops": _crop(1)},  # an image, not a tuple of them
        {"crops": (_crop(1),) * (MAX_CROPS + 1), "qualities": (0.5,) * (MAX_CROPS + 1)},
        {"qualities": (0.5,)},
        {"id": "has space"},
        {"revision": 0},
        {"consent_at": "2026-01-01"},
    ],
)
def test_seal_refuses_what_doors_refuse(changes: Dict[str, Any], signer: Ed25519PrivateKey) -> None:
    with pytest.raises(FleetRecordError) as caught:
        seal_record(_record(**changes), SITE, FLEET_KEY, signer)
    assert caught.value.reason == "invalid"


def test_fleet_key_length(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    with pytest.raises(FleetError):
        seal_record(_record(), SITE, b"short", signer)
    with pytest.raises(FleetError):
        open_record(b"{}", SITE, b"short", trusted)


def test_manifest_refusals(signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]) -> None:
    manifest = Manifest(5, {"p-1": 5}, {"p-2": 4}, NOW)
    payload = seal_manifest(manifest, SITE, signer)
    with pytest.raises(FleetRecordError) as caught:
        open_manifest(payload, "annex", trusted)
    assert caught.value.reason == "wrong_site"
    with pytest.raises(FleetRecordError) as caught:
        open_manifest(payload, SITE, {})
    assert caught.value.reason == "untrusted_key"
    envelope = json.loads(payload)
    envelope["body"] = envelope["body"].replace('"p-1":5', '"p-1":4')
    with pytest.raises(FleetRecordError) as caught:
        open_manifest(json.dumps(envelope).encode(), SITE, trusted)
    assert caught.value.reason == "bad_signature"
    # A record's signature does not make a manifest (and the other way round): separate domains.
    record = _envelope(seal_record(_record(), SITE, FLEET_KEY, signer))
    with pytest.raises(FleetRecordError):
        open_manifest(json.dumps(record).encode(), SITE, trusted)
    for bad in (
        Manifest(5, {"p-1": 6}, {}, NOW),
        Manifest(5, {"p-1": 5}, {"p-1": 4}, NOW),
        Manifest(5, {"bad id": 1}, {}, NOW),
        Manifest(0, {}, {}, NOW),
        Manifest(5, {}, {}, "now"),
    ):
        with pytest.raises(FleetRecordError) as caught:
            seal_manifest(bad, SITE, signer)
        assert caught.value.reason == "invalid"


def test_errors_are_appliance_errors() -> None:
    error = FleetRecordError("wrong_id", "x")
    assert isinstance(error, FleetError) and isinstance(error, ApplianceError)
    assert error.reason == "wrong_id" and str(error).startswith("wrong_id: ")
    with pytest.raises(ValueError):
        FleetRecordError("nope", "x")


# -- seeded mutations --------------------------------------------------------------------------------------


def _mutate(payload: bytes, rng: random.Random) -> bytes:
    data = bytearray(payload)
    choice = rng.randrange(7)
    if choice == 0:  # flip bits
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate
        del data[rng.randrange(len(data)) :]
    elif choice == 2:  # insert junk
        position = rng.randrange(len(data))
        data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif choice == 3:  # replace a structural character
        positions = [i for i, c in enumerate(data) if c in b'{}[]:,"']
        data[rng.choice(positions)] = rng.choice(b'{}[]:,"0x\\')
    else:  # change one field's value to something of another type or form
        envelope = json.loads(payload)
        key = rng.choice(sorted(envelope))
        envelope[key] = rng.choice(
            [None, 0, -1, 2**70, 1.5, "", "x" * 300, [], {}, True, envelope[key], "AAAA", "%%%"]
        )
        return json.dumps(envelope).encode()
    return bytes(data)


def test_seeded_mutations_only_ever_raise_fleet_record_error(
    signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    rng = random.Random(20260102)
    originals = [
        seal_record(_record(crops=(_crop(4),), qualities=(0.5,)), SITE, FLEET_KEY, signer),
        seal_record(Tombstone("p-0123456789ab", 8, NOW), SITE, FLEET_KEY, signer),
    ]
    manifest = seal_manifest(Manifest(8, {"p-1": 3}, {"p-0123456789ab": 8}, NOW), SITE, signer)
    reasons = set()
    for attempt in range(400):
        original = originals[attempt % 2]
        mutated = _mutate(original, rng)
        for reader in (  # the authority's readers: the policy alone, and a reseal under a new key
            lambda m: record_policy(m, SITE, FLEET_KEY, trusted, "p-0123456789ab"),
            lambda m: reseal_record(m, SITE, [FLEET_KEY], bytes(range(32)), signer, trusted),
        ):
            try:
                reader(mutated)
            except FleetRecordError as err:
                assert err.reason in RECORD_REASONS
        try:
            opened: Optional[Any] = open_record(mutated, SITE, FLEET_KEY, trusted, topic_id="p-0123456789ab")
        except FleetRecordError as err:
            assert err.reason in RECORD_REASONS
            reasons.add(err.reason)
            continue
        # A mutation that leaves the record valid (e.g. a field set to its own value) opens unchanged.
        assert opened == open_record(original, SITE, FLEET_KEY, trusted)
    for _attempt in range(150):
        try:
            open_manifest(_mutate(manifest, rng), SITE, trusted)
        except FleetRecordError as err:
            reasons.add(err.reason)
        try:
            parse_door_document(
                _mutate(json.dumps(door_document("d", SITE, 1, {}, 0, None, NOW)).encode(), rng)
            )
        except FleetRecordError:
            pass
    assert {"malformed", "bad_signature"} <= reasons


# -- the fleet key file ------------------------------------------------------------------------------------


def test_fleet_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "fleet.key"
    key = create_fleet_key(path)
    assert len(key) == 32 and read_fleet_key(path) == key
    assert (path.stat().st_mode & 0o777) == 0o600
    assert path.read_text() == key.hex() + "\n"
    with pytest.raises(FleetError, match="refusing to overwrite"):
        create_fleet_key(path)
    assert read_fleet_key(path) == key


def test_fleet_key_file_refusals(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="does not exist"):
        read_fleet_key(tmp_path / "absent.key")
    with pytest.raises(FleetError, match="not a regular file"):
        read_fleet_key(Path("/dev/zero"))
    for content in (
        b"abc\n",
        b"00" * 31 + b"\n",
        b"zz" * 32,
        os.urandom(32),
        b"00" * 32 + b"\n" + b"00" * 32,
    ):
        path = tmp_path / "bad.key"
        path.write_bytes(content)
        path.chmod(0o600)
        with pytest.raises(FleetError, match="does not hold a fleet key") as caught:
            read_fleet_key(path)
        assert str(path) in str(caught.value)
    exposed = tmp_path / "exposed.key"
    exposed.write_text("ab" * 32 + "\n")
    exposed.chmod(0o644)
    with pytest.raises(FleetError, match="readable by other users"):
        read_fleet_key(exposed)
    exposed.chmod(0o600)
    assert read_fleet_key(exposed) == bytes.fromhex("ab" * 32)
