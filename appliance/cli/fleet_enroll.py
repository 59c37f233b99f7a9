"""``face-appliance fleet enroll`` (one person) and ``fleet enroll-batch ROSTER.csv`` (a site's people,
:mod:`appliance.fleet.roster`): photos checked as ``enroll`` checks them, the aligned crops of the
accepted ones published by the authority (:class:`~appliance.fleet.authority.Authority`).

A batch loads the models once and publishes :data:`PEOPLE_PER_CHANGE` people per change (one lock,
one connection, one index write, one manifest), so its cost per person is the photos' checks. Who is
live already (by id, or by external id) is skipped before their photos are read, unless ``--replace``:
a roster that stopped half-way is run again as it is; with ``--update`` their access policy takes the
roster's policy columns (groups, validity, cards: the HR export run again), their face and PINs kept.
A ``no_face`` row is published without a
photo, as ``fleet enroll --no-face``; a card that another live identity holds refuses the roster
before any model loads.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..access.policy import IdentityPolicy, parse_instant
from ..fleet.authority import (
    Authority,
    AuthorityState,
    Enrolment,
    Index,
    Published,
    card_clash_text,
    card_digest,
)
from ..fleet.errors import FleetError
from ..fleet.records import MAX_CROPS, read_fleet_key
from ..fleet.roster import BY_ID, BY_ID_OR_BADGE, LookAlikes, Person, RosterError, read_roster
from ..fleet.settings import AuthorityFile
from ..gallery.errors import IdentityError
from ..gallery.store import check_identity_id, utc_now
from ..gallery.text import check_external_id, check_name, printable
from .access_cmd import policy_changes
from .common import EXIT_FAILURE, EXIT_OK, emit, no_face_problem, usage_error

#: People published per change of a batch: enough to make the change's fixed cost (lock, connection,
#: index write, manifest) small per person, few enough that an interruption loses little work.
PEOPLE_PER_CHANGE = 50

PUBLISHED, UPDATED, HELD, REFUSED, WOULD_PUBLISH = "published", "updated", "held", "refused", "would_publish"


@dataclass
class CheckedPhotos:
    """The photos of one person after the checks: a verdict per photo, the best crops kept.

    Attributes:
        crops: ``(112, 112, 3)`` uint8 BGR aligned faces of the kept photos, best first (≤ MAX_CROPS).
        qualities: their quality scores in [0, 1].
        embeddings: the authority's embeddings of those crops (never published: each door embeds
            with its own model).
    """

    verdicts: List[Dict[str, Any]] = field(default_factory=list)
    crops: List[Any] = field(default_factory=list)
    qualities: List[float] = field(default_factory=list)
    embeddings: List[np.ndarray] = field(default_factory=list)  # (D,) float32 each, as crops


def check_photos(enroller: Any, paths: Sequence[Path], face: Optional[int], largest: bool) -> CheckedPhotos:
    """Check each photo as ``enroll`` does and keep the :data:`MAX_CROPS` best accepted ones."""
    from ..vision.image import ImageError, read_image

    checked = CheckedPhotos()
    accepted: List[Tuple[float, int, Any]] = []  # quality, verdict's position, the accepted face
    for path in paths:
        try:
            image = read_image(path)
        except ImageError as err:
            checked.verdicts.append({"source": str(path), "accepted": False, "reason": str(err)})
            continue
        verdict, good = enroller.check_photo(image, str(path), face, largest)
        checked.verdicts.append({"source": str(path), "accepted": verdict.accepted, "reason": verdict.reason})
        if good is not None:
            accepted.append((float(good.quality.score), len(checked.verdicts) - 1, good))
    accepted.sort(key=lambda item: -item[0])
    for quality, _position, good in accepted[:MAX_CROPS]:
        checked.crops.append(good.crop)
        checked.qualities.append(quality)
        checked.embeddings.append(good.embedding)
    for _, position, _ in accepted[MAX_CROPS:]:
        verdict = checked.verdicts[position]
        verdict["accepted"] = False
        verdict["reason"] += f"; not among the {MAX_CROPS} best, which a record carries"
    return checked


def _photo_lines(verdicts: Sequence[Dict[str, Any]], refused_only: bool = False) -> List[str]:
    return [
        f"  {'ok ' if v['accepted'] else 'NO '} {printable(v['source'])}: {printable(v['reason'])}"
        for v in verdicts
        if not (refused_only and v["accepted"])
    ]


# -- one person ------------------------------------------------------------------------------------------


def enroll_one(args: argparse.Namespace, config: AuthorityFile) -> int:
    """``fleet enroll``: one person's photos (at most MAX_CROPS), published as one record; with
    ``--no-face``, a person without a face (no photo, no model loaded)."""
    from ..enrollment import Enroller
    from ..runtime.loading import load_analyzer

    if args.no_face:
        problem = no_face_problem(args)
        if problem is not None:
            return usage_error(problem)
    elif not args.images:
        return usage_error(
            "give the person's photos, or --no-face for a person enrolled without a face (card and PIN only)"
        )
    try:
        name = check_name(args.name)
        external_id = check_external_id(args.external_id)
        if args.identity_id is not None:
            check_identity_id(args.identity_id)
    except IdentityError as err:
        return usage_error(str(err))
    consent_at = args.consent_at or utc_now()
    parse_instant(consent_at, "--consent-at")
    policy = IdentityPolicy().changed(policy_changes(args), "")
    if len(args.images) > MAX_CROPS:
        return usage_error(f"{len(args.images)} photos: a record carries at most {MAX_CROPS}")
    authority = Authority.open(config)  # the keys before the models: fail fast
    try:
        authority.check_enrollable(args.identity_id, external_id, args.replace, name, policy.cards)
    except FleetError as err:
        return usage_error(str(err))
    if args.no_face:
        return _enroll_without_face(args, authority, name, external_id, consent_at, policy)
    with load_analyzer(config.appliance_config(), liveness=False) as analyzer:
        # check_photo needs no gallery: the authority has none, and stores nothing locally.
        enroller = Enroller(analyzer, None, config.gallery)  # type: ignore[arg-type]
        checked = check_photos(enroller, args.images, args.face, args.largest)
    lines = _photo_lines(checked.verdicts)
    if not checked.crops:
        emit(
            args,
            {"published": False, "photos": checked.verdicts},
            ["no photo accepted; nothing published", *lines],
        )
        return EXIT_FAILURE
    person = Enrolment(
        args.identity_id,
        name,
        external_id,
        consent_at,
        policy,
        tuple(checked.crops),
        tuple(checked.qualities),
    )
    published = authority.enroll(person, args.replace)
    document = {**published.document(), "photos": checked.verdicts, "crops": len(checked.crops)}
    head = f"{published.identity_id}: record r{published.revision} published on {published.topic}"
    emit(args, document, [head, *lines])
    return EXIT_OK


def _enroll_without_face(
    args: argparse.Namespace,
    authority: Authority,
    name: str,
    external_id: Optional[str],
    consent_at: str,
    policy: IdentityPolicy,
) -> int:
    """``fleet enroll --no-face``: a record with no crop; a warning when it holds no card."""
    person = Enrolment(args.identity_id, name, external_id, consent_at, policy, (), ())
    published = authority.enroll(person, args.replace)
    document = {**published.document(), "photos": [], "crops": 0}
    head = (
        f"{published.identity_id}: record r{published.revision} published on {published.topic}, "
        "without a face (card and PIN only)"
    )
    emit(args, document, [head])
    if not policy.cards:
        sys.stderr.write(
            f"warning: {published.identity_id} has no face and holds no card: no door lets them in until "
            f"one is given (`face-appliance fleet set {published.identity_id} --card CARD`)\n"
        )
    return EXIT_OK


# -- a roster --------------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One roster person's outcome, as it is reported."""

    person: Person
    status: str = ""
    identity_id: Optional[str] = None
    revision: Optional[int] = None
    note: str = ""
    photos: List[Dict[str, Any]] = field(default_factory=list)
    look_alikes: List[Tuple[int, float]] = field(default_factory=list)  # (line, score) of LookAlikes

    def document(self) -> Dict[str, Any]:
        return {
            "line": self.person.line,
            "status": self.status,
            "id": self.identity_id,
            "revision": self.revision,
            "note": self.note,
            "photos": self.photos,
            "look_alikes": [{"line": line, "score": round(score, 3)} for line, score in self.look_alikes],
        }

    def lines(self) -> List[str]:
        who = printable(self.person.name)
        if self.person.external_id:
            who += f" ({printable(self.person.external_id)})"
        revision = f"r{self.revision}" if self.revision is not None else "-"
        status = self.status.replace("_", " ")
        head = f"line {self.person.line:<6} {status:13} {self.identity_id or '-':24} {revision:8} {who}"
        warnings = [
            f"  warning: very similar to line {line} (score {score:.2f}): the same person twice?"
            for line, score in self.look_alikes
        ]
        return [
            head + (f": {self.note}" if self.note else ""),
            *_photo_lines(self.photos, refused_only=True),
            *warnings,
        ]


class _Report:
    """The rows in roster order, printed as their outcomes are known (a batch's once it is published)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json  # then nothing is printed until the whole document
        self.rows: List[_Row] = []
        self._printed = 0

    def add(self, row: _Row) -> _Row:
        self.rows.append(row)
        return row

    def flush(self) -> None:
        """Print every row up to the first whose outcome is not known yet."""
        from tqdm import tqdm

        while self._printed < len(self.rows) and self.rows[self._printed].status:
            if not self.as_json:
                for line in self.rows[self._printed].lines():
                    tqdm.write(line, file=sys.stdout)  # above the progress bar, which stays last
            self._printed += 1

    def counts(self) -> Dict[str, int]:
        statuses = [row.status for row in self.rows]
        return {
            status: statuses.count(status) for status in (PUBLISHED, UPDATED, WOULD_PUBLISH, HELD, REFUSED)
        }


def _precheck(people: Sequence[Person], index: Index) -> Tuple[Dict[int, str], List[str]]:
    """Per roster line, the live identity each person is (from the state, read without its lock), and
    the rows whose external id is another identity's."""
    by_external = index.by_external_id()
    holders: Dict[int, str] = {}
    problems: List[str] = []
    for person in people:
        try:
            holder = index.holder(person.identity_id, person.external_id, by_external)
        except FleetError as err:
            problems.append(f"line {person.line}: {err}")
            continue
        if holder is not None:
            holders[person.line] = holder
        elif person.needs_photos:
            problems.append(f"line {person.line}: not enrolled yet: give photos, or no_face")
    return holders, problems


def _card_digest(config: AuthorityFile, authority: Optional[Authority]) -> Optional[Callable[[str], str]]:
    """What keys the site's card digests: the authority's; with ``--check`` (no keys needed) the fleet
    key's when it can be read here, else ``None`` (the cards are then checked within the roster only)."""
    if authority is not None:
        return authority.card_digest
    try:
        fleet_key = read_fleet_key(config.authority.fleet_key_file)
    except FleetError as err:
        sys.stderr.write(f"note: the cards are not checked against the site's identities: {err}\n")
        return None
    return functools.partial(card_digest, fleet_key)


def _card_problems(
    people: Sequence[Person],
    index: Index,
    holders: Dict[int, str],
    args: argparse.Namespace,
    digest: Optional[Callable[[str], str]],
) -> List[str]:
    """The rows about to be published that give a card another live identity holds (who is enrolled
    already keeps the cards they hold, unless ``--replace``, or ``--update`` with a ``cards`` column)."""
    if digest is None:
        return []
    published = [
        p
        for p in people
        if p.line not in holders or args.replace or (args.update and "cards" in p.policy_changes)
    ]
    wanted = [(p.identity_id or holders.get(p.line), p.policy.cards) for p in published]
    names = [p.name for p in published]
    return [
        f"line {published[position].line}: {card_clash_text(card, names[position], holder, index, names)}"
        for position, card, holder in index.card_clashes(wanted, digest)
    ]


def enroll_batch(args: argparse.Namespace, config: AuthorityFile) -> int:
    """``fleet enroll-batch ROSTER.csv [--replace] [--check]``: see the module docstring."""
    settings = config.authority
    try:
        found_by = BY_ID_OR_BADGE if settings.keep_names else BY_ID
        people = read_roster(args.roster, utc_now(), found_by, photos_optional=args.update)
    except RosterError as err:
        return usage_error(str(err))
    authority = None if args.check else Authority.open(config)  # the keys before the models
    state = authority.state if authority is not None else AuthorityState(settings.state_dir, settings.site)
    index = state.index  # read without the lock: each change checks again under it
    holders, problems = _precheck(people, index)
    problems += _card_problems(people, index, holders, args, _card_digest(config, authority))
    if problems:
        return usage_error(str(RosterError(args.roster, problems)))
    report = _Report(args.json)
    look_alikes = LookAlikes(config.gallery.duplicate_threshold)
    waiting: List[Tuple[_Row, Enrolment]] = []
    updating: List[Tuple[_Row, str, Mapping[str, object]]] = []  # --update: (row, id, policy changes)

    def publish() -> None:
        if authority is not None and updating:  # first: a card one of them gives up may be a new person's
            changed = authority.set_policies([(identity_id, change) for _, identity_id, change in updating])
            for (row, _, _), outcome in zip(updating, changed):
                if outcome is None:
                    row.status, row.note = HELD, "enrolled already; the policy is the roster's already"
                else:
                    row.status, row.revision, row.note = UPDATED, outcome.revision, "policy updated"
            updating.clear()
        if authority is not None and waiting:
            outcomes = authority.enroll_many([person for _, person in waiting], args.replace)
            for (row, _), outcome in zip(waiting, outcomes):
                row.identity_id, row.revision = outcome.identity_id, outcome.revision
                if isinstance(outcome, Published):
                    row.status = PUBLISHED
                else:
                    row.status, row.note = HELD, "enrolled meanwhile by another command"
            waiting.clear()
        report.flush()

    try:
        with ExitStack() as stack:
            photos = _PhotoChecker(config, stack)
            for person in _progress(people):
                row = report.add(_Row(person, identity_id=holders.get(person.line)))
                if row.identity_id is not None and args.update and person.policy_changes:
                    if authority is None:
                        row.status, row.note = WOULD_PUBLISH, "its policy updated where it differs"
                    else:
                        updating.append((row, row.identity_id, person.policy_changes))
                    if len(waiting) + len(updating) >= PEOPLE_PER_CHANGE:
                        publish()
                    report.flush()
                    continue
                if row.identity_id is not None and not args.replace:
                    row.status, row.revision = HELD, index.identities[row.identity_id].revision
                    row.note = "enrolled already (--replace replaces, --update updates its policy)"
                    report.flush()
                    continue
                if person.faceless:  # published as it is: no photo, no model
                    checked = CheckedPhotos()
                    row.note = "without a face" + ("" if person.policy.cards else ", holding no card yet")
                else:
                    checked = photos.check(person.photos, args.largest)
                    row.photos = checked.verdicts
                    row.note = f"{len(checked.crops)} of {len(person.photos)} photo(s)"
                    if not checked.crops:
                        row.status, row.note = REFUSED, "no photo accepted"
                    else:
                        row.look_alikes = look_alikes.match_and_add(person.line, checked.embeddings)
                if not row.status and authority is None:
                    row.status = WOULD_PUBLISH
                elif not row.status:
                    waiting.append((row, _enrolment(person, row.identity_id, checked)))
                if len(waiting) + len(updating) >= PEOPLE_PER_CHANGE:
                    publish()
                report.flush()
            publish()
    except KeyboardInterrupt:
        sys.stderr.write(
            f"interrupted: {report.counts()[PUBLISHED]} published; the people not listed above were not. "
            "Run the same command again to go on: who is enrolled is skipped\n"
        )
        raise
    counts = report.counts()
    done = f"{counts[WOULD_PUBLISH]} would be published" if args.check else f"{counts[PUBLISHED]} published"
    summary = (
        f"{'checked, nothing published: ' if args.check else ''}{done}, "
        + (f"{counts[UPDATED]} updated, " if args.update and not args.check else "")
        + f"{counts[HELD]} enrolled already, "
        f"{counts[REFUSED]} refused (no photo accepted), of {len(people)} people"
    )
    if args.json:
        print(json.dumps({**counts, "people": [row.document() for row in report.rows]}, indent=2))
    else:
        print(summary)
    return EXIT_FAILURE if counts[REFUSED] else EXIT_OK


class _PhotoChecker:
    """:func:`check_photos` with the models loaded at the first photo (a roster run again when everyone
    is enrolled loads none), and closed with ``stack``."""

    def __init__(self, config: AuthorityFile, stack: ExitStack) -> None:
        self._config = config
        self._stack = stack
        self._enroller: Any = None

    def check(self, paths: Sequence[Path], largest: bool) -> CheckedPhotos:
        if self._enroller is None:
            from ..enrollment import Enroller
            from ..runtime.loading import load_analyzer

            analyzer = self._stack.enter_context(
                load_analyzer(self._config.appliance_config(), liveness=False)
            )
            # check_photo needs no gallery: the authority has none, and stores nothing locally.
            self._enroller = Enroller(analyzer, None, self._config.gallery)  # type: ignore[arg-type]
        return check_photos(self._enroller, paths, None, largest)


def _enrolment(person: Person, holder: Optional[str], checked: CheckedPhotos) -> Enrolment:
    return Enrolment(
        person.identity_id or holder,
        person.name,
        person.external_id,
        person.consent_at,
        person.policy,
        tuple(checked.crops),
        tuple(checked.qualities),
    )


def _progress(people: Sequence[Person]) -> Iterator[Person]:
    """The people, with a progress bar on a terminal's standard error."""
    from tqdm import tqdm

    return iter(tqdm(people, unit="person", desc="checking", disable=None, file=sys.stderr, leave=False))


__all__ = ["PEOPLE_PER_CHANGE", "CheckedPhotos", "check_photos", "enroll_batch", "enroll_one"]
