"""Multi-factor access: a recognised face completed by a card or a PIN at the reader beside the camera
(what commercial terminals call face + card and face + PIN modes), and the duress PIN.

``[access.second_factor]``: members of ``groups`` (everyone, when it is empty) must add what
``require`` names — ``card``, ``pin`` or ``card_or_pin`` — at a reader of ``[credential_reader]`` that
stands at the camera (its ``cameras``; every camera when it names none). Either order works:

* **Face first.** A grant the policy and anti-passback allow is *held*: the event is ``denied`` with
  the reason ``second_factor``, the door stays locked and the reader blinks for the card or PIN.
  The identity's own card (one of its ``cards``) or PIN presented within ``within_s`` opens the door:
  a ``granted`` event with ``"factors": ["face", "card"]`` (or ``"pin"``). A card or PIN that is not
  the waiting person's is a ``denied`` event with the reason ``wrong_credential``; after
  ``max_attempts`` of them the wait is given up (the face must come again).
* **Card or PIN first.** It waits ``within_s`` at its reader; the face grant that comes meanwhile and
  matches it opens at once. A credential matching nobody who comes is forgotten, unreported (a card
  waved at an idle reader is not an attempt on anyone).

**Guessing.** ``max_attempts`` bounds the tries on one wait; the face can come again, so across
waits one identity may collect ``lockout_after`` wrong cards or PINs in ``lockout_s`` — after that its
face grants are denied at once with the reason ``credential_lockout`` (not held, nothing to guess
at) until ``lockout_s`` has passed since the last wrong one. A 4-digit PIN then takes years to guess
at the door, not hours. The count lives in memory with the waits.

**Duress.** The identity's ``duress_pin``, entered wherever its PIN is asked, opens the door exactly
as the PIN does — the door, the reader and the event's ``decision`` show nothing else — and the access
event carries ``"duress": true``, which the site's monitoring turns into a silent alarm.

The state is a few seconds of waiting faces and credentials in memory, on the pipeline thread: a
restart forgets them (the person shows their face again). A PIN is checked against at most
:data:`MAX_WAITING` waiting people, two scrypt hashes each.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

from .credentials import PresentedCredential, verify_pin
from .guessing import GuessCounter
from .policy import IdentityPolicy

logger = logging.getLogger(__name__)

#: The reason a face grant is held with while it waits for its card or PIN.
SECOND_FACTOR = "second_factor"
#: The reason of a card or PIN that is not the waiting person's.
WRONG_CREDENTIAL = "wrong_credential"
#: The reason a face grant is denied without a wait while its identity is locked out for guessing.
CREDENTIAL_LOCKOUT = "credential_lockout"
#: Faces waiting at once (more are refused the oldest first: a crowd at one reader cannot make a PIN
#: cost more than this many checks).
MAX_WAITING = 4
#: Credentials presented first, kept per reader.
MAX_PRESENTED = 4
#: Which kinds of credential each ``require`` accepts.
ACCEPTS = {"card": ("card",), "pin": ("pin",), "card_or_pin": ("card", "pin")}


@dataclass(frozen=True)
class Waiting:
    """A face grant held for its second factor: who, at which camera, since when (Unix seconds), and
    how many wrong credentials were tried on it."""

    identity_id: str
    camera_id: str
    at: float
    attempts: int = 0


@dataclass(frozen=True)
class Completion:
    """A face grant completed by a credential (the door opens).

    Attributes:
        factor: ``card`` or ``pin``.
        duress: the PIN was the identity's duress PIN.
        reader: the reader it was presented at.
    """

    identity_id: str
    camera_id: str
    factor: str
    duress: bool
    reader: str


@dataclass(frozen=True)
class Refusal:
    """A credential that was not the waiting person's: ``given_up`` when that ended their wait."""

    identity_id: str
    camera_id: str
    factor: str
    reader: str
    given_up: bool


Outcome = Union[Completion, Refusal]


class SecondFactorRule:
    """The rule of ``[access.second_factor]`` (see the module).

    Args:
        require: ``card``, ``pin`` or ``card_or_pin``.
        groups: whose grants need a second factor; empty: everyone's.
        within_s: how long a face waits for its credential, and a credential for its face.
        max_attempts: wrong credentials before a wait is given up.
        readers: reader id → the cameras it stands at (empty: every camera).
        lockout_after: wrong credentials on one identity's waits within ``lockout_s`` that lock it out
            (0: never).
        lockout_s: the window of those, and how long the lockout lasts after the last one.
    """

    def __init__(
        self,
        require: str,
        groups: Sequence[str],
        within_s: float,
        max_attempts: int,
        readers: Mapping[str, Sequence[str]],
        lockout_after: int = 0,
        lockout_s: float = 900.0,
    ) -> None:
        if require not in ACCEPTS:
            raise ValueError(f"require must be one of {', '.join(ACCEPTS)}, got {require!r}")
        self.require = require
        self.accepts = ACCEPTS[require]
        self.groups: FrozenSet[str] = frozenset(groups)
        self.within_s = within_s
        self.max_attempts = max_attempts
        self.readers: Dict[str, FrozenSet[str]] = {r: frozenset(c) for r, c in readers.items()}
        self._waiting: Dict[str, Waiting] = {}
        self._presented: Dict[str, Deque[PresentedCredential]] = {}
        self._guesses = GuessCounter(lockout_after, lockout_s, "their face")

    def needs(self, groups: Sequence[str]) -> bool:
        """Whether a member of ``groups`` must add a second factor."""
        return not self.groups or bool(self.groups.intersection(groups))

    def serves(self, reader: str, camera_id: str) -> bool:
        """Whether ``reader`` stands at ``camera_id``."""
        cameras = self.readers.get(reader)
        return cameras is not None and (not cameras or camera_id in cameras)

    def locked_out(self, identity_id: str, at: float) -> bool:
        """Whether ``identity_id`` collected ``lockout_after`` wrong credentials, the last one less
        than ``lockout_s`` before ``at``."""
        return self._guesses.locked_out(identity_id, at)

    def hold(
        self, identity_id: str, camera_id: str, policy: IdentityPolicy, at: float
    ) -> Optional[Completion]:
        """A face grant that needs a second factor, at ``at`` (Unix seconds): completed at once by a
        matching credential presented first at a reader of its camera (which is used up), else held.

        Returns:
            The completion, or ``None`` when the grant now waits.
        """
        self._expire(at)
        for reader, presented in self._presented.items():
            if not self.serves(reader, camera_id):
                continue
            for credential in list(presented):
                duress = self._match(credential, policy)
                if duress is not None:
                    presented.remove(credential)
                    self._waiting.pop(identity_id, None)
                    return Completion(identity_id, camera_id, credential.kind, duress, reader)
        self._waiting.pop(identity_id, None)
        while len(self._waiting) >= MAX_WAITING:
            oldest = min(self._waiting.values(), key=lambda w: w.at)
            del self._waiting[oldest.identity_id]
        self._waiting[identity_id] = Waiting(identity_id, camera_id, at)
        logger.debug("second factor: a grant waits for its %s (%d waiting)", self.require, len(self._waiting))
        return None

    def present(
        self, credential: PresentedCredential, policy_of: Callable[[str], Optional[IdentityPolicy]]
    ) -> List[Outcome]:
        """A card or PIN presented at a reader: it completes the waiting face it belongs to, or counts
        as a wrong attempt on the longest-waiting one there, or (nobody waiting) waits for its face.

        Args:
            policy_of: an identity's current policy (``None``: removed meanwhile — its wait ends).
        """
        self._expire(credential.at)
        if credential.reader not in self.readers:
            logger.warning(
                "second factor: a credential from an unknown reader %r is ignored", credential.reader
            )
            return []
        if credential.kind not in self.accepts:
            logger.debug("second factor: a %s is not asked for here; ignored", credential.kind)
            return []
        here = sorted(
            (w for w in self._waiting.values() if self.serves(credential.reader, w.camera_id)),
            key=lambda w: w.at,
        )
        for waiting in here:
            policy = policy_of(waiting.identity_id)
            if policy is None:
                del self._waiting[waiting.identity_id]
                continue
            duress = self._match(credential, policy)
            if duress is not None:
                del self._waiting[waiting.identity_id]
                return [
                    Completion(
                        waiting.identity_id, waiting.camera_id, credential.kind, duress, credential.reader
                    )
                ]
        here = [w for w in here if w.identity_id in self._waiting]
        if not here:
            self._presented.setdefault(credential.reader, deque(maxlen=MAX_PRESENTED)).append(credential)
            return []
        tried = here[0]
        self._guesses.note(tried.identity_id, credential.at)
        attempts = tried.attempts + 1
        # A wrong one that locks the face out ends the wait too: its tries left would be guesses past the lockout.
        given_up = attempts >= self.max_attempts or self._guesses.locked_out(tried.identity_id, credential.at)
        if given_up:
            del self._waiting[tried.identity_id]
        else:
            self._waiting[tried.identity_id] = Waiting(tried.identity_id, tried.camera_id, tried.at, attempts)
        return [Refusal(tried.identity_id, tried.camera_id, credential.kind, credential.reader, given_up)]

    def waiting(self, at: Optional[float] = None) -> Tuple[Waiting, ...]:
        """The faces waiting now (at ``at``), oldest first."""
        if at is not None:
            self._expire(at)
        return tuple(sorted(self._waiting.values(), key=lambda w: w.at))

    def _match(self, credential: PresentedCredential, policy: IdentityPolicy) -> Optional[bool]:
        """``False`` when ``credential`` is ``policy``'s card or PIN, ``True`` for its duress PIN, else
        ``None``."""
        if credential.kind not in self.accepts:
            return None
        if credential.kind == "card":
            return False if credential.value in policy.cards else None
        if verify_pin(credential.value, policy.pin):
            return False
        if verify_pin(credential.value, policy.duress_pin):
            return True
        return None

    def _expire(self, at: float) -> None:
        """Drop the waits and credentials more than ``within_s`` from ``at``, either way: older ones
        lapsed, and ones that far ahead mean a clock set back. (A credential stamped by the reader's
        thread a moment before a face's wait began is no reason to end that wait.)"""
        for identity_id in [i for i, w in self._waiting.items() if abs(at - w.at) > self.within_s]:
            del self._waiting[identity_id]
        for presented in self._presented.values():
            for credential in [c for c in presented if abs(at - c.at) > self.within_s]:
                presented.remove(credential)


__all__ = [
    "ACCEPTS",
    "CREDENTIAL_LOCKOUT",
    "MAX_WAITING",
    "SECOND_FACTOR",
    "WRONG_CREDENTIAL",
    "Completion",
    "Refusal",
    "SecondFactorRule",
    "Waiting",
]
