"""Enrolling a card or a PIN at the reader: the MQTT ``learn_card`` and ``learn_pin`` commands arm the
door's card readers for one identity —

* ``learn_card``: the next card read there (within ``within_s``) becomes one of its cards — what a
  terminal's "register card" does, without the operator having to know the card's format or numbers;
* ``learn_pin``: the person types their new PIN, ``#``, and the same PIN again, ``#``, at one reader: it
  becomes their PIN (or, with ``duress``, their duress PIN). The digits never leave the door: not
  through MQTT, not through the operator, not into a log; only their hash is stored. Someone who
  holds cards shows one of them first, at that reader: a bystander at the reader while the learning
  waits cannot choose another person's PIN.

One learning at a time, on the pipeline thread: the command is answered when the card or the second
PIN comes (``{"id", "card", "added"}`` / ``{"id", "pin": "set" | "duress_pin": "set"}``), when nothing
came in time (``timeout``), when the card is another identity's, the two PINs differ or the duress PIN
would be the PIN (``invalid``), or when the daemon stops (``busy``). While a learning waits, what it
takes at its readers — cards for ``learn_card``, PINs for ``learn_pin`` — goes to it, not to the access
rules; the rest passes as usual. A PIN learning keeps the first entry in memory only until the second
comes or the learning ends.

A learning **for the fleet** (``for_fleet``: a fleet identity, asked by the site's authority with
``fleet learn-card`` / ``fleet learn-pin``) stores nothing here — the identity is the authority's, and
its next record would undo a change made here — and answers what was learned for the authority to
publish: the card (``{"id", "card", "for_fleet": true}``), or the PIN's hash sealed with the fleet key
(``{"id", "pin": "sealed", "sealed"}``, :mod:`appliance.fleet.sealed_pin`). The same checks come first:
the card is nobody else's here, the two entries agree, the duress PIN is not the PIN.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence

from .credentials import PresentedCredential
from .errors import PolicyError

logger = logging.getLogger(__name__)

#: ``answer(command name, request id, result or None, (code, message) or None)``.
LearningAnswer = Callable[[str, Optional[str], Optional[Dict[str, Any]], Optional[Any]], None]

#: What a learning sets (a policy key) → the kind of credential it takes at the reader.
LEARNS = {"card": "card", "pin": "pin", "duress_pin": "pin"}


@dataclass(frozen=True)
class _Armed:
    identity_id: str
    name: str
    request_id: Optional[str]
    reader: Optional[str]
    until: float
    what: str  # a key of LEARNS
    first: Optional[str] = None  # a PIN learning's first entry
    card_shown: bool = False  # a PIN learning: the holder's card was shown (or they hold none)
    for_fleet: bool = False  # answered for the site's authority, stored nowhere here
    seal: Optional[Callable[[str], str]] = None  # for_fleet: a PIN hash → its sealed text

    def __repr__(self) -> str:  # never the PIN's digits, should this ever be logged
        return f"_Armed({self.identity_id!r}, {self.what}, reader={self.reader!r})"


class CredentialLearning:
    """The waiting ``learn_card`` or ``learn_pin`` command (see the module).

    Args:
        answer: sends a command's answer (the command service's).
    """

    def __init__(self, answer: LearningAnswer) -> None:
        self._answer = answer
        self._armed: Optional[_Armed] = None

    @property
    def armed(self) -> Optional[str]:
        """The identity a card or PIN is being learned for, or ``None``."""
        return None if self._armed is None else self._armed.identity_id

    def arm(
        self,
        identity_id: str,
        name: str,
        request_id: Optional[str],
        reader: Optional[str],
        until: float,
        what: str = "card",
        for_fleet: bool = False,
        seal: Optional[Callable[[str], str]] = None,
    ) -> bool:
        """Wait for ``what`` (``card``, ``pin`` or ``duress_pin``) for ``identity_id`` until ``until``
        (Unix seconds) at ``reader`` (``None``: any; a PIN's second entry must come at the reader of
        its first). ``False`` when a learning already waits (the caller refuses the command).

        Args:
            for_fleet: answer what was learned for the site's authority and store nothing (see the
                module); a PIN learning then needs ``seal`` (a PIN hash → its sealed text).
        """
        if what not in LEARNS:
            raise ValueError(f"a learning sets one of {', '.join(LEARNS)}, not {what!r}")
        if for_fleet and what != "card" and seal is None:
            raise ValueError("a PIN learned for the fleet needs what seals its hash")
        if self._armed is not None:
            return False
        self._armed = _Armed(
            identity_id, name, request_id, reader, until, what, for_fleet=for_fleet, seal=seal
        )
        logger.info("learning a %s at the reader for an identity", what.replace("_", " "))
        return True

    def take(
        self, presented: Sequence[PresentedCredential], store: Any, now: float
    ) -> List[PresentedCredential]:
        """The credentials from the readers, without those this learning took (the card, or the PIN
        entries, which are stored and answered); expires the learning at ``now`` (Unix seconds)."""
        remaining: List[PresentedCredential] = []
        for credential in presented:
            armed = self._armed
            if armed is not None and armed.what != "card" and not armed.card_shown:
                armed = self._card_first(armed, credential, store)
                if armed is None:  # the card was taken, or the learning answered
                    continue
                if not armed.card_shown:  # waiting for their card: this is not the learning's
                    remaining.append(credential)
                    continue
            if (
                armed is None
                or credential.kind != LEARNS[armed.what]
                or armed.reader not in (None, credential.reader)
            ):
                remaining.append(credential)
            elif armed.what == "card":
                self._armed = None
                self._learn_card(armed, credential.value, store)
            elif armed.first is None:
                # The second entry must come at this reader: another reader's PIN is someone else's.
                self._armed = replace(armed, first=credential.value, reader=credential.reader)
                logger.info("learning a PIN: typed once; waiting for it again")
            else:
                self._armed = None
                self._learn_pin(armed, armed.first, credential.value, store)
        armed = self._armed
        if armed is not None and now > armed.until:
            self._armed = None
            what = "card was presented" if armed.what == "card" else "PIN was typed twice"
            self._answer(
                armed.name,
                armed.request_id,
                None,
                ("timeout", f"no {what} at the reader in time; send {armed.name} again"),
            )
        return remaining

    def abandon(self, why: str) -> None:
        """Answer a waiting learning as refused (``busy``: the daemon stops)."""
        armed, self._armed = self._armed, None
        if armed is not None:
            self._answer(armed.name, armed.request_id, None, ("busy", why))

    def _card_first(self, armed: _Armed, credential: PresentedCredential, store: Any) -> Optional[_Armed]:
        """A PIN learning before its card: for someone who holds cards, one of theirs must be shown
        first at a reader of the learning (it then holds that reader); ``None`` when ``credential``
        was that card, or refused the learning (another card), else the learning as it stands (the
        credential is not for it)."""
        identity = self._identity(armed, store)
        if identity is None:
            self._armed = None
            return None
        if not identity.policy.cards:  # nothing to show: the PIN typed twice is all
            self._armed = replace(armed, card_shown=True)
            return self._armed
        if credential.kind != "card" or armed.reader not in (None, credential.reader):
            return armed
        self._armed = None
        if credential.value not in identity.policy.cards:
            self._answer(
                armed.name,
                armed.request_id,
                None,
                ("invalid", "the card shown is not theirs; send learn_pin again and show one of their cards"),
            )
            return None
        self._armed = replace(armed, card_shown=True, reader=credential.reader)
        logger.info("learning a PIN: their card was shown; waiting for the PIN typed twice")
        return None

    def _identity(self, armed: _Armed, store: Any) -> Any:
        identity = store.identity(armed.identity_id)
        if identity is None:
            self._answer(
                armed.name, armed.request_id, None, ("refused", f"no identity {armed.identity_id!r}")
            )
        return identity

    def _learn_card(self, armed: _Armed, card: str, store: Any) -> None:
        from ..gallery.errors import IdentityError

        identity = self._identity(armed, store)
        if identity is None:
            return
        added = card not in identity.policy.cards
        try:
            policy = identity.policy.changed({"add_cards": [card]})  # at most 8 cards
            if armed.for_fleet:
                _refuse_held_card(store, card, identity.id)
            elif added:
                store.set_policy(identity.id, policy)
        except (IdentityError, PolicyError) as err:  # another's card, or already 8 cards
            self._answer(armed.name, armed.request_id, None, ("invalid", str(err)))
            return
        if armed.for_fleet:
            logger.info("a card was learned at the reader for a fleet identity, answered for the authority")
            self._answer(
                armed.name, armed.request_id, {"id": identity.id, "card": card, "for_fleet": True}, None
            )
            return
        logger.info(
            "a card was learned at the reader for an identity (%s)", "added" if added else "held already"
        )
        self._answer(armed.name, armed.request_id, {"id": identity.id, "card": card, "added": added}, None)

    def _learn_pin(self, armed: _Armed, first: str, second: str, store: Any) -> None:
        from ..gallery.errors import IdentityError

        if not hmac.compare_digest(first.encode(), second.encode()):
            self._answer(
                armed.name,
                armed.request_id,
                None,
                ("invalid", "the two PINs typed differ; send learn_pin again and type the same PIN twice"),
            )
            return
        identity = self._identity(armed, store)
        if identity is None:
            return
        try:
            policy = identity.policy.changed({armed.what: second})  # the duress PIN is not the PIN
            if armed.seal is None:
                store.set_policy(identity.id, policy)
        except (IdentityError, PolicyError) as err:
            self._answer(armed.name, armed.request_id, None, ("invalid", str(err)))
            return
        if armed.seal is not None:
            sealed = armed.seal(getattr(policy, armed.what))
            logger.info(
                "a %s was learned at the reader for a fleet identity, answered sealed",
                armed.what.replace("_", " "),
            )
            self._answer(
                armed.name,
                armed.request_id,
                {"id": identity.id, armed.what: "sealed", "sealed": sealed},
                None,
            )
            return
        logger.info("a %s was learned at the reader for an identity", armed.what.replace("_", " "))
        self._answer(armed.name, armed.request_id, {"id": identity.id, armed.what: "set"}, None)


def _refuse_held_card(store: Any, card: str, identity_id: str) -> None:
    """A card learned for the fleet is checked as a stored one would be: nobody else holds it here.

    Raises:
        IdentityError: naming the holder.
    """
    from ..gallery.errors import IdentityError

    others = [holder.id for holder in store.card_holders(card) if holder.id != identity_id]
    if others:
        raise IdentityError(f"the card is held by {others[0]!r} here; remove it there first")


__all__ = ["LEARNS", "CredentialLearning"]
