"""appliance.logs.RateLimitedLog: one WARNING per key and interval, the repeats counted."""

from __future__ import annotations

import logging
from typing import List

import pytest

from appliance.logs import TRACE, RateLimitedLog


def test_one_warning_per_key_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    now: List[float] = [0.0]
    log = RateLimitedLog(logging.getLogger("tests.rate"), interval_s=10.0, clock=lambda: now[0])
    caplog.set_level(TRACE, logger="tests.rate")
    sent = [log.report("frame", "bad frame %d", n) for n in range(1000)]
    assert sent.count(True) == 1
    assert log.report("other", "another kind")  # keys are independent
    now[0] = 10.5
    assert log.report("frame", "bad frame %d", 1000)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["bad frame 0", "another kind", "bad frame 1000 (999 more like it in the last 10 s)"]
    assert sum(r.levelno == TRACE for r in caplog.records) == 999
