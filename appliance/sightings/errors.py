"""Errors of the store of faces seen at the door (:mod:`appliance.sightings`).

::

    SightingError (ApplianceError)
     +-- SightingStoreError   the database cannot be opened or written, is newer than this firmware, or
     |                        its key is missing or not the gallery's
     +-- NotKeptError         no face is kept for that event id or cluster (off, expired, unknown id)
     +-- MarkError            a face that is kept cannot become what was asked (not a grant, another
                              identity, the identity was removed; for walk-up enrolment, not unknown)
"""

from __future__ import annotations

from ..errors import ApplianceError


class SightingError(ApplianceError):
    """Base class; ``code`` is what a remote command's error result carries."""

    code = "refused"


class SightingStoreError(SightingError):
    """The sightings database or its key cannot be used."""

    code = "failed"


class NotKeptError(SightingError):
    """No face is kept for the event id or cluster asked for."""

    code = "not_kept"


class MarkError(SightingError):
    """A kept face that cannot be marked as asked; ``code`` says why (``not_a_grant``, …)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
