"""What the door's inputs and grants mean: debounce, relay pulses, forced and held-open doors.

:class:`DoorLogic` is a plain state machine with no threads and no clock of its own: every call
carries ``now`` (monotonic seconds), so the timers are tested with fixed clocks, and the owner thread
(:mod:`appliance.door.controller`) feeds it real time. The rules:

* **Relay**: a grant energises the relay for ``door.relay.pulse_s``; a grant during a pulse extends
  it (the relay stays on, it does not blink). A request-to-exit does the same when
  ``door.exit.unlocks`` (default).
* **Authorised opening**: an opening that starts before the last pulse ended plus
  ``door.contact.forced_grace_s`` belongs to that grant or exit request; any other opening is
  ``door_forced``.
* **Held open**: a door open ``door.contact.held_open_s`` raises ``door_held`` once per opening.
* **Closed**: closing after ``door_forced`` or ``door_held`` raises ``door_closed`` (the alarm
  clears); a normal opening and closing raises nothing (it is counted).
* **Debounce**: a level counts once it has held ``debounce_s``; it counts from when it was first
  seen, so debounce does not delay the forced/authorised judgement.
* A door found open at start is ``unknown`` (not forced); it can still be held.
* **Remote open**: a one-off pulse asked over MQTT (``door_open``), like a grant; it raises
  ``remote_open`` with the command's ``request_id``.
* **Tamper** (``door.tamper``): the housing's switch going active raises ``tamper`` — also when it is
  active at start (once it has held ``debounce_s``: a box that boots open is reported) — and going
  back ``tamper_cleared`` (``active_s``). An alarm only: the door's behaviour does not change.
* **Held unlocked** (:meth:`DoorLogic.hold`; ``by`` the unlock schedule, the first person in, or a
  remote ``door_mode``): the relay stays energised, every opening is authorised and a door left open
  is not ``door_held``; holding raises ``door_unlocked`` (``by``), letting go ``door_locked``
  (``was``). A door still open when it is locked again is held open from that moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from .lines import CONTACT, EXIT, TAMPER
from .settings import DoorConfig

DOOR_FORCED = "door_forced"
DOOR_HELD = "door_held"
DOOR_CLOSED = "door_closed"
EXIT_REQUEST = "exit_request"
REMOTE_OPEN = "remote_open"
DOOR_UNLOCKED = "door_unlocked"
DOOR_LOCKED = "door_locked"
TAMPERED = "tamper"
TAMPER_CLEARED = "tamper_cleared"


@dataclass(frozen=True)
class DoorEvent:
    """One door event for ``emit(kind, details)`` (see :mod:`appliance.peripherals`)."""

    kind: str
    details: Dict[str, Any]


class Debounced:
    """One input's accepted level: a new level is accepted once it has held ``debounce_s``.

    Args:
        debounce_s: how long a level must hold.
        level: the level at start (accepted at once).
        now: monotonic seconds.
    """

    def __init__(self, debounce_s: float, level: bool, now: float) -> None:
        self.debounce_s = debounce_s
        self.level = level
        self._candidate = level
        self._since = now

    def sample(self, level: bool, now: float) -> Optional[float]:
        """Feed one read of the line.

        Returns:
            When the accepted level just changed: the time the new level was first seen; else ``None``.
        """
        if level != self._candidate:
            self._candidate = level
            self._since = now
        if self._candidate != self.level and now >= self._since + self.debounce_s:
            self.level = self._candidate
            return self._since
        return None

    def deadline(self) -> Optional[float]:
        """When a pending change will be accepted if the line holds (read it again then); else ``None``."""
        return self._since + self.debounce_s if self._candidate != self.level else None


def _seconds(value: float) -> float:
    return round(value, 3)


class DoorLogic:
    """The door's state; not thread-safe (the controller holds a lock around it).

    Args:
        config: ``[door]``; which inputs are wired and every timer.
    """

    def __init__(self, config: DoorConfig) -> None:
        self.pulse_s = config.relay.pulse_s
        self.grace_s = config.contact.forced_grace_s
        self.held_open_s = config.contact.held_open_s
        self.exit_unlocks = config.exit.unlocks
        self._debounce = {
            CONTACT: config.contact.debounce_s,
            EXIT: config.exit.debounce_s,
            TAMPER: config.tamper.debounce_s,
        }
        self._tampered_at = 0.0
        self._inputs: Dict[str, Debounced] = {}
        self.relay_until: Optional[float] = None
        self._authorised_until = -math.inf
        self._authorised_by = "unknown"
        self._authorised_event: Optional[str] = None
        self._opened_at = 0.0
        self._opening = "unknown"
        self._opening_event: Optional[str] = None
        self._forced = False
        self._held = False
        #: Why the door is held unlocked (``schedule``, ``first_person``, ``remote``), or ``None``.
        self.unlocked_by: Optional[str] = None
        self.counts = {
            "grants": 0,
            "exit_requests": 0,
            "remote_opens": 0,
            "openings": 0,
            "forced": 0,
            "held": 0,
            "tampers": 0,
        }

    # -- inputs ---------------------------------------------------------------------------------------------

    def begin(self, now: float, inputs: Mapping[str, bool]) -> None:
        """Take the inputs' levels at start as accepted (a door open at start is an ``unknown`` opening)."""
        self._inputs = {
            # The tamper switch starts "normal": one found active is then reported, not taken as the norm.
            name: Debounced(self._debounce[name], level and name != TAMPER, now)
            for name, level in inputs.items()
            if name in self._debounce
        }
        if self.door_open:
            self._opened_at = now

    @property
    def door_open(self) -> Optional[bool]:
        """The accepted door state; ``None`` without a contact."""
        contact = self._inputs.get(CONTACT)
        return contact.level if contact else None

    @property
    def relay_on(self) -> bool:
        """Whether the relay should be energised (as of the last :meth:`update`)."""
        return self.relay_until is not None or self.unlocked_by is not None

    # -- what happens -----------------------------------------------------------------------------------------

    def grant(self, now: float, event_id: Optional[str]) -> None:
        """A granted passage: pulse the relay (or extend the pulse)."""
        self.counts["grants"] += 1
        self._authorise(now, "granted", event_id, pulse=True)

    def remote_open(self, now: float, request_id: Optional[str]) -> DoorEvent:
        """A remote open (the ``door_open`` command): pulse the relay as a grant does."""
        self.counts["remote_opens"] += 1
        self._authorise(now, "remote", request_id, pulse=True)
        return DoorEvent(REMOTE_OPEN, {"request_id": request_id, "pulse_s": self.pulse_s})

    def hold(
        self, now: float, by: Optional[str], details: Optional[Mapping[str, Any]] = None
    ) -> List[DoorEvent]:
        """Hold the door unlocked, ``by`` ``schedule``, ``first_person`` or ``remote``; ``None``: lock it
        again. ``details`` go into the ``door_unlocked`` event. Returns the events (none without a change)."""
        was, self.unlocked_by = self.unlocked_by, by
        if by == was:
            return []
        if by is not None:
            return [DoorEvent(DOOR_UNLOCKED, {"by": by, **(details or {})})]
        if self.door_open:  # left open at the relock: held open from now
            self._opened_at, self._held = now, False
        self._authorised_until = max(self._authorised_until, now + self.grace_s)
        return [DoorEvent(DOOR_LOCKED, {"was": was, "door": "open" if self.door_open else "closed"})]

    def _authorise(self, now: float, by: str, event_id: Optional[str], pulse: bool) -> None:
        if pulse:
            self.relay_until = max(self.relay_until or now, now + self.pulse_s)
        self._authorised_until = max(self._authorised_until, now + self.pulse_s + self.grace_s)
        self._authorised_by = by
        self._authorised_event = event_id

    def update(self, now: float, inputs: Mapping[str, bool]) -> List[DoorEvent]:
        """Feed the inputs' levels read at ``now`` and run the timers.

        Returns:
            The door events that happened, in order.
        """
        events: List[DoorEvent] = []
        exit_button = self._inputs.get(EXIT)
        if exit_button is not None and EXIT in inputs:
            changed = exit_button.sample(inputs[EXIT], now)
            if changed is not None and exit_button.level:
                # Before the contact: a push bar's switch and the door move together.
                self.counts["exit_requests"] += 1
                self._authorise(now, EXIT_REQUEST, None, pulse=self.exit_unlocks)
                events.append(DoorEvent(EXIT_REQUEST, {"unlocks": self.exit_unlocks}))
        contact = self._inputs.get(CONTACT)
        if contact is not None and CONTACT in inputs:
            changed = contact.sample(inputs[CONTACT], now)
            if changed is not None:
                events.extend(self._opened(changed) if contact.level else self._closed(changed))
        tamper = self._inputs.get(TAMPER)
        if tamper is not None and TAMPER in inputs:
            changed = tamper.sample(inputs[TAMPER], now)
            if changed is not None and tamper.level:
                self.counts["tampers"] += 1
                self._tampered_at = changed
                events.append(DoorEvent(TAMPERED, {}))
            elif changed is not None:
                events.append(DoorEvent(TAMPER_CLEARED, {"active_s": _seconds(changed - self._tampered_at)}))
        held_open = now >= self._opened_at + self.held_open_s
        if self.door_open and not self._held and self.unlocked_by is None and held_open:
            self._held = True
            self.counts["held"] += 1
            events.append(
                DoorEvent(
                    DOOR_HELD,
                    {
                        "open_s": _seconds(now - self._opened_at),
                        "limit_s": self.held_open_s,
                        "opening": self._opening,
                        "access_event_id": self._opening_event,
                    },
                )
            )
        if self.relay_until is not None and now >= self.relay_until:
            self.relay_until = None
        return events

    def _opened(self, at: float) -> List[DoorEvent]:
        self.counts["openings"] += 1
        self._opened_at = at
        self._held = False
        if self.unlocked_by is not None:
            self._opening, self._opening_event, self._forced = "unlocked", None, False
            return []
        if at <= self._authorised_until:
            self._opening, self._opening_event, self._forced = (
                self._authorised_by,
                self._authorised_event,
                False,
            )
            return []
        self._opening, self._opening_event, self._forced = "forced", None, True
        self.counts["forced"] += 1
        late = at - self._authorised_until if math.isfinite(self._authorised_until) else None
        return [DoorEvent(DOOR_FORCED, {"after_authorisation_s": None if late is None else _seconds(late)})]

    def _closed(self, at: float) -> List[DoorEvent]:
        events: List[DoorEvent] = []
        if self._forced or self._held:
            events.append(
                DoorEvent(
                    DOOR_CLOSED,
                    {
                        "open_s": _seconds(at - self._opened_at),
                        "forced": self._forced,
                        "held": self._held,
                        "opening": self._opening,
                        "access_event_id": self._opening_event,
                    },
                )
            )
        self._forced = self._held = False
        return events

    # -- for the owner thread and ``…/state`` -----------------------------------------------------------------

    def next_deadline(self) -> Optional[float]:
        """The earliest time a timer runs out (relay pulse, debounce, held-open); ``None``: none pending."""
        times = [item.deadline() for item in self._inputs.values()]
        times.append(self.relay_until)
        if self.door_open and not self._held and self.unlocked_by is None:
            times.append(self._opened_at + self.held_open_s)
        pending = [time for time in times if time is not None]
        return min(pending) if pending else None

    def snapshot(self) -> Dict[str, Any]:
        """The door's part of ``…/state`` (see :meth:`appliance.door.controller.DoorController.state`)."""
        door = self.door_open
        exit_button = self._inputs.get(EXIT)
        tamper = self._inputs.get(TAMPER)
        alarm = DOOR_HELD if self._held else DOOR_FORCED if self._forced else None
        return {
            "relay": "on" if self.relay_on else "off",
            "door": None if door is None else "open" if door else "closed",
            "exit": None if exit_button is None else "pressed" if exit_button.level else "released",
            "tamper": None if tamper is None else "active" if tamper.level else "normal",
            "alarm": alarm,
            "unlocked_by": self.unlocked_by,
            "counts": dict(self.counts),
        }


__all__ = [
    "DOOR_CLOSED",
    "DOOR_FORCED",
    "DOOR_HELD",
    "DOOR_LOCKED",
    "DOOR_UNLOCKED",
    "EXIT_REQUEST",
    "REMOTE_OPEN",
    "TAMPERED",
    "TAMPER_CLEARED",
    "Debounced",
    "DoorEvent",
    "DoorLogic",
]
