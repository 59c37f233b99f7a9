"""Repeated presentation attacks at one camera: an alarm, and optionally a lockout.

Someone holding photos or a screen up to the camera one after another is refused each time by the
liveness vote (``denied``, reason ``liveness``), and may try until one passes. Commercial terminals
count such attempts (Hikvision's attack-count limit). Here, with ``liveness.alarm_after`` set:

* ``alarm_after`` liveness denials at one camera within ``alarm_window_s`` raise one alarm, a
  ``spoof_alarm`` door event (``…/door``, ``"source": "liveness"``) naming the camera, the attempts
  and the access event that crossed the line; the episode ends once a whole window passes without a
  failure, and the next crossing raises the next alarm;
* with ``lockout_s``, the alarm also locks that camera: its grants are ``denied`` with the reason
  ``lockout`` until ``lockout_s`` after the last failure (each further failure extends it), so an
  attacker cannot keep trying until one attempt passes. Other cameras are not locked.

Pure logic on the pipeline thread, in monotonic seconds (frames' capture times); its state is in
memory (a restart ends a lockout).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import replace
from typing import Any, Deque, Dict, Optional, Tuple

from .decisions import DENIED, GRANTED, Decision

logger = logging.getLogger(__name__)

#: The reason a grant is denied with during a lockout.
LOCKOUT = "lockout"
#: The door event of an alarm.
SPOOF_ALARM = "spoof_alarm"


class AttackGuard:
    """Counts liveness denials per camera (see the module).

    Args:
        alarm_after: liveness denials within ``window_s`` that raise an alarm (≥ 1).
        window_s: the window.
        lockout_s: how long an alarm locks the camera's grants after its last failure; 0: never.
    """

    def __init__(self, alarm_after: int, window_s: float, lockout_s: float = 0.0) -> None:
        if alarm_after < 1 or window_s <= 0 or lockout_s < 0:
            raise ValueError(
                f"alarm_after ≥ 1, window_s > 0, lockout_s ≥ 0; got {alarm_after}, {window_s}, {lockout_s}"
            )
        self.alarm_after = alarm_after
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._failures: Dict[str, Deque[float]] = {}
        self._alarmed: Dict[str, bool] = {}
        self._locked_until: Dict[str, float] = {}

    def check(
        self, camera_id: str, decision: Decision, now: float
    ) -> Tuple[Decision, Optional[Dict[str, Any]]]:
        """One decision at ``camera_id`` (``now``: monotonic seconds).

        Returns:
            The decision (a grant during a lockout is ``denied``, reason :data:`LOCKOUT`), and the
            alarm's details when this decision raised one, else ``None``.
        """
        failures = self._failures.setdefault(camera_id, deque())
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        if not failures:
            self._alarmed[camera_id] = False  # a whole window without a failure: the episode is over
        alarm = None
        if decision.decision == DENIED and decision.access_reason == "liveness":
            failures.append(now)
            if self._alarmed.get(camera_id) and self.lockout_s:
                self._locked_until[camera_id] = now + self.lockout_s
            elif len(failures) >= self.alarm_after and not self._alarmed.get(camera_id):
                self._alarmed[camera_id] = True
                if self.lockout_s:
                    self._locked_until[camera_id] = now + self.lockout_s
                alarm = {
                    "camera_id": camera_id,
                    "attempts": len(failures),
                    "window_s": self.window_s,
                    "lockout_s": self.lockout_s,
                }
                logger.warning(
                    "camera %s: %d passages denied for liveness within %g s: spoof alarm%s",
                    camera_id,
                    len(failures),
                    self.window_s,
                    f", grants locked for {self.lockout_s:g} s" if self.lockout_s else "",
                )
        if decision.decision == GRANTED and now < self._locked_until.get(camera_id, float("-inf")):
            decision = replace(decision, decision=DENIED, access_reason=LOCKOUT)
        return decision, alarm

    def locked(self, camera_id: str, now: float) -> bool:
        """Whether ``camera_id``'s grants are locked at ``now``."""
        return now < self._locked_until.get(camera_id, float("-inf"))


__all__ = ["LOCKOUT", "SPOOF_ALARM", "AttackGuard"]
