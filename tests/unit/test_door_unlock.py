"""The door held unlocked: remain-open windows, first person in, remote open and remote modes.

The logic with fixed clocks; the controller's thread over the ``gpiod`` double of
``tests/fake_gpio.py`` (no GPIO hardware here) with manual monotonic and wall clocks, so a window's
edge is a clock step, not a wait. The daemon's part over MQTT: tests/integration/test_door_daemon.py.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any, Tuple

import pytest

from appliance.access.policy import HolidayCalendar, PolicyTables, parse_instant
from appliance.config_load import validate_config
from appliance.door.controller import DoorController
from appliance.peripherals import Passage
from tests.door_support import ManualClock, Recorder, until
from tests.fake_gpio import GpioSim
from tests.unit.test_door_controller import CHIP0, CLOSED, OPEN, RELAY, _config, _kinds, _logic

#: A Wednesday, 10:00 in Berlin.
WEDNESDAY_10 = parse_instant("2026-12-09T10:00:00+01:00", "t")


class WallClock:
    """The controller's wall clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def set(self, now: datetime) -> None:
        with self._lock:
            self.now = now


def _grant(event_id: str, *groups: str) -> Passage:
    return Passage(event_id, "granted", None, "p1", None, tuple(groups))


# == the logic ====================================================================================================


def test_held_unlocked_the_door_opens_freely_and_is_never_held_open() -> None:
    logic = _logic(contact={"debounce_s": 0, "held_open_s": 30.0})
    [unlocked] = logic.hold(0.0, "schedule")
    assert (unlocked.kind, unlocked.details) == ("door_unlocked", {"by": "schedule"})
    assert logic.hold(1.0, "schedule") == []  # no change, no event
    logic.update(1.0, CLOSED)
    assert logic.relay_on and logic.snapshot()["unlocked_by"] == "schedule"
    assert logic.update(100.0, OPEN) == []  # no forced: it is unlocked
    assert logic.update(1000.0, OPEN) == []  # open for 900 s: not held open while unlocked
    assert logic.next_deadline() is None
    [locked] = logic.hold(1000.0, None)
    assert (locked.kind, locked.details) == ("door_locked", {"was": "schedule", "door": "open"})
    logic.update(1000.0, OPEN)
    assert not logic.relay_on
    assert logic.next_deadline() == 1030.0  # held open counts from the relock
    assert _kinds(logic.update(1030.0, OPEN)) == ["door_held"]
    assert logic.counts["forced"] == 0


def test_a_push_on_the_door_as_it_relocks_is_not_forced() -> None:
    logic = _logic(contact={"debounce_s": 0, "forced_grace_s": 1.0})
    logic.hold(0.0, "remote")
    logic.hold(50.0, None)
    assert logic.update(50.5, OPEN) == []  # within the grace after the relay dropped
    assert logic.update(60.0, CLOSED) == []
    assert _kinds(logic.update(70.0, OPEN)) == ["door_forced"]


def test_a_remote_open_pulses_like_a_grant_and_names_its_request() -> None:
    logic = _logic(contact={"debounce_s": 0})
    event = logic.remote_open(5.0, "req-7")
    assert (event.kind, event.details) == ("remote_open", {"request_id": "req-7", "pulse_s": 3.0})
    logic.update(5.0, CLOSED)
    assert logic.relay_on and logic.next_deadline() == 8.0
    assert logic.update(6.0, OPEN) == []  # authorised by the remote open
    logic.update(8.0, OPEN)
    assert not logic.relay_on and logic.counts["remote_opens"] == 1


# == the configuration ============================================================================================


@pytest.mark.parametrize(
    "unlock, match",
    [
        ({"schedule": ["mon-fri 8:00-18:00"]}, r"door\.unlock\.schedule"),
        ({"schedule": ["someday 08:00-18:00"]}, r"door\.unlock\.schedule"),
        ({"first_person_groups": ["managers"]}, "need door.unlock.schedule"),
        ({"holidays": ["public"]}, "need door.unlock.schedule"),
        ({"schedule": ["daily 08:00-18:00"], "holidays": ["x y"]}, "holiday calendar name"),
        ({"schedule": ["daily 08:00-18:00"], "first_person_groups": ["a b"]}, "first_person_groups"),
        ({"schedule": ["daily 08:00-18:00"], "hold": True}, "hold"),
    ],
)
def test_a_wrong_unlock_section_is_refused(unlock: Any, match: str) -> None:
    with pytest.raises(Exception, match=match):
        validate_config({"door": {"unlock": unlock}})


# == the controller's thread ======================================================================================


def _door(started: Any, wall: WallClock, **unlock: Any) -> Tuple[DoorController, Recorder, ManualClock]:
    clock = ManualClock()
    door, recorder = started(
        _config(relay={"pulse_s": 1.0}, unlock=unlock),
        clock=clock,
        time_zone="Europe/Berlin",
        wall_clock=wall,
    )
    return door, recorder, clock


def test_the_door_is_unlocked_through_its_windows(sim: GpioSim, started: Any) -> None:
    wall = WallClock(WEDNESDAY_10 - timedelta(hours=3))  # 07:00, before the window
    door, recorder, _ = _door(started, wall, schedule=["mon-fri 08:00-18:00"])
    relay = sim.line(CHIP0, RELAY)
    assert door.state()["unlocked_by"] is None and not relay.level
    wall.set(WEDNESDAY_10)
    assert recorder.wait_for("door_unlocked") == {"by": "schedule"}
    until(lambda: relay.level, "the relay held")
    wall.set(WEDNESDAY_10 + timedelta(hours=8))  # 18:00: the window is over
    assert recorder.wait_for("door_locked") == {"was": "schedule", "door": "closed"}
    until(lambda: not relay.level, "the relay released")
    wall.set(WEDNESDAY_10 + timedelta(days=3))  # Saturday 10:00: no window
    door.on_passage(_grant("e1"))
    until(lambda: door.state()["counts"]["grants"] == 1, "the grant taken")
    assert recorder.kinds() == ["door_unlocked", "door_locked"]


def test_first_person_in_unlocks_until_the_window_ends(sim: GpioSim, started: Any) -> None:
    wall = WallClock(WEDNESDAY_10)
    door, recorder, clock = _door(
        started, wall, schedule=["mon-fri 08:00-18:00"], first_person_groups=["managers"]
    )
    door.on_passage(_grant("e1", "staff"))  # not a first person: one passage, then locked again
    until(lambda: door.state()["relay"] == "on", "the grant's pulse")
    clock.advance(1.0)
    until(lambda: door.state()["relay"] == "off", "the pulse over")
    assert not door.state()["first_person_in"] and "door_unlocked" not in recorder.kinds()
    door.on_passage(_grant("e2", "staff", "managers"))
    assert recorder.wait_for("door_unlocked") == {"by": "first_person", "access_event_id": "e2"}
    clock.advance(5.0)  # far past the grant's pulse: held
    until(lambda: door.state()["first_person_in"], "the first person noted")
    assert door.state()["relay"] == "on" and door.state()["unlocked_by"] == "first_person"
    wall.set(WEDNESDAY_10 + timedelta(hours=9))  # 19:00
    assert recorder.wait_for("door_locked")["was"] == "first_person"
    until(lambda: not door.state()["first_person_in"], "forgotten with the window")
    wall.set(WEDNESDAY_10 + timedelta(days=1))  # the next morning: locked until a manager comes
    door.on_passage(_grant("e3", "staff"))
    until(lambda: door.state()["counts"]["grants"] == 3, "the grant taken")
    clock.advance(1.0)
    until(lambda: door.state()["relay"] == "off", "the pulse over")
    assert recorder.kinds() == ["door_unlocked", "door_locked"]


def test_a_remote_mode_overrides_the_schedule_for_a_while(sim: GpioSim, started: Any) -> None:
    wall = WallClock(WEDNESDAY_10)
    door, recorder, clock = _door(started, wall, schedule=["mon-fri 08:00-18:00"])
    recorder.wait_for("door_unlocked")
    door.set_mode("locked", 600.0)  # lockdown for ten minutes
    assert recorder.wait_for("door_locked") == {"was": "schedule", "door": "closed"}
    state = door.state()
    assert state["mode"] == "locked" and state["mode_left_s"] == 600.0 and state["relay"] == "off"
    clock.advance(600.0)
    assert recorder.wait_for("door_unlocked", 2) == {"by": "schedule"}
    assert door.state()["mode"] == "schedule" and door.state()["mode_left_s"] is None
    wall.set(WEDNESDAY_10 + timedelta(hours=12))  # 22:00
    recorder.wait_for("door_locked", 2)
    door.set_mode("unlocked")  # held open at night until told otherwise
    assert recorder.wait_for("door_unlocked", 3) == {"by": "remote"}
    clock.advance(86400.0)
    assert door.state()["relay"] == "on"
    door.set_mode("schedule")
    assert recorder.wait_for("door_locked", 3) == {"was": "remote", "door": "closed"}
    for mode, seconds in (("open", None), ("locked", 0.0), ("locked", -5.0)):
        with pytest.raises(ValueError):
            door.set_mode(mode, seconds)


def test_no_window_opens_on_a_holiday(sim: GpioSim, started: Any) -> None:
    wall = WallClock(WEDNESDAY_10)
    door, recorder, _ = _door(started, wall, schedule=["mon-fri 08:00-18:00"], holidays=["public"])
    recorder.wait_for("door_unlocked")
    door.set_closed_days(frozenset({WEDNESDAY_10.date()}))
    assert recorder.wait_for("door_locked") == {"was": "schedule", "door": "closed"}
    assert door.state()["closed_today"]
    wall.set(WEDNESDAY_10 + timedelta(days=1))  # Thursday: an ordinary day again
    assert recorder.wait_for("door_unlocked", 2) == {"by": "schedule"}
    assert not door.state()["closed_today"]


def test_the_days_of_the_named_calendars() -> None:
    tables = PolicyTables(
        {},
        {
            "public": HolidayCalendar.from_parts("public", ["2026-12-25", "2026-12-26"]),
            "site": HolidayCalendar.from_parts("site", ["2026-12-24"]),
        },
    )
    assert {d.isoformat() for d in tables.days_of(["public", "site", "undefined"])} == {
        "2026-12-24",
        "2026-12-25",
        "2026-12-26",
    }
    assert tables.days_of([]) == frozenset()


def test_a_remote_open_is_a_pulse_with_its_request_id(sim: GpioSim, started: Any) -> None:
    wall = WallClock(WEDNESDAY_10)
    door, recorder, clock = _door(started, wall)
    relay = sim.line(CHIP0, RELAY)
    door.remote_open("req-1")
    assert recorder.wait_for("remote_open") == {"request_id": "req-1", "pulse_s": 1.0}
    until(lambda: relay.level, "the relay pulsed")
    clock.advance(1.0)
    until(lambda: not relay.level, "the pulse over")
    assert door.state()["counts"]["remote_opens"] == 1
