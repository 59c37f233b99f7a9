"""The MQTT link's parts that need no broker: documents, discovery messages, start-up errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from appliance.commands import parse
from appliance.config_load import validate_config
from appliance.mqtt_link import MqttLink, MqttLinkError, encode_document, home_assistant_discovery
from appliance.outbox import Outbox
from tests.mqtt_broker import free_port


def _config(extra_mqtt: Dict[str, Any]) -> Any:
    mqtt = {"host": "127.0.0.1", "port": free_port(), "reconnect_min_s": 0.1, "reconnect_max_s": 1.0}
    mqtt.update(extra_mqtt)
    return validate_config({"device": {"id": "gate.north"}, "mqtt": mqtt})


def test_documents_are_strict_compact_json() -> None:
    assert encode_document({"a": 1, "name": "Zoë"}) == '{"a":1,"name":"Zoë"}'.encode()
    with pytest.raises(ValueError, match="JSON"):
        encode_document({"fps": float("nan")})
    with pytest.raises(ValueError, match="JSON"):
        encode_document({"when": object()})


def test_discovery_topics_and_node_id_are_valid_for_home_assistant() -> None:
    config = _config({"homeassistant": {"discovery": True}})
    messages = dict(home_assistant_discovery(config))
    # '.' is not allowed in a discovery node id: it is replaced, the device identifier is kept
    assert set(messages) == {
        "homeassistant/sensor/gate_north/last_decision/config",
        "homeassistant/sensor/gate_north/last_identity/config",
        "homeassistant/sensor/gate_north/fps/config",
    }
    for document in messages.values():
        assert document["device"]["identifiers"] == ["gate.north"]
        assert document["device"]["name"] == "gate.north"  # no device.name: the id
        assert document["origin"]["name"] == "face-appliance"
        json.dumps(document)


def test_a_door_adds_an_open_button_that_sends_door_open() -> None:
    mqtt = {"host": "127.0.0.1", "homeassistant": {"discovery": True}}
    config = validate_config(
        {"device": {"id": "gate.north"}, "mqtt": mqtt, "door": {"enabled": True, "relay": {"line": 12}}}
    )
    button = dict(home_assistant_discovery(config))["homeassistant/button/gate_north/door_open/config"]
    assert button["command_topic"] == "face-appliance/gate.north/cmd/door_open"
    assert json.loads(button["payload_press"]) == {"request_id": "home-assistant"}
    assert button["unique_id"] == "gate_north_door_open" and button["availability_topic"].endswith(
        "/availability"
    )
    parse("door_open", button["payload_press"].encode())  # what it sends is a valid command


def test_a_door_that_asks_for_pins_adds_a_duress_alarm_that_only_a_duress_grant_turns_on() -> None:
    import jinja2

    def config(require: str) -> Any:
        return validate_config(
            {
                "device": {"id": "gate.north"},
                "mqtt": {"host": "127.0.0.1", "homeassistant": {"discovery": True}},
                "access": {"second_factor": {"require": require}},
                "credential_reader": {"enabled": True, "port": "/dev/ttyUSB1", "secure_channel": False},
            }
        )

    topic = "homeassistant/binary_sensor/gate_north/duress/config"
    assert topic not in dict(home_assistant_discovery(config("card")))  # no PIN asked: no duress PIN
    sensor = dict(home_assistant_discovery(config("card_or_pin")))[topic]
    assert sensor["state_topic"] == "face-appliance/gate.north/events" and sensor["device_class"] == "safety"
    template = jinja2.Environment().from_string(sensor["value_template"])  # as Home Assistant renders it
    granted = {"decision": "granted", "factors": ["face", "pin"]}
    assert template.render(value_json={**granted, "duress": True}) == "ON"
    assert template.render(value_json=granted) == "OFF"  # the next event: off again
    assert template.render(value_json={"decision": "unknown"}) == "OFF"


def test_missing_tls_file_is_a_clear_start_error(tmp_path: Path) -> None:
    config = _config({"tls": {"enabled": True, "ca_file": str(tmp_path / "missing-ca.crt")}})
    with Outbox.open(tmp_path / "outbox.sqlite", 100, 60.0) as outbox:
        link = MqttLink(config, outbox, lambda name, payload: None)
        with pytest.raises(MqttLinkError, match=r"missing-ca\.crt"):
            link.start()
        link.stop()


def test_lifecycle_misuse(tmp_path: Path) -> None:
    config = _config({})
    with Outbox.open(tmp_path / "outbox.sqlite", 100, 60.0) as outbox:
        never_started = MqttLink(config, outbox, lambda name, payload: None)
        never_started.stop()  # harmless
        assert never_started.publish_result("status", {"ok": True}) is False
        link = MqttLink(config, outbox, lambda name, payload: None)
        with pytest.raises(ValueError):
            MqttLink(config, outbox, lambda name, payload: None, window=0)
        link.start()
        try:
            with pytest.raises(RuntimeError, match="already"):
                link.start()
            with pytest.raises(ValueError, match="single topic level"):
                link.publish_result("a/b", {})
            link.publish_state({"fps": 1.0})  # remembered; nothing to send to yet
            assert link.status()["connected"] is False
        finally:
            link.stop(timeout=2.0)
            link.stop()
