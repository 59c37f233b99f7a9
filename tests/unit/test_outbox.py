"""The durable outbox: order, durability, bounds with counted drops, thread safety."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import List

import pytest

from appliance.outbox import Outbox, OutboxError

T0 = 1_700_000_000.0  # a sane wall-clock time (2023)


class FakeClock:
    """A wall clock the test moves."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _ids(outbox: Outbox) -> List[str]:
    return [entry.event_id for entry in outbox.pending(10_000)]


def test_put_pending_ack_in_order(tmp_path: Path) -> None:
    with Outbox.open(tmp_path / "outbox.sqlite", 100, 3600.0) as outbox:
        seqs = [outbox.put(f"e{i}", f'{{"n":{i}}}'.encode(), "events") for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        entries = outbox.pending(3)
        assert [e.event_id for e in entries] == ["e0", "e1", "e2"]
        assert entries[0].payload == b'{"n":0}' and entries[0].topic_suffix == "events"
        assert [e.event_id for e in outbox.pending(10, after_seq=seqs[2])] == ["e3", "e4"]
        assert outbox.ack(seqs[0]) is True
        assert outbox.ack(seqs[0]) is False
        assert outbox.ack_many(seqs[1:3]) == 2
        assert outbox.depth() == 2
        stats = outbox.stats()
        assert stats["depth"] == 2 and stats["put_total"] == 5 and stats["acked_total"] == 3
        assert stats["dropped_overflow"] == 0 and stats["dropped_age"] == 0
        assert stats["oldest_age_s"] is not None and stats["oldest_age_s"] >= 0


def test_put_is_committed_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite"
    outbox = Outbox.open(path, 100, 3600.0)
    seq = outbox.put("e1", b"{}")
    # Another connection sees the row at once: it was committed before put() returned.
    other = sqlite3.connect(str(path))
    try:
        assert other.execute("SELECT event_id FROM events WHERE seq = ?", (seq,)).fetchone() == ("e1",)
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    outbox.close()
    outbox.close()  # idempotent
    assert (path.stat().st_mode & 0o777) == 0o600
    with Outbox.open(path, 100, 3600.0) as reopened:
        assert _ids(reopened) == ["e1"]
        assert reopened.put("e2", b"{}") > seq  # sequence numbers are never reused


def test_overflow_drops_oldest_counts_and_logs_once_per_episode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.sqlite"
    caplog.set_level(logging.INFO, logger="appliance.outbox")
    with Outbox.open(path, 5, 3600.0) as outbox:
        for i in range(8):
            outbox.put(f"e{i}", b"{}")
        assert _ids(outbox) == ["e3", "e4", "e5", "e6", "e7"]
        assert outbox.stats()["dropped_overflow"] == 3
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("Outbox full" in m for m in warnings) == 1 and sum("% full" in m for m in warnings) == 1
    with Outbox.open(path, 5, 3600.0) as outbox:  # the counters are on disk
        stats = outbox.stats()
        assert stats["dropped_overflow"] == 3 and stats["put_total"] == 8 and stats["depth"] == 5
        caplog.clear()
        outbox.put("e8", b"{}")  # a new episode after a restart: logged again
        outbox.ack_many(entry.seq for entry in outbox.pending(100))
        messages = [r.getMessage() for r in caplog.records]
        assert sum("Outbox full" in m for m in messages) == 1
        assert any("Outbox drained" in m and "1 event(s) were dropped" in m for m in messages)
        caplog.clear()
        for i in range(7):
            outbox.put(f"f{i}", b"{}")
        assert sum("Outbox full" in r.getMessage() for r in caplog.records) == 1
        assert outbox.stats()["dropped_overflow"] == 6


def test_it_says_it_is_filling_before_anything_is_dropped_and_stops_under_half(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.outbox")
    path = tmp_path / "outbox.sqlite"
    with Outbox.open(path, 20, 3600.0) as outbox:
        seqs = [outbox.put(f"e{i}", b"{}") for i in range(17)]
        assert not outbox.nearly_full and outbox.stats()["capacity"] == 20
        seqs.append(outbox.put("e17", b"{}"))  # 18 of 20: 90 %
        stats = outbox.stats()
        assert stats["nearly_full"] is True and stats["dropped_overflow"] == 0  # nothing lost yet
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            "Outbox 90 % full: 18 of 20 events wait for the broker's acknowledgement; at 20 the oldest are "
            "dropped. Is the broker reachable?"
        ]
        outbox.put("e18", b"{}")
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # once
    with Outbox.open(path, 20, 3600.0) as reopened:  # a restart finds it filling too
        assert reopened.nearly_full
        reopened.ack_many(seqs[:8])  # 11 left: still over half
        assert reopened.nearly_full
        reopened.ack_many(seqs[8:10])  # 9 left: under half
        assert not reopened.nearly_full and not reopened.stats()["nearly_full"]
        assert "Outbox under half full again (9 of 20 events)" in caplog.text


def test_age_bound_drops_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    caplog.set_level(logging.WARNING, logger="appliance.outbox")
    path = tmp_path / "outbox.sqlite"
    with Outbox.open(path, 100, 100.0, clock=clock) as outbox:
        for i in range(3):
            outbox.put(f"old{i}", b"{}")
        clock.now += 50
        outbox.put("new", b"{}")
        clock.now += 60  # the first three are 110 s old now
        assert _ids(outbox) == ["new"]
        assert outbox.stats()["dropped_age"] == 3
        assert outbox.stats()["oldest_age_s"] == pytest.approx(60.0)
        assert sum("older than" in r.getMessage() for r in caplog.records) == 1
    with Outbox.open(path, 100, 100.0, clock=clock) as outbox:
        assert outbox.stats()["dropped_age"] == 3


def test_events_stamped_by_an_unset_clock_are_not_aged_out(tmp_path: Path) -> None:
    clock = FakeClock(now=1000.0)  # 1970: booted without a real-time clock
    with Outbox.open(tmp_path / "outbox.sqlite", 100, 100.0, clock=clock) as outbox:
        outbox.put("early", b"{}")
        clock.now = T0  # NTP answered
        assert _ids(outbox) == ["early"]
        assert outbox.stats()["dropped_age"] == 0


def test_bad_input_and_closed_outbox(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path / "outbox.sqlite", 100, 3600.0)
    for suffix in ("", "a//b", "/events", "events/", "ev+", "ev/#"):
        with pytest.raises(ValueError):
            outbox.put("e", b"{}", suffix)
    with pytest.raises(ValueError):
        outbox.put("e", "not bytes")  # type: ignore[arg-type]
    assert outbox.put("e", b"{}", "events/door") > 0
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        outbox.put("e", b"{}")
    with pytest.raises(ValueError):
        Outbox.open(tmp_path / "x.sqlite", 0, 10.0)
    with pytest.raises(ValueError):
        Outbox.open(tmp_path / "x.sqlite", 10, 0.0)


def test_corrupt_database_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not an SQLite database, just garbage" * 100)
    with Outbox.open(path, 100, 3600.0) as outbox:
        assert outbox.depth() == 0
        outbox.put("e1", b"{}")
    kept = list(tmp_path.glob("outbox.sqlite.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not")
    assert any(r.levelno == logging.ERROR and "moved it to" in r.getMessage() for r in caplog.records)


def test_concurrent_puts_and_acks(tmp_path: Path) -> None:
    with Outbox.open(tmp_path / "outbox.sqlite", 100_000, 3600.0) as outbox:
        seqs: List[int] = []
        lock = threading.Lock()

        def writer(prefix: str) -> None:
            for i in range(50):
                seq = outbox.put(f"{prefix}{i}", b"{}")
                with lock:
                    seqs.append(seq)

        threads = [threading.Thread(target=writer, args=(f"w{n}-",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(set(seqs)) == 200 and outbox.depth() == 200
        assert outbox.ack_many(seqs[:150]) == 150
        assert outbox.depth() == 50 and len(outbox.pending(1000)) == 50


def test_the_state_says_the_outbox_is_filling(tmp_path: Path) -> None:
    from appliance.board_health import BoardHealthReader, BoardMonitor
    from appliance.state_report import StateReporter
    from tests.unit.test_board_health import fake_app

    app = fake_app()
    with Outbox.open(tmp_path / "outbox.sqlite", 10, 3600.0) as outbox:
        app.outbox = outbox
        reporter = StateReporter(app, BoardMonitor(BoardHealthReader(tmp_path)))  # type: ignore[arg-type]
        for i in range(9):
            outbox.put(f"e{i}", b"{}")
        state = reporter.state()
        assert state["outbox"]["nearly_full"] is True
        assert [d for d in state["degraded"] if d.startswith("outbox: 90 % full")]
