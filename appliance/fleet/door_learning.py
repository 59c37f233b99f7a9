"""``fleet learn-card`` and ``fleet learn-pin``: a fleet identity's card or PIN learned at one door's
reader, and published by the authority.

A fleet identity is the authority's: a door refuses to change it locally (its next record would undo
the change, and no other door would have it). So the authority asks the door — MQTT ``learn_card`` or
``learn_pin`` with ``"for_fleet": true`` on ``{door_prefix}/{door}/cmd/…`` — and waits for its answer:
the card shown at the reader, or the PIN typed twice there, hashed at the door and sealed with the fleet
key (:mod:`.sealed_pin`). The door stores nothing; the authority then republishes the identity's record
with the card added or the PIN set (:meth:`.authority.Authority.set_policy`: a card another identity of
the site holds is refused there), and every door applies it. The PIN's digits reach neither the
operator nor MQTT.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, Optional

from .authority import Authority, Published
from .errors import FleetError
from .records import LEVEL_PATTERN
from .sealed_pin import open_pin_hash

#: The door's answer at most (an answer is a few hundred bytes).
MAX_ANSWER_BYTES = 64 * 1024
_LEARNS = {"card": "learn_card", "pin": "learn_pin", "duress_pin": "learn_pin"}


@dataclass(frozen=True)
class Learned:
    """What a door learned and the authority published: ``card`` (the card added), or ``None`` for a
    PIN (only its hash travelled); ``published`` is ``None`` for a card the person held already."""

    published: Optional[Published]
    what: str
    card: Optional[str] = None


def learn_at_door(
    authority: Authority,
    identity_id: str,
    door: str,
    what: str,
    within_s: float,
    reader: Optional[str] = None,
) -> Learned:
    """Ask ``door`` to learn ``what`` (``card``, ``pin`` or ``duress_pin``) for ``identity_id``, wait for
    the person at its reader, and publish the record with it.

    Args:
        within_s: how long the door waits for the card or the PIN (5–300 s, as the command takes it);
            the authority waits that long and ``timeout_s`` more for the answer.
        reader: the door's reader to learn at (``None``: any of its readers).

    Raises:
        FleetError: the identity is not live here, the door is offline or gives no answer in time,
            the door refused (its code and message), its answer is not usable, or the publication
            failed (a card another identity holds, the broker).
    """
    if what not in _LEARNS:
        raise ValueError(f"a door learns one of {', '.join(_LEARNS)}, not {what!r}")
    if not LEVEL_PATTERN.match(door):
        raise FleetError(f"door {door[:70]!r} is not a device id (letters, digits, '_', '.', '-')")
    if identity_id not in authority.state.index.identities:
        raise FleetError(
            f"identity {identity_id!r} is not enrolled in site {authority.site!r} (`fleet list`)"
        )
    settings = authority.settings
    name = _LEARNS[what]
    command_topic = f"{settings.door_prefix}/{door}/cmd/{name}"
    answer_topic = f"{command_topic}/result"
    availability = f"{settings.door_prefix}/{door}/availability"
    request_id = f"fleet-{name}-{os.urandom(6).hex()}"
    command: Dict[str, Any] = {
        "request_id": request_id,
        "id": identity_id,
        "within_s": within_s,
        "for_fleet": True,
        "ts": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if reader is not None:
        command["reader"] = reader
    if name == "learn_pin":
        command["duress"] = what == "duress_pin"
    with authority.broker() as broker:
        broker.subscribe([answer_topic, availability])
        seen = broker.collect(settings.broker_wait_s, lambda m: availability in m)
        if seen.get(availability, b"").strip() == b"offline":
            raise FleetError(f"door {door!r} is offline (its {availability} says so); nothing was asked")
        broker.publish(command_topic, json.dumps(command).encode("utf-8"), retain=False)
        messages = broker.collect(
            within_s + settings.timeout_s, lambda m: _answer(m.get(answer_topic), request_id) is not None
        )
    answer = _answer(messages.get(answer_topic), request_id)
    if answer is None:
        raise FleetError(
            f"no answer from door {door!r} within {within_s + settings.timeout_s:g} s: is it online, and does "
            f"its broker user read {command_topic}? Nothing was published"
        )
    return _publish(authority, identity_id, door, what, request_id, answer)


def _answer(payload: Optional[bytes], request_id: str) -> Optional[Dict[str, Any]]:
    """The door's answer document to ``request_id``, or ``None`` (none yet, another request's, or not
    an answer at all)."""
    if payload is None or len(payload) > MAX_ANSWER_BYTES:
        return None
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("request_id") != request_id:
        return None
    return document


def _publish(
    authority: Authority, identity_id: str, door: str, what: str, request_id: str, answer: Dict[str, Any]
) -> Learned:
    if answer.get("ok") is not True:
        error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
        code, message = str(error.get("code") or "an error")[:40], str(error.get("message") or "")[:300]
        raise FleetError(f"door {door!r} answered {code}: {message}; nothing was published")
    result = answer.get("result")
    if not isinstance(result, dict) or result.get("id") != identity_id:
        raise FleetError(
            f"door {door!r} answered for another identity, or without a result; nothing was published"
        )
    if what == "card":
        card = result.get("card")
        if not isinstance(card, str) or result.get("for_fleet") is not True:
            raise FleetError(f"door {door!r} answered no card learned for the fleet (older firmware?)")
        (published,) = authority.set_policies([(identity_id, {"add_cards": [card]})])
        return Learned(published, what, card)
    if result.get(what) != "sealed":
        raise FleetError(f"door {door!r} answered no sealed {what.replace('_', ' ')} (older firmware?)")
    pin_hash = open_pin_hash(
        result.get("sealed"), authority.fleet_key, authority.site, identity_id, request_id, what
    )
    return Learned(authority.set_policy(identity_id, {}, pin_hashes={what: pin_hash}), what)


__all__ = ["MAX_ANSWER_BYTES", "Learned", "learn_at_door"]
