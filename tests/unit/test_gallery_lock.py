"""The gallery's lock (:mod:`appliance.gallery.lock`): changes alone, searches and file writes together.

Threads here only ever wait on events the test sets; every join has a deadline so that a lock that
does not behave fails the test instead of hanging it.
"""

from __future__ import annotations

import threading
from typing import Callable, List

import pytest

from appliance.gallery.lock import SharedLock

DEADLINE_S = 10.0


def _in_thread(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_readers_share_the_lock_and_a_change_waits_for_the_last_of_them() -> None:
    lock = SharedLock()
    lock.acquire_shared()
    lock.acquire_shared()  # a second reader (a search beside a file being written)
    assert not lock.acquire_exclusive(blocking=False)
    changed = threading.Event()

    def change() -> None:
        with lock.exclusive():
            changed.set()

    thread = _in_thread(change)
    lock.release_shared()
    assert not changed.wait(0.2)  # one reader still holds it
    lock.release_shared()
    assert changed.wait(DEADLINE_S)
    thread.join(DEADLINE_S)
    assert lock.acquire_exclusive(blocking=False)
    lock.release_exclusive()


def test_a_reader_waits_for_a_change_in_progress_but_not_for_one_that_is_waiting() -> None:
    lock = SharedLock()
    lock.acquire_shared()  # a file being written
    change_waiting = threading.Event()
    change_done = threading.Event()

    def change() -> None:
        change_waiting.set()
        with lock.exclusive():
            change_done.set()

    changer = _in_thread(change)
    assert change_waiting.wait(DEADLINE_S)
    searched = threading.Event()

    def search() -> None:
        with lock.shared():
            searched.set()

    # The change waits for the writer of the file; a search does not wait for the change.
    searcher = _in_thread(search)
    assert searched.wait(DEADLINE_S)
    searcher.join(DEADLINE_S)
    assert not change_done.is_set()
    lock.release_shared()
    assert change_done.wait(DEADLINE_S)
    changer.join(DEADLINE_S)

    # While a change holds the lock, a search waits for it.
    lock.acquire_exclusive()
    searched.clear()
    searcher = _in_thread(search)
    assert not searched.wait(0.2)
    lock.release_exclusive()
    assert searched.wait(DEADLINE_S)
    searcher.join(DEADLINE_S)


def test_the_exclusive_side_is_reentrant_and_its_holder_may_read() -> None:
    lock = SharedLock()
    order: List[str] = []
    with lock.exclusive():
        with lock.exclusive():  # a change that refreshes the gallery
            with lock.shared():  # … and reads its size
                order.append("inside")
        # Still held: another thread cannot take either side.
        other: List[bool] = []
        thread = _in_thread(lambda: other.append(lock.acquire_exclusive(blocking=False)))
        thread.join(DEADLINE_S)
        assert other == [False]
    assert order == ["inside"]
    assert lock.acquire_exclusive(blocking=False)
    lock.release_exclusive()


def test_releasing_what_is_not_held_is_refused() -> None:
    lock = SharedLock()
    with pytest.raises(RuntimeError, match="not held shared"):
        lock.release_shared()
    with pytest.raises(RuntimeError, match="does not hold the gallery lock exclusively"):
        lock.release_exclusive()
    lock.acquire_exclusive()
    failures: List[BaseException] = []

    def release_elsewhere() -> None:
        try:
            lock.release_exclusive()
        except RuntimeError as err:
            failures.append(err)

    _in_thread(release_elsewhere).join(DEADLINE_S)
    assert len(failures) == 1  # another thread cannot release this thread's change
    lock.release_exclusive()
