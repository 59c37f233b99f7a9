"""The access policy with fixed clocks: validity, suspension, groups, weekly windows (also across
midnight), holiday calendars and the door's time zone, including both DST changes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Dict, Optional, Sequence

import pytest

from appliance.access.errors import PolicyError
from appliance.access.policy import (
    AccessGroup,
    AccessPolicy,
    HolidayCalendar,
    IdentityPolicy,
    PolicyTables,
    parse_instant,
)
from appliance.access.schedule import WeeklySchedule, Window
from appliance.access.zones import load_zone

BERLIN = "Europe/Berlin"


def at(text: str) -> datetime:
    return parse_instant(text, "test time")


def tables(
    groups: Dict[str, Sequence[str]],
    holidays: Optional[Dict[str, Sequence[str]]] = None,
    closed_on: Optional[Dict[str, Sequence[str]]] = None,
) -> PolicyTables:
    closed_on = closed_on or {}
    return PolicyTables(
        {
            name: AccessGroup.from_parts(name, windows, closed_on.get(name, ()))
            for name, windows in groups.items()
        },
        {name: HolidayCalendar.from_parts(name, days) for name, days in (holidays or {}).items()},
    )


def judge(
    policy: IdentityPolicy,
    now: str,
    door: Sequence[str] = ("staff",),
    zone: str = BERLIN,
    table: Optional[PolicyTables] = None,
) -> Optional[str]:
    table = table or tables({"staff": ["mon-fri 08:00-18:00"]})
    return AccessPolicy(door, zone).judge(policy, table, at(now))


STAFF = IdentityPolicy(groups=("staff",))


# -- identity ------------------------------------------------------------------------------------------


def test_validity_bounds_and_suspension_come_first() -> None:
    visitor = IdentityPolicy(
        at("2026-12-01T08:00:00+01:00"), at("2026-12-04T18:00:00+01:00"), groups=("staff",)
    )
    assert judge(visitor, "2026-12-02T10:00:00+01:00") is None  # a Wednesday, inside the window
    assert judge(visitor, "2026-12-01T07:59:59+01:00") == "not_yet_valid"
    assert judge(visitor, "2026-12-04T18:00:00+01:00") == "expired"  # valid_until is exclusive
    assert judge(visitor, "2026-12-04T17:59:59+01:00") is None
    suspended = IdentityPolicy(groups=("staff",), suspended=True)
    assert judge(suspended, "2026-12-02T10:00:00+01:00") == "suspended"
    # suspended outranks an expiry; an expiry outranks the schedule
    assert (
        judge(IdentityPolicy(valid_until=at("2020-01-01T00:00:00Z"), suspended=True), "2026-12-02T10:00:00Z")
        == "suspended"
    )
    assert (
        judge(
            IdentityPolicy(valid_until=at("2020-01-01T00:00:00Z"), groups=("staff",)), "2026-12-05T03:00:00Z"
        )
        == "expired"
    )


def test_groups_only_matter_when_the_door_names_some() -> None:
    nobody = IdentityPolicy()
    assert judge(nobody, "2026-12-06T03:00:00Z", door=()) is None  # no door groups: any time, anyone valid
    assert judge(nobody, "2026-12-02T10:00:00+01:00") == "not_in_group"
    assert judge(IdentityPolicy(groups=("cleaners",)), "2026-12-02T10:00:00+01:00") == "not_in_group"
    # a group the door names but nobody defined admits nobody
    assert (
        judge(IdentityPolicy(groups=("ghosts",)), "2026-12-02T10:00:00+01:00", door=("ghosts",))
        == "outside_schedule"
    )


def test_any_admitted_group_open_now_is_enough() -> None:
    table = tables({"staff": ["mon-fri 08:00-18:00"], "night": ["daily 22:00-06:00"]})
    both = IdentityPolicy(groups=("night", "staff"))
    assert judge(both, "2026-12-02T10:00:00+01:00", ("staff", "night"), table=table) is None
    assert judge(both, "2026-12-02T23:00:00+01:00", ("staff", "night"), table=table) is None
    assert judge(both, "2026-12-02T20:00:00+01:00", ("staff", "night"), table=table) == "outside_schedule"
    # the door admits only staff: the night group does not count here
    assert judge(both, "2026-12-02T23:00:00+01:00", ("staff",), table=table) == "outside_schedule"


# -- windows -------------------------------------------------------------------------------------------


def test_a_window_across_midnight_belongs_to_the_day_it_starts() -> None:
    table = tables({"staff": ["fri 22:00-06:00"]})
    # 2026-12-04 is a Friday
    assert judge(STAFF, "2026-12-04T21:59:00+01:00", table=table) == "outside_schedule"
    assert judge(STAFF, "2026-12-04T22:00:00+01:00", table=table) is None
    assert judge(STAFF, "2026-12-05T05:59:00+01:00", table=table) is None  # Saturday morning, same window
    assert judge(STAFF, "2026-12-05T06:00:00+01:00", table=table) == "outside_schedule"  # end exclusive
    assert (
        judge(STAFF, "2026-12-04T05:00:00+01:00", table=table) == "outside_schedule"
    )  # Thursday's night: no
    sunday = tables({"staff": ["sun 23:00-01:00"]})
    assert judge(STAFF, "2026-12-07T00:30:00+01:00", table=sunday) is None  # wraps into Monday


def test_window_syntax() -> None:
    assert Window.parse("mon-fri 08:00-18:00").days == frozenset(range(5))
    assert Window.parse("fri-mon 10:00-11:00").days == frozenset({4, 5, 6, 0})  # a range may wrap
    assert Window.parse("mon,wed,sat-sun 00:00-24:00").days == frozenset({0, 2, 5, 6})
    assert Window.parse("daily 00:00-24:00").admits(3, 0) and Window.parse("daily 00:00-24:00").admits(
        3, 1439
    )
    assert Window.parse("  MON   09:00 - 10:00 ").text == "MON 09:00 - 10:00"
    for bad in (
        "mon 8:00-18:00",
        "monday 08:00-18:00",
        "mon 08:00-08:00",
        "mon 24:00-01:00",
        "mon 08:60-09:00",
        "mon-tue-wed 08:00-09:00",
        "08:00-18:00",
        "",
        "mon 08:00-18:00 extra",
    ):
        with pytest.raises(PolicyError):
            Window.parse(bad)
    with pytest.raises(PolicyError, match="at most"):
        WeeklySchedule.parse(["mon 08:00-09:00"] * 65)
    assert not WeeklySchedule.parse([]).admits(datetime(2026, 12, 2, 10))  # empty: nobody


# -- holidays ------------------------------------------------------------------------------------------


def test_holidays_close_a_group_for_the_whole_local_day() -> None:
    table = tables(
        {"staff": ["daily 00:00-24:00"], "security": ["daily 00:00-24:00"]},
        {"de-by": ["2026-12-25", "2026-12-26"]},
        closed_on={"staff": ["de-by"]},
    )
    assert judge(STAFF, "2026-12-24T23:59:00+01:00", table=table) is None
    assert judge(STAFF, "2026-12-25T00:00:00+01:00", table=table) == "holiday"
    # 23:30 UTC on the 24th is already the 25th in Berlin
    assert judge(STAFF, "2026-12-24T23:30:00Z", table=table) == "holiday"
    assert judge(STAFF, "2026-12-24T23:30:00Z", zone="UTC", table=table) is None
    # another open group of the same person still admits
    both = IdentityPolicy(groups=("security", "staff"))
    assert judge(both, "2026-12-25T12:00:00+01:00", ("staff", "security"), table=table) is None
    # outside every window on a holiday, the reason is the schedule, not the holiday
    office = tables({"staff": ["mon-fri 08:00-18:00"]}, {"de-by": ["2026-12-25"]}, {"staff": ["de-by"]})
    assert judge(STAFF, "2026-12-25T10:00:00+01:00", table=office) == "holiday"  # a Friday
    assert judge(STAFF, "2026-12-25T20:00:00+01:00", table=office) == "outside_schedule"
    # a calendar nobody defined closes nothing
    ghost = tables({"staff": ["daily 00:00-24:00"]}, {}, {"staff": ["nowhere"]})
    assert judge(STAFF, "2026-12-25T10:00:00+01:00", table=ghost) is None


def test_calendar_days_are_checked() -> None:
    with pytest.raises(PolicyError, match="not a date"):
        HolidayCalendar.from_parts("x", ["2026-02-30"])
    with pytest.raises(PolicyError, match="not a date"):
        HolidayCalendar.from_parts("x", ["25.12.2026"])
    with pytest.raises(PolicyError, match="not valid"):
        HolidayCalendar.from_parts("bad name", [])


# -- time zone and DST ---------------------------------------------------------------------------------


def test_the_schedule_reads_local_wall_time_across_dst_changes() -> None:
    table = tables({"staff": ["sun 01:30-03:00"]})
    # 2026-03-29: Berlin springs forward at 02:00 CET → 03:00 CEST. The window lasts 30 real minutes.
    assert judge(STAFF, "2026-03-29T00:29:00Z", table=table) == "outside_schedule"  # 01:29 CET
    assert judge(STAFF, "2026-03-29T00:30:00Z", table=table) is None  # 01:30 CET
    assert judge(STAFF, "2026-03-29T00:59:00Z", table=table) is None  # 01:59 CET
    assert judge(STAFF, "2026-03-29T01:00:00Z", table=table) == "outside_schedule"  # 03:00 CEST
    # 2026-10-25: back from 03:00 CEST to 02:00 CET; 02:00–03:00 local happens twice, inside both times.
    first = at("2026-10-25T00:30:00Z")  # 02:30 CEST
    second = first + timedelta(hours=1)  # 02:30 CET
    policy = AccessPolicy(["staff"], BERLIN)
    assert policy.judge(STAFF, table, first) is None and policy.judge(STAFF, table, second) is None
    assert policy.judge(STAFF, table, first + timedelta(hours=2)) == "outside_schedule"  # 03:30 CET
    # 08:00-18:00 is local office hours summer and winter
    office = tables({"staff": ["mon-fri 08:00-18:00"]})
    assert judge(STAFF, "2026-07-01T06:00:00Z", table=office) is None  # 08:00 CEST
    assert judge(STAFF, "2026-12-02T06:00:00Z", table=office) == "outside_schedule"  # 07:00 CET


def test_time_zones_and_instants_are_checked() -> None:
    assert str(load_zone("America/New_York")) == "America/New_York"
    for bad in ("Mars/Base", "", "../etc/passwd", "/etc/localtime"):
        with pytest.raises(PolicyError):
            load_zone(bad)
    assert at("2026-12-31T18:00:00+01:00") == datetime(2026, 12, 31, 17, tzinfo=timezone.utc)
    with pytest.raises(PolicyError, match="no offset"):
        parse_instant("2026-12-31T18:00:00", "valid_until")
    with pytest.raises(PolicyError, match="not an ISO 8601"):
        parse_instant("tomorrow", "valid_until")


def test_identity_policy_documents_and_changes() -> None:
    policy = IdentityPolicy.from_document(
        {
            "valid_from": "2026-01-01T00:00:00+01:00",
            "valid_until": None,
            "suspended": False,
            "groups": ["b", "a", "a"],
        }
    )
    assert policy.groups == ("a", "b") and policy.document()["valid_from"] == "2025-12-31T23:00:00Z"
    assert IdentityPolicy.from_document(policy.document()) == policy
    changed = policy.changed(
        {"add_groups": ["c"], "remove_groups": ["a"], "valid_from": None, "suspended": True}
    )
    assert changed.groups == ("b", "c") and changed.valid_from is None and changed.suspended
    with pytest.raises(PolicyError, match="not after"):
        policy.changed({"valid_until": "2025-06-01T00:00:00Z"})
    with pytest.raises(PolicyError, match="unknown"):
        IdentityPolicy.from_document({"valid_to": "2026-01-01T00:00:00Z"})
    with pytest.raises(PolicyError, match="true or false"):
        IdentityPolicy.from_document({"suspended": "yes"})
    with pytest.raises(PolicyError, match="not valid"):
        policy.changed({"groups": ["a b"]})
