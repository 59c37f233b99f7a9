"""What the door's tests share: the ``emit`` recorder, a manual clock, and a bounded wait.

Waits have generous limits and end as soon as their condition holds; they are not timings.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Tuple

LIMIT_S = 10.0  # the longest any wait may take; it ends as soon as the condition holds


class Recorder:
    """The ``emit`` callback: keeps every door event (the details a kind has, without the ``door_id``
    every event of a door carries, checked here), lets a test wait for one.

    Args:
        door_id: the id of the door whose events these are.
    """

    def __init__(self, door_id: str = "door") -> None:
        self.door_id = door_id
        self.events: List[Tuple[str, Dict[str, Any]]] = []
        self._changed = threading.Condition()

    def __call__(self, kind: str, details: Mapping[str, Any]) -> None:
        json.dumps(details)  # what the outbox stores must be JSON
        kept = dict(details)
        assert kept.pop("door_id", None) == self.door_id, f"{kind} {details} is not door {self.door_id!r}'s"
        with self._changed:
            self.events.append((kind, kept))
            self._changed.notify_all()

    def kinds(self) -> List[str]:
        with self._changed:
            return [kind for kind, _ in self.events]

    def wait_for(self, kind: str, count: int = 1) -> Dict[str, Any]:
        with self._changed:
            found = self._changed.wait_for(lambda: self.kinds().count(kind) >= count, LIMIT_S)
            assert found, f"no {kind} within {LIMIT_S} s; events: {self.events}"
            return [details for k, details in self.events if k == kind][count - 1]


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {LIMIT_S} s"
        time.sleep(0.002)


class ManualClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
