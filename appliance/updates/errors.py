"""Errors of model updates: packages, transfers and swaps.

::

    UpdateError (ApplianceError)   an update step failed (transfer, staging, swap, rollback)
     +-- PackageError              a model package was refused; ``reason`` says why, as a short code

A :class:`PackageError`'s ``reason`` is one of :data:`PACKAGE_REASONS`; it is what the UDS server
reports to ``push-model`` and what the swap manager publishes, so the codes stay stable.
"""

from __future__ import annotations

from typing import FrozenSet

from ..errors import ApplianceError

#: the package file cannot be opened or read (a disk or permission problem, not the package's fault)
UNREADABLE = "unreadable"
#: not a package: not a tar file, members of the wrong type, order or name, an invalid manifest
MALFORMED = "malformed"
#: the file, the manifest or a member is larger than allowed
TOO_LARGE = "too_large"
#: no ``manifest.sig`` member
NO_SIGNATURE = "no_signature"
#: the signature does not verify with the named key (forged, or the manifest was altered)
BAD_SIGNATURE = "bad_signature"
#: the signing key is not among the trusted keys
UNKNOWN_KEY = "unknown_key"
#: a payload file's size or sha256 differs from the signed manifest
TAMPERED = "tampered"
#: the file ends before the manifest's payload does
TRUNCATED = "truncated"
#: the release is not above the active one and the manifest does not allow a rollback
NOT_NEWER = "not_newer"
#: the model's inputs, outputs or pre-processing are not what the pipeline needs
INCOMPATIBLE = "incompatible"
#: the package needs a newer firmware than this one
FIRMWARE_TOO_OLD = "firmware_too_old"

PACKAGE_REASONS: FrozenSet[str] = frozenset(
    {
        UNREADABLE,
        MALFORMED,
        TOO_LARGE,
        NO_SIGNATURE,
        BAD_SIGNATURE,
        UNKNOWN_KEY,
        TAMPERED,
        TRUNCATED,
        NOT_NEWER,
        INCOMPATIBLE,
        FIRMWARE_TOO_OLD,
    }
)


class UpdateError(ApplianceError):
    """A model update step failed: transfer, staging, verification, swap or rollback."""


class PackageError(UpdateError):
    """A model package that is refused.

    Args:
        message: what was found and what to try (shown to people).
        reason: a short machine-readable code; this module's refusals use :data:`PACKAGE_REASONS`.

    Attributes:
        reason: the code, e.g. ``"bad_signature"``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple:  # keep ``reason`` across pickling (multiprocessing, logging queues)
        return (_rebuild_package_error, (str(self), self.reason))


def _rebuild_package_error(message: str, reason: str) -> PackageError:
    return PackageError(message, reason=reason)


class KeyFileError(UpdateError):
    """A signing or trusted key file: missing, unreadable, not an Ed25519 key, exposed, or already there."""


__all__ = [
    "BAD_SIGNATURE",
    "FIRMWARE_TOO_OLD",
    "INCOMPATIBLE",
    "MALFORMED",
    "NOT_NEWER",
    "NO_SIGNATURE",
    "PACKAGE_REASONS",
    "TAMPERED",
    "TOO_LARGE",
    "TRUNCATED",
    "UNKNOWN_KEY",
    "UNREADABLE",
    "KeyFileError",
    "PackageError",
    "UpdateError",
]
