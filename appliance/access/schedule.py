"""Weekly schedules: the time windows, per weekday, in which an access group may pass.

A window is written ``DAYS HH:MM-HH:MM`` in the door's local time (``[access] time_zone``):

* ``DAYS``: ``mon`` … ``sun``, a range ``mon-fri`` (a range may wrap: ``fri-mon``), a list
  ``mon,wed,fri`` (of days or ranges), or ``daily``.
* ``HH:MM-HH:MM``: start inclusive, end exclusive, minutes; ``24:00`` ends at midnight. An end at or
  before the start crosses midnight: ``fri 22:00-06:00`` runs from Friday 22:00 to Saturday 06:00 —
  a window belongs to the day it *starts* on. ``00:00-24:00`` is the whole day; a window of zero
  length is refused.

Local wall-clock time is what counts across a DST change: on the night the clocks go forward, a window
``01:30-03:00`` lasts 30 real minutes (02:00–03:00 does not exist); when they go back, the repeated hour
is inside it twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import FrozenSet, Iterable, Tuple

from .errors import PolicyError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
MAX_WINDOWS = 64

_WINDOW = re.compile(r"^\s*(?P<days>[a-z,\-]+)\s+(?P<start>\d{2}:\d{2})\s*-\s*(?P<end>\d{2}:\d{2})\s*\Z")


def _minutes(text: str, allow_24: bool, window: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not allow_24)):
        raise PolicyError(f"window {window!r}: {text} is not a time of day (00:00–23:59, or 24:00 as an end)")
    return hours * 60 + minutes


def _days(text: str, window: str) -> FrozenSet[int]:
    if text == "daily":
        return frozenset(range(7))
    days = set()
    for part in text.split(","):
        ends = part.split("-")
        if len(ends) > 2 or not all(end in DAY_NAMES for end in ends):
            raise PolicyError(
                f"window {window!r}: {part!r} is not a day, a range of days or 'daily' "
                f"(days: {', '.join(DAY_NAMES)}; e.g. 'mon-fri 08:00-18:00')"
            )
        first, last = DAY_NAMES.index(ends[0]), DAY_NAMES.index(ends[-1])
        days.update((first + offset) % 7 for offset in range((last - first) % 7 + 1))
    return frozenset(days)


@dataclass(frozen=True)
class Window:
    """One weekly window: the weekdays it starts on (0 = Monday) and its minutes of the day.

    ``end`` ≤ ``start`` means the window ends on the next day.
    """

    days: FrozenSet[int]
    start: int
    end: int
    text: str

    @classmethod
    def parse(cls, text: str) -> Window:
        """Parse ``DAYS HH:MM-HH:MM`` (see the module docstring).

        Raises:
            PolicyError: the text does not follow that form, or the window is empty.
        """
        if not isinstance(text, str) or len(text) > 100:
            raise PolicyError(
                f"a schedule window must be a short text like 'mon-fri 08:00-18:00', got {text!r:.60}"
            )
        found = _WINDOW.match(text.lower())
        if not found:
            raise PolicyError(
                f"window {text!r} is not of the form 'DAYS HH:MM-HH:MM' (e.g. 'mon-fri 08:00-18:00')"
            )
        start = _minutes(found["start"], False, text)
        end = _minutes(found["end"], True, text)
        if end == start and not (start == 0 and end == MINUTES_PER_DAY):
            raise PolicyError(f"window {text!r} is empty (start equals end); use 00:00-24:00 for a whole day")
        return cls(_days(found["days"], text), start, end, " ".join(text.split()))

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def admits(self, weekday: int, minute: int) -> bool:
        """Whether local ``weekday`` (0 = Monday) at ``minute`` of the day falls in this window."""
        if not self.crosses_midnight:
            return weekday in self.days and self.start <= minute < self.end
        if weekday in self.days and minute >= self.start:
            return True
        return (weekday - 1) % 7 in self.days and minute < self.end


@dataclass(frozen=True)
class WeeklySchedule:
    """The union of a group's windows. An empty schedule admits nobody (``doctor`` warns about it)."""

    windows: Tuple[Window, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> WeeklySchedule:
        """Parse a list of window texts.

        Raises:
            PolicyError: a window is malformed, or there are more than :data:`MAX_WINDOWS`.
        """
        windows = tuple(Window.parse(text) for text in texts)
        if len(windows) > MAX_WINDOWS:
            raise PolicyError(f"a schedule has at most {MAX_WINDOWS} windows, got {len(windows)}")
        return cls(windows)

    def admits(self, local: datetime) -> bool:
        """Whether the local wall-clock time ``local`` falls in any window."""
        weekday, minute = local.weekday(), local.hour * 60 + local.minute
        return any(window.admits(weekday, minute) for window in self.windows)

    def texts(self) -> Tuple[str, ...]:
        """The windows as written (normalised spaces), for storage and display."""
        return tuple(window.text for window in self.windows)


__all__ = ["DAY_NAMES", "WeeklySchedule", "Window"]
