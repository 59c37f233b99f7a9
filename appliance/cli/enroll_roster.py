"""``face-appliance enroll --roster ROSTER.csv``: a door's people from the roster ``fleet enroll-batch``
takes (:mod:`appliance.fleet.roster`), into this door's own gallery.

Each row's identity is planned against the gallery before any model loads: its ``id``, else the
identity holding its ``external_id``, else the id made from the name (``Ada Lovelace`` →
``ada-lovelace``), which is this person's when the identity holding it has the same name and no other
badge. Someone enrolled already is skipped (``enroll --id`` adds photos to one person); a badge or a
card held by another identity, or a made id that another person holds, refuses the roster whole,
every problem with its line. The others are enrolled as ``enroll`` enrols: the same checks, the best
photos kept, the duplicate warning against the gallery; a ``no_face`` row as ``enroll --no-face``
does, with no model loaded for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import ApplianceConfig
from ..fleet.roster import BY_NAME, Person, RosterError, read_roster
from ..gallery.errors import IdentityError
from ..gallery.store import Identity, slugify, utc_now
from ..gallery.text import printable
from .common import EXIT_FAILURE, EXIT_OK, usage_error


def plan(
    people: Sequence[Person], identities: Sequence[Identity], update: bool = False
) -> Tuple[List[Tuple[str, bool]], List[str]]:
    """Per person, ``(identity id, enrolled already)``, and the problems that refuse the roster.

    Args:
        identities: the gallery's identities.
        update: ``--update``: who is enrolled already takes the roster's cards too (a ``cards`` column).
    """
    existing = {identity.id: identity for identity in identities}
    by_external = {i.external_id: i.id for i in identities if i.external_id is not None}
    planned: List[Tuple[str, bool]] = []
    problems: List[str] = []
    used: Dict[str, int] = {}  # id → the roster line that takes it
    for person in people:
        holder = by_external.get(person.external_id) if person.external_id is not None else None
        if person.identity_id is not None and holder not in (None, person.identity_id):
            problems.append(
                f"line {person.line}: external id {person.external_id!r} is held by identity {holder!r}, "
                f"not {person.identity_id!r}"
            )
            continue
        identity_id = person.identity_id or holder or slugify(person.name)
        made = existing.get(identity_id) if person.identity_id is None and holder is None else None
        if made is not None and not _same_person(made, person):
            problems.append(
                f"line {person.line}: the id {identity_id!r} made from the name is another person's; give "
                "this row an id"
            )
            continue
        if identity_id in used:
            problems.append(f"line {person.line}: id {identity_id!r} is line {used[identity_id]}'s too")
            continue
        used[identity_id] = person.line
        if person.needs_photos and identity_id not in existing:
            problems.append(
                f"line {person.line}: {identity_id!r} is not enrolled yet: give photos, or no_face"
            )
            continue
        planned.append((identity_id, identity_id in existing))
    if problems:  # planned then lacks their rows; the cards are checked once the ids are known
        return planned, problems
    return planned, _card_problems(people, planned, identities, update)


def _card_problems(
    people: Sequence[Person],
    planned: Sequence[Tuple[str, bool]],
    identities: Sequence[Identity],
    update: bool,
) -> List[str]:
    """The rows that give a card another identity holds. Who is enrolled already keeps the cards they
    hold, unless ``update`` with a ``cards`` column: they then give theirs up for the roster's."""
    ids = {person.line: identity_id for person, (identity_id, _) in zip(people, planned)}
    taking = [
        person
        for person, (_, held) in zip(people, planned)
        if not held or (update and "cards" in person.policy_changes)
    ]
    giving_up = {ids[person.line] for person in taking}
    by_card = {card: i.id for i in identities if i.id not in giving_up for card in i.policy.cards}
    problems: List[str] = []
    for person in taking:
        for card in person.policy.cards:
            holder = by_card.get(card)
            if holder is not None and holder != ids[person.line]:
                problems.append(
                    f"line {person.line}: card {card} is held by identity {holder!r}; remove it there first "
                    f"(gallery set {holder} --remove-card {card}) or from this row"
                )
    return problems


def _same_person(identity: Identity, person: Person) -> bool:
    """Whether the identity holding the id made from ``person``'s name is that person: the same name, and
    no other badge."""
    return identity.name == person.name and None in (identity.external_id, person.external_id)


def enroll_roster(args: argparse.Namespace, config: ApplianceConfig) -> int:
    """``enroll --roster ROSTER.csv [--largest] [--keep N] [--json]``: see the module docstring."""
    from ..enrollment import Enroller
    from ..runtime.loading import load_analyzer
    from .gallery_cmd import _load, _report, _result_json, open_gallery  # gallery_cmd imports this lazily

    try:
        people = read_roster(args.roster, utc_now(), BY_NAME, photos_optional=args.update)
    except RosterError as err:
        return usage_error(str(err))
    with open_gallery(config) as gallery, ExitStack() as stack:
        planned, problems = plan(people, gallery.identities(), args.update)
        if problems:
            return usage_error(str(RosterError(args.roster, problems)))
        documents: List[Dict[str, object]] = []
        counts = {"enrolled": 0, "updated": 0, "held": 0, "refused": 0}
        enroller: Optional[Enroller] = None
        for person, (identity_id, held) in zip(people, planned):
            if held and args.update and person.policy_changes:
                document = _update(gallery, person, identity_id, args.json)
                counts[str(document["status"])] += 1
                documents.append(document)
                continue
            if held:
                counts["held"] += 1
                documents.append({"line": person.line, "id": identity_id, "status": "held"})
                if not args.json:
                    print(
                        f"{identity_id} ({printable(person.name)}): enrolled already, skipped (`enroll --id "
                        f"{identity_id}` adds photos)"
                    )
                continue
            try:
                if person.faceless:
                    document = _without_face(gallery, person, identity_id, args.json)
                else:
                    if enroller is None:  # the models load for the first person with photos to enrol
                        analyzer = stack.enter_context(load_analyzer(config, liveness=False))
                        enroller = Enroller(analyzer, gallery, config.gallery)
                    result = enroller.enroll(
                        identity_id,
                        person.name,
                        list(_load(list(person.photos))),
                        person.external_id,
                        person.consent_at,
                        None,
                        args.largest,
                        person.policy,
                        keep=args.keep,
                    )
                    status = "enrolled" if result.template_ids else "refused"
                    document = {"line": person.line, "status": status, **_result_json(result)}
                    if not args.json:
                        _report(result)
            except IdentityError as err:
                document = {"line": person.line, "id": identity_id, "status": "refused", "error": str(err)}
                if not args.json:
                    print(f"{identity_id}: refused: {printable(str(err))}")
            counts[str(document["status"])] += 1
            documents.append(document)
    if args.json:
        print(json.dumps({**counts, "people": documents}, indent=2))
    else:
        updated = f"{counts['updated']} updated, " if args.update else ""
        print(
            f"{counts['enrolled']} enrolled, {updated}{counts['held']} enrolled already, {counts['refused']} "
            f"refused, of {len(people)} people"
        )
    return EXIT_FAILURE if counts["refused"] else EXIT_OK


def _update(gallery: Any, person: Person, identity_id: str, as_json: bool) -> Dict[str, object]:
    """``--update``: someone enrolled already takes the roster's policy columns; their report."""
    from ..access.errors import PolicyError

    identity = gallery.store.identity(identity_id)
    document: Dict[str, object] = {"line": person.line, "id": identity_id}
    try:
        policy = identity.policy.changed(person.policy_changes, "")
        if policy == identity.policy:
            status = "held"
        else:
            gallery.store.set_policy(identity_id, policy)  # refused for a fleet identity at a fleet door
            status = "updated"
    except (IdentityError, PolicyError) as err:
        if not as_json:
            print(f"{identity_id}: refused: {printable(str(err))}")
        return {**document, "status": "refused", "error": str(err)}
    if not as_json:
        done = (
            "policy updated"
            if status == "updated"
            else "enrolled already, the policy is the roster's already"
        )
        print(f"{identity_id} ({printable(person.name)}): {done}")
    return {**document, "status": status}


def _without_face(gallery: Any, person: Person, identity_id: str, as_json: bool) -> Dict[str, object]:
    """A ``no_face`` row, enrolled as ``enroll --no-face`` enrols (no model); its report."""
    gallery.add_identity(identity_id, person.name, person.external_id, person.consent_at, person.policy)
    if not as_json:
        print(f"{identity_id} ({printable(person.name)}): added without a face, 0 templates")
    if not person.policy.cards:
        sys.stderr.write(
            f"warning: line {person.line}: {identity_id} has no face and holds no card: they cannot pass until "
            f"one is learned (the MQTT learn_card command) or set (gallery set {identity_id} --card CARD)\n"
        )
    document: Dict[str, object] = {"line": person.line, "status": "enrolled", "id": identity_id}
    return {**document, "name": person.name, "templates": 0, "photos": [], "duplicates": []}


__all__ = ["enroll_roster", "plan"]
