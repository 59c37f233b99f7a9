"""Repeated presentation attacks at the door, through the daemon on the real models: a printed photo
shown three times raises one spoof alarm (a door event), and the lockout then refuses the real
person's grant at that camera (Silent-Face-Anti-Spoofing's samples of ``shared/data/antispoof``: a
live person and a printed photo of her)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import (
    ROOT,
    Daemon,
    daemon_config,
    event_documents,
    make_passage_video,
    run_cli,
    unique_events,
)


def test_three_photos_raise_one_alarm_and_lock_the_camera(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    samples = shared_data / "antispoof"
    printed, live = samples / "image_F1.jpg", samples / "image_T1.jpg"
    passages = [(None, 3)]
    for _ in range(3):
        passages += [(printed, 20), (None, 8)]
    passages += [(live, 20), (None, 5)]
    video = make_passage_video(tmp_path / "attack.avi", passages)
    config = daemon_config(
        tmp_path,
        storage,
        shared_models,
        mosquitto,
        video,
        liveness="enabled = true\nalarm_after = 3\nalarm_window_s = 600\nlockout_s = 600",
    )
    # Enrolled from both photos, so that the printed one is recognised (an attacker holding a good
    # photo of someone enrolled): what is counted is a recognised face that fails liveness.
    enrolled = run_cli(
        "enroll",
        "--config",
        str(config),
        "--name",
        "Mina",
        "--id",
        "mina",
        "--keep",
        "2",
        str(live),
        str(printed),
    )
    assert enrolled.returncode == 0, enrolled.stderr
    daemon = Daemon(config)
    try:
        assert daemon.wait(timeout=180) == 0, daemon.text
    finally:
        daemon.close()
    events = unique_events(event_documents(recorder.messages))
    assert [(e["decision"], e["reason"]) for e in events] == [("denied", "liveness")] * 3 + [
        ("denied", "lockout")
    ], daemon.text
    assert events[3]["identity"]["id"] == "mina"  # recognised, and refused for the lockout
    alarms = [json.loads(m.payload) for m in recorder.on(f"{ROOT}/door")]
    assert [a["kind"] for a in alarms] == ["spoof_alarm"], alarms
    alarm = alarms[0]
    assert alarm["source"] == "liveness" and alarm["camera_id"] == "cam0" and alarm["attempts"] == 3
    assert alarm["access_event_id"] == events[2]["event_id"] and alarm["lockout_s"] == 600
