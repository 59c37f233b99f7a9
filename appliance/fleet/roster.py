"""The roster of ``face-appliance fleet enroll-batch``: one person per row of a CSV file, read and
checked whole before any model loads or anything is published.

Format (UTF-8, a byte-order mark allowed; comma-, semicolon- or tab-separated, as the header line
shows; a header names the columns, in any order)::

    photos,name,external_id,id,groups,valid_from,valid_until,consent_at,cards,no_face
    people/ada,Ada Lovelace,B-1815,,staff lab,,2027-06-30T18:00:00+02:00,,w26:7:1815,
    people/alan.jpg,Alan Turing,B-1912,,staff,,,2026-11-30T09:00:00Z,,
    ,Grace Hopper,B-1906,,staff,,,,w26:7:1906 w26:7:1907,yes

* ``photos``: a photo file, or a folder whose photos (directly in it, at most
  :data:`MAX_PHOTOS_PER_PERSON`) are all checked; a relative path is taken from the roster's folder.
  Required on every row but those of ``no_face``.
* ``name`` (required): the person's name, as ``fleet enroll --name``.
* ``cards``: the person's cards (:func:`~appliance.access.credentials.parse_card`, at most
  :data:`~appliance.access.credentials.MAX_CARDS`) separated by spaces or commas; a card on two rows
  is refused. No PIN column: a PIN in a file is a secret every reader of the file learns; a door's
  person types theirs at the reader (MQTT ``learn_pin``), a fleet's is set with ``fleet set --pin``.
* ``no_face``: ``yes`` (or ``true``, ``1``) for a person enrolled without a face, who passes with
  their cards (and PIN); such a row has no photos. Empty, ``no``, ``false`` or ``0``: photos.
* ``external_id``, ``id``: as ``--external-id`` and ``--id``. For the fleet a row needs one of them so
  that running the same roster again (after an interruption) finds the people it enrolled: without
  ``id``, the live identity holding the row's ``external_id`` is that person (the authority keeps
  external ids in its state, ``keep_names``), and with neither a new random id would enrol the person
  twice (:data:`BY_ID_OR_BADGE`). A door's own gallery makes a new id from the name (:data:`BY_NAME`).
* ``groups``: access groups separated by spaces or commas (a group name holds neither).
* ``valid_from``, ``valid_until``, ``consent_at``: RFC 3339 with an offset; ``consent_at`` defaults to
  the time the command started.

An empty cell is an absent value. Every problem is reported with its line, all at once: a roster is
fixed and run again, never published in part because a later row was malformed.

:class:`LookAlikes` warns when the faces of two rows are one person's (two badges for one person).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from engines.errors import FileReadError
from engines.files import read_bounded_text

from ..access.errors import PolicyError
from ..access.policy import IdentityPolicy, parse_instant
from ..gallery.errors import IdentityError
from ..gallery.store import check_identity_id
from ..gallery.text import check_external_id, check_name
from ..photo_files import PhotoFolderError, is_photo, photos_in
from .errors import FleetError

COLUMNS = (
    "photos",
    "name",
    "external_id",
    "id",
    "groups",
    "valid_from",
    "valid_until",
    "consent_at",
    "cards",
    "no_face",
)
REQUIRED = ("name",)
#: The columns ``--update`` applies to a person enrolled already (their access policy).
POLICY_COLUMNS = ("groups", "valid_from", "valid_until", "cards")
_YES, _NO = ("yes", "true", "1"), ("no", "false", "0")
MAX_ROSTER_BYTES = 16 * 2**20
MAX_PEOPLE = 100_000
#: Photos checked per person at most (the best :data:`~appliance.fleet.records.MAX_CROPS` are kept).
MAX_PHOTOS_PER_PERSON = 100
#: Problems listed in the error at most (the count of the rest follows).
MAX_PROBLEMS_SHOWN = 50
_DELIMITERS = (",", ";", "\t")
#: What finds a row's person again when the roster is run a second time (so nobody is enrolled twice):
#: the fleet's new ids are random, so a row needs an id or an external id (a badge) the state keeps;
BY_ID_OR_BADGE = "id_or_badge"
#: … or an id, where the authority keeps no external ids (``keep_names = false``);
BY_ID = "id"
#: … and a door's gallery makes a new id from the name, the same on every run: any row will do.
BY_NAME = "name"
_NEEDED = {
    BY_ID_OR_BADGE: "give an id or an external_id",
    BY_ID: "give an id: the authority keeps no external ids (authority.keep_names = false)",
}


class RosterError(FleetError):
    """A roster that cannot be used; ``problems`` lists each one with its line."""

    def __init__(self, source: Path, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        more = len(self.problems) - len(shown)
        lines = [f"the roster {source} cannot be used; nothing was enrolled:", *(f"  {p}" for p in shown)]
        if more:
            lines.append(f"  … and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Person:
    """One roster row, checked.

    Attributes:
        line: the row's line in the file (its last line, for a quoted cell over several lines).
        photos: the photo files to check, 1–:data:`MAX_PHOTOS_PER_PERSON`; none for a person without
            a face (``no_face``).
        identity_id: the id to enrol under, or ``None`` (the external id's holder, else a new random id).
        policy_changes: what the roster says of the policy, for a person enrolled already (``--update``):
            the columns it has of :data:`POLICY_COLUMNS`, an empty cell clearing (no group, no bound,
            no card); the others are not the roster's to change.
    """

    line: int
    photos: Tuple[Path, ...]
    name: str
    identity_id: Optional[str]
    external_id: Optional[str]
    consent_at: str
    policy: IdentityPolicy
    policy_changes: Mapping[str, object] = field(default_factory=dict)
    #: ``no_face``: enrolled without a face, the cards and PIN of :attr:`policy` only.
    faceless: bool = False

    @property
    def needs_photos(self) -> bool:
        """A row with neither photos nor ``no_face`` (``--update`` reads such rows): it can only update
        someone enrolled already."""
        return not self.photos and not self.faceless


def _delimiter(header: str) -> str:
    """The separator the header line uses most (a roster has at least two columns)."""
    counts = {delimiter: header.count(delimiter) for delimiter in _DELIMITERS}
    return max(_DELIMITERS, key=lambda delimiter: counts[delimiter])


def _columns(header: Sequence[str]) -> Tuple[Dict[str, int], List[str]]:
    """Column name → position, and the problems of the header."""
    problems: List[str] = []
    positions: Dict[str, int] = {}
    for position, cell in enumerate(header):
        name = cell.strip().lower()
        if name not in COLUMNS:
            problems.append(
                f"line 1: column {cell[:40]!r} is not known; the columns are {', '.join(COLUMNS)}"
            )
        elif name in positions:
            problems.append(f"line 1: column {name!r} appears twice")
        else:
            positions[name] = position
    problems.extend(f"line 1: the column {name!r} is required" for name in REQUIRED if name not in positions)
    return positions, problems


def _photos(cell: str, base: Path) -> Tuple[Path, ...]:
    path = Path(cell)
    if not path.is_absolute():
        path = base / path
    if path.is_dir():
        return tuple(photos_in(path, MAX_PHOTOS_PER_PERSON))
    if not path.exists():
        raise PhotoFolderError(f"{path} does not exist")
    if not path.is_file() or not is_photo(path):
        raise PhotoFolderError(f"{path} is neither a folder nor a photo file")
    return (path,)


def _names(cell: str) -> List[str]:
    """A cell's groups or cards, separated by spaces or commas (neither holds one)."""
    return [name for name in re.split(r"[\s,]+", cell) if name]


def _no_face(cells: Dict[str, str], photos_optional: bool) -> bool:
    value = cells.get("no_face", "").lower()
    if value not in (*_YES, *_NO, ""):
        raise IdentityError(f"no_face is yes or no, got {cells['no_face'][:20]!r}")
    no_face = value in _YES
    if no_face and "photos" in cells:
        raise IdentityError("a person without a face (no_face) has no photos; empty the photos cell")
    if not no_face and "photos" not in cells and not photos_optional:
        raise IdentityError("photos are required; no_face = yes enrols a person without a face (cards only)")
    return no_face


def _person(
    cells: Dict[str, str],
    line: int,
    base: Path,
    consent_default: str,
    found_by: str,
    columns: AbstractSet[str] = frozenset(),
    photos_optional: bool = False,
) -> Person:
    """One row's cells (stripped; empty ones left out) → a :class:`Person`; ``columns``: the header's.

    Raises:
        IdentityError, PolicyError, PhotoFolderError: the first problem of the row.
    """
    name = check_name(cells.get("name", ""))
    identity_id = cells.get("id")
    if identity_id is not None:
        check_identity_id(identity_id)
    external_id = check_external_id(cells.get("external_id"))
    if identity_id is None and found_by != BY_NAME and (external_id is None or found_by == BY_ID):
        raise IdentityError(
            _NEEDED[found_by] + ", so that running the roster again finds this person instead of enrolling "
            "them twice"
        )
    consent_at = cells.get("consent_at", consent_default)
    parse_instant(consent_at, "consent_at")
    changes: Dict[str, object] = {}
    for key in POLICY_COLUMNS:
        if key in columns or key in cells:  # an empty cell: no group, no bound, no card
            changes[key] = _names(cells.get(key, "")) if key in ("groups", "cards") else cells.get(key)
    policy = IdentityPolicy().changed(changes, "")
    no_face = _no_face(cells, photos_optional)
    photos = _photos(cells["photos"], base) if "photos" in cells else ()
    return Person(line, photos, name, identity_id, external_id, consent_at, policy, changes, no_face)


def read_roster(
    path: Path, consent_default: str, found_by: str = BY_ID_OR_BADGE, photos_optional: bool = False
) -> List[Person]:
    """Read and check a whole roster (see the module docstring).

    Args:
        consent_default: RFC 3339, the consent time of a row without ``consent_at``.
        found_by: what finds a row's person again on a second run, and so what a row must give:
            :data:`BY_ID_OR_BADGE`, :data:`BY_ID` or :data:`BY_NAME`.
        photos_optional: ``--update``: a row may have neither photos nor ``no_face``
            (:attr:`Person.needs_photos`: the caller refuses it for someone not enrolled yet).

    Raises:
        RosterError: the file cannot be read, or any row is wrong (every problem, with its line).
    """
    path = Path(path)
    try:
        text = read_bounded_text(path, MAX_ROSTER_BYTES)
    except FileReadError as err:
        raise RosterError(path, [f"the file {err}"]) from None
    first_line = text.split("\n", 1)[0]
    if not first_line.strip():
        raise RosterError(path, [f"line 1 must name the columns: {', '.join(COLUMNS)}"])
    # newline="": a quoted cell keeps its line breaks (the csv module's rule); the reader's own limit of
    # 128 KiB a cell and the file's bound keep every cell small.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first_line), strict=True)
    problems: List[str] = []  # the header itself may not be CSV (below)
    try:
        header = next(reader)
        positions, problems = _columns(header)
        if problems:
            raise RosterError(path, problems)
        people: List[Person] = []
        owners: Dict[Tuple[str, str], int] = {}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(people) >= MAX_PEOPLE:
                problems.append(f"line {line}: a roster holds at most {MAX_PEOPLE} people; split it")
                break
            if len(row) != len(header):
                problems.append(f"line {line}: {len(row)} cells, the header has {len(header)}")
                continue
            cells = {name: row[position].strip() for name, position in positions.items()}
            cells = {name: value for name, value in cells.items() if value}
            try:
                person = _person(
                    cells, line, path.parent, consent_default, found_by, set(positions), photos_optional
                )
            except (IdentityError, PolicyError, PhotoFolderError) as err:
                problems.append(f"line {line}: {err}")
                continue
            given = [("id", person.identity_id), ("external_id", person.external_id)]
            for key, value in [*given, *(("card", card) for card in person.policy.cards)]:
                if value is None:
                    continue
                first = owners.setdefault((key, value), line)
                if first != line:
                    problems.append(f"line {line}: {key} {value!r} is on line {first} too")
            people.append(person)
    except csv.Error as err:
        raise RosterError(path, [*problems, f"line {reader.line_num}: not CSV ({err})"]) from None
    if problems:
        raise RosterError(path, problems)
    if not people:
        raise RosterError(path, ["no person: the roster has a header and no row"])
    return people


class LookAlikes:
    """The faces of the people checked so far in a run, to warn when one person is on two rows (two
    badges, two ids): what ``enroll``'s duplicate warning does against a door's gallery, here within
    the roster (the authority has no gallery; people skipped as enrolled are not looked at).

    Args:
        threshold: ``gallery.duplicate_threshold``, a cosine similarity.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._faces = np.zeros((0, 0), np.float32)  # (capacity, D) unit rows; the first _count used
        self._lines: List[int] = []  # the roster line of each used row
        self._count = 0

    def match_and_add(self, line: int, embeddings: Sequence[np.ndarray]) -> List[Tuple[int, float]]:
        """The earlier people a face of ``line`` is at least ``threshold`` similar to, as ``(line,
        best score)``, most similar first; then ``embeddings`` ((D,) float32 each) join the faces.
        """
        faces = np.stack(embeddings).astype(np.float32)
        faces /= np.maximum(np.linalg.norm(faces, axis=1, keepdims=True), 1e-12)
        best: Dict[int, float] = {}
        if self._count:
            scores = (faces @ self._faces[: self._count].T).max(axis=0)  # (count,): per earlier face
            for position in np.flatnonzero(scores >= self.threshold):
                other = self._lines[position]
                best[other] = max(best.get(other, -1.0), float(scores[position]))
        self._append(line, faces)
        return sorted(best.items(), key=lambda item: -item[1])

    def _append(self, line: int, faces: np.ndarray) -> None:
        needed = self._count + len(faces)
        if needed > len(self._faces):  # capacity doubles: appending stays linear over a run
            grown = np.zeros((max(needed, 2 * len(self._faces), 64), faces.shape[1]), np.float32)
            if self._count:
                grown[: self._count] = self._faces[: self._count]
            self._faces = grown
        self._faces[self._count : needed] = faces
        self._lines.extend([line] * len(faces))
        self._count = needed


__all__ = [
    "BY_ID",
    "BY_ID_OR_BADGE",
    "BY_NAME",
    "COLUMNS",
    "MAX_PEOPLE",
    "MAX_PHOTOS_PER_PERSON",
    "POLICY_COLUMNS",
    "LookAlikes",
    "Person",
    "RosterError",
    "read_roster",
]
