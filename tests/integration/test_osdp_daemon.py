"""The daemon as an OSDP reader, end to end: a person walks past the camera, the panel gets one card read.

``python -m appliance run`` with ``[osdp]`` on one end of a ``socat`` pty pair and libosdp's real
control panel on the other, Secure Channel on with the same key on both ends, a real Mosquitto, the
real models and an enrolled person whose ``external_id`` is a badge number. Nothing is doubled.

The video loops over an empty scene until the reader's link to the panel is up (``osdp_online`` on
``…/door``); then the door video (the person, then a stranger) is swapped in, and the empty scene back
once both were seen. Every granted passage must reach the panel as exactly one card read with the
person's number in Wiegand 26 bits; the stranger produces none.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Dict, List

import pytest

from appliance.config_load import validate_config
from appliance.enrollment import Enroller
from appliance.gallery.gallery import Gallery
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.osdp_support import KEY, Panel, osdp_module, pty_pair, write_key
from tests.support import (
    ROOT,
    Daemon,
    daemon_config,
    event_documents,
    make_passage_video,
    passage_video,
    unique_events,
)

ADDRESS = 9
FACILITY = 42
BADGE = "31337"


@pytest.fixture
def badge_storage(tmp_path: Path, analyzer: FaceAnalyzer, shared_data: Path) -> Path:
    """A storage folder whose gallery holds Barack Obama with badge number :data:`BADGE`."""
    folder = tmp_path / "state"
    config = validate_config({"storage": {"dir": str(folder)}})
    with Gallery.open(config, analyzer.embedder.version, analyzer.embedder.dim) as gallery:
        photo = read_image(shared_data / "faces/fr_obama/obama.jpg")
        result = Enroller(analyzer, gallery, config.gallery).enroll(
            "obama", "Barack Obama", [("obama.jpg", photo)], external_id=BADGE
        )
        assert result.template_ids
    return folder


def _door_events(recorder: Recorder) -> List[Dict[str, Any]]:
    return [json.loads(m.payload) for m in recorder.on(f"{ROOT}/door")]


def _w26(facility: int, card: int) -> str:
    data = format(facility, "08b") + format(card, "016b")
    return str(data[:12].count("1") % 2) + data + str(1 - data[12:].count("1") % 2)


def test_a_person_walking_past_is_one_card_read_at_the_panel_a_stranger_none(
    tmp_path: Path,
    badge_storage: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    osdp_module()
    empty = make_passage_video(tmp_path / "empty.avi", [(None, 10)])
    door = passage_video(tmp_path, shared_data, "door.avi")
    camera = tmp_path / "camera.avi"
    shutil.copyfile(empty, camera)
    key_file = write_key(tmp_path / "osdp_scbk", KEY)
    with pty_pair(tmp_path) as (reader_end, panel_end):
        config = daemon_config(
            tmp_path,
            badge_storage,
            shared_models,
            mosquitto,
            camera,
            at_end="loop",
            osdp=(
                f'enabled = true\nport = "{reader_end}"\naddress = {ADDRESS}\nscbk_file = "{key_file}"\n'
                f'credential = {{ format = "wiegand26", facility_code = {FACILITY} }}'
            ),
        )
        daemon = Daemon(config)
        try:
            daemon.wait_log("OSDP reader at address", timeout=120)
            with Panel(panel_end, ADDRESS, KEY) as panel:
                assert panel.wait(panel.secure), daemon.text
                recorder.wait_for(
                    lambda ms: any(e["kind"] == "osdp_online" for e in _door_events(recorder)),
                    30,
                    "osdp_online",
                )
                online = next(e for e in _door_events(recorder) if e["kind"] == "osdp_online")
                assert online["source"] == "osdp" and online["secure_channel"] is True

                os.replace(shutil.copyfile(door, tmp_path / "next.avi"), camera)  # the person, a stranger
                recorder.wait_for(
                    lambda ms: {"granted", "unknown"} <= {e["decision"] for e in event_documents(ms)},
                    120,
                    "a granted and an unknown event",
                )
                os.replace(shutil.copyfile(empty, tmp_path / "next.avi"), camera)  # the scene empties again
                reads = panel.card_reads(wait_s=3.0)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0, daemon.text
        finally:
            daemon.close()

    events = unique_events(event_documents(recorder.messages))
    granted = [e for e in events if e["decision"] == "granted"]
    assert granted and all(e["identity"]["id"] == "obama" for e in granted)
    assert any(e["decision"] == "unknown" for e in events)
    # One card read per granted passage (a slow test may see the door video loop once more), none
    # for the stranger; each with the person's badge number.
    assert len(reads) == len(granted), (reads, [e["decision"] for e in events])
    for read in reads:
        bits = "".join(format(byte, "08b") for byte in read["data"])[: read["length"]]
        assert read["length"] == 26 and bits == _w26(FACILITY, int(BADGE))
    door_kinds = [e["kind"] for e in _door_events(recorder)]
    assert "osdp_report_refused" not in door_kinds, door_kinds
    assert not [line for line in daemon.log if "osdp" in line.lower() and BADGE in line]  # never logged
    state = json.loads(recorder.on(f"{ROOT}/state")[-1].payload)
    osdp_state = state["door"]["osdp"]
    assert osdp_state["card_reads"]["sent"] == osdp_state["card_reads"]["delivered"] == len(granted)
    assert osdp_state["address"] == ADDRESS and osdp_state["secure_channel"] is True
