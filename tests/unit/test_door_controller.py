"""The door's logic and its owner thread: pulses, debounce, forced and held doors, request-to-exit, stop.

Two layers, both for real: :class:`DoorLogic` with fixed clocks (every call takes ``now``), and the
:class:`DoorController` thread with real short times and with a manual clock, driving the lines
through the ``gpiod`` back-ends over the API-level doubles of ``tests/fake_gpio.py`` (no GPIO
hardware here; see that module). Timing checks are one-sided: a relay can never turn off *before*
its pulse has run, so "off at least ``pulse_s`` after the grant" holds on any machine; waits for an
event have generous limits and end as soon as it comes.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pytest

from appliance.door import controller as controller_module
from appliance.door import create_door
from appliance.door.controller import DoorController
from appliance.door.errors import DoorError
from appliance.door.lines import DoorLines, open_lines
from appliance.door.logic import DoorLogic
from appliance.door.settings import DoorConfig
from appliance.peripherals import Passage
from tests.door_support import LIMIT_S, ManualClock, Recorder, until
from tests.fake_gpio import GpioSim, door_config, install

CHIP0 = "/dev/gpiochip0"
RELAY, CONTACT, EXIT, TAMPER = 12, 13, 14, 15


WIRED: Dict[str, Any] = {
    "enabled": True,
    "relay": {"line": RELAY, "pulse_s": 3.0},
    "contact": {"line": CONTACT, "held_open_s": 30.0, "forced_grace_s": 1.0, "debounce_s": 0.05},
    "exit": {"line": EXIT, "debounce_s": 0.05},
}


def _config(*layers: Mapping[str, Any], **door: Any) -> DoorConfig:
    """``[door]`` with every line wired, then ``layers`` and ``door`` merged over it."""
    config: DoorConfig = door_config(WIRED, *layers, **door)
    return config


def _kinds(events: Sequence[Any]) -> List[str]:
    return [event.kind for event in events]


# == the logic, with fixed clocks ===============================================================================


def _logic(door_open: bool = False, **door: Any) -> DoorLogic:
    logic = DoorLogic(_config(**door))
    logic.begin(0.0, {"contact": door_open, "exit": False})
    return logic


CLOSED = {"contact": False, "exit": False}
OPEN = {"contact": True, "exit": False}
PRESSED = {"contact": False, "exit": True}


def test_a_grant_pulses_the_relay_for_pulse_s() -> None:
    logic = _logic()
    logic.grant(10.0, "e1")
    assert logic.update(10.0, CLOSED) == [] and logic.relay_on
    assert logic.next_deadline() == 13.0
    logic.update(12.999, CLOSED)
    assert logic.relay_on
    logic.update(13.0, CLOSED)
    assert not logic.relay_on and logic.next_deadline() is None
    assert logic.counts["grants"] == 1


def test_a_grant_during_a_pulse_extends_it() -> None:
    logic = _logic()
    logic.grant(0.0, "e1")
    logic.update(0.0, CLOSED)
    logic.grant(2.0, "e2")
    for now in (2.0, 3.0, 4.999):  # 3.0: the first pulse alone would have ended
        logic.update(now, CLOSED)
        assert logic.relay_on, now
    logic.update(5.0, CLOSED)
    assert not logic.relay_on


def test_an_opening_without_a_grant_is_forced() -> None:
    logic = _logic()
    events = logic.update(5.0, OPEN)
    assert events == []  # not yet: the level must hold debounce_s
    assert logic.next_deadline() == 5.05
    [forced] = logic.update(5.05, OPEN)
    assert (forced.kind, forced.details) == ("door_forced", {"after_authorisation_s": None})
    assert logic.snapshot()["alarm"] == "door_forced"


def test_bounces_shorter_than_debounce_are_ignored() -> None:
    logic = _logic()
    for now, level in ((1.00, True), (1.02, False), (1.03, True), (1.06, True)):
        assert logic.update(now, {"contact": level, "exit": False}) == []
    assert logic.next_deadline() == pytest.approx(1.08)
    assert _kinds(logic.update(1.08, OPEN)) == ["door_forced"]  # accepted, dated from 1.03
    assert logic.counts["openings"] == 1
    for now, level in ((2.0, False), (2.01, True), (2.02, False), (2.03, True), (3.0, True)):
        assert logic.update(now, {"contact": level, "exit": False}) == []
    assert logic.door_open is True  # the bounces to "closed" were never accepted


def test_an_opening_within_the_pulse_and_grace_is_authorised() -> None:
    logic = _logic(contact={"debounce_s": 0})
    logic.grant(0.0, "e1")
    logic.update(0.0, CLOSED)
    logic.update(3.0, CLOSED)
    assert not logic.relay_on  # the pulse has ended; the grace has not
    assert logic.update(4.0, OPEN) == []  # 3.0 + 1.0 grace, inclusive
    assert logic.update(5.0, CLOSED) == []  # an ordinary passage raises nothing
    [forced] = logic.update(4.2 + 1.0, OPEN)
    assert forced.kind == "door_forced" and forced.details == {"after_authorisation_s": 1.2}
    assert logic.counts == {
        "grants": 1,
        "exit_requests": 0,
        "remote_opens": 0,
        "openings": 2,
        "forced": 1,
        "held": 0,
        "tampers": 0,
    }


def test_held_open_fires_once_per_opening_then_closed_clears_it() -> None:
    logic = _logic(contact={"debounce_s": 0})
    logic.grant(0.0, "e1")
    logic.update(1.0, OPEN)
    assert logic.next_deadline() == 3.0  # the pulse first, then the held-open limit
    logic.update(3.0, OPEN)
    assert logic.next_deadline() == 31.0
    assert logic.update(30.999, OPEN) == []
    [held] = logic.update(31.0, OPEN)
    assert held.kind == "door_held"
    assert held.details == {"open_s": 30.0, "limit_s": 30.0, "opening": "granted", "access_event_id": "e1"}
    assert logic.update(40.0, OPEN) == [] and logic.next_deadline() is None
    [closed] = logic.update(45.0, CLOSED)
    assert (closed.kind, closed.details) == (
        "door_closed",
        {"open_s": 44.0, "forced": False, "held": True, "opening": "granted", "access_event_id": "e1"},
    )
    assert logic.snapshot()["alarm"] is None


def test_a_forced_door_closing_clears_the_alarm() -> None:
    logic = _logic(contact={"debounce_s": 0})
    assert _kinds(logic.update(1.0, OPEN)) == ["door_forced"]
    [closed] = logic.update(2.5, CLOSED)
    assert closed.details == {
        "open_s": 1.5,
        "forced": True,
        "held": False,
        "opening": "forced",
        "access_event_id": None,
    }


def test_request_to_exit_pulses_the_relay_and_authorises() -> None:
    logic = _logic()
    assert logic.update(1.0, PRESSED) == []
    [request] = logic.update(1.05, PRESSED)
    assert (request.kind, request.details) == ("exit_request", {"unlocks": True})
    assert logic.relay_on and logic.relay_until == 4.05
    assert logic.update(1.5, {"contact": True, "exit": False}) == []
    assert logic.update(1.55, OPEN) == []  # authorised by the exit request
    assert logic.counts["exit_requests"] == 1 and logic.counts["forced"] == 0
    logic.update(60.0, OPEN)
    assert logic.snapshot()["alarm"] == "door_held"


def test_request_to_exit_without_unlocking_still_authorises() -> None:
    logic = _logic(exit={"unlocks": False, "debounce_s": 0}, contact={"debounce_s": 0})
    assert _kinds(logic.update(1.0, PRESSED)) == ["exit_request"]
    assert not logic.relay_on
    assert logic.update(2.0, {"contact": True, "exit": True}) == []


def test_a_door_open_at_start_is_not_forced_but_can_be_held() -> None:
    logic = _logic(door_open=True)
    assert logic.snapshot()["door"] == "open"
    assert logic.update(0.1, OPEN) == []
    [held] = logic.update(30.0, OPEN)
    assert held.details["opening"] == "unknown"


def test_without_a_contact_only_the_relay_runs() -> None:
    logic = DoorLogic(_config(contact={"line": None}, exit={"line": None}))
    logic.begin(0.0, {})
    logic.grant(0.0, "e1")
    assert logic.update(0.0, {}) == [] and logic.relay_on
    assert logic.snapshot() == {
        "relay": "on",
        "door": None,
        "exit": None,
        "tamper": None,
        "alarm": None,
        "unlocked_by": None,
        "counts": {
            "grants": 1,
            "exit_requests": 0,
            "remote_opens": 0,
            "openings": 0,
            "forced": 0,
            "held": 0,
            "tampers": 0,
        },
    }


# == the controller's thread, with real short times ===============================================================


def _passage(decision: str = "granted", event_id: str = "e1") -> Passage:
    return Passage(event_id=event_id, decision=decision, reason=None, identity_id="p1", credential="1234")


FAST = {
    "relay": {"pulse_s": 0.1},
    "contact": {"held_open_s": 0.3, "forced_grace_s": 0.05, "debounce_s": 0.01},
    "exit": {"debounce_s": 0.01},
}


def _relay_writes(sim: GpioSim, since: float) -> List[Tuple[float, bool]]:
    return [(at, level) for at, level in sim.line(CHIP0, RELAY).writes if at >= since]


def test_a_granted_passage_pulses_the_relay_once(sim: GpioSim, started: Any) -> None:
    door, _ = started(_config(FAST))
    relay = sim.line(CHIP0, RELAY)
    door.on_passage(_passage("denied"))
    door.on_passage(_passage("unknown"))
    granted_at = time.monotonic()
    door.on_passage(_passage())
    until(lambda: relay.level, "relay on")
    until(lambda: not relay.level, "relay off")
    writes = _relay_writes(sim, granted_at)
    assert [level for _, level in writes] == [True, False]
    assert writes[1][0] - granted_at >= 0.1  # never shorter than pulse_s
    assert door.state()["counts"]["grants"] == 1


def test_a_second_grant_extends_the_pulse(sim: GpioSim, started: Any) -> None:
    door, _ = started(_config(relay={"pulse_s": 0.5}))
    relay = sim.line(CHIP0, RELAY)
    first = time.monotonic()
    door.on_passage(_passage(event_id="e1"))
    until(lambda: relay.level, "relay on")
    second = time.monotonic()
    door.on_passage(_passage(event_id="e2"))
    until(lambda: door.state()["counts"]["grants"] == 2, "the second grant taken")
    until(lambda: not relay.level, "relay off")
    writes = _relay_writes(sim, first)
    assert [level for _, level in writes] == [True, False]  # it stayed on: no blink between the grants
    assert writes[1][0] - second >= 0.5


def test_forced_held_and_closed(sim: GpioSim, started: Any) -> None:
    door, recorder = started(_config(FAST))
    sim.set_input(CHIP0, CONTACT, True)
    assert recorder.wait_for("door_forced") == {"after_authorisation_s": None}
    assert door.state()["alarm"] in ("door_forced", "door_held")
    held = recorder.wait_for("door_held")
    assert held["limit_s"] == 0.3 and held["open_s"] >= 0.3 and held["opening"] == "forced"
    sim.set_input(CHIP0, CONTACT, False)
    closed = recorder.wait_for("door_closed")
    assert closed["forced"] and closed["held"]
    assert recorder.kinds() == ["door_forced", "door_held", "door_closed"]
    state = door.state()
    assert state["alarm"] is None and state["door"] == "closed"
    assert state["last_event"]["kind"] == "door_closed" and state["last_event"]["ts"].endswith("Z")


def test_a_granted_opening_raises_nothing(sim: GpioSim, started: Any) -> None:
    door, recorder = started(_config(FAST, relay={"pulse_s": 1.0}))
    door.on_passage(_passage())
    until(lambda: door.state()["relay"] == "on", "relay on")
    sim.set_input(CHIP0, CONTACT, True)
    until(lambda: door.state()["counts"]["openings"] == 1, "the opening counted")
    sim.set_input(CHIP0, CONTACT, False)
    until(lambda: door.state()["door"] == "closed", "the door closed")
    assert recorder.kinds() == [] and door.state()["counts"]["forced"] == 0


def test_request_to_exit_pulses_and_reports(sim: GpioSim, started: Any) -> None:
    door, recorder = started(_config(FAST))
    pressed_at = time.monotonic()
    sim.set_input(CHIP0, EXIT, True)
    assert recorder.wait_for("exit_request") == {"unlocks": True}
    until(lambda: [level for _, level in _relay_writes(sim, pressed_at)] == [True, False], "a relay pulse")
    sim.set_input(CHIP0, EXIT, False)
    until(lambda: door.state()["exit"] == "released", "the button released")
    assert recorder.kinds() == ["exit_request"] and door.state()["counts"]["exit_requests"] == 1


def test_the_tamper_switch_raises_and_clears_an_alarm() -> None:
    logic = DoorLogic(_config(tamper={"line": TAMPER, "debounce_s": 0.5}))
    logic.begin(0.0, {"contact": False, "exit": False, "tamper": True})  # the housing open at boot
    assert logic.update(0.2, {"tamper": True}) == []  # the first read: not yet held for its debounce
    [tampered] = logic.update(0.7, {"tamper": True})
    assert (tampered.kind, tampered.details) == ("tamper", {})
    assert logic.snapshot()["tamper"] == "active" and logic.counts["tampers"] == 1
    assert logic.update(5.0, {"tamper": False}) == []
    [cleared] = logic.update(5.5, {"tamper": False})
    # active from first seen (0.2) to first seen normal (5.0)
    assert (cleared.kind, cleared.details) == ("tamper_cleared", {"active_s": 4.8})
    assert not logic.relay_on and logic.snapshot()["tamper"] == "normal"  # an alarm only
    assert DoorLogic(_config()).snapshot()["tamper"] is None  # not wired


def test_a_tampered_housing_is_reported_through_the_thread(sim: GpioSim, started: Any) -> None:
    door, recorder = started(_config(FAST, tamper={"line": TAMPER, "debounce_s": 0.01}))
    sim.set_input(CHIP0, TAMPER, True)
    assert recorder.wait_for("tamper") == {}
    sim.set_input(CHIP0, TAMPER, False)
    assert recorder.wait_for("tamper_cleared")["active_s"] >= 0
    assert door.state()["tamper"] == "normal" and door.state()["counts"]["tampers"] == 1


def test_a_bouncing_contact_opens_once(sim: GpioSim, started: Any) -> None:
    door, recorder = started(_config(FAST))
    sim.bounce(CHIP0, CONTACT, [True, False, True, False, True, False])
    sim.set_input(CHIP0, CONTACT, True)
    recorder.wait_for("door_forced")
    until(lambda: door.state()["door"] == "open", "the door open")
    assert door.state()["counts"]["openings"] == 1 and recorder.kinds().count("door_forced") == 1


def test_active_low_relay_and_contact(sim: GpioSim, started: Any) -> None:
    sim.set_input(CHIP0, CONTACT, True)  # an active-low contact reads high while the door is shut
    relay = sim.line(CHIP0, RELAY)
    door, recorder = started(_config(FAST, relay={"active_low": True}, contact={"active_low": True}))
    assert relay.level and door.state()["door"] == "closed"  # released = high
    sim.set_input(CHIP0, CONTACT, False)
    recorder.wait_for("door_forced")
    granted_at = time.monotonic()
    door.on_passage(_passage())
    until(lambda: [level for _, level in _relay_writes(sim, granted_at)] == [False, True], "a low pulse")


def test_close_releases_the_relay_and_the_lines(sim: GpioSim, started: Any) -> None:
    door, _ = started(_config(relay={"pulse_s": 60.0}))
    door.on_passage(_passage())
    until(lambda: sim.line(CHIP0, RELAY).level, "relay on")
    thread = door._thread
    door.close(5.0)
    assert thread is not None and not thread.is_alive()
    assert not sim.line(CHIP0, RELAY).level and sim.held() == []
    assert door.state()["running"] is False and door.state()["relay"] == "off"
    door.close(5.0)  # idempotent
    door.on_passage(_passage())  # after close: ignored, no error


@pytest.mark.parametrize("backend", ("gpiod1", "jetson-gpio"))
def test_the_other_back_ends_end_to_end(
    backend: str, sim: GpioSim, started: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, backend, sim)
    door, recorder = started(_config(FAST, backend=backend))
    assert door.state()["backend"] == backend
    sim.set_input(CHIP0, CONTACT, True)
    recorder.wait_for("door_forced")
    granted_at = time.monotonic()
    door.on_passage(_passage())
    until(lambda: [level for _, level in _relay_writes(sim, granted_at)] == [True, False], "a relay pulse")


# -- a manual clock: the timers follow the clock the controller is given -------------------------------------------


def test_the_timers_run_on_the_given_clock(sim: GpioSim, started: Any) -> None:
    clock = ManualClock()
    door, recorder = started(_config(relay={"pulse_s": 0.1}, contact={"debounce_s": 0}), clock=clock)
    door.on_passage(_passage())
    until(lambda: door.state()["relay"] == "on", "relay on")
    time.sleep(0.3)  # three real pulses, but the clock has not moved
    assert door.state()["relay"] == "on"
    clock.advance(0.1)
    until(lambda: door.state()["relay"] == "off", "relay off once the clock passed the pulse")
    clock.advance(60.0)
    sim.set_input(CHIP0, CONTACT, True)
    recorder.wait_for("door_forced")
    clock.advance(30.0)  # the held-open limit, without waiting 30 s
    assert recorder.wait_for("door_held")["open_s"] == 30.0


# -- failures and the lifecycle -------------------------------------------------------------------------------------


class ScriptedLines(DoorLines):
    """Lines that fail or hang on demand (the failure paths no double of a library can show)."""

    backend = "scripted"

    def __init__(self, fail_reads: int = 0, hang: Optional[threading.Event] = None) -> None:
        self.fail_reads = fail_reads
        self.hang = hang
        self.relay: List[bool] = []
        self.reads = 0
        self.closed = False

    def set_relay(self, on: bool) -> None:
        self.relay.append(on)

    def read_inputs(self) -> Dict[str, bool]:
        self.reads += 1
        if self.reads > 1 and self.fail_reads > 0:
            self.fail_reads -= 1
            raise OSError(5, "Input/output error")
        return {"contact": False, "exit": False}

    def wait(self, timeout: float, wake_fd: int) -> bool:
        if self.hang is not None:
            self.hang.wait(LIMIT_S)
            return False
        return super().wait(timeout, wake_fd)

    def close(self) -> None:
        self.closed = True


def test_a_failing_read_is_counted_and_survived(started: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "ERROR_BACKOFF_S", 0.01)
    lines = ScriptedLines(fail_reads=2)
    door, _ = started(_config(FAST), open_lines=lambda config: lines)
    door.on_passage(_passage())
    until(lambda: door.state()["errors"] == 2, "two errors counted")
    assert door.state()["last_error"] == "OSError: [Errno 5] Input/output error"
    until(lambda: lines.relay[-2:] == [True, False], "a pulse after the errors")
    assert door.state()["running"]


def test_close_keeps_its_deadline_when_the_back_end_hangs(
    started: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hang = threading.Event()
    lines = ScriptedLines(hang=hang)
    door, _ = started(_config(FAST), open_lines=lambda config: lines)
    thread = door._thread
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="appliance.door.controller"):
        door.close(0.2)
    assert time.monotonic() - began < 0.2 + LIMIT_S / 2
    assert "did not stop within 0.2 s" in caplog.text
    hang.set()  # let it go, and see it release the lines
    assert thread is not None
    thread.join(LIMIT_S)
    assert not thread.is_alive() and lines.closed and lines.relay[-1] is False


def test_start_refusals(sim: GpioSim, started: Any) -> None:
    with pytest.raises(DoorError, match=r"door\.contact\.line = 'NOPE': no line of that name"):
        DoorController(_config(contact={"line": "NOPE"})).start(Recorder())
    assert sim.held() == []
    door, _ = started(_config())
    with pytest.raises(DoorError, match="started or closed before"):
        door.start(Recorder())
    door.close(5.0)
    with pytest.raises(DoorError, match="started or closed before"):
        door.start(Recorder())
    unused = DoorController(_config())
    unused.close(1.0)  # never started: nothing to stop


def test_create_door_and_the_state_document(sim: GpioSim, started: Any) -> None:
    door = create_door(_config())
    assert isinstance(door, DoorController) and door.name == "door"
    assert door.state()["running"] is False
    door, _ = started(_config())
    assert set(door.state()) == {
        "backend", "running", "relay", "door", "exit", "tamper", "alarm", "counts", "last_event", "errors", "last_error",
        "unlocked_by", "mode", "mode_left_s", "first_person_in", "closed_today",
    }  # fmt: skip
    assert door.state()["backend"] == "gpiod" and door.state()["running"]
    assert json.loads(json.dumps(door.state())) == door.state()


def test_the_package_imports_no_gpio_library() -> None:
    code = (
        "import sys, appliance.door; "
        "print([m for m in ('gpiod', 'Jetson.GPIO', 'appliance.door.controller') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


def test_open_lines_is_the_default(sim: GpioSim) -> None:
    assert DoorController(_config())._open_lines is open_lines
