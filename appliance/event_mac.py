"""Access events authenticated with the site's fleet key, so that another door can trust them.

A door that holds the site's fleet key (``fleet.fleet_key_file``) adds to each access event it
publishes::

    "mac": {"alg": "HMAC-SHA256", "key_id": "<16 hex>", "value": "<64 hex>"}

``value`` is HMAC-SHA256, under a key derived from the fleet key (HKDF-SHA256, info
:data:`_KEY_INFO`: never the fleet key itself, which encrypts the fleet's records), of
:data:`_CONTEXT` followed by the event **without** its ``mac`` key in canonical JSON: keys sorted,
no spaces, UTF-8 as is (``json.dumps(event, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``). ``key_id`` names the derived key (the first 8 bytes of its SHA-256 over a
label), so a door of another site, or one with a replaced key, is told apart from a forgery.

After the site's fleet key is rotated (``fleet rotate-key``), a door given the new key as
``fleet.fleet_key_file`` and the old one as ``fleet.previous_fleet_key_file`` signs under the new key
and verifies under both, so the doors of an area can be given the new key one after the other.

What it proves: the event was written by an appliance that holds this site's fleet key, and not one
byte of it changed since. What it does not: which door wrote it (every door of the site holds the
key; the receiver checks that ``device_id`` is the door of the topic, and the MAC covers it), nor
that it is new (an event captured on the broker can be published again; anti-passback across an
area takes a passage only when it is newer than the one kept, so a replay changes nothing unless
the person's state was reset after it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any, Dict, Mapping, Optional

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: What is authenticated starts with this, so a MAC over an event is never one over anything else.
_CONTEXT = b"face-appliance access event v1\x00"
_KEY_INFO = b"face-appliance access-event mac key v1"
_KEY_ID_LABEL = b"face-appliance access-event key id v1\x00"
ALGORITHM = "HMAC-SHA256"
_HEX16 = re.compile(r"^[0-9a-f]{16}\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


class EventMacError(ValueError):
    """An event's ``mac`` is missing, malformed, under another key, or does not match."""


def _mac_key(fleet_key: bytes) -> bytes:
    if not isinstance(fleet_key, bytes) or len(fleet_key) != 32:
        raise ValueError("the fleet key must be 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(fleet_key)


def _key_id(mac_key: bytes) -> str:
    return hashlib.sha256(_KEY_ID_LABEL + mac_key).hexdigest()[:16]


class EventKey:
    """The key that authenticates access events, derived from the site's 32-byte fleet key; with
    ``previous`` (the fleet key before the site's last rotation, ``fleet rotate-key``), events signed
    under it are verified too, while the doors of the area are given the new key one by one. Events
    are signed under the current key only.

    Raises:
        ValueError: a key is not 32 bytes.
    """

    def __init__(self, fleet_key: bytes, previous: Optional[bytes] = None) -> None:
        self._key = _mac_key(fleet_key)
        self.key_id = _key_id(self._key)
        #: key id → MAC key, of the keys whose events are verified
        self._verifies = {self.key_id: self._key}
        if previous is not None:
            older = _mac_key(previous)
            self._verifies[_key_id(older)] = older

    def _value(self, event: Mapping[str, Any], mac_key: Optional[bytes] = None) -> str:
        body = {key: value for key, value in event.items() if key != "mac"}
        canonical = json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return hmac.new(
            mac_key or self._key, _CONTEXT + canonical.encode("utf-8"), hashlib.sha256
        ).hexdigest()

    def sign(self, event: Dict[str, Any]) -> None:
        """Add (or replace) the event's ``mac``; the event must be JSON (no NaN)."""
        event["mac"] = {"alg": ALGORITHM, "key_id": self.key_id, "value": self._value(event)}

    def verify(self, event: Mapping[str, Any]) -> None:
        """Check the event's ``mac``.

        Raises:
            EventMacError: no ``mac``, a malformed one, one under another key, or one that does not match
                (the event was changed, or forged); the message says which.
        """
        mac = event.get("mac")
        if mac is None:
            raise EventMacError(
                "the event carries no mac (is fleet.fleet_key_file set on the door that sent it?)"
            )
        if not isinstance(mac, dict) or set(mac) != {"alg", "key_id", "value"} or mac["alg"] != ALGORITHM:
            raise EventMacError(f"a malformed mac (expected alg {ALGORITHM}, key_id and value)")
        key_id, value = mac["key_id"], mac["value"]
        if not isinstance(key_id, str) or not _HEX16.match(key_id) or not isinstance(value, str):
            raise EventMacError("a malformed mac key_id (16 lowercase hex digits)")
        mac_key = self._verifies.get(key_id)
        if mac_key is None:
            raise EventMacError(
                f"signed under key {key_id}, not this site's {self.key_id} (another site's door, or a "
                "fleet key that differs between the doors: one given the rotated key before this one?)"
            )
        try:
            expected = self._value(event, mac_key)
        except ValueError as err:  # NaN or infinity: not JSON, not signed by a door
            raise EventMacError(f"not canonical JSON ({err})") from None
        if not _HEX64.match(value) or not hmac.compare_digest(value, expected):
            raise EventMacError("the mac does not match the event (changed or forged)")


__all__ = ["ALGORITHM", "EventKey", "EventMacError"]
