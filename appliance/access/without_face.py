"""Card and PIN without a face: the way in for people who declined face enrolment, or withdrew it.

GDPR practice asks a door that recognises faces to offer a non-biometric alternative. An identity
*without a face* has no templates at all (``enroll --no-face``, or ``gallery set --forget-face`` when
consent is withdrawn); it keeps its cards and PINs. ``[access.without_face]`` lets such people pass at
a card-and-keypad reader (``[credential_reader]``) that stands at one camera — the passage counts
there: the door that camera opens, anti-passback's direction, the two-person rule:

* ``require = "card_and_pin"``: the card, then within ``within_s`` the PIN (``#`` ends it) at the same
  reader. The card is *held* — a ``denied`` event with the reason ``second_factor`` and
  ``"factors": ["card"]``, the reader blinking amber for the PIN — and their PIN opens the door: a
  ``granted`` event with ``"factors": ["card", "pin"]`` (``"duress": true`` for the duress PIN). A wrong
  PIN is ``denied`` with ``wrong_credential``; after ``max_attempts`` the card must be shown again, and
  ``lockout_after`` wrong PINs within ``lockout_s`` refuse the card at once (``credential_lockout``).
* ``require = "card"``: the card alone opens (``"factors": ["card"]``), as a plain card reader does.

The access policy (validity, suspension, groups and schedules), anti-passback and the two-person rule
apply as they do to a face. A card nobody here holds is an ``unknown`` event with ``"factors":
["card"]``. A card of someone enrolled with a face is not a way in without it: it completes their face
where the door asks for a second factor (:mod:`appliance.access.second_factor`), and is otherwise
ignored — unless one of their groups is a ``face_optional_groups``: they may then pass this way too,
when the camera cannot see them (a site's choice, for the groups that need it: their stolen card and a
watched PIN replace their face), except while the second factor holds their face, which the card then
completes. The events of these passages have no face (``face``, ``score``, ``track_id`` and ``liveness``
null): they carry ``"schema": 2`` (:mod:`appliance.events`).

The waits live in memory on the pipeline thread, one per reader: a restart forgets them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from .credentials import PresentedCredential, verify_pin
from .guessing import GuessCounter
from .policy import IdentityPolicy

logger = logging.getLogger(__name__)

#: The ``require`` values and the credentials each one takes, in order.
REQUIRES: Dict[str, Tuple[str, ...]] = {"card": ("card",), "card_and_pin": ("card", "pin")}


@dataclass(frozen=True)
class CardWait:
    """A card held for its PIN: whose, at which reader and camera, since when (Unix seconds), and the
    wrong PINs tried on it."""

    identity_id: str
    reader: str
    camera_id: str
    at: float
    attempts: int = 0


@dataclass(frozen=True)
class PinMatch:
    """The held card's own PIN came: the door opens (``duress``: it was the duress PIN)."""

    wait: CardWait
    duress: bool


@dataclass(frozen=True)
class PinMismatch:
    """A PIN that is not the card holder's: ``given_up`` when that ended the wait (``max_attempts``, or
    the card locked out by it)."""

    wait: CardWait
    given_up: bool


PinResult = Union[PinMatch, PinMismatch]


class WithoutFaceRule:
    """The rule of ``[access.without_face]`` (see the module).

    Args:
        require: ``card_and_pin`` or ``card``.
        within_s: how long a card waits for its PIN.
        max_attempts: wrong PINs before a card's wait is given up.
        reader_cameras: reader id → the one camera its passages count at.
        lockout_after: wrong PINs on one identity's cards within ``lockout_s`` that lock it out (0: never).
        lockout_s: the window of those, and how long the lockout lasts after the last one.
        face_optional_groups: the access groups whose members with a face may pass by this rule too.
    """

    def __init__(
        self,
        require: str,
        within_s: float,
        max_attempts: int,
        reader_cameras: Mapping[str, str],
        lockout_after: int = 0,
        lockout_s: float = 900.0,
        face_optional_groups: Sequence[str] = (),
    ) -> None:
        if require not in REQUIRES:
            raise ValueError(f"require must be one of {', '.join(REQUIRES)}, got {require!r}")
        self.require = require
        self.within_s = within_s
        self.max_attempts = max_attempts
        self.reader_cameras = dict(reader_cameras)
        self.face_optional_groups = frozenset(face_optional_groups)
        self._guesses = GuessCounter(lockout_after, lockout_s, "their card")
        #: reader id → the card waiting there for its PIN
        self._waits: Dict[str, CardWait] = {}

    @property
    def needs_pin(self) -> bool:
        """Whether a card waits for its PIN (``card_and_pin``)."""
        return self.require == "card_and_pin"

    def face_optional(self, policy: IdentityPolicy) -> bool:
        """Whether someone with a face and ``policy`` may pass by this rule too (one of their groups is a
        ``face_optional_groups``)."""
        return not self.face_optional_groups.isdisjoint(policy.groups)

    def camera_of(self, reader: str) -> Optional[str]:
        """The camera ``reader``'s passages count at, or ``None`` for a reader this rule does not serve."""
        return self.reader_cameras.get(reader)

    def locked_out(self, identity_id: str, at: float) -> bool:
        """Whether ``identity_id``'s card is refused for guessing at its PIN (see :class:`GuessCounter`)."""
        return self._guesses.locked_out(identity_id, at)

    def hold(self, identity_id: str, reader: str, at: float) -> CardWait:
        """``identity_id``'s card shown at ``reader`` at ``at`` (Unix seconds) now waits for its PIN; a card
        waiting there before is forgotten (the reader serves one person at a time)."""
        camera_id = self.reader_cameras[reader]
        wait = CardWait(identity_id, reader, camera_id, at)
        self._waits[reader] = wait
        logger.debug("without a face: a card waits for its PIN at reader %s", reader)
        return wait

    def waiting(self, reader: str, at: float) -> Optional[CardWait]:
        """The card waiting at ``reader`` at ``at``, or ``None`` (none, or it waited over ``within_s``)."""
        wait = self._waits.get(reader)
        if wait is not None and not 0.0 <= at - wait.at <= self.within_s:
            del self._waits[reader]  # lapsed, or a clock set back
            return None
        return wait

    def pin(self, credential: PresentedCredential, policy: IdentityPolicy) -> Optional[PinResult]:
        """A PIN entered at a reader: matched against the card waiting there (``policy`` is its holder's
        current policy). ``None`` when no card waits there."""
        wait = self.waiting(credential.reader, credential.at)
        if wait is None:
            return None
        if verify_pin(credential.value, policy.pin):
            del self._waits[credential.reader]
            return PinMatch(wait, False)
        if verify_pin(credential.value, policy.duress_pin):
            del self._waits[credential.reader]
            return PinMatch(wait, True)
        self._guesses.note(wait.identity_id, credential.at)
        attempts = wait.attempts + 1
        given_up = attempts >= self.max_attempts or self._guesses.locked_out(wait.identity_id, credential.at)
        if given_up:
            del self._waits[credential.reader]
        else:
            self._waits[credential.reader] = replace(wait, attempts=attempts)
        return PinMismatch(wait, given_up)

    def forget(self, reader: str) -> None:
        """Drop the card waiting at ``reader`` (another card was shown there, or its holder is gone)."""
        self._waits.pop(reader, None)


__all__ = ["REQUIRES", "CardWait", "PinMatch", "PinMismatch", "PinResult", "WithoutFaceRule"]
