"""Shared settings of the fuzz targets: bounded example counts, a time budget per target, a summary.

Every target runs hypothesis with ``max_examples`` from :func:`fuzz_settings` and stops drawing work
after its time budget (:class:`Budget`), so the whole directory stays cheap in CI. For a long run::

    FUZZ_EXAMPLES=20000 FUZZ_BUDGET_S=600 python -m pytest --timeout 0 tests/fuzz

``FUZZ_EXAMPLES`` raises every target's example count (and turns on random, not derandomized,
generation, so each long run explores new inputs); ``FUZZ_BUDGET_S`` is the time budget per target
(240 s by default in a long run, below pytest-timeout's 300 s; ``--timeout 0`` lifts that for more).
At the end pytest prints how many inputs each target ran and for how long (the README's figures).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, settings

# The integration tests' fixtures, for the live checks: a broker, a recorder, the models, a gallery.
from tests.integration.conftest import analyzer, mosquitto, recorder, storage  # noqa: F401

#: Per-target example count in CI; FUZZ_EXAMPLES replaces it.
LONG_RUN = bool(os.environ.get("FUZZ_EXAMPLES"))
#: Time budget per target (seconds of work; hypothesis's own shrinking comes on top after a failure).
BUDGET_S = float(os.environ.get("FUZZ_BUDGET_S", "240" if LONG_RUN else "20"))


def examples(default: int) -> int:
    """How many examples a target runs: ``default`` in CI, ``FUZZ_EXAMPLES`` in a long run."""
    return int(os.environ["FUZZ_EXAMPLES"]) if LONG_RUN else default


def fuzz_settings(default: int) -> settings:
    """Hypothesis settings of a target: bounded, no per-example deadline, reproducible in CI."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        derandomize=not LONG_RUN,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


@dataclass
class Budget:
    """Counts the inputs a target ran and stops it (examples pass without work) once its time is up."""

    name: str
    seconds: float = BUDGET_S
    count: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    def spend(self) -> bool:
        """Call at the start of each example: ``False`` when the budget is spent (skip the work)."""
        if time.monotonic() - self.started > self.seconds:
            return False
        self.count += 1
        return True

    def close(self) -> None:
        self.elapsed = time.monotonic() - self.started
        _RESULTS.append(self)


_RESULTS: List[Budget] = []


@pytest.fixture
def budget(request: pytest.FixtureRequest) -> Any:
    """``budget(name)`` makes a :class:`Budget` for a target; it is reported at the end of the session."""
    made: Dict[str, Budget] = {}

    def make(name: str) -> Budget:
        made[name] = Budget(name)
        return made[name]

    yield make
    for item in made.values():
        item.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    terminalreporter.section("fuzz targets")
    terminalreporter.write_line(f"{'target':<40} {'inputs':>8} {'seconds':>8}")
    for item in _RESULTS:
        terminalreporter.write_line(f"{item.name:<40} {item.count:>8} {item.elapsed:>8.1f}")
    total = sum(item.count for item in _RESULTS)
    terminalreporter.write_line(f"{'total':<40} {total:>8} {sum(i.elapsed for i in _RESULTS):>8.1f}")
