"""The gallery-change thread (appliance.change_thread): one piece of work at a time, on one thread
that lives from the first piece to close, never raising into the pipeline thread."""

from __future__ import annotations

import logging
import threading
from typing import List

import pytest

from appliance.change_thread import ChangeThread

DEADLINE_S = 10.0


def test_one_piece_at_a_time_on_one_thread_until_close(caplog: pytest.LogCaptureFixture) -> None:
    changes = ChangeThread()
    assert not changes.busy() and changes.join(0.0)
    ran: List[str] = []
    release = threading.Event()

    def held() -> None:
        ran.append(threading.current_thread().name)
        assert release.wait(DEADLINE_S)

    assert changes.start(held)  # returns while the piece waits: handing over is not running it
    assert changes.busy() and not changes.join(0.05)
    assert not changes.start(ran.append, "refused")  # busy: refused, not queued
    release.set()
    assert changes.join(DEADLINE_S) and not changes.busy()
    thread = changes._thread
    assert ran == ["gallery-change"] and thread is not None

    def fails() -> None:
        raise ValueError("a broken piece")

    with caplog.at_level(logging.ERROR, logger="appliance.change_thread"):
        assert changes.start(fails) and changes.join(DEADLINE_S)
    assert "a gallery change off the pipeline thread failed" in caplog.text
    assert changes.start(lambda: ran.append(threading.current_thread().name)) and changes.join(DEADLINE_S)
    assert ran == ["gallery-change"] * 2 and changes._thread is thread  # the same thread, still serving

    changes.close()
    thread.join(DEADLINE_S)
    assert not thread.is_alive()
    assert not changes.start(ran.append, "after close") and not changes.busy()
    assert len(ran) == 2


def test_close_before_any_work_starts_no_thread() -> None:
    changes = ChangeThread()
    changes.close()
    assert changes._thread is None and not changes.start(print)
