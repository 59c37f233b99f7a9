"""Enrolling a card by presenting it: the MQTT ``learn_card`` command arms the door's card readers for
one identity, and the next card read there (within ``within_s``) becomes one of its cards — what a
terminal's "register card" does, without the operator having to know the card's format or numbers.

One learning at a time, on the pipeline thread: the command is answered when the card comes (``{"id",
"card", "added"}``), when no card came in time (``timeout``), when the card is another identity's
(``invalid``), or when the daemon stops (``busy``). While a learning waits, a card read at its readers
is taken by it, not by the second factor; PINs pass as usual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from .credentials import PresentedCredential
from .errors import PolicyError

logger = logging.getLogger(__name__)

#: ``answer(command name, request id, result or None, (code, message) or None)``.
LearningAnswer = Callable[[str, Optional[str], Optional[Dict[str, Any]], Optional[Any]], None]


@dataclass(frozen=True)
class _Armed:
    identity_id: str
    name: str
    request_id: Optional[str]
    reader: Optional[str]
    until: float


class CardLearning:
    """The ``learn_card`` command's waiting request (see the module).

    Args:
        answer: sends a command's answer (the command service's).
    """

    def __init__(self, answer: LearningAnswer) -> None:
        self._answer = answer
        self._armed: Optional[_Armed] = None

    @property
    def armed(self) -> Optional[str]:
        """The identity a card is being learned for, or ``None``."""
        return None if self._armed is None else self._armed.identity_id

    def arm(
        self, identity_id: str, name: str, request_id: Optional[str], reader: Optional[str], until: float
    ) -> bool:
        """Wait for a card for ``identity_id`` until ``until`` (Unix seconds) at ``reader`` (``None``:
        any). ``False`` when a learning already waits (the caller refuses the command)."""
        if self._armed is not None:
            return False
        self._armed = _Armed(identity_id, name, request_id, reader, until)
        logger.info("learning a card at the reader for an identity, until the next card read")
        return True

    def take(
        self, presented: Sequence[PresentedCredential], store: Any, now: float
    ) -> List[PresentedCredential]:
        """The credentials from the readers, without the card this learning took (which is added to
        the identity and answered); expires the learning at ``now`` (Unix seconds)."""
        armed = self._armed
        if armed is None:
            return list(presented)
        remaining: List[PresentedCredential] = []
        for credential in presented:
            if (
                self._armed is not None
                and credential.kind == "card"
                and armed.reader in (None, credential.reader)
            ):
                self._armed = None
                self._learn(armed, credential.value, store)
            else:
                remaining.append(credential)
        if self._armed is not None and now > self._armed.until:
            self._armed = None
            self._answer(
                armed.name,
                armed.request_id,
                None,
                (
                    "timeout",
                    "no card was presented at the reader in time; send learn_card again and present it",
                ),
            )
        return remaining

    def abandon(self, why: str) -> None:
        """Answer a waiting learning as refused (``busy``: the daemon stops)."""
        armed, self._armed = self._armed, None
        if armed is not None:
            self._answer(armed.name, armed.request_id, None, ("busy", why))

    def _learn(self, armed: _Armed, card: str, store: Any) -> None:
        from ..gallery.errors import IdentityError

        identity = store.identity(armed.identity_id)
        if identity is None:
            self._answer(
                armed.name, armed.request_id, None, ("refused", f"no identity {armed.identity_id!r}")
            )
            return
        added = card not in identity.policy.cards
        try:
            if added:
                store.set_policy(identity.id, identity.policy.changed({"add_cards": [card]}))
        except (IdentityError, PolicyError) as err:  # another's card, or already 8 cards
            self._answer(armed.name, armed.request_id, None, ("invalid", str(err)))
            return
        logger.info(
            "a card was learned at the reader for an identity (%s)", "added" if added else "held already"
        )
        self._answer(armed.name, armed.request_id, {"id": identity.id, "card": card, "added": added}, None)


__all__ = ["CardLearning"]
