"""Errors of the fleet: the record codec, the enrolment authority and its broker connection.

::

    FleetError (ApplianceError)   a fleet key, the authority's state or its broker cannot be used
     +-- FleetRecordError         a record, tombstone, manifest or door document was refused; ``reason``
                                  says why, as a short code (:data:`RECORD_REASONS`)

A :class:`FleetRecordError`'s ``reason`` is what a door reports in its ``…/state`` and its digest
document (``refused.last.reason``), so the codes stay stable.
"""

from __future__ import annotations

from typing import Tuple

from ..errors import ApplianceError

#: the payload is larger than accepted (before anything else is looked at)
TOO_LARGE = "too_large"
#: not the envelope: not UTF-8 JSON, a key missing or unknown, a value of the wrong type, bad base64
MALFORMED = "malformed"
#: signed with a key that is not among the trusted authority keys
UNTRUSTED_KEY = "untrusted_key"
#: the signature does not verify (forged, or a signed field was altered)
BAD_SIGNATURE = "bad_signature"
#: a genuine record of another site
WRONG_SITE = "wrong_site"
#: a genuine record published on another identity's topic
WRONG_ID = "wrong_id"
#: the ciphertext does not open with this fleet key and header (another key, or moved or altered)
DECRYPT_FAILED = "decrypt_failed"
#: signed and decrypted, but a field is invalid (a name, a crop, the policy, a revision)
INVALID = "invalid"

RECORD_REASONS: Tuple[str, ...] = (
    TOO_LARGE,
    MALFORMED,
    UNTRUSTED_KEY,
    BAD_SIGNATURE,
    WRONG_SITE,
    WRONG_ID,
    DECRYPT_FAILED,
    INVALID,
)


class FleetError(ApplianceError):
    """Base class of the fleet's errors: a key file, the authority's state, the broker."""


class FleetRecordError(FleetError):
    """A fleet payload that is refused; nothing may be applied from it.

    Attributes:
        reason: one of :data:`RECORD_REASONS`.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in RECORD_REASONS:
            raise ValueError(f"unknown fleet refusal reason {reason!r}")
        self.reason = reason
        super().__init__(f"{reason}: {message}")


__all__ = [
    "BAD_SIGNATURE",
    "DECRYPT_FAILED",
    "INVALID",
    "MALFORMED",
    "RECORD_REASONS",
    "TOO_LARGE",
    "UNTRUSTED_KEY",
    "WRONG_ID",
    "WRONG_SITE",
    "FleetError",
    "FleetRecordError",
]
