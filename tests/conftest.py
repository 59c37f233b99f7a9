"""Fixtures shared by every test: where the real models and images are, and a thread-leak guard."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("FACE_APPLIANCE_SHARED", REPO_ROOT.parent / "shared"))


def _shared(sub: str) -> Path:
    path = SHARED_DIR / sub
    if not path.is_dir():
        pytest.fail(
            f"{path} is missing: the tests need the real models and images of ../shared beside the "
            f"repository (or FACE_APPLIANCE_SHARED pointing at it)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The read-only models mirror (``../shared/models``)."""
    return _shared("models")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real face images (``../shared/data``)."""
    return _shared("data")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves threads running (Home Assistant's verify_cleanup idea)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    leaked = set()
    while time.monotonic() < deadline:
        leaked = {t for t in set(threading.enumerate()) - before if t.is_alive() and not t.daemon}
        if not leaked:
            break
        time.sleep(0.05)
    assert not leaked, f"threads left running: {sorted(t.name for t in leaked)}"
