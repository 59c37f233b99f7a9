"""Errors of the gallery, by phase.

::

    GalleryError (ApplianceError)
     +-- GalleryKeyError       the encryption key is missing, unreadable, exposed or the wrong one
     +-- GalleryStoreError     the database cannot be opened, is newer than this firmware, or is damaged
     +-- IdentityError         enrolment or removal asked for something impossible (unknown id, clash)
     |    +-- FleetIdentityError   a change made at a fleet door to an identity the site authority owns
     +-- BundleError           an export bundle is unreadable, forged, or has the wrong passphrase
     +-- GalleryBusyError      a change that would not wait found the gallery busy
     +-- StaleEmbeddingError   embeddings made by another embedder than the one the gallery holds now
"""

from __future__ import annotations

from ..errors import ApplianceError


class GalleryError(ApplianceError):
    """Base class of the gallery's errors."""


class GalleryKeyError(GalleryError):
    """The gallery key: missing while data exists, readable by others, malformed, or not this gallery's."""


class GalleryStoreError(GalleryError):
    """The template database: unreadable, corrupted, altered, or from a newer schema."""


class IdentityError(GalleryError):
    """An identity operation that cannot be done: unknown id, id taken by another name, bad id."""


class FleetIdentityError(IdentityError):
    """A change made at this door (``gallery set``, ``remove``, ``learn_pin`` …) to an identity that the
    site's fleet records brought: it is the enrolment authority's to change (``fleet set``); the
    identity's next record would undo a change made here."""


class BundleError(GalleryError):
    """An export bundle that cannot be imported: not a bundle, wrong passphrase, tampered, or invalid."""


class GalleryBusyError(GalleryError):
    """A change asked not to wait (the template update) found the gallery busy: another
    change in progress, or its index file being written. Nothing was changed."""


class StaleEmbeddingError(GalleryError):
    """Embeddings computed off the change lock came from an embedder the gallery no longer holds (a
    model switch came in between). Nothing was changed: embed again with the active embedder."""
