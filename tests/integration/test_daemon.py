"""The daemon as a subprocess against a real Mosquitto: events, outages, signals, systemd, commands, camera.

Each test enrols people in a fresh storage folder, writes a video made of real photos, and runs
``python -m appliance run`` on it.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from tests.mqtt_broker import MosquittoBroker, Recorder, wait_until
from tests.support import (
    DEVICE,
    ROOT,
    Daemon,
    command,
    daemon_config,
    event_documents,
    make_passage_video,
    notify_listener,
    passage_video,
    run_cli,
    unique_events,
)

EVENT_KEYS = {
    "schema",
    "event_id",
    "ts",
    "device_id",
    "camera_id",
    "decision",
    "reason",
    "identity",
    "score",
    "threshold",
    "track_id",
    "frames",
    "liveness",
    "models",
    "face",
    "latency_ms",
}


def test_person_granted_and_stranger_unknown(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    # [adaptive] on: the grant teaches a template, handed by the pipeline thread to gallery-change.
    adaptive = "enabled = true\nrequire_liveness = false\nmin_quality = 0.0\nmin_interval_s = 0.0"
    config = daemon_config(
        tmp_path, storage, shared_models, mosquitto, passage_video(tmp_path, shared_data), adaptive=adaptive
    )
    daemon = Daemon(config)
    try:
        assert daemon.wait(timeout=120) == 0, daemon.text
    finally:
        daemon.close()
    events = unique_events(event_documents(recorder.messages))
    assert [e["decision"] for e in events] == ["granted", "unknown"], daemon.text
    granted, unknown = events
    assert granted["identity"] == {"id": "obama", "name": "Barack Obama"}
    assert granted["score"] >= granted["threshold"] and unknown["identity"] is None
    for event in events:
        assert set(event) == EVENT_KEYS, set(event) ^ EVENT_KEYS
        assert event["schema"] == 1 and event["device_id"] == DEVICE and event["camera_id"] == "cam0"
        assert event["ts"].endswith("Z") and len(event["face"]["box"]) == 4
        assert event["models"]["embedder"].startswith("mobilefacenet@") and "embedding" not in json.dumps(
            event
        )
    availability = [m.text for m in recorder.on(f"{ROOT}/availability")]
    assert availability[0] == "online" and availability[-1] == "offline"
    state = json.loads(recorder.on(f"{ROOT}/state")[-1].payload)
    assert state["gallery"]["identities"] == 1 and state["frames"] == 3 + 25 + 12 + 25 + 12
    assert state["outbox"]["depth"] == 0 and state["camera"]["dropped"] == 0
    stages = state["latency_ms"]
    assert {"detect", "align", "embed", "match", "capture_to_outbox"} <= set(stages), stages
    # capture_to_outbox is the events' own latency_ms (rounded to 0.1 there): its median lies between.
    latencies = [event["latency_ms"] for event in events]
    assert min(latencies) - 0.06 <= stages["capture_to_outbox"]["p50"] <= max(latencies) + 0.06, stages
    assert state["adaptive"]["added"] == 1, state["adaptive"]  # the last state: after the stop's joins
    listed = run_cli("gallery", "templates", "obama", "--json", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    learnt = [t for t in json.loads(listed.stdout)["templates"] if t["kind"] == "adaptive"]
    assert [t["source_event"] for t in learnt] == [granted["event_id"]]


def test_events_survive_a_broker_outage_and_a_sigkill(
    tmp_path: Path, storage: Path, shared_models: Path, shared_data: Path
) -> None:
    # A broker that keeps the consumer's session across its restarts: what the daemon publishes before
    # the consumer is back is queued for it, whichever of the two reconnects first.
    mosquitto = MosquittoBroker(tmp_path / "persistent-broker", persistence=True).start()
    try:
        _outage_and_sigkill(tmp_path, storage, shared_models, shared_data, mosquitto)
    finally:
        mosquitto.stop()


def _outage_and_sigkill(
    tmp_path: Path, storage: Path, shared_models: Path, shared_data: Path, mosquitto: MosquittoBroker
) -> None:
    with Recorder(
        mosquitto.host, mosquitto.port, f"{ROOT}/events", client_id="consumer", clean_session=False
    ):
        pass  # register a persistent session: the broker keeps its QoS 1 messages while the consumer is away
    consumer = Recorder(
        mosquitto.host, mosquitto.port, f"{ROOT}/events", client_id="consumer", clean_session=False
    )
    consumer.start()
    try:
        # 1. The broker goes away before any event: they wait in the outbox, then all arrive in order.
        mosquitto.stop()
        config = daemon_config(
            tmp_path,
            storage,
            shared_models,
            mosquitto,
            passage_video(tmp_path, shared_data, rounds=2),
            outbox="drain_s = 60.0",
        )
        daemon = Daemon(config)
        try:
            daemon.wait_log("access event", count=4, timeout=120)
            mosquitto.start()
            assert daemon.wait(timeout=90) == 0, daemon.text
        finally:
            daemon.close()
        events = consumer.wait_for(
            lambda ms: len({json.loads(m.payload)["event_id"] for m in ms}) >= 4, 30, "4 events"
        )
        unique = unique_events([json.loads(m.payload) for m in events])
        assert [e["decision"] for e in unique] == ["granted", "unknown", "granted", "unknown"]
        assert [e["ts"] for e in unique] == sorted(e["ts"] for e in unique)

        # 2. Killed with events still in the outbox: the next start delivers them.
        consumer.clear()
        mosquitto.stop()
        config = daemon_config(
            tmp_path, storage, shared_models, mosquitto, passage_video(tmp_path, shared_data, "second.avi")
        )
        daemon = Daemon(config)
        try:
            daemon.wait_log("access event", count=2, timeout=120)
            daemon.signal(signal.SIGKILL)
            daemon.wait(timeout=30)
        finally:
            daemon.close()
        mosquitto.start()
        empty = make_passage_video(tmp_path / "empty.avi", [(None, 20)])
        daemon = Daemon(daemon_config(tmp_path, storage, shared_models, mosquitto, empty))
        try:
            assert daemon.wait(timeout=90) == 0, daemon.text
        finally:
            daemon.close()
        # Only the killed run's events count: events are delivered at least once, and a second copy of
        # one of step 1's can arrive after step 1 stopped waiting and the list was cleared.
        step_one = {json.loads(m.payload)["event_id"] for m in events}

        def killed_runs(messages: Sequence[Any]) -> List[Dict[str, Any]]:
            return [
                e
                for e in unique_events([json.loads(m.payload) for m in messages])
                if e["event_id"] not in step_one
            ]

        delivered = consumer.wait_for(lambda ms: len(killed_runs(ms)) >= 2, 30, "the killed run's events")
        assert [e["decision"] for e in killed_runs(delivered)][:2] == ["granted", "unknown"], [
            (e["event_id"], e["decision"]) for e in (json.loads(m.payload) for m in delivered)
        ]
    finally:
        consumer.close()


def test_sigterm_publishes_offline_and_sigkill_the_last_will(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    video = passage_video(tmp_path, shared_data)
    config = daemon_config(tmp_path, storage, shared_models, mosquitto, video, at_end="loop")
    daemon = Daemon(config)
    try:
        recorder.wait_for_message(f"{ROOT}/availability", b"online", timeout=60)
        daemon.wait_log("ready after")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, daemon.text
        assert time.monotonic() - started < 20, "stopping took longer than the unit's stop timeout"
    finally:
        daemon.close()
    assert recorder.on(f"{ROOT}/availability")[-1].payload == b"offline"

    recorder.clear()
    daemon = Daemon(config)
    try:
        recorder.wait_for_message(f"{ROOT}/availability", b"online", timeout=60)
        daemon.signal(signal.SIGKILL)
        daemon.wait(timeout=30)
        recorder.wait_for_message(f"{ROOT}/availability", b"offline", timeout=15)  # the broker's last will
    finally:
        daemon.close()


def test_systemd_ready_and_watchdog_only_while_frames_flow(
    tmp_path: Path, storage: Path, shared_models: Path, shared_data: Path, mosquitto: MosquittoBroker
) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = notify_listener(notify_path, 0.5)
    video = passage_video(tmp_path, shared_data)
    config = daemon_config(tmp_path, storage, shared_models, mosquitto, video, at_end="loop")
    env = {
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "2000000",  # ping every second; a stall is declared after two missed pings
        "FACE_APPLIANCE_FAULTS": "stall_pipeline_after:600",
    }
    messages: List[tuple] = []
    started = time.monotonic()
    daemon = Daemon(config, env)
    try:
        stalled_at = None
        while time.monotonic() - started < 150:
            try:
                data = listener.recv(4096).decode()
            except socket.timeout:
                data = ""
            if data:
                messages.append((time.monotonic(), data))
            if stalled_at is None and any("pipeline stalls now" in line for line in daemon.log):
                stalled_at = time.monotonic()
            if stalled_at is not None and time.monotonic() - stalled_at > 8:
                break
        assert stalled_at is not None, daemon.text
        daemon.signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    finally:
        daemon.close()
        listener.close()
    ready = [t for t, text in messages if "READY=1" in text]
    pings = [t for t, text in messages if "WATCHDOG=1" in text]
    assert ready and ready[0] - started < 30
    before = [t for t in pings if ready[0] <= t < stalled_at]
    assert len(before) >= 3, f"{len(before)} pings while frames flowed"
    assert not [t for t in pings if t > stalled_at + 4.5], "the watchdog kept being fed by a stalled pipeline"
    assert any(text.startswith("STATUS=") and "fps" in text for _, text in messages)


def test_bad_commands_get_error_results_and_change_nothing(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    from tests.mqtt_broker import free_port

    video = passage_video(tmp_path, shared_data)
    port = free_port()
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        video,
        at_end="loop",
        metrics=f"state_interval_s = 1.0\nprometheus = true\nprometheus_port = {port}",
    )
    daemon = Daemon(config)

    def command(name: str, payload: bytes) -> dict:
        recorder.publish(f"{ROOT}/cmd/{name}", payload)
        message = recorder.wait_for(lambda ms: any(m.topic == f"{ROOT}/cmd/{name}/result" for m in ms), 60)
        results = [json.loads(m.payload) for m in message if m.topic == f"{ROOT}/cmd/{name}/result"]
        recorder.clear()
        return results[-1]

    try:
        recorder.wait_for_message(f"{ROOT}/availability", b"online", timeout=60)
        bad = [
            ("enroll", b"{not json"),
            ("enroll", json.dumps({"request_id": "r2", "name": 7, "image": "x"}).encode()),
            ("frobnicate", json.dumps({"request_id": "r3"}).encode()),
            ("set_threshold", json.dumps({"request_id": "r4", "threshold": 1.5}).encode()),
            ("remove", json.dumps({"request_id": "r5", "id": "nobody"}).encode()),
            ("enroll", json.dumps({"request_id": "r6", "name": "x", "image": "A" * (10 * 2**20)}).encode()),
            (
                "enroll",
                json.dumps(
                    {
                        "request_id": "r7",
                        "name": "Dog",
                        "image": base64.b64encode(
                            (shared_data / "no_face/dlib_dog.jpg").read_bytes()
                        ).decode(),
                    }
                ).encode(),
            ),
        ]
        for name, payload in bad:
            outcome = command(name, payload)
            assert outcome["ok"] is False and outcome["error"], (name, outcome)
        status = command("status", b'{"request_id": "s1"}')
        assert (
            status["ok"] and status["request_id"] == "s1" and status["result"]["gallery"]["identities"] == 1
        )
        assert daemon.process.poll() is None

        threshold = command("set_threshold", b'{"request_id": "t1", "threshold": 0.6}')
        assert threshold["ok"] and threshold["result"]["threshold"] == 0.6
        photo = base64.b64encode((shared_data / "faces/fr_biden/biden.jpg").read_bytes()).decode()
        enrolled = command(
            "enroll", json.dumps({"request_id": "e1", "name": "Joe Biden", "image": photo}).encode()
        )
        assert enrolled["ok"] and enrolled["result"]["id"] == "joe-biden", enrolled
        assert command("status", b'{"request_id": "s2"}')["result"]["gallery"]["identities"] == 2
        removed = command("remove", b'{"request_id": "d1", "id": "joe-biden"}')
        assert removed["ok"] and removed["result"]["templates_removed"] == 1
        assert command("status", b'{"request_id": "s3"}')["result"]["threshold"] == 0.6

        # SIGHUP reloads thresholds from the file (undoing set_threshold) and the gallery.
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reloaded: threshold 0.500")
        # The opt-in Prometheus endpoint, on localhost only.
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "face_appliance_fps " in metrics and "face_appliance_gallery_identities 1" in metrics
    finally:
        daemon.signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        daemon.close()


def test_missing_camera_file_is_retried_until_it_appears(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    later = tmp_path / "later.avi"
    config = daemon_config(tmp_path, storage, shared_models, mosquitto, later)
    daemon = Daemon(config)
    try:
        recorder.wait_for(
            lambda ms: any(
                m.topic == f"{ROOT}/state" and json.loads(m.payload)["camera"]["state"] == "lost" for m in ms
            ),
            60,
            "a state with the camera lost",
        )
        lost = [
            json.loads(m.payload)
            for m in recorder.on(f"{ROOT}/state")
            if json.loads(m.payload)["camera"]["state"] == "lost"
        ]
        assert "does not exist" in lost[-1]["camera"]["last_error"]
        time.sleep(1.5)  # a few retries
        passage_video(tmp_path, shared_data, "staging.avi").rename(later)
        assert daemon.wait(timeout=120) == 0, daemon.text
    finally:
        daemon.close()
    assert [e["decision"] for e in unique_events(event_documents(recorder.messages))] == [
        "granted",
        "unknown",
    ]
    warnings = [line for line in daemon.log if "WARNING" in line and "camera" in line.lower()]
    assert len(warnings) == 1, warnings
    assert sum("recovered" in line for line in daemon.log) == 1


def test_what_someone_at_the_door_waited_for_is_a_stage_of_its_own(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    """``latency_ms.between_frames_in_view`` holds only the turns when a camera tracked a face: the
    ``status`` commands answered between the frames of a face that stays in view are in it (and in
    ``between_frames``); with an empty scene they are in ``between_frames`` alone."""

    def stages() -> Dict[str, Any]:
        states = recorder.on(f"{ROOT}/state")
        return json.loads(states[-1].payload).get("latency_ms") or {} if states else {}

    for scene, photo in (("empty", None), ("face", shared_data / "faces/fr_obama/obama2.jpg")):
        video = make_passage_video(tmp_path / f"{scene}.avi", [(photo, 30)])
        daemon = Daemon(daemon_config(tmp_path, storage, shared_models, mosquitto, video, at_end="loop"))
        wanted = "between_frames_in_view" if photo is not None else "between_frames"
        try:
            recorder.wait_for_message(f"{ROOT}/availability", b"online", timeout=60)
            for number in range(3):  # some after the first frame, whatever the start's timing
                command(recorder, "status", {"request_id": f"{scene}-{number}"})
                time.sleep(0.3)
            wait_until(lambda stage=wanted: stage in stages(), 30, f"{wanted} in …/state ({scene} scene)")
        finally:
            daemon.close()
        assert "between_frames" in stages()
        assert ("between_frames_in_view" in stages()) == (photo is not None), (scene, stages())
        recorder.clear()
