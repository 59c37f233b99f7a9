"""The MQTT link against a real Mosquitto: availability and last will, durable ordered events across
broker and process restarts, outbox bounds, commands, TLS with passwords, Home Assistant discovery."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from appliance import __version__
from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.mqtt_link import MqttLink
from appliance.outbox import Outbox
from tests.conftest import REPO_ROOT
from tests.mqtt_broker import (
    Message,
    MosquittoBroker,
    Recorder,
    free_port,
    make_password_file,
    make_pki,
    tls_listener_config,
    wait_until,
)

DEVICE = "door-1"


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def make_config(broker_port: int, overrides: Optional[Dict[str, Any]] = None) -> ApplianceConfig:
    """A configuration for ``broker_port`` with a topic prefix unique to the test."""
    data = {
        "device": {"id": DEVICE, "name": "Front door"},
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "prefix": f"test-{uuid.uuid4().hex[:10]}",
            "keepalive_s": 5,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
        },
    }
    return validate_config(_merge(data, overrides or {}))


class Handler:
    """A command handler that records calls and can answer through the link."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, bytes]] = []
        self.link: Optional[MqttLink] = None
        self.raise_for: set = set()

    def __call__(self, name: str, payload: bytes) -> None:
        self.calls.append((name, payload))
        if name in self.raise_for:
            raise RuntimeError(f"handler exploded on {name}")
        request = json.loads(payload)
        assert self.link is not None
        self.link.publish_result(
            name, {"request_id": request.get("request_id"), "ok": True, "result": {"n": 1}}
        )


LinkFactory = Callable[..., Tuple[MqttLink, Outbox, Handler]]


@pytest.fixture
def make_link(tmp_path: Path) -> Iterator[LinkFactory]:
    """Build links (with their outbox and a recording handler); all are stopped and closed after the test."""
    made: List[Tuple[MqttLink, Outbox]] = []

    def factory(
        config: ApplianceConfig,
        outbox: Optional[Outbox] = None,
        start: bool = True,
        outbox_name: str = "outbox.sqlite",
    ) -> Tuple[MqttLink, Outbox, Handler]:
        box = outbox or Outbox.open(tmp_path / outbox_name, 1000, 3600.0)
        handler = Handler()
        link = MqttLink(config, box, handler)
        handler.link = link
        made.append((link, box))
        if start:
            link.start()
        return link, box, handler

    yield factory
    for link, box in made:
        link.stop(timeout=3.0)
        box.close()


def put_events(outbox: Outbox, link: Optional[MqttLink], count: int, start: int = 0) -> List[str]:
    ids = []
    for n in range(start, start + count):
        event_id = str(uuid.uuid4())
        outbox.put(event_id, json.dumps({"schema": 1, "event_id": event_id, "n": n}).encode())
        ids.append(event_id)
        if link is not None:
            link.notify()
    return ids


def event_ids(messages: List[Message], topic: str) -> List[str]:
    """The event ids received on ``topic``, duplicates removed (first arrival kept)."""
    seen: Dict[str, None] = {}
    for message in messages:
        if message.topic == topic:
            seen.setdefault(json.loads(message.payload)["event_id"], None)
    return list(seen)


def fresh_retained(broker: MosquittoBroker, topic: str, **kwargs: Any) -> Message:
    """What a new subscriber to ``topic`` gets: the retained message."""
    with Recorder(broker.host, broker.port, topic, **kwargs) as late:
        message = late.wait_for_message(topic, timeout=5)
    assert message.retain, f"{topic} is not retained"
    return message


# -- availability and the last will ------------------------------------------------------------------


def test_availability_online_then_offline_retained(
    mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory
) -> None:
    config = make_config(mosquitto.port)
    link, _, _ = make_link(config)
    availability = f"{config.topic_root}/availability"
    assert link.wait_connected(10)
    recorder.wait_for_message(availability, b"online")
    assert fresh_retained(mosquitto, availability).payload == b"online"
    link.publish_state({"fps": 12.5, "gallery_size": 3})
    link.publish_model({"active": {"embedder": "mobilefacenet-1"}})
    recorder.wait_for_message(f"{config.topic_root}/model")  # the broker has both now (same connection)
    assert json.loads(fresh_retained(mosquitto, f"{config.topic_root}/state").payload)["fps"] == 12.5
    assert fresh_retained(mosquitto, f"{config.topic_root}/model").payload.startswith(b'{"active"')
    status = link.status()
    assert status["connected"] is True and status["reconnects"] == 0

    link.stop()
    link.stop()  # idempotent
    recorder.wait_for_message(availability, b"offline")
    assert fresh_retained(mosquitto, availability).payload == b"offline"
    assert link.status()["connected"] is False


CHILD = r"""
import json, sys, time
from pathlib import Path
from appliance.config_load import validate_config
from appliance.mqtt_link import MqttLink
from appliance.outbox import Outbox

config = validate_config(json.loads(sys.argv[1]))
outbox = Outbox.open(Path(sys.argv[2]), 100, 3600.0)
link = MqttLink(config, outbox, lambda name, payload: None)
link.start()
if not link.wait_connected(10):
    sys.exit(3)
while True:
    time.sleep(1)
"""


def test_last_will_offline_when_the_process_is_killed(
    tmp_path: Path, mosquitto: MosquittoBroker, recorder: Recorder
) -> None:
    config = make_config(mosquitto.port)
    availability = f"{config.topic_root}/availability"
    raw = {
        "device": {"id": DEVICE},
        "mqtt": {"host": "127.0.0.1", "port": mosquitto.port, "prefix": config.mqtt.prefix, "keepalive_s": 5},
    }
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(raw), str(tmp_path / "child.sqlite")],
        cwd=str(REPO_ROOT),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        recorder.wait_for_message(availability, b"online", timeout=20)
        child.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker must publish the will
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        assert child.stderr is not None
        child.stderr.close()
    recorder.wait_for_message(availability, b"offline")
    assert fresh_retained(mosquitto, availability).payload == b"offline"


# -- events ------------------------------------------------------------------------------------------


def test_events_in_order_qos1_acked_and_deleted(
    mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory
) -> None:
    config = make_config(mosquitto.port)
    events = f"{config.topic_root}/events"
    link, outbox, _ = make_link(config)
    ids = put_events(outbox, link, 40)
    messages = recorder.wait_for(lambda ms: len(event_ids(ms, events)) >= 40, what="40 events")
    received = [m for m in messages if m.topic == events]
    assert event_ids(received, events) == ids
    assert all(m.qos == 1 and not m.retain for m in received)
    assert link.drain(5.0)
    assert outbox.depth() == 0
    status = link.status()
    assert status["published_total"] == 40 and status["in_flight"] == 0
    assert outbox.stats()["acked_total"] == 40


def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path, make_link: LinkFactory) -> None:
    # Persistence keeps the recorder's session (and what is queued for it) across a graceful restart,
    # so whatever the broker acknowledged to the link reaches the recorder even if it reconnects last.
    broker = MosquittoBroker(tmp_path / "broker", persistence=True).start()
    recorder = Recorder(broker.host, broker.port, "#", client_id="durable-recorder", clean_session=False)
    recorder.start()
    try:
        config = make_config(broker.port)
        events = f"{config.topic_root}/events"
        link, outbox, _ = make_link(config)
        assert link.wait_connected(10)
        ids = put_events(outbox, link, 20)
        recorder.wait_for(lambda ms: len(event_ids(ms, events)) >= 20, what="the first 20 events")
        # Freeze the broker so that a full window of events is in flight (sent, no PUBACK), then stop it.
        broker.pause()
        ids += put_events(outbox, link, 15, start=20)
        wait_until(lambda: link.status()["in_flight"] == 10, 10, "a full window in flight")
        broker.stop()
        wait_until(lambda: not link.status()["connected"], 10, "the link to notice the broker is gone")
        assert link.status()["in_flight"] == 10 and outbox.depth() == 15
        ids += put_events(outbox, link, 10, start=35)  # while the broker is down
        broker.start()
        recorder.wait_for(lambda ms: len(event_ids(ms, events)) >= 45, timeout=20, what="all 45 events")
        assert link.drain(10.0), link.status()
        assert event_ids(recorder.messages, events) == ids  # every one, in order (duplicates allowed)
        assert outbox.depth() == 0
        status = link.status()
        assert status["reconnects"] == 1 and status["in_flight"] == 0 and status["published_total"] == 45
    finally:
        recorder.close()
        broker.stop()


def test_outbox_survives_a_process_restart(
    tmp_path: Path, mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.mqtt_link")
    path = tmp_path / "durable.sqlite"
    # First "process": the broker is unreachable (nothing listens on that port); events wait on disk.
    offline = make_config(free_port())
    outbox = Outbox.open(path, 1000, 3600.0)
    link, _, _ = make_link(offline, outbox=outbox)
    ids = put_events(outbox, link, 12)
    wait_until(lambda: link.status()["last_error"] is not None, 10, "a connection error")
    assert not link.drain(0.3)
    link.stop()
    outbox.close()
    refusals = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING  # logged once, not per retry
    assert "Connection refused" in refusals[0].getMessage() or "refused" in refusals[0].getMessage()

    # Second "process": reopen the same file, connect, everything is delivered in order.
    config = make_config(mosquitto.port)
    reopened = Outbox.open(path, 1000, 3600.0)
    assert reopened.depth() == 12
    link2, _, _ = make_link(config, outbox=reopened)
    events = f"{config.topic_root}/events"
    recorder.wait_for(lambda ms: len(event_ids(ms, events)) >= 12, what="the 12 stored events")
    assert event_ids(recorder.messages, events) == ids
    assert link2.drain(5.0) and reopened.depth() == 0


def test_overflow_while_offline_keeps_the_newest(
    tmp_path: Path, mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.outbox")
    outbox = Outbox.open(tmp_path / "small.sqlite", 5, 3600.0)
    ids = put_events(outbox, None, 12)
    assert outbox.stats()["dropped_overflow"] == 7
    assert sum("Outbox full" in r.getMessage() for r in caplog.records) == 1
    config = make_config(mosquitto.port)
    link, _, _ = make_link(config, outbox=outbox)
    events = f"{config.topic_root}/events"
    recorder.wait_for(lambda ms: len(event_ids(ms, events)) >= 5, what="the 5 newest events")
    assert link.drain(5.0)
    assert event_ids(recorder.messages, events) == ids[-5:]
    assert any("Outbox drained" in r.getMessage() for r in caplog.records)
    assert outbox.stats()["dropped_overflow"] == 7  # still reported after the drain


# -- commands ----------------------------------------------------------------------------------------


def _command(recorder: Recorder, config: ApplianceConfig, name: str, payload: bytes) -> Dict[str, Any]:
    result_topic = f"{config.topic_root}/cmd/{name}/result"
    before = len(recorder.on(result_topic))
    recorder.publish(f"{config.topic_root}/cmd/{name}", payload)
    messages = recorder.wait_for(lambda ms: len([m for m in ms if m.topic == result_topic]) > before)
    result = [m for m in messages if m.topic == result_topic][before]
    assert result.qos == 1 and not result.retain
    return dict(json.loads(result.payload))


def test_command_round_trip(mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory) -> None:
    config = make_config(mosquitto.port)
    link, _, handler = make_link(config)
    assert link.wait_connected(10)
    recorder.wait_for_message(f"{config.topic_root}/availability", b"online")  # subscribed by now
    result = _command(recorder, config, "status", b'{"request_id": "r-1"}')
    assert result == {"request_id": "r-1", "ok": True, "result": {"n": 1}}
    assert handler.calls == [("status", b'{"request_id": "r-1"}')]


def test_oversized_and_retained_commands_are_refused(
    mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory
) -> None:
    config = make_config(mosquitto.port, {"commands": {"max_payload_kb": 1}})
    link, _, handler = make_link(config)
    assert link.wait_connected(10)
    recorder.wait_for_message(f"{config.topic_root}/availability", b"online")
    big = json.dumps({"request_id": "big", "pad": "x" * 2000}).encode()
    result = _command(recorder, config, "enroll", big)
    assert result["ok"] is False and result["error"]["code"] == "payload_too_large"
    assert result["request_id"] == "big"  # found by a bounded scan of its start, not parsed
    # A retained command left on the broker reaches the next link (flagged retained) when it
    # subscribes: refused, not run again at every reconnect.
    link.stop()
    recorder.publish(f"{config.topic_root}/cmd/reload", b'{"request_id": "old"}', retain=True)
    _link2, _, handler2 = make_link(config, outbox_name="second.sqlite")
    messages = recorder.wait_for(
        lambda ms: any(m.topic.endswith("cmd/reload/result") for m in ms),
        what="the retained command's result",
    )
    refused = json.loads(next(m for m in messages if m.topic.endswith("cmd/reload/result")).payload)
    assert refused["error"]["code"] == "retained"
    assert handler.calls == [] and handler2.calls == []


def test_handler_exception_is_answered_and_the_link_keeps_working(
    mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory, caplog: Any
) -> None:
    config = make_config(mosquitto.port)
    link, outbox, handler = make_link(config)
    handler.raise_for = {"boom"}
    assert link.wait_connected(10)
    recorder.wait_for_message(f"{config.topic_root}/availability", b"online")
    result = _command(recorder, config, "boom", b'{"request_id": 7}')
    assert result["ok"] is False and result["request_id"] == 7
    assert result["error"]["code"] == "handler_failed" and "exploded" in result["error"]["message"]
    assert any(r.levelno == logging.ERROR and "'boom' failed" in r.getMessage() for r in caplog.records)
    assert _command(recorder, config, "status", b'{"request_id": "after"}')["ok"] is True
    ids = put_events(outbox, link, 3)
    events = f"{config.topic_root}/events"
    recorder.wait_for(lambda ms: len(event_ids(ms, events)) >= 3, what="events after the failure")
    assert event_ids(recorder.messages, events) == ids
    assert link.status()["connected"] is True


# -- TLS and passwords -------------------------------------------------------------------------------


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[Tuple[MosquittoBroker, Any, Any]]:
    """A TLS-only broker with a password file; yields (broker, right PKI, another CA's PKI)."""
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other-pki", name="rogue")
    passwords = make_password_file(tmp_path / "passwd", [("door-1", "s3cret-pass")])
    extra = tls_listener_config(pki) + f"password_file {passwords}\n"
    broker = MosquittoBroker(tmp_path / "tls-broker", extra_config=extra, allow_anonymous=False).start()
    try:
        yield broker, pki, other
    finally:
        broker.stop()


def _tls_config(port: int, ca_file: Path, password: str) -> ApplianceConfig:
    return make_config(
        port,
        {
            "mqtt": {
                "username": "door-1",
                "password": password,
                "tls": {"enabled": True, "ca_file": str(ca_file)},
            }
        },
    )


def test_tls_with_password_connects(secure_broker: Any, make_link: LinkFactory) -> None:
    broker, pki, _ = secure_broker
    config = _tls_config(broker.port, pki.ca_cert, "s3cret-pass")
    link, outbox, _ = make_link(config)
    assert link.wait_connected(10), link.status()
    with Recorder(
        broker.host, broker.port, "#", username="door-1", password="s3cret-pass", ca_file=pki.ca_cert
    ) as recorder:
        recorder.wait_for_message(f"{config.topic_root}/availability", b"online")
        ids = put_events(outbox, link, 3)
        events = f"{config.topic_root}/events"
        recorder.wait_for(lambda ms: len(event_ids(ms, events)) >= 3, what="events over TLS")
        assert event_ids(recorder.messages, events) == ids


@pytest.mark.parametrize(
    ("which", "expected"),
    [("wrong_ca", "certificate verify failed"), ("wrong_password", "refused the connection")],
)
def test_tls_failures_are_logged_once_without_crashing(
    secure_broker: Any, make_link: LinkFactory, caplog: Any, which: str, expected: str
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.mqtt_link")
    broker, pki, other = secure_broker
    if which == "wrong_ca":
        config = _tls_config(broker.port, other.ca_cert, "s3cret-pass")
    else:
        config = _tls_config(broker.port, pki.ca_cert, "wrong-pass")
    link, _, _ = make_link(config)
    wait_until(lambda: expected in (link.status()["last_error"] or ""), 10, f"the error {expected!r}")
    assert not link.wait_connected(0.5)  # several more attempts (back-off 0.1 s, 0.2 s, …) meanwhile
    reports = [r for r in caplog.records if expected in r.getMessage()]
    assert len(reports) == 1, [r.getMessage() for r in reports]
    assert reports[0].levelno >= logging.WARNING
    assert "s3cret-pass" not in caplog.text and "wrong-pass" not in caplog.text
    link.stop()
    assert link.status()["connected"] is False


# -- Home Assistant discovery ------------------------------------------------------------------------


def test_home_assistant_discovery_when_enabled(
    mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory
) -> None:
    config = make_config(
        mosquitto.port, {"mqtt": {"homeassistant": {"discovery": True, "prefix": "ha-test"}}}
    )
    link, _, _ = make_link(config)
    assert link.wait_connected(10)
    recorder.wait_for_message(f"{config.topic_root}/availability", b"online")
    with Recorder(mosquitto.host, mosquitto.port, "ha-test/#") as late:
        messages = late.wait_for(lambda ms: len(ms) >= 3, what="three retained discovery configs")
    assert all(m.retain for m in messages)
    configs = {m.topic: json.loads(m.payload) for m in messages}
    assert set(configs) == {
        "ha-test/sensor/door-1/last_decision/config",
        "ha-test/sensor/door-1/last_identity/config",
        "ha-test/sensor/door-1/fps/config",
    }
    decision = configs["ha-test/sensor/door-1/last_decision/config"]
    assert decision["state_topic"] == f"{config.topic_root}/events"
    assert decision["value_template"] == "{{ value_json.decision }}"
    assert decision["availability_topic"] == f"{config.topic_root}/availability"
    assert decision["payload_available"] == "online" and decision["payload_not_available"] == "offline"
    assert decision["unique_id"] == "door-1_last_decision"
    assert decision["device"] == {
        "identifiers": ["door-1"],
        "name": "Front door",
        "model": "Face access appliance",
        "sw_version": __version__,
    }
    fps = configs["ha-test/sensor/door-1/fps/config"]
    assert fps["state_topic"] == f"{config.topic_root}/state" and fps["unit_of_measurement"] == "fps"
    assert len({c["unique_id"] for c in configs.values()}) == 3


def test_no_home_assistant_discovery_when_disabled(
    mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory
) -> None:
    config = make_config(mosquitto.port)
    assert config.mqtt.homeassistant.discovery is False
    link, _, _ = make_link(config)
    assert link.wait_connected(10)
    # Discovery would be published before `online` on the same connection, so by now it would be here.
    messages = recorder.wait_for(lambda ms: any(m.payload == b"online" for m in ms), what="online")
    assert not [m for m in messages if m.topic.startswith("homeassistant/")]


def test_events_unacknowledged_too_long_are_sent_again(
    mosquitto: MosquittoBroker,
    recorder: Recorder,
    make_link: LinkFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: Any,
) -> None:
    monkeypatch.setattr("appliance.mqtt_link._UNACKED_RESEND_S", 0.3)
    config = make_config(mosquitto.port)
    events = f"{config.topic_root}/events"
    link, outbox, _ = make_link(config)
    assert link.wait_connected(10)
    recorder.wait_for_message(f"{config.topic_root}/availability", b"online")
    mosquitto.pause()  # connected, but no PUBACK comes
    try:
        ids = put_events(outbox, link, 5)
        wait_until(lambda: "not acknowledged" in caplog.text, 10, "the re-send warning")
    finally:
        mosquitto.resume()
    recorder.wait_for(lambda ms: len(event_ids(ms, events)) >= 5, what="the 5 events")
    assert link.drain(5.0)
    assert event_ids(recorder.messages, events) == ids


def test_fetching_retained_messages_again_keeps_the_link_s_own_subscriptions(
    mosquitto: MosquittoBroker, recorder: Recorder, make_link: LinkFactory
) -> None:
    """``fetch_retained`` re-sends retained messages. For a topic that is one of the link's own
    subscriptions (a door's fleet manifest) it must not end that subscription: the next live message
    on it still arrives. A topic only covered by a wildcard subscription keeps coming through it."""
    config = make_config(mosquitto.port)
    link, _, _ = make_link(config, start=False)
    received: List[Tuple[str, bytes, bool]] = []
    for topic_filter in ("site/manifest", "site/records/+"):
        link.subscribe(topic_filter, lambda t, p, r: received.append((t, p, r)), qos=0)
    recorder.publish("site/manifest", b"m1", retain=True)
    recorder.publish("site/records/a", b"a1", retain=True)
    link.start()
    assert link.wait_connected(10)
    wait_until(
        lambda: {("site/manifest", b"m1", True), ("site/records/a", b"a1", True)} <= set(received),
        10,
        "the retained messages",
    )

    received.clear()
    assert link.fetch_retained(["site/manifest", "site/records/a"])
    wait_until(
        lambda: {("site/manifest", b"m1", True), ("site/records/a", b"a1", True)} <= set(received),
        10,
        "them again",
    )
    # A publish of the link's after them: once it is through, the broker has taken the fetch's
    # SUBSCRIBE and UNSUBSCRIBE (one connection's packets are handled in order).
    link.publish_retained("site/marker", b"after the fetch")
    recorder.wait_for_message("site/marker", b"after the fetch", timeout=10)
    received.clear()
    recorder.publish("site/manifest", b"m2", retain=True)
    recorder.publish("site/records/a", b"a2", retain=True)
    wait_until(
        lambda: {("site/manifest", b"m2", False), ("site/records/a", b"a2", False)} <= set(received),
        10,
        "the live messages after the fetch",
    )
    assert sorted(received) == [
        ("site/manifest", b"m2", False),
        ("site/records/a", b"a2", False),
    ]  # each once
