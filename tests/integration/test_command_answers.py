"""Command answers against a real Mosquitto: one answer per command under a flood, refusals that
quote the ``request_id``, and stale commands.

The link and the :class:`~appliance.command_service.CommandService` run in-process (a thread plays
the pipeline thread); the runtime and the pipeline are stand-ins that record what was executed, so
the test can tell an executed command from an answered one.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from appliance import mqtt_link
from appliance.command_service import CommandService
from appliance.config import ApplianceConfig
from appliance.mqtt_link import MqttLink
from appliance.outbox import Outbox
from tests.integration.test_mqtt_link import make_config
from tests.mqtt_broker import Message, MosquittoBroker, Recorder, wait_until

#: Mosquitto queues at most ``max_queued_messages`` (1000 by default) QoS 1 messages for a client
#: beyond those in flight and drops the rest: a flood faster than the appliance answers would lose
#: commands there, before they reach the appliance. These tests are about the appliance, so their
#: broker queues more (a site expecting floods of commands can do the same).
BROKER_QUEUE = "max_queued_messages 20000\n"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh ``mosquitto`` that queues up to 20000 messages per client."""
    broker = MosquittoBroker(tmp_path / "mosquitto", extra_config=BROKER_QUEUE).start()
    try:
        yield broker
    finally:
        broker.stop()


class _Pipeline:
    """Records every threshold set (the executed ``set_threshold`` commands)."""

    def __init__(self) -> None:
        self.settings = SimpleNamespace(threshold=0.5)
        self.executed: List[float] = []

    def set_threshold(self, value: float) -> None:
        self.settings.threshold = value
        self.executed.append(value)


class _Service:
    """A link wired to a command service, and a thread that runs the queued commands."""

    def __init__(self, config: ApplianceConfig, outbox: Outbox, period_s: float) -> None:
        self.pipeline = _Pipeline()
        runtime = SimpleNamespace(gallery=object())
        self.link: Optional[MqttLink] = None
        pipeline: Any = self.pipeline
        self.commands = CommandService(config, None, runtime, pipeline, self._answer, dict)
        self.link = MqttLink(config, outbox, self.commands.receive)
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-pipeline", daemon=True)

    def _answer(self, name: str, document: Dict[str, Any]) -> None:
        assert self.link is not None
        self.link.publish_result(name, document)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.commands.run_pending()

    def start(self) -> _Service:
        assert self.link is not None
        self.link.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        assert self.link is not None
        self.link.stop(timeout=3.0)


@pytest.fixture
def service(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Any]:
    made: List[Tuple[_Service, Outbox]] = []

    def factory(config: ApplianceConfig, period_s: float = 0.005) -> _Service:
        outbox = Outbox.open(tmp_path / f"outbox-{len(made)}.sqlite", 1000, 3600.0)
        started = _Service(config, outbox, period_s).start()
        made.append((started, outbox))
        assert started.link is not None and started.link.wait_connected(10)
        return started

    yield factory
    for started, outbox in made:
        started.stop()
        outbox.close()


def _flood(broker: MosquittoBroker, commands: List[Tuple[str, bytes]]) -> None:
    """Publish every command (QoS 1) as fast as one client can, and wait for the broker's PUBACKs."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in commands]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def _is_answer(message: Message, root: str) -> bool:
    return message.topic.startswith(f"{root}/cmd/") and message.topic.endswith("/result")


def _answer_count(messages: List[Message], root: str) -> int:
    """How many answers ``messages`` holds, without parsing them (the flood's wait polls this)."""
    return sum(1 for message in messages if _is_answer(message, root))


def _answers(recorder: Recorder, root: str) -> List[Dict[str, Any]]:
    return [json.loads(m.payload) for m in recorder.messages if _is_answer(m, root)]


@pytest.mark.parametrize(
    ("slots", "count"),
    [
        pytest.param(None, 3000, id="3000-commands"),
        # Few answer slots: most commands are held back (unacknowledged) until answers are acknowledged.
        # Fewer commands than Mosquitto queues for a client (max_queued_messages, 1000).
        pytest.param(8, 800, id="held-back"),
    ],
)
def test_every_command_of_a_flood_gets_exactly_one_answer(
    mosquitto: MosquittoBroker,
    recorder: Recorder,
    service: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    slots: Optional[int],
    count: int,
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.mqtt_link")
    if slots is not None:
        monkeypatch.setattr(mqtt_link, "ANSWER_SLOTS", slots)
    config = make_config(mosquitto.port)
    root = config.topic_root
    started = service(config)
    recorder.wait_for_message(f"{root}/availability", b"online")
    thresholds = {0.2 + (n + 1) / 100000: f"r{n}" for n in range(count)}  # one per command
    commands = [
        (f"{root}/cmd/set_threshold", json.dumps({"request_id": request_id, "threshold": value}).encode())
        for value, request_id in thresholds.items()
    ]
    _flood(mosquitto, commands)
    try:
        recorder.wait_for(lambda ms: _answer_count(ms, root) >= count, 90, f"{count} answers")
    except AssertionError as err:
        assert started.link is not None
        raise AssertionError(
            f"{err}\nthe link: {started.link.status()}; {len(started.pipeline.executed)} executed, "
            f"{started.commands._queue.qsize()} queued\nthe broker's log, the end:\n{mosquitto.log_text()[-3000:]}"
        ) from None
    wait_until(lambda: not started.commands._queue.qsize(), 10, "the command queue to empty")
    answers = _answers(recorder, root)
    ids = [answer["request_id"] for answer in answers]
    assert len(ids) == count and set(ids) == {f"r{n}" for n in range(count)}, "not one answer per command"
    executed = {thresholds[value] for value in started.pipeline.executed}
    answered_ok = {answer["request_id"] for answer in answers if answer["ok"]}
    assert executed == answered_ok, "an executed command was not answered (or the reverse)"
    refused = [answer for answer in answers if not answer["ok"]]
    assert all(answer["error"]["code"] == "busy" for answer in refused), refused[:3]
    assert not [r for r in caplog.records if "not sent" in r.getMessage()]
    assert started.link is not None
    status = started.link.status()
    assert status["commands_waiting"] == 0 and status["commands_dropped"] == 0
    if slots is not None:
        assert any("command(s) back" in r.getMessage() for r in caplog.records)


def test_beyond_the_waiting_bound_commands_are_dropped_without_running(
    mosquitto: MosquittoBroker, recorder: Recorder, service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt_link, "ANSWER_SLOTS", 4)
    monkeypatch.setattr(mqtt_link, "MAX_DEFERRED_BYTES", 2000)  # some 25 commands wait at most
    config = make_config(mosquitto.port)
    root = config.topic_root
    started = service(config, period_s=0.05)
    recorder.wait_for_message(f"{root}/availability", b"online")
    count = 600
    thresholds = {0.2 + (n + 1) / 100000: f"r{n}" for n in range(count)}
    _flood(
        mosquitto,
        [
            (f"{root}/cmd/set_threshold", json.dumps({"request_id": rid, "threshold": value}).encode())
            for value, rid in thresholds.items()
        ],
    )
    link = started.link
    assert link is not None
    wait_until(
        lambda: len(_answers(recorder, root)) + link.status()["commands_dropped"] >= count,
        60,
        "every command answered or dropped",
    )
    dropped = link.status()["commands_dropped"]
    answers = _answers(recorder, root)
    ids = [answer["request_id"] for answer in answers]
    assert dropped > 0 and len(ids) == len(set(ids)) == count - dropped
    executed = {thresholds[value] for value in started.pipeline.executed}
    assert executed == {answer["request_id"] for answer in answers if answer["ok"]}


def test_refusals_quote_the_request_id(mosquitto: MosquittoBroker, recorder: Recorder, service: Any) -> None:
    config = make_config(mosquitto.port, {"commands": {"max_payload_kb": 1}})
    root = config.topic_root
    started = service(config)
    recorder.wait_for_message(f"{root}/availability", b"online")
    big = json.dumps({"request_id": "big-1", "name": "x", "image": "A" * 5000}).encode()
    recorder.publish(f"{root}/cmd/enroll", big)
    # A payload far above the limit: only a bounded prefix is scanned for the request_id.
    huge = b'{"image": "' + b"A" * 5000 + b'", "request_id": "late"}'
    recorder.publish(f"{root}/cmd/enroll", huge)
    recorder.wait_for(lambda ms: len(_answers(recorder, root)) >= 2, 10, "two refusals")
    first, second = _answers(recorder, root)
    assert first["error"]["code"] == "payload_too_large" and first["request_id"] == "big-1"
    assert second["error"]["code"] == "payload_too_large" and second["request_id"] is None
    # A retained command reaches the next link flagged retained: refused, quoting its request_id.
    started.stop()
    recorder.publish(f"{root}/cmd/set_threshold", b'{"request_id": "kept", "threshold": 0.9}', retain=True)
    again = service(config)
    recorder.wait_for(lambda ms: len(_answers(recorder, root)) >= 3, 10, "the retained command's answer")
    refused = _answers(recorder, root)[2]
    assert refused["error"]["code"] == "retained" and refused["request_id"] == "kept"
    assert again.pipeline.executed == [] and started.pipeline.executed == []
    recorder.publish(f"{root}/cmd/set_threshold", b"", retain=True)  # clear it


def _stamp(offset_s: float) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=offset_s)
    return moment.isoformat().replace("+00:00", "Z")


def test_stale_commands_are_refused(mosquitto: MosquittoBroker, recorder: Recorder, service: Any) -> None:
    config = make_config(mosquitto.port, {"commands": {"max_age_s": 30}})
    root = config.topic_root
    started = service(config)
    recorder.wait_for_message(f"{root}/availability", b"online")
    cases = [
        ("old", _stamp(-31), False),
        ("fresh", _stamp(-2), True),
        ("ahead", _stamp(+120), False),
        ("unstamped", None, True),
    ]
    for request_id, ts, _ in cases:
        document: Dict[str, Any] = {"request_id": request_id, "threshold": 0.7}
        if ts is not None:
            document["ts"] = ts
        recorder.publish(f"{root}/cmd/set_threshold", json.dumps(document).encode())
    recorder.wait_for(lambda ms: len(_answers(recorder, root)) >= len(cases), 10, "the answers")
    answers = {answer["request_id"]: answer for answer in _answers(recorder, root)}
    for request_id, _, runs in cases:
        answer = answers[request_id]
        if runs:
            assert answer["ok"] is True, answer
        else:
            assert answer["ok"] is False and answer["error"]["code"] == "stale", answer
    assert started.pipeline.executed == [0.7, 0.7]
