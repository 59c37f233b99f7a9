"""Several doors on one appliance ([[doors]]): a turnstile's two ways, each opened by its own camera's
grants, on the ``gpiod`` 2.x double (no GPIO hardware here; tests/fake_gpio.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from appliance.command_service import CommandService
from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.doctor import check_door
from appliance.door.controller import DoorController
from appliance.event_mac import EventKey, EventMacError
from appliance.gallery.gallery import Gallery
from appliance.mqtt_link import home_assistant_discovery
from appliance.peripherals import Passage, Peripheral, PeripheralHub, create_peripherals
from tests.door_support import Recorder, until
from tests.fake_gpio import GpioSim

CHIP0 = "/dev/gpiochip0"
CAMERAS = [{"id": "entry", "source": "a.avi"}, {"id": "exit", "source": "b.avi"}]
#: The entry way's relay is line 12 of chip 0, the exit way's line 20.
TURNSTILE = [
    {"id": "way-in", "cameras": ["entry"], "relay": {"line": 12, "pulse_s": 0.1}},
    {"id": "way-out", "cameras": ["exit"], "relay": {"line": 20, "pulse_s": 0.1}},
]


def _config(tmp_path: Path, doors: Any = None, **more: Any) -> ApplianceConfig:
    return validate_config(
        {"storage": {"dir": str(tmp_path)}, "cameras": CAMERAS, "doors": doors or TURNSTILE, **more}
    )


def _grant(camera_id: str, event_id: str) -> Passage:
    return Passage(event_id, "granted", None, "ada", None, (), camera_id)


@pytest.fixture
def turnstile(sim: GpioSim, tmp_path: Path) -> Iterator[Tuple[List[DoorController], Dict[str, Recorder]]]:
    """Both ways' controllers, started, each with the recorder of its own door events."""
    doors: List[DoorController] = create_peripherals(_config(tmp_path))  # type: ignore[assignment]
    recorders = {door.name: Recorder(door.name) for door in doors}
    for door in doors:
        door.start(recorders[door.name])
    yield doors, recorders
    for door in doors:
        door.close(5.0)


def test_each_way_opens_for_its_own_camera(sim: GpioSim, turnstile: Any) -> None:
    doors, recorders = turnstile
    assert [(door.name, door.source) for door in doors] == [("way-in", "door"), ("way-out", "door")]
    way_in, way_out = sim.line(CHIP0, 12), sim.line(CHIP0, 20)
    for door in doors:  # the pipeline tells every peripheral of every passage
        door.on_passage(_grant("entry", "e1"))
    until(lambda: doors[0].state()["counts"]["grants"] == 1, "the entry way's grant")
    until(lambda: not way_in.level, "the entry way's relay released")
    assert [level for _, level in way_in.writes][-2:] == [True, False]
    assert True not in [level for _, level in way_out.writes]  # the exit way never opened
    assert doors[1].state()["counts"]["grants"] == 0
    for door in doors:
        door.on_passage(_grant("exit", "e2"))
    until(lambda: doors[1].state()["counts"]["grants"] == 1, "the exit way's grant")
    assert doors[0].state()["counts"]["grants"] == 1
    doors[1].remote_open("r1")
    assert recorders["way-out"].wait_for("remote_open") == {"request_id": "r1", "pulse_s": 0.1}
    assert recorders["way-in"].kinds() == []  # each door's events are its own (the recorder checks door_id)


def test_the_hub_reports_each_door_and_stores_its_events_signed(sim: GpioSim, tmp_path: Path) -> None:
    """Door events are stored as the door's (``source`` door, its ``door_id``), signed with the site's key
    when the appliance holds one, as its access events are."""
    stored: List[Dict[str, Any]] = []
    key = EventKey(bytes(range(32)))
    hub = PeripheralHub(
        create_peripherals(_config(tmp_path)),
        "dev-1",
        lambda _id, payload: stored.append(json.loads(payload)),
        dict,
        key,
    )
    hub.start()
    try:
        assert set(hub.state()) == {"way-in", "way-out"}
        next(p for p in hub.peripherals if p.name == "way-out").remote_open("r2")  # type: ignore[attr-defined]
        until(lambda: any(event["kind"] == "remote_open" for event in stored), "the remote_open door event")
        (event,) = [event for event in stored if event["kind"] == "remote_open"]
        assert (event["source"], event["door_id"], event["device_id"]) == ("door", "way-out", "dev-1")
        key.verify(event)
        event["door_id"] = "way-in"
        with pytest.raises(EventMacError):
            key.verify(event)
    finally:
        hub.close(lambda: 5.0)


@pytest.mark.parametrize(
    "doors, more, match",
    [
        ([{**TURNSTILE[0], "cameras": []}, TURNSTILE[1]], {}, "names no cameras"),
        ([{**TURNSTILE[0], "cameras": ["side"]}], {}, r"camera\(s\) 'side', which are not configured"),
        ([TURNSTILE[0], {**TURNSTILE[1], "relay": {"line": 12}}], {}, "already a line of door 'way-in'"),
        ([TURNSTILE[0], {**TURNSTILE[1], "id": "way-in"}], {}, "the id 'way-in' of doors"),
        ([{k: v for k, v in TURNSTILE[0].items() if k != "id"}], {}, "has no id"),
        ([{**TURNSTILE[0], "id": "osdp"}], {}, "OSDP reader"),
        ([{**TURNSTILE[0], "cameras": ["entry", "entry"]}], {}, "listed twice"),
        ([], {}, "an empty list"),
        (
            TURNSTILE,
            {"door": {"enabled": True, "relay": {"line": 30}}},
            r"\[door\] and \[\[doors\]\] are both given",
        ),
    ],
)
def test_the_doors_are_checked_together(tmp_path: Path, doors: Any, more: Any, match: str) -> None:
    with pytest.raises(Exception, match=match):
        validate_config({"storage": {"dir": str(tmp_path)}, "cameras": CAMERAS, "doors": doors, **more})


def test_jetson_gpio_doors_share_one_pin_numbering(tmp_path: Path) -> None:
    doors = [
        {**door, "backend": "jetson-gpio", "relay": {"line": line}} for door, line in zip(TURNSTILE, (12, 16))
    ]
    assert [door.id for door in _config(tmp_path, doors).configured_doors] == ["way-in", "way-out"]
    with pytest.raises(Exception, match="number their pins differently"):
        _config(tmp_path, [{**doors[0], "jetson_pin_mode": "BCM"}, doors[1]])


def test_a_door_table_that_is_off_is_left_alone(tmp_path: Path) -> None:
    config = _config(tmp_path, [TURNSTILE[0], {**TURNSTILE[1], "enabled": False}])
    assert [door.id for door in config.configured_doors] == ["way-in"]
    assert validate_config({}).configured_doors == []  # [door] is off by default


def test_home_assistant_gets_one_open_button_per_door(tmp_path: Path) -> None:
    config = _config(tmp_path, mqtt={"homeassistant": {"discovery": True}}, device={"id": "gate"})
    buttons = {topic: doc for topic, doc in home_assistant_discovery(config) if "/button/" in topic}
    assert sorted(buttons) == [
        "homeassistant/button/gate/door_open_way-in/config",
        "homeassistant/button/gate/door_open_way-out/config",
    ]
    press = json.loads(buttons["homeassistant/button/gate/door_open_way-out/config"]["payload_press"])
    assert press == {"request_id": "home-assistant", "door": "way-out"}
    assert buttons["homeassistant/button/gate/door_open_way-out/config"]["name"] == "Open way-out"
    dotted = _config(
        tmp_path,
        [TURNSTILE[0], {**TURNSTILE[1], "id": "way.out"}],
        mqtt={"homeassistant": {"discovery": True}},
        device={"id": "gate"},
    )
    topics = [topic for topic, _ in home_assistant_discovery(dotted)]
    assert "homeassistant/button/gate/door_open_way_out/config" in topics  # object ids: [A-Za-z0-9_-]


def test_the_door_commands_name_a_door_when_there_are_several(
    sim: GpioSim, tmp_path: Path, turnstile: Any
) -> None:
    doors, recorders = turnstile
    answers: List[Tuple[str, Dict[str, Any]]] = []
    with Gallery.open(_config(tmp_path), "mobilefacenet@foamliu-v1.0", 128) as gallery:
        service = CommandService(
            _config(tmp_path),
            None,
            SimpleNamespace(gallery=gallery),  # type: ignore[arg-type]
            SimpleNamespace(settings=SimpleNamespace(threshold=0.5)),  # type: ignore[arg-type]
            lambda name, document: answers.append((name, document)),
            dict,
            doors=doors,
        )
        for request_id, command, document in (
            ("a", "door_open", {}),
            ("b", "door_open", {"door": "way-side"}),
            ("c", "door_open", {"door": "way-out"}),
            ("d", "door_mode", {"door": "way-in", "mode": "locked", "minutes": 5}),
            ("e", "door_mode", {"door": "bad id", "mode": "locked"}),
        ):
            service.receive(command, json.dumps({"request_id": request_id, **document}).encode())
            service.run_pending()
    results = {document["request_id"]: document for _, document in answers}
    assert (
        results["a"]["ok"] is False
        and "name one with door (way-in, way-out)" in results["a"]["error"]["message"]
    )
    assert results["b"]["ok"] is False and "no door 'way-side'" in results["b"]["error"]["message"]
    assert results["c"]["result"] == {"door": "way-out", "pulse_s": 0.1}
    assert results["d"]["result"] == {"door": "way-in", "mode": "locked", "minutes": 5}
    assert results["e"]["ok"] is False and results["e"]["error"]["code"] == "invalid"
    assert recorders["way-out"].wait_for("remote_open")["request_id"] == "c"
    until(lambda: doors[0].state()["mode"] == "locked", "the entry way locked")
    assert doors[1].state()["mode"] == "schedule"


def test_doctor_names_each_door(tmp_path: Path) -> None:
    subjects = [check.subject for check in check_door(_config(tmp_path))]
    assert subjects[0].startswith("door way-in") and any(s.startswith("door way-out") for s in subjects), (
        subjects
    )


class _Listener(Peripheral):
    """A device that records the other devices' door events (as the OSDP reader hears a tamper)."""

    name = "listener"

    def __init__(self) -> None:
        self.heard: List[Tuple[str, Dict[str, Any]]] = []

    def start(self, emit: Any) -> None:
        pass

    def on_passage(self, passage: Passage) -> None:
        pass

    def on_door_event(self, kind: str, details: Any) -> None:
        self.heard.append((kind, dict(details)))

    def state(self) -> Dict[str, Any]:
        return {}

    def close(self, timeout: float) -> None:
        pass


def test_a_doors_tamper_is_told_to_the_other_devices(sim: GpioSim, tmp_path: Path) -> None:
    doors = [{**TURNSTILE[0], "tamper": {"line": 15, "debounce_s": 0.01}}, TURNSTILE[1]]
    listener = _Listener()
    hub = PeripheralHub(
        [*create_peripherals(_config(tmp_path, doors)), listener], "dev-1", lambda *_: None, dict
    )
    hub.start()
    try:
        sim.set_input(CHIP0, 15, True)
        until(lambda: any(kind == "tamper" for kind, _ in listener.heard), "the tamper told to the listener")
        assert ("tamper", {"door_id": "way-in"}) in listener.heard
    finally:
        hub.close(lambda: 5.0)
