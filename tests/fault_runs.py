"""Repeated faults of a running daemon, shared by the fault tests and the long-run campaign.

:func:`broker_outages` kills the broker (SIGKILL) again and again while ``face-appliance run`` emits a
stream of access events; :func:`daemon_sigkills` SIGKILLs the daemon at random points of a busy run
(events, enrolments and removals in flight) and restarts it. Both return a :class:`DeliveryReport`:
which events the daemon wrote (its ``--print-events`` output, plus what a killed daemon left in its
outbox), which ones a persistent consumer received (by ``event_id``), and what went wrong on the
way. ``tests/integration/test_faults.py`` runs them with a few repeats and asserts on the report;
``python -m bench.reliability`` runs them a hundred times.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from appliance.config_load import validate_config
from appliance.enrollment import Enroller
from appliance.gallery.gallery import Gallery
from appliance.outbox import Outbox
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import ROOT, Daemon, command, daemon_config, passage_video, wait_online

logger = logging.getLogger(__name__)

#: The consumer's client id: a persistent session the broker keeps while it is away.
CONSUMER_ID = "consumer"


def door_storage(folder: Path, analyzer: FaceAnalyzer, shared_data: Path) -> Path:
    """A storage folder whose gallery holds Barack Obama (one photo), the person of the door videos."""
    config = validate_config({"storage": {"dir": str(folder)}})
    with Gallery.open(config, analyzer.embedder.version, analyzer.embedder.dim) as gallery:
        result = Enroller(analyzer, gallery, config.gallery).enroll(
            "obama", "Barack Obama", [("obama.jpg", read_image(shared_data / "faces/fr_obama/obama.jpg"))]
        )
        if not result.template_ids:
            raise RuntimeError("enrolling the door video's person gave no template")
    return folder


def printed_events(daemon: Daemon) -> List[Dict[str, Any]]:
    """The events the daemon wrote to its outbox (``--print-events`` prints each after the commit)."""
    return [json.loads(line) for line in daemon.stdout if line.startswith("{")]


def failures_logged(daemon: Daemon) -> List[str]:
    """Log lines of a traceback or of the pipeline giving up (none is expected under any fault)."""
    return [line for line in daemon.log if "Traceback" in line or "failed; stopping" in line]


def sqlite_problems(path: Path) -> List[str]:
    """What ``PRAGMA integrity_check`` says is wrong with a database (empty: it is sound)."""
    with sqlite3.connect(str(path)) as db:
        result = [str(row[0]) for row in db.execute("PRAGMA integrity_check").fetchall()]
    return [] if result == ["ok"] else result


def check_stores(storage: Path, model_version: str, dim: int) -> Dict[str, Any]:
    """The outbox and the gallery of a daemon that is not running: their problems and what they hold.

    Returns:
        ``problems`` (integrity, store checks, index size), ``identities`` (ids) and ``pending``
        (the event ids waiting in the outbox, oldest first).
    """
    problems = [f"outbox: {line}" for line in sqlite_problems(storage / "outbox.db")]
    problems += [f"gallery: {line}" for line in sqlite_problems(storage / "gallery.db")]
    config = validate_config({"storage": {"dir": str(storage)}})
    with Gallery.open(config, model_version, dim) as gallery:
        problems += [f"gallery check: {line}" for line in gallery.store.check()]
        identities = gallery.identities()
        if len(gallery) != sum(identity.templates for identity in identities):
            problems.append(f"the index holds {len(gallery)} templates, the store others")
    pending = outbox_figures(storage)["pending"]
    return {"problems": problems, "identities": {i.id for i in identities}, "pending": pending}


def outbox_figures(storage: Path) -> Dict[str, Any]:
    """What the outbox of a stopped daemon holds: ``pending`` event ids and its counters."""
    with Outbox.open(storage / "outbox.db", 1_000_000, 3600.0) as outbox:
        figures = dict(outbox.stats())
        figures["pending"] = [entry.event_id for entry in outbox.pending(1_000_000)]
    return figures


def busy_commands(recorder: Recorder, photo: str, stop: threading.Event) -> None:
    """Enrol and remove someone over and over (the gallery is being written when a kill comes)."""
    number = 0
    while not stop.is_set():
        number += 1
        for name, document in (
            ("enroll", {"request_id": f"e{number}", "name": "Joe Biden", "image": photo}),
            ("remove", {"request_id": f"r{number}", "id": "joe-biden"}),
        ):
            try:
                command(recorder, name, document, timeout=5)
            except AssertionError:
                if stop.is_set():
                    return


@dataclass
class DeliveryReport:
    """Events written by the daemon against events received by a consumer, over repeated faults."""

    #: Faults injected.
    kills: int = 0
    #: Event ids the daemon wrote, in order (printed, or left in the outbox by a killed daemon).
    written: List[str] = field(default_factory=list)
    #: Event ids the consumer received, in order of arrival, redeliveries included.
    received: List[str] = field(default_factory=list)
    #: Reconnections of the daemon to the broker (broker outages), or starts (daemon kills).
    recoveries: int = 0
    #: What went wrong besides delivery: tracebacks, store problems, a daemon that ended.
    failures: List[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Per fault: when it came, and what the daemon had written by then.
    details: List[Dict[str, Any]] = field(default_factory=list)
    #: The daemon's outbox after its last run: ``pending`` ids and its counters (:meth:`Outbox.stats`).
    outbox: Dict[str, Any] = field(default_factory=dict)
    #: What the broker's debug log says it did with the events (:func:`broker_accounting`).
    broker: Dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> Set[str]:
        """Written but never received."""
        return set(self.written) - set(self.received)

    @property
    def lost_after_puback(self) -> Set[str]:
        """Lost events the broker had acknowledged: the outbox deletes an event only on its PUBACK
        (or counts a drop), so a lost event neither pending nor dropped was the broker's to deliver
        (a broker SIGKILLed between its PUBACK and the delivery to the consumer loses it)."""
        if not self.outbox or self.outbox.get("dropped_overflow") or self.outbox.get("dropped_age"):
            return set()
        return self.lost - set(self.outbox.get("pending", []))

    @property
    def lost_by_appliance(self) -> Set[str]:
        """Lost events the appliance never had acknowledged (all of them, without outbox figures)."""
        return self.lost - self.lost_after_puback

    @property
    def unexpected(self) -> Set[str]:
        """Received but never written (a daemon killed between its commit and its print)."""
        return set(self.received) - set(self.written)

    @property
    def duplicates(self) -> int:
        """Redeliveries (at-least-once; consumers de-duplicate by ``event_id``)."""
        return len(self.received) - len(set(self.received))

    def summary(self) -> Dict[str, Any]:
        """The figures, JSON-ready."""
        return {
            "kills": self.kills,
            "events_written": len(set(self.written)),
            "events_received": len(set(self.received)),
            "deliveries": len(self.received),
            "duplicates": self.duplicates,
            "lost": sorted(self.lost),
            "lost_by_appliance": sorted(self.lost_by_appliance),
            "lost_after_puback": sorted(self.lost_after_puback),
            "unexpected": sorted(self.unexpected),
            "kills_with_events": sum(1 for d in self.details if d.get("events_before", d.get("printed", 0))),
            "outbox": {key: value for key, value in self.outbox.items() if key != "pending"},
            "broker": self.broker,
            "recoveries": self.recoveries,
            "failures": self.failures,
            "seconds": round(self.seconds, 1),
            "details": self.details,
        }


def broker_accounting(
    log: str, publisher: str = "face-appliance-door-test", consumer: str = CONSUMER_ID
) -> Dict[str, Any]:
    """From a Mosquitto debug log over several runs (one per start): the events each broker process
    acknowledged to ``publisher`` and forwarded to ``consumer``.

    Mosquitto acknowledges a QoS 1 PUBLISH at once and forwards it then, or, with the consumer away,
    when it comes back; a process killed before that loses what it still held in memory.

    Returns:
        ``runs`` (broker processes), ``acknowledged`` and ``forwarded`` (events, over all runs) and
        ``held_when_killed``: per run, events acknowledged and never forwarded before it ended.
    """
    runs = [
        part for part in log.split(" starting\n") if "Received PUBLISH" in part or "Sending PUBLISH" in part
    ]
    held = []
    acknowledged = forwarded = 0
    for part in runs:
        received = sum(
            1
            for line in part.splitlines()
            if f"Received PUBLISH from {publisher} (" in line and "/events'" in line
        )
        sent = sum(
            1
            for line in part.splitlines()
            if f"Sending PUBLISH to {consumer} (" in line and "/events'" in line
        )
        acknowledged, forwarded = acknowledged + received, forwarded + sent
        if received > sent:
            held.append(received - sent)
    return {
        "runs": len(runs),
        "acknowledged": acknowledged,
        "forwarded": forwarded,
        "held_when_killed": sum(held),
        "runs_holding": len(held),
    }


def _extend_unique(target: List[str], ids: Sequence[str]) -> None:
    """Append the ids not in ``target`` yet, in order."""
    known = set(target)
    for event_id in ids:
        if event_id not in known:
            target.append(event_id)
            known.add(event_id)


def _received_ids(consumer: Recorder) -> List[str]:
    return [json.loads(m.payload)["event_id"] for m in consumer.on(f"{ROOT}/events")]


def _wait_delivered(consumer: Recorder, written: Sequence[str], timeout: float) -> None:
    """Wait until the consumer has every written event (returns quietly on a timeout: the report tells)."""
    wanted = set(written)
    try:
        consumer.wait_for(
            lambda ms: (
                {json.loads(m.payload)["event_id"] for m in ms if m.topic == f"{ROOT}/events"} >= wanted
            ),
            timeout,
            "every event written",
        )
    except AssertionError as err:
        logger.warning("not every written event arrived: %s", str(err).splitlines()[0])


def broker_outages(
    workdir: Path,
    storage: Path,
    models: Path,
    shared_data: Path,
    kills: int,
    outage_s: Callable[[int], float],
    timeout_s: float = 120.0,
    min_events: int = 0,
) -> DeliveryReport:
    """Kill the broker ``kills`` times (SIGKILL, restart after ``outage_s(kill number)`` seconds) while
    the daemon streams events; then stop the daemon (SIGTERM) and wait for every written event.

    Each kill comes while the daemon is connected, after it wrote a new event, and while the consumer
    is subscribed. The broker keeps the consumer's session in its persistence file (written by one
    graceful restart before the daemon starts), so events published while the consumer is cut off
    wait for it (in the broker's memory: a kill before the consumer is back would lose them there,
    after the daemon's PUBACK, which is why the next kill waits for it).

    Args:
        timeout_s: the longest wait for one kill's conditions (a new event, a reconnection).
        min_events: after the last kill, the daemon runs on until it has written this many events
            (within ``timeout_s``; fewer is a failure): a slow machine sees fewer passages between
            kills, and waiting for them is what makes the count a condition, not a speed.
    """
    started = time.monotonic()
    report = DeliveryReport()
    # Debug logging: every PUBLISH in and out, so that the broker's own losses can be counted.
    broker = MosquittoBroker(workdir / "broker", extra_config="log_type debug", persistence=True)
    broker.start()
    consumer = Recorder(
        broker.host, broker.port, f"{ROOT}/events", client_id=CONSUMER_ID, clean_session=False
    )
    daemon: Optional[Daemon] = None
    try:
        consumer.start()
        broker.restart()  # graceful: the consumer's session goes into the persistence file
        video = passage_video(workdir, shared_data, rounds=3, pause=6)
        # The video loops: the stream goes on for as many kills as asked; SIGTERM ends it below.
        config = daemon_config(
            workdir, storage, models, broker, video, at_end="loop", outbox="drain_s = 30.0"
        )
        daemon = Daemon(config, args=["--print-events"])

        def connects() -> int:  # "connected to" and "reconnected to"
            return sum("connected to" in line for line in daemon.log)  # type: ignore[union-attr]

        seen = connected = 0
        waiting_since = time.monotonic()
        while report.kills < kills and daemon.process.poll() is None:
            # Kill it while the daemon is connected and events are flowing, and the consumer is back:
            # what the broker holds for an absent consumer is in its memory only, and a SIGKILL
            # would lose it there, after the daemon had its PUBACK (the broker's loss, not ours).
            if len(printed_events(daemon)) <= seen or connects() <= connected or not consumer.subscribed:
                if time.monotonic() - waiting_since > timeout_s:
                    report.failures.append(
                        f"no new event or reconnection within {timeout_s:.0f} s after kill {report.kills}"
                    )
                    break
                time.sleep(0.05)
                continue
            seen, connected = len(printed_events(daemon)), connects()
            broker.stop(kill=True)
            report.kills += 1
            pause = outage_s(report.kills)
            report.details.append({"kill": report.kills, "events_before": seen, "outage_s": round(pause, 2)})
            time.sleep(pause)
            broker.start()
            waiting_since = time.monotonic()
            if report.kills % 10 == 0:
                logger.info("broker kills: %d of %d, %d events written", report.kills, kills, seen)
        if daemon.process.poll() is not None:
            report.failures.append(f"the daemon ended with {daemon.process.returncode} during the outages")
        deadline = time.monotonic() + timeout_s
        while (
            sum("reconnected to" in line for line in daemon.log) < report.kills
            or len(printed_events(daemon)) < min_events
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        report.recoveries = sum("reconnected to" in line for line in daemon.log)
        printed = len(printed_events(daemon))
        if printed < min_events:
            report.failures.append(
                f"{printed} events written, {min_events} wanted, within {timeout_s:.0f} s after the last kill"
            )
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(timeout=180)
        if code != 0:
            report.failures.append(f"the daemon exited with {code} after SIGTERM")
        report.written = [event["event_id"] for event in printed_events(daemon)]
        report.outbox = outbox_figures(storage)
        _wait_delivered(consumer, report.written, 60)
        report.received = _received_ids(consumer)
        report.failures += failures_logged(daemon)
        report.broker = broker_accounting(broker.log_text())
    finally:
        if daemon is not None:
            daemon.close()
        consumer.close()
        broker.stop()
    report.seconds = time.monotonic() - started
    return report


def daemon_sigkills(
    workdir: Path,
    storage: Path,
    models: Path,
    shared_data: Path,
    broker: MosquittoBroker,
    recorder: Recorder,
    analyzer: FaceAnalyzer,
    kills: int,
    rng: random.Random,
    delay_s: Sequence[float] = (0.5, 5.0),
    after_event: bool = False,
) -> DeliveryReport:
    """SIGKILL the daemon ``kills`` times, each a random ``delay_s`` after it came online, while it
    streams events and takes enrolments and removals; check the stores after each kill; then start
    it once more and wait until everything written (printed, or left in the outbox) was delivered.

    Args:
        broker, recorder: a running broker and a client subscribed to ``#`` on it (sends commands).
        analyzer: the models (their embedder's version and length open the gallery for the checks).
        after_event: count the delay from the run's first event rather than from ``online``, so that
            every kill comes while events stream (on a slow machine the first passage takes a while).
    """
    started = time.monotonic()
    report = DeliveryReport()
    version, dim = analyzer.embedder.version, analyzer.embedder.dim
    video = passage_video(workdir, shared_data, pause=4)
    config = daemon_config(workdir, storage, models, broker, video, at_end="loop", outbox="drain_s = 20.0")
    photo = base64.b64encode((shared_data / "faces/fr_biden/biden.jpg").read_bytes()).decode()
    consumer = Recorder(
        broker.host, broker.port, f"{ROOT}/events", client_id=CONSUMER_ID, clean_session=False
    )
    consumer.start()
    written: List[str] = []
    try:
        for number in range(1, kills + 1):
            daemon = Daemon(config, args=["--print-events"])
            stop = threading.Event()
            busy = threading.Thread(target=busy_commands, args=(recorder, photo, stop), daemon=True)
            try:
                wait_online(recorder, daemon)
                busy.start()
                if after_event:
                    daemon.wait_log("access event:", timeout=120)
                delay = rng.uniform(*delay_s)
                time.sleep(delay)
                daemon.signal(signal.SIGKILL)
                daemon.wait(timeout=30)
            finally:
                stop.set()
                if busy.is_alive() or busy.ident is not None:
                    busy.join(timeout=10)
                daemon.close()
            report.kills += 1
            printed = [event["event_id"] for event in printed_events(daemon)]
            held = check_stores(storage, version, dim)
            _extend_unique(written, printed + held["pending"])
            report.failures += [f"kill {number}: {problem}" for problem in held["problems"]]
            if "obama" not in held["identities"]:
                report.failures.append(
                    f"kill {number}: the enrolled person is gone: {sorted(held['identities'])}"
                )
            report.failures += [f"kill {number}: {line}" for line in failures_logged(daemon)]
            report.details.append(
                {
                    "kill": number,
                    "after_s": round(delay, 2),
                    "printed": len(printed),
                    "pending": len(held["pending"]),
                }
            )
            recorder.clear()
            if number % 10 == 0:
                logger.info("daemon kills: %d of %d, %d events written", number, kills, len(written))
        # The next start recovers by itself and delivers what the killed runs left in the outbox.
        daemon = Daemon(config, args=["--print-events"])
        try:
            wait_online(recorder, daemon)
            daemon.wait_log("ready after", timeout=60)
            code = daemon.stop()
            if code != 0:
                report.failures.append(f"the last start exited with {code} after SIGTERM")
        finally:
            daemon.close()
        report.recoveries = kills + 1
        _extend_unique(written, [event["event_id"] for event in printed_events(daemon)])
        report.failures += failures_logged(daemon)
        held = check_stores(storage, version, dim)
        report.failures += held["problems"]
        if held["pending"]:
            report.failures.append(f"{len(held['pending'])} event(s) still pending after the last run")
        report.written = written
        report.outbox = outbox_figures(storage)
        _wait_delivered(consumer, written, 60)
        report.received = _received_ids(consumer)
    finally:
        consumer.close()
    report.seconds = time.monotonic() - started
    return report
