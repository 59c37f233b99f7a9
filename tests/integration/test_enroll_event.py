"""Walk-up enrolment with the real models, the real daemon and a real broker: a visitor the door does
not know walks up, the operator sends ``enroll`` with that ``unknown`` event's id and a name, and from
the next passage on the visitor is granted under that name. The face comes from the sightings store
(``events.keep_crops_h``, or ``[unknowns]`` alone), goes through the enrolment checks, and leaves the store once enrolled.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from appliance.cli.sightings_cmd import open_sightings
from appliance.config_load import load_config
from appliance.face_views import SAME_VIEW
from appliance.vision.analyzer import FaceAnalyzer
from tests.fault_runs import printed_events
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import (
    Daemon,
    command,
    daemon_config,
    event_documents,
    make_passage_video,
    run_cli,
    unique_events,
    wait_online,
)

OBAMA_WALKS = "faces/fr_obama/obama2.jpg"  # enrolled (the storage fixture) from obama.jpg
KATE = "faces/fnp_kate_siegel/1.jpg"  # nobody the door knows


def _decided(events: List[Dict[str, Any]], decision: str) -> List[Dict[str, Any]]:
    return [e for e in events if e["decision"] == decision]


@pytest.mark.parametrize(
    "keeping",
    [{"events": "keep_crops_h = 1.0"}, {"unknowns": "enabled = true\nretention_h = 2.0"}],
    ids=["every-event's-face", "unknown-visitors-only"],
)
def test_an_unknown_visitor_is_enrolled_from_their_access_event(
    keeping: Dict[str, str],
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    video = make_passage_video(
        tmp_path / "door.avi",
        [(None, 3), (shared_data / OBAMA_WALKS, 25), (None, 12), (shared_data / KATE, 25), (None, 12)],
    )
    config_path = daemon_config(tmp_path, storage, shared_models, mosquitto, video, at_end="loop", **keeping)
    daemon = Daemon(config_path)
    try:
        wait_online(recorder, daemon)
        messages = recorder.wait_for(
            lambda ms: _decided(event_documents(ms), "unknown") and _decided(event_documents(ms), "granted"),
            180,
            "Kate unknown and Obama granted",
        )
        unknown = _decided(event_documents(messages), "unknown")[0]
        granted = _decided(event_documents(messages), "granted")[0]
        kate = {"name": "Kate Siegel", "id": "kate", "consent_at": "2026-12-06T12:00:00Z"}

        # Refusals, each with its code; nothing is enrolled.
        for request_id, document, code in (
            ("e1", {**kate, "event_id": "0000-not-an-event"}, "not_kept"),
            # A grant's face is kept only with keep_crops_h; [unknowns] alone keeps unknown faces.
            (
                "e2",
                {**kate, "event_id": granted["event_id"]},
                "not_unknown" if "events" in keeping else "not_kept",
            ),
            (
                "e3",
                {**kate, "event_id": unknown["event_id"], "image": base64.b64encode(b"x" * 8).decode()},
                "invalid",
            ),
            ("e4", {**kate, "event_id": unknown["event_id"], "face": 1}, "invalid"),
            ("e5", {**kate}, "invalid"),
        ):
            answer = command(recorder, "enroll", {"request_id": request_id, **document})
            assert answer["ok"] is False and answer["error"]["code"] == code, answer

        enrolled = command(recorder, "enroll", {"request_id": "e6", **kate, "event_id": unknown["event_id"]})
        assert enrolled["ok"] is True, enrolled
        assert enrolled["result"]["id"] == "kate" and enrolled["result"]["templates"] == 1
        # Her still photo shows one view however near it comes: the answer lists that one.
        (view,) = enrolled["result"]["photos"]
        assert view["source"] == f"event {unknown['event_id']}" and view["accepted"] is True
        # The face left the sightings store with its enrolment: the same event cannot be enrolled twice.
        again = command(
            recorder, "enroll", {"request_id": "e7", **kate, "id": "kate-2", "event_id": unknown["event_id"]}
        )
        assert again["ok"] is False and again["error"]["code"] == "not_kept", again
        mark = len(recorder.messages)

        # From her next passage on, Kate is granted under her name.
        def after(ms: List[Any]) -> List[Dict[str, Any]]:
            return unique_events(event_documents(ms[mark:]))

        recorder.wait_for(
            lambda ms: any(
                e["identity"] and e["identity"]["id"] == "kate" for e in _decided(after(ms), "granted")
            ),
            240,
            "Kate granted",
        )
        kate_grant = next(
            e for e in _decided(after(recorder.messages), "granted") if e["identity"]["id"] == "kate"
        )
        assert kate_grant["identity"]["name"] == "Kate Siegel" and kate_grant["score"] >= 0.5
    finally:
        daemon.stop()


def test_the_command_line_enrols_an_unknown_visitor_from_their_event(
    tmp_path: Path, storage: Path, shared_models: Path, shared_data: Path, mosquitto: MosquittoBroker
) -> None:
    """``gallery enroll-event``: the same from the operator's shell, after the daemon saw Kate once."""
    video = make_passage_video(
        tmp_path / "door.avi",
        [(None, 3), (shared_data / OBAMA_WALKS, 25), (None, 12), (shared_data / KATE, 25), (None, 12)],
    )
    config_path = daemon_config(
        tmp_path, storage, shared_models, mosquitto, video, events="keep_crops_h = 1.0"
    )
    daemon = Daemon(config_path, args=["--print-events"])
    assert daemon.wait(timeout=300) == 0, daemon.text[-3000:]
    events = printed_events(daemon)
    unknown = _decided(events, "unknown")[0]["event_id"]
    granted = _decided(events, "granted")[0]["event_id"]
    enrol = ("gallery", "enroll-event", "--config", str(config_path), "--name", "Kate Siegel", "--id", "kate")

    no_consent = run_cli(*enrol, unknown)
    assert no_consent.returncode == 1 and "consent" in no_consent.stderr
    known = run_cli(*enrol, "--consent", granted)
    assert known.returncode == 1 and "error (not_unknown)" in known.stderr
    done = run_cli(*enrol, "--consent", "--groups", "visitors", "--json", unknown)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["templates"] == 1
    again = run_cli(*enrol, "--consent", unknown)
    assert again.returncode == 1 and "error (not_kept)" in again.stderr

    identified = run_cli("identify", "--json", "--config", str(config_path), str(shared_data / KATE))
    (face,) = json.loads(identified.stdout)["images"][0]["faces"]
    assert face["decision"] == "granted" and face["identity"]["id"] == "kate"
    listing = json.loads(run_cli("gallery", "list", "--json", "--config", str(config_path)).stdout)
    assert next(i for i in listing["identities"] if i["id"] == "kate")["policy"]["groups"] == ["visitors"]


def test_a_visitor_is_enrolled_from_the_differing_views_of_their_passage(
    tmp_path: Path, shared_models: Path, shared_data: Path, analyzer: FaceAnalyzer, mosquitto: MosquittoBroker
) -> None:
    """The audience clip through the daemon (nobody enrolled, ``events.walk_up_views`` 3 by default): a
    face decided unknown is kept with up to two more views of it, each differing from the best frame
    and still matching it — checked again here with the real embedder on the kept crops — and walk-up
    enrolment puts every view through the enrolment checks."""
    config_path = daemon_config(
        tmp_path,
        tmp_path / "state",
        shared_models,
        mosquitto,
        shared_data / "video/fr_short_hamilton_clip.mp4",
        events="keep_crops_h = 1.0",
    )
    daemon = Daemon(config_path, args=["--print-events"])
    assert daemon.wait(timeout=300) == 0, daemon.text[-3000:]
    unknown = [e["event_id"] for e in printed_events(daemon) if e["decision"] == "unknown"]
    assert unknown, "the clip gave no unknown event"
    config = load_config(config_path)
    with open_sightings(config) as store:  # type: ignore[union-attr]
        views = {event: store.views(event) for event in unknown}
        faces = {event: store.face(event) for event in unknown}
        held = store.counts()["views"]
    assert held == sum(len(found) for found in views.values())
    assert all(len(found) <= 2 for found in views.values())
    several = sorted((event for event in unknown if views[event]), key=lambda event: -len(views[event]))
    assert several, f"no unknown face of {len(unknown)} was kept with another view"
    for event in several:
        face = faces[event]
        assert face is not None and face.crop is not None
        vectors = analyzer.embedder.embed(np.stack([face.crop, *views[event]]))
        cosines = vectors[1:] @ face.embedding  # each view against the best frame
        assert (cosines >= config.match.threshold - 1e-3).all(), cosines
        pairs = vectors @ vectors.T  # no two of them the same view
        assert (pairs[~np.eye(len(vectors), dtype=bool)] < SAME_VIEW + 1e-3).all(), pairs

    event = several[0]
    done = run_cli(
        "gallery",
        "enroll-event",
        "--config",
        str(config_path),
        "--name",
        "A Visitor",
        "--consent",
        "--json",
        event,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    sources = [photo["source"] for photo in result["photos"]]
    assert sources == [f"event {event}"] + [
        f"event {event}, view {n}" for n in range(2, len(views[event]) + 2)
    ]
    # More than one template from one passage (on this clip, two of the three views pass the checks;
    # the other is too blurred).
    assert result["templates"] == sum(photo["accepted"] for photo in result["photos"]) >= 2, result
    with open_sightings(config) as store:  # type: ignore[union-attr]
        assert store.face(event) is None and store.views(event) == []
        assert store.counts()["views"] == held - len(views[event])
