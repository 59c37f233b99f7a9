"""The count of liveness denials per camera: one alarm per episode, the lockout and its extension,
other cameras untouched; the settings that turn it on (the daemon's part:
tests/integration/test_spoof_alarm.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from appliance.attack_guard import LOCKOUT, AttackGuard
from appliance.config_load import validate_config
from appliance.daemon import attack_guard
from appliance.decisions import Decision

GRANT = Decision(
    1, "granted", "ada", "Ada", 0.8, 0.5, 5, (0.9, True), np.zeros(4, np.float32), 0.9, 0.0, 1.0, ""
)
SPOOF = replace(GRANT, decision="denied", liveness=(0.1, False), access_reason="liveness")
UNKNOWN = replace(GRANT, decision="unknown", identity_id=None, name=None)


def test_the_third_spoof_in_the_window_raises_one_alarm_and_locks_the_camera() -> None:
    guard = AttackGuard(3, window_s=60.0, lockout_s=120.0)
    assert guard.check("entry", SPOOF, 0.0) == (SPOOF, None)
    assert guard.check("entry", SPOOF, 10.0)[1] is None
    assert guard.check("exit", GRANT, 15.0) == (GRANT, None)
    decision, alarm = guard.check("entry", SPOOF, 20.0)
    assert decision == SPOOF
    assert alarm == {"camera_id": "entry", "attempts": 3, "window_s": 60.0, "lockout_s": 120.0}
    assert guard.check("entry", SPOOF, 30.0)[1] is None  # the same episode: no second alarm
    locked, alarm = guard.check("entry", GRANT, 100.0)
    assert (locked.decision, locked.access_reason, alarm) == ("denied", LOCKOUT, None)
    assert locked.identity_id == "ada"  # the event still names who was refused
    assert guard.check("exit", GRANT, 100.0)[0] == GRANT  # other cameras are not locked
    assert guard.check("entry", UNKNOWN, 120.0)[0] == UNKNOWN
    assert guard.locked("entry", 149.9) and not guard.locked("entry", 150.0)  # 30.0 + 120: the last failure's
    assert guard.check("entry", GRANT, 150.0)[0] == GRANT


def test_failures_spread_wider_than_the_window_raise_nothing_and_a_new_episode_alarms_again() -> None:
    guard = AttackGuard(2, window_s=10.0)
    for second in (0.0, 11.0, 22.0, 33.0):
        assert guard.check("cam", SPOOF, second)[1] is None
    assert guard.check("cam", SPOOF, 40.0)[1] is not None  # 33 and 40: two within 10 s
    assert guard.check("cam", GRANT, 45.0)[0] == GRANT  # no lockout configured
    assert guard.check("cam", SPOOF, 200.0)[1] is None  # a new episode begins: one failure so far
    assert guard.check("cam", SPOOF, 201.0)[1] is not None


def test_the_settings() -> None:
    assert attack_guard(validate_config({})) is None
    config = validate_config({"liveness": {"enabled": True, "alarm_after": 3, "lockout_s": 300}})
    guard = attack_guard(config)
    assert guard is not None and (guard.alarm_after, guard.window_s, guard.lockout_s) == (3, 60.0, 300.0)
    for liveness, match in (
        ({"alarm_after": 3}, "liveness.enabled is false"),
        ({"enabled": True, "lockout_s": 60}, "set liveness.alarm_after too"),
        ({"enabled": True, "alarm_after": -1}, "alarm_after"),
        ({"enabled": True, "alarm_after": 2, "alarm_window_s": 0}, "alarm_window_s"),
    ):
        with pytest.raises(Exception, match=match):
            validate_config({"liveness": liveness})
    with pytest.raises(ValueError):
        AttackGuard(0, 10.0)
