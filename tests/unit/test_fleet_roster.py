"""The roster of ``fleet enroll-batch`` (:mod:`appliance.fleet.roster`): what a site's CSV may hold, and
that a wrong one is refused whole, every problem with its line, before any photo is looked at."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest

from appliance.fleet import roster
from appliance.fleet.roster import (
    BY_ID,
    BY_NAME,
    MAX_PHOTOS_PER_PERSON,
    LookAlikes,
    RosterError,
    read_roster,
)

NOW = "2026-12-06T10:00:00Z"


def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read: the roster only lists photos")
    return path


@pytest.fixture
def people(tmp_path: Path) -> Path:
    """A folder of photos for Ada (two photos and a note) and one photo file for Alan."""
    _photo(tmp_path / "people" / "ada" / "2.jpg")
    _photo(tmp_path / "people" / "ada" / "1.PNG")
    (tmp_path / "people" / "ada" / "notes.txt").write_text("not a photo")
    _photo(tmp_path / "people" / "alan.jpeg")
    return tmp_path


def _write(folder: Path, text: str, name: str = "roster.csv", encoding: str = "utf-8") -> Path:
    path = folder / name
    path.write_bytes(text.encode(encoding))
    return path


def _problems(path: Path, **kwargs: object) -> List[str]:
    with pytest.raises(RosterError) as caught:
        read_roster(path, NOW, **kwargs)  # type: ignore[arg-type]
    assert "nothing was enrolled" in str(caught.value)
    return caught.value.problems


def test_a_roster_in_any_column_order_with_folders_files_and_policies(people: Path) -> None:
    path = _write(
        people,
        "\ufeffName , PHOTOS,external_id,groups,valid_until,consent_at,id\n"
        'Ada Lovelace,people/ada,B-1815,"staff, lab",2027-06-30T18:00:00+02:00,,\n'
        "\n"
        f"Alan Turing,{people / 'people' / 'alan.jpeg'},,staff,,2026-11-30T09:00:00Z,p-alan\n",
    )
    ada, alan = read_roster(path, NOW)
    assert ada.line == 2 and alan.line == 4  # the blank line is skipped, and counted
    assert ada.photos == (people / "people/ada/1.PNG", people / "people/ada/2.jpg")  # sorted, photos only
    assert (ada.name, ada.external_id, ada.identity_id, ada.consent_at) == (
        "Ada Lovelace",
        "B-1815",
        None,
        NOW,
    )
    assert ada.policy.groups == ("lab", "staff")
    assert ada.policy.valid_until is not None and ada.policy.valid_until.hour == 16  # in UTC
    assert alan.photos == (people / "people/alan.jpeg",)  # an absolute path is taken as it is
    assert (alan.identity_id, alan.external_id, alan.consent_at) == ("p-alan", None, "2026-11-30T09:00:00Z")


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_semicolon_and_tab_separated_rosters(people: Path, delimiter: str) -> None:
    path = _write(
        people,
        delimiter.join(["photos", "name", "id"])
        + "\n"
        + delimiter.join(["people/ada", "Ada, Countess", "p-ada"])
        + "\n",
    )
    (ada,) = read_roster(path, NOW)
    assert ada.name == "Ada, Countess" and ada.identity_id == "p-ada"


def test_every_problem_is_reported_with_its_line(people: Path) -> None:
    rows = [
        "photos,name,external_id,id,valid_from,valid_until,groups",
        "people/ada,Ada,B-1,,,,",  # good
        "people/alan.jpeg,Alan,B-1,,,,",  # the same external id as line 2
        "people/ada,Grace,,p-ada,,,",  # good
        "people/ada,Hedy,,p-ada,,,",  # the same id as line 4
        "people/ada,\x1b[2JAdmin,B-3,,,,",  # an escape sequence in a name
        "people/ada,Joan,,bad id!,,,",  # an id a topic cannot carry
        "people/ada,Kate,,,,,",  # neither id nor external id: a second run would enrol her twice
        "people/nobody,Lise,B-4,,,,",  # no such photo or folder
        "people/ada/notes.txt,Mary,B-5,,,,",  # not a photo
        "people/ada,Nina,B-6,,2027-01-01T00:00:00Z,2026-01-01T00:00:00Z,",  # until before from
        "people/ada,Olga,B-7,,tomorrow,,",  # not RFC 3339
        "people/ada,Pia,B-8,,,,bad/group",  # a group name that is not one
        "people/ada,Rosa,B-9,,,",  # a cell short
    ]
    problems = _problems(_write(people, "\n".join(rows) + "\n"))
    lines = [int(problem.split(":")[0].split()[1]) for problem in problems]
    assert lines == [3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], problems
    text = "\n".join(problems)
    for expected in (
        "external_id 'B-1' is on line 2 too",
        "id 'p-ada' is on line 4 too",
        "ESCAPE",
        "not allowed",
        "give an id or an external_id",
        "does not exist",
        "neither a folder nor a photo file",
        "is not after valid_from",
        "ISO 8601",
        "group name",
        "6 cells, the header has 7",
    ):
        assert expected in text, expected


def test_cards_and_people_without_a_face(people: Path) -> None:
    """A ``cards`` column gives each person cards (canonical, checked); ``no_face`` rows have no photos
    and are people without a face. A card on two rows, a photo on a no_face row, a row with neither,
    a malformed card or no_face value: each refused with its line."""
    path = _write(
        people,
        "name,id,photos,cards,no_face\n"
        'Ada,p-ada,people/ada,"W26:7:1815, w26:7:1816",\n'
        "Grace,p-grace,,w34:300:1906,yes\n"
        "Hedy,p-hedy,,,TRUE\n"  # no card: the commands warn
        "Alan,p-alan,people/alan.jpeg,,no\n",
    )
    ada, grace, hedy, alan = read_roster(path, NOW)
    assert (ada.faceless, ada.policy.cards) == (False, ("w26:7:1815", "w26:7:1816"))
    assert (grace.faceless, grace.photos, grace.policy.cards) == (True, (), ("w34:300:1906",))
    assert (hedy.faceless, hedy.policy.cards, alan.faceless) == (True, (), False)
    # Only the columns needed: a roster of people without a face has no photos column.
    (vera,) = read_roster(_write(people, "name,id,cards,no_face\nVera,p-vera,w26:1:2,yes\n"), NOW)
    assert vera.faceless and vera.policy.cards == ("w26:1:2",)
    rows = [
        "name,id,photos,cards,no_face",
        "Ada,p-ada,people/ada,w26:7:1815,",  # good
        "Alan,p-alan,people/alan.jpeg,w26:7:1815,",  # Ada's card
        "Grace,p-grace,people/ada,,yes",  # photos on a no_face row
        "Hedy,p-hedy,,,",  # neither photos nor no_face
        "Joan,p-joan,,w26:999:1,yes",  # facility out of range
        "Kate,p-kate,,w26:1:1,maybe",  # no_face neither yes nor no
        "Lise,p-lise,," + " ".join(f"w26:1:{n}" for n in range(9)) + ",yes",  # nine cards
    ]
    problems = _problems(_write(people, "\n".join(rows) + "\n"))
    assert [int(problem.split(":")[0].split()[1]) for problem in problems] == [3, 4, 5, 6, 7, 8], problems
    text = "\n".join(problems)
    for expected in (
        "card 'w26:7:1815' is on line 2 too",
        "has no photos; empty the photos cell",
        "photos are required; no_face = yes enrols a person without a face",
        "facility 0–255",
        "no_face is yes or no, got 'maybe'",
        "at most 8 cards",
    ):
        assert expected in text, expected


def test_a_header_that_is_not_the_rosters_is_refused(people: Path) -> None:
    problems = _problems(_write(people, "foto,name,name\npeople/ada,Ada,Ada\n"))
    columns = "photos, name, external_id, id, groups, valid_from, valid_until, consent_at, cards, no_face"
    assert problems == [
        f"line 1: column 'foto' is not known; the columns are {columns}",
        "line 1: column 'name' appears twice",
    ]
    assert _problems(_write(people, "photos,id\npeople/ada,p-ada\n")) == [
        "line 1: the column 'name' is required"
    ]
    assert _problems(_write(people, "\nphotos,name\n")) == [f"line 1 must name the columns: {columns}"]
    assert _problems(_write(people, "photos,name,id\n")) == ["no person: the roster has a header and no row"]


def test_a_header_that_is_not_csv_is_refused_as_a_roster_error(people: Path) -> None:
    """Found by the seeded mutations on Python 3.8, whose csv module refuses a NUL byte: a header line
    the csv reader refuses was an UnboundLocalError, not the roster's error."""
    (problem,) = _problems(_write(people, '"name"x,photos\nAda,people/ada\n'))  # a quote, then more
    assert problem.startswith("line 1: not CSV")
    # A NUL byte: Python 3.8's csv refuses it (not CSV); later ones read it (an unknown column).
    (problem,) = _problems(_write(people, "name,pho\x00tos\nAda,people/ada\n"))
    assert problem.startswith("line 1: ") and ("not CSV" in problem or "is not known" in problem)


def test_unreadable_rosters(people: Path) -> None:
    (missing,) = _problems(people / "absent.csv")
    assert "does not exist" in missing or "No such file" in missing
    (latin,) = _problems(_write(people, "photos,name,id\npeople/ada,Zoë,p-z\n", encoding="latin-1"))
    assert "not UTF-8" in latin
    (quote,) = _problems(_write(people, 'photos,name,id\npeople/ada,"Ada,p-a\n'))
    assert quote.startswith("line ") and "not CSV" in quote


def test_bounds(people: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crowded = people / "crowded"
    for index in range(MAX_PHOTOS_PER_PERSON + 1):
        _photo(crowded / f"{index:03}.jpg")
    (empty := people / "empty").mkdir()
    (too_many, no_photo) = _problems(_write(people, "photos,name,id\ncrowded,Ada,p-a\nempty,Alan,p-b\n"))
    assert f"holds {MAX_PHOTOS_PER_PERSON + 1} photos; at most {MAX_PHOTOS_PER_PERSON}" in too_many
    assert no_photo.startswith("line 3:") and f"{empty} holds no photo" in no_photo

    monkeypatch.setattr(roster, "MAX_PEOPLE", 2)
    rows = "".join(f"people/ada,P{index},p-{index}\n" for index in range(3))
    (crowd,) = _problems(_write(people, "photos,name,id\n" + rows))
    assert crowd == "line 4: a roster holds at most 2 people; split it"

    monkeypatch.setattr(roster, "MAX_ROSTER_BYTES", 64)
    (large,) = _problems(_write(people, "photos,name,id\n" + rows))
    assert "64" in large


def test_what_a_row_must_give_to_be_found_again(people: Path) -> None:
    path = _write(people, "photos,name,external_id,id\npeople/ada,Ada,B-1,\npeople/ada,Alan,B-2,p-alan\n")
    (problem,) = _problems(path, found_by=BY_ID)
    assert problem.startswith("line 2: give an id: the authority keeps no external ids")
    assert len(read_roster(path, NOW)) == 2
    # A door's gallery makes ids from names: a row with neither is fine there.
    bare = _write(people, "photos,name\npeople/ada,Ada\n", name="bare.csv")
    (ada,) = read_roster(bare, NOW, BY_NAME)
    assert (ada.identity_id, ada.external_id) == (None, None)
    assert "give an id or an external_id" in _problems(bare)[0]


def test_the_error_lists_fifty_problems_and_counts_the_rest(people: Path) -> None:
    rows = "".join(f"people/ada,Person {index}\n" for index in range(60))
    with pytest.raises(RosterError) as caught:
        read_roster(_write(people, "photos,name\n" + rows), NOW)
    assert len(caught.value.problems) == 60
    assert str(caught.value).count("give an id") == 50 and str(caught.value).endswith("… and 10 more")


def test_look_alikes_name_the_earlier_rows_of_one_face() -> None:
    rng = np.random.default_rng(7)
    ada, alan, grace = (rng.standard_normal(128).astype(np.float32) for _ in range(3))
    near_ada = ada + 0.3 * rng.standard_normal(128).astype(np.float32)  # cosine about 0.96
    look_alikes = LookAlikes(0.6)
    assert look_alikes.match_and_add(2, [ada, 5 * ada]) == []  # unit-normalised: scale means nothing
    assert look_alikes.match_and_add(3, [alan]) == []
    for line in range(4, 70):  # past the first capacity: the buffer grows and keeps every face
        assert look_alikes.match_and_add(line, [rng.standard_normal(128).astype(np.float32)]) == []
    (match,) = look_alikes.match_and_add(70, [grace, near_ada])
    assert match[0] == 2 and 0.9 < match[1] < 1.0
    both = look_alikes.match_and_add(71, [alan, ada])  # the same faces as lines 2 and 3, and near 70
    lines = [line for line, _ in both]
    assert sorted(lines[:2]) == [2, 3] and lines[2:] == [70]
    assert both[0][1] > 0.999 and both[1][1] > 0.999 and 0.9 < both[2][1] < 0.999


def test_seeded_mutations_of_a_roster_are_read_or_refused_as_a_roster_error(people: Path) -> None:
    """Bytes flipped, dropped, repeated or spliced into a roster with every column: each one is read
    (the people then hold checked values) or refused with RosterError, never anything else."""
    import random

    original = (
        b"photos,name,external_id,id,groups,valid_from,valid_until,consent_at,cards,no_face\n"
        b'people/ada,Ada Lovelace,B-1815,,"staff, lab",,2027-06-30T18:00:00+02:00,,w26:7:1815,\n'
        b",Grace Hopper,B-1906,p-grace,staff,,,2026-11-30T09:00:00Z,w26:7:1906 w34:300:7,yes\n"
    )
    rng = random.Random(20261207)
    splices = [b",", b'"', b"\n", b"\r", b";", b"\t", b"\x00", b"\xff", b"yes", b"w26:", b"..", b"/"]
    read = 0
    for _ in range(600):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.3:
                data[at] = rng.randrange(256)
            elif choice < 0.5:
                del data[at : at + rng.randint(1, 8)]
            elif choice < 0.8:
                data[at:at] = rng.choice(splices)
            else:
                data[at:at] = data[: rng.randint(1, 40)]
        try:
            result = read_roster(
                _write(people, data.decode("latin-1"), encoding="latin-1"), NOW, BY_NAME, True
            )
        except RosterError:
            continue
        read += 1
        for person in result:
            assert person.name and all(card.count(":") == 2 for card in person.policy.cards)
            assert person.faceless or person.photos or person.needs_photos
    assert 0 < read < 600  # some mutations leave a valid roster, most do not
