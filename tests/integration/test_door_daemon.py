"""The door held unlocked by the daemon: first person in from a real face, and the remote ``door_mode``
and ``door_open`` commands over a real Mosquitto.

The daemon runs as a subprocess whose ``import gpiod`` finds the 2.x double over simulated chips
(``tests/fake_site``, :mod:`tests.fake_gpio`): there is no GPIO hardware here. What the door did is
read where an operator reads it: the door events on ``…/door`` and the door's part of ``…/state``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

from appliance.access.policy import IdentityPolicy
from appliance.gallery.store import TemplateStore
from tests import fake_gpio
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import (
    ROOT,
    Daemon,
    command,
    daemon_config,
    event_documents,
    make_passage_video,
    wait_online,
)

REPO = Path(__file__).resolve().parents[2]
DOOR = """enabled = true
backend = "gpiod"
[door.relay]
line = 12
pulse_s = 0.5
[door.unlock]
schedule = ["daily 00:00-24:00"]
first_person_groups = ["managers"]
holidays = ["public"]"""


def _door_events(messages: List[Any]) -> List[Dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"{ROOT}/door"]


def _door_event(recorder: Recorder, kind: str, count: int = 1) -> Dict[str, Any]:
    """The ``count``-th door event of ``kind``, once it came."""
    messages = recorder.wait_for(
        lambda found: sum(e["kind"] == kind for e in _door_events(found)) >= count, 60, f"door event {kind}"
    )
    return [e for e in _door_events(messages) if e["kind"] == kind][count - 1]


def test_first_person_in_and_the_remote_door_commands(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    with TemplateStore.open(storage / "gallery.db", storage / "gallery.key") as store:
        store.set_policy("obama", IdentityPolicy(groups=("managers",)))
    video = make_passage_video(
        tmp_path / "door.avi", [(None, 5), (shared_data / "faces/fr_obama/obama2.jpg", 25), (None, 20)]
    )
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        video,
        at_end="loop",
        door=DOOR,
        **{"mqtt.homeassistant": "discovery = true"},
    )
    env = {fake_gpio.ENVIRONMENT: "1", "PYTHONPATH": f"{REPO / 'tests' / 'fake_site'}{os.pathsep}{REPO}"}
    daemon = Daemon(config, env=env)
    try:
        wait_online(recorder, daemon)
        # Locked through the window until the first manager is granted here; then unlocked.
        unlocked = _door_event(recorder, "door_unlocked")
        grants = [e for e in event_documents(recorder.messages) if e["decision"] == "granted"]
        assert (unlocked["by"], unlocked["source"], unlocked["door_id"]) == (
            "first_person",
            "door",
            "door",
        ), unlocked
        assert unlocked["access_event_id"] == grants[0]["event_id"]
        assert grants[0]["identity"]["id"] == "obama"

        answer = command(recorder, "door_mode", {"request_id": "m1", "mode": "locked", "minutes": 30})
        assert answer["ok"] and answer["result"] == {"door": "door", "mode": "locked", "minutes": 30}, answer
        assert _door_event(recorder, "door_locked")["was"] == "first_person"
        state = command(recorder, "status", {"request_id": "s1"})["result"]["door"]["door"]
        assert state["mode"] == "locked" and 0 < state["mode_left_s"] <= 1800 and state["first_person_in"]

        assert command(recorder, "door_mode", {"request_id": "m2", "mode": "schedule"})["ok"]
        assert _door_event(recorder, "door_unlocked", 2)["by"] == "first_person"  # still within its window

        answer = command(recorder, "door_open", {"request_id": "o1"})
        assert answer["ok"] and answer["result"] == {"door": "door", "pulse_s": 0.5}, answer
        assert _door_event(recorder, "remote_open")["request_id"] == "o1"
        # Home Assistant's "Open door" button, pressed: what its discovery config says to send
        button = json.loads(recorder.on("homeassistant/button/door-test/door_open/config")[-1].payload)
        recorder.publish(button["command_topic"], button["payload_press"].encode())
        assert _door_event(recorder, "remote_open", 2)["request_id"] == "home-assistant"

        refused = command(recorder, "door_mode", {"request_id": "m3", "mode": "open"})
        assert refused["error"]["code"] == "invalid" and "mode" in refused["error"]["message"], refused
        refused = command(recorder, "door_mode", {"request_id": "m4", "mode": "locked", "minutes": 0})
        assert refused["error"]["code"] == "invalid", refused
        state = command(recorder, "status", {"request_id": "s2"})["result"]["door"]["door"]
        assert (
            state["unlocked_by"] == "first_person" and state["relay"] == "on" and state["mode"] == "schedule"
        )
        assert state["counts"]["remote_opens"] == 2 and not state["closed_today"]

        # Today becomes a holiday of the calendar door.unlock.holidays names: the window shuts; and
        # once it is not, the next manager's grant unlocks the door again (the video loops).
        today = datetime.now(timezone.utc).date().isoformat()
        answer = command(recorder, "set_calendar", {"request_id": "c1", "name": "public", "days": [today]})
        assert answer["ok"], answer
        assert _door_event(recorder, "door_locked", 2)["was"] == "first_person"
        assert command(recorder, "status", {"request_id": "s3"})["result"]["door"]["door"]["closed_today"]
        assert command(recorder, "remove_calendar", {"request_id": "c2", "name": "public"})["ok"]
        assert _door_event(recorder, "door_unlocked", 3)["by"] == "first_person"
    finally:
        daemon.stop()
        daemon.close()
    assert "Traceback" not in daemon.text, daemon.text


def test_a_turnstile_whose_two_ways_open_for_their_own_cameras(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    """[[doors]]: Obama at the entry camera opens the entry way's relay only; the exit way, whose camera
    sees nobody, stays shut; the door commands name the way."""
    entry = make_passage_video(
        tmp_path / "entry.avi", [(None, 5), (shared_data / "faces/fr_obama/obama2.jpg", 25), (None, 20)]
    )
    empty = make_passage_video(tmp_path / "exit.avi", [(None, 50)])
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        None,
        cameras=[("entry", entry, "loop"), ("exit", empty, "loop")],
    )
    ways = "".join(
        f'[[doors]]\nid = "{way}"\nbackend = "gpiod"\ncameras = ["{camera}"]\nrelay.line = {line}\nrelay.pulse_s = 0.5\n'
        for way, camera, line in (("way-in", "entry", 12), ("way-out", "exit", 20))
    )
    config.write_text(config.read_text() + ways)
    env = {fake_gpio.ENVIRONMENT: "1", "PYTHONPATH": f"{REPO / 'tests' / 'fake_site'}{os.pathsep}{REPO}"}
    daemon = Daemon(config, env=env)
    try:
        wait_online(recorder, daemon)
        recorder.wait_for(
            lambda found: any(e["decision"] == "granted" for e in event_documents(found)),
            60,
            "a grant at the entry",
        )
        doors = command(recorder, "status", {"request_id": "s1"})["result"]["door"]
        assert set(doors) == {"way-in", "way-out"}, doors
        assert doors["way-in"]["counts"]["grants"] >= 1 and doors["way-out"]["counts"]["grants"] == 0, doors

        refused = command(recorder, "door_open", {"request_id": "o1"})
        assert not refused["ok"] and "name one with door" in refused["error"]["message"], refused
        answer = command(recorder, "door_open", {"request_id": "o2", "door": "way-out"})
        assert answer["ok"] and answer["result"] == {"door": "way-out", "pulse_s": 0.5}, answer
        opened = _door_event(recorder, "remote_open")
        assert (opened["request_id"], opened["door_id"], opened["source"]) == ("o2", "way-out", "door"), (
            opened
        )
        doors = command(recorder, "status", {"request_id": "s2"})["result"]["door"]
        assert (
            doors["way-out"]["counts"]["remote_opens"] == 1 and doors["way-in"]["counts"]["remote_opens"] == 0
        )
    finally:
        daemon.stop()
        daemon.close()
    assert "Traceback" not in daemon.text, daemon.text


def test_a_housing_opened_reaches_mqtt_and_the_access_panel_and_closing_it_clears_both(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    """The tamper switch in the daemon: the test opens and closes the housing through the GPIO double's
    control FIFO; the door events go out on MQTT, and the OSDP link reports the tamper to libosdp's
    real control panel (over a ``socat`` pty pair) as a local status, then its clearing."""
    from tests.osdp_support import KEY, Panel, pty_pair, write_key

    fifo = tmp_path / "gpio-control"
    os.mkfifo(fifo)
    video = make_passage_video(tmp_path / "empty.avi", [(None, 30)])
    key = write_key(tmp_path / "osdp_scbk", KEY)
    with pty_pair(tmp_path) as (reader_end, panel_end), Panel(panel_end, 5, KEY) as panel:
        config = daemon_config(
            tmp_path,
            storage,
            shared_models,
            mosquitto,
            video,
            at_end="loop",
            door='enabled = true\nbackend = "gpiod"\n[door.relay]\nline = 12\n[door.tamper]\nline = 15\n'
            "debounce_s = 0.05",
            osdp=f'enabled = true\nport = "{reader_end}"\naddress = 5\nscbk_file = "{key}"',
        )
        env = {
            fake_gpio.ENVIRONMENT: "1",
            fake_gpio.CONTROL_ENVIRONMENT: str(fifo),
            "PYTHONPATH": f"{REPO / 'tests' / 'fake_site'}{os.pathsep}{REPO}",
        }
        daemon = Daemon(config, env=env)
        try:
            wait_online(recorder, daemon)
            assert panel.wait(panel.secure, timeout=30), "no Secure Channel with the daemon's reader"
            fake_gpio.set_input_through(str(fifo), "/dev/gpiochip0", 15, True)  # the housing opens
            assert _door_event(recorder, "tamper")["door_id"] == "door"
            assert panel.wait(lambda: len(panel.statuses) == 1, timeout=30), panel.statuses
            assert panel.statuses[0]["report"][:2] == b"\x01\x00"
            fake_gpio.set_input_through(str(fifo), "/dev/gpiochip0", 15, False)  # and is closed again
            assert _door_event(recorder, "tamper_cleared")["active_s"] >= 0
            assert panel.wait(lambda: len(panel.statuses) == 2, timeout=30), panel.statuses
            assert panel.statuses[1]["report"][:2] == b"\x00\x00"
            state = command(recorder, "status", {"request_id": "s1"})["result"]["door"]
            assert state["door"]["counts"]["tampers"] == 1 and state["osdp"]["tamper"]["reports"] == 2, state
        finally:
            daemon.stop()
            daemon.close()
    assert "Traceback" not in daemon.text, daemon.text
