"""The two-person rule: members of some groups pass only with a second person (a vault, a server room,
a pharmacy's stock) — what commercial terminals call dual or multi-person authentication.

``[access.two_person]``: identities in ``groups`` need a companion. Their grant — after the policy
and anti-passback — is held: the event is ``denied`` with the reason ``two_person`` and the door stays
locked. When, within ``within_s``, another identity is granted here who may accompany them (a member of
``companions``, or anyone when that list is empty), that grant opens the door for both: its event
says ``"companions": [their ids]``, and both passages count for anti-passback. Someone who needs a
companion can be one for someone else (two vault staff, with ``companions`` empty), and one grant
completes every waiting person it may accompany. Nobody accompanies themself: the same identity again
only renews their wait.

The state is a few seconds of waiting people in memory, on the pipeline thread; a restart or a reload
forgets it (they show their face again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, FrozenSet, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

#: The reason a held grant is denied with, while it waits for a second person.
TWO_PERSON = "two_person"


@dataclass(frozen=True)
class Waiting:
    """A grant held for a companion: who, at which camera, since when (Unix seconds)."""

    identity_id: str
    camera_id: str
    at: float


class TwoPersonRule:
    """The rule of ``[access.two_person]`` (see the module).

    Args:
        groups: the groups whose members need a companion.
        companions: the groups a companion must be in; empty: anyone granted here.
        within_s: how long a held grant waits for its companion.
    """

    def __init__(self, groups: Sequence[str], companions: Sequence[str], within_s: float) -> None:
        self.groups: FrozenSet[str] = frozenset(groups)
        self.companions: FrozenSet[str] = frozenset(companions)
        self.within_s = within_s
        self._waiting: Dict[str, Waiting] = {}

    def needs_companion(self, groups: Sequence[str]) -> bool:
        return bool(self.groups.intersection(groups))

    def may_accompany(self, groups: Sequence[str]) -> bool:
        return not self.companions or bool(self.companions.intersection(groups))

    def admit(
        self, identity_id: str, groups: Sequence[str], camera_id: str, at: float
    ) -> Tuple[bool, Tuple[Waiting, ...]]:
        """A grant the policy allowed at ``at`` (Unix seconds).

        Returns:
            ``(admitted, completed)``: whether it opens the door, and the waiting grants it completes
            (their people pass with it). Not admitted: it now waits for a companion.
        """
        self._expire(at)
        completed: Tuple[Waiting, ...] = ()
        if self.may_accompany(groups):
            completed = tuple(w for w in self._waiting.values() if w.identity_id != identity_id)
            for waiting in completed:
                del self._waiting[waiting.identity_id]
        if completed or not self.needs_companion(groups):
            self._waiting.pop(identity_id, None)
            return True, completed
        self._waiting[identity_id] = Waiting(identity_id, camera_id, at)
        logger.debug("two-person rule: a grant waits for a companion (%d waiting)", len(self._waiting))
        return False, ()

    def waiting(self, at: Optional[float] = None) -> Tuple[Waiting, ...]:
        """The grants waiting now (at ``at``), oldest first."""
        if at is not None:
            self._expire(at)
        return tuple(sorted(self._waiting.values(), key=lambda w: w.at))

    def _expire(self, at: float) -> None:
        for identity_id in [i for i, w in self._waiting.items() if not 0.0 <= at - w.at <= self.within_s]:
            del self._waiting[identity_id]


__all__ = ["TWO_PERSON", "TwoPersonRule", "Waiting"]
