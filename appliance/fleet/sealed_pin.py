"""A PIN hash learned at a door for the site's authority (``fleet learn-pin``), sealed with the fleet key.

A fleet identity's PIN is the authority's to publish, and its digits should reach nobody: not the
operator, not MQTT. So the authority asks a door (MQTT ``learn_pin`` with ``"for_fleet": true``); the
person types the PIN twice at that door's reader; the door hashes it as it would store it
(:func:`appliance.access.credentials.hash_pin`), stores nothing, and answers the hash sealed here;
the authority opens it and publishes the identity's record with that hash.

The seal is AES-256-GCM under the fleet key, its associated data binding the site, the identity, the
command's ``request_id`` and what was learned (``pin`` or ``duress_pin``): an answer cannot be replayed
into another request, moved to another person, or taken as the other PIN. Only the hash travels, and
only sealed; a PIN's few digits cannot resist a search once its hash is read, which is why it is sealed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from cryptography.exceptions import InvalidTag

from ..access.credentials import check_pin_hash
from ..access.errors import PolicyError
from .errors import FleetError
from .records import fleet_aead

_DOMAIN = b"face-appliance sealed pin hash v1\x00"
_NONCE_BYTES = 12
#: A sealed hash's text at most (base64 of the nonce, a hash of at most ~200 characters and the tag).
MAX_SEALED_CHARS = 512
PIN_KEYS = ("pin", "duress_pin")


def _bound_to(site: str, identity_id: str, request_id: str, what: str) -> bytes:
    if what not in PIN_KEYS:
        raise ValueError(f"a sealed PIN hash is a {' or '.join(PIN_KEYS)}, not {what!r}")
    return _DOMAIN + json.dumps([site, identity_id, request_id, what]).encode("utf-8")


def seal_pin_hash(
    fleet_key: bytes, site: str, identity_id: str, request_id: str, what: str, pin_hash: str
) -> str:
    """``pin_hash`` (:func:`~appliance.access.credentials.hash_pin`'s text) sealed for the authority:
    base64 of the nonce and the ciphertext."""
    nonce = os.urandom(_NONCE_BYTES)
    sealed = fleet_aead(fleet_key).encrypt(
        nonce, pin_hash.encode("ascii"), _bound_to(site, identity_id, request_id, what)
    )
    return base64.b64encode(nonce + sealed).decode("ascii")


def open_pin_hash(
    sealed: object, fleet_key: bytes, site: str, identity_id: str, request_id: str, what: str
) -> str:
    """The PIN hash a door sealed for this request (see the module).

    Raises:
        FleetError: not a sealed hash of this site's key for this identity, request and PIN, or what
            it holds is not a PIN hash of bounded cost.
    """
    if not isinstance(sealed, str) or not sealed or len(sealed) > MAX_SEALED_CHARS:
        raise FleetError(f"the door's answer holds no sealed PIN hash (text of at most {MAX_SEALED_CHARS})")
    try:
        data = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError):
        raise FleetError("the door's sealed PIN hash is not base64") from None
    try:
        plain = fleet_aead(fleet_key).decrypt(
            data[:_NONCE_BYTES], data[_NONCE_BYTES:], _bound_to(site, identity_id, request_id, what)
        )
    except (InvalidTag, ValueError):
        raise FleetError(
            f"the door's sealed PIN hash does not open as the {what.replace('_', ' ')} of {identity_id!r} in "
            f"site {site!r} (another site's fleet key, another request, or altered)"
        ) from None
    try:
        return check_pin_hash(plain.decode("ascii"), what)
    except (UnicodeDecodeError, PolicyError) as err:
        raise FleetError(f"the door's sealed PIN hash holds no PIN hash: {err}") from None


__all__ = ["MAX_SEALED_CHARS", "PIN_KEYS", "open_pin_hash", "seal_pin_hash"]
