"""Privacy: no biometric data or names in logs above DEBUG or in events; a removed person leaves no trace.

A person with a name found nowhere else is enrolled with the ``enroll`` command line (at INFO), then
walks past the running daemon (at INFO) and is granted access; an operator removes them with the
``remove`` command. Checked afterwards:

* the logs of both hold neither the name nor the identity id, no base64 blob and no list of floats;
* the events carry no embedding (and no face crop unless ``events.face_crop`` asks for one);
* the gallery database (with its WAL and shared-memory files), the Faiss index, the outbox database
  (with its WAL) and a fresh export hold no trace of them: not the name, not the id, not the sealed
  embedding or crop blobs the store held, and the index holds no vector close to their embedding.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from appliance.config_load import validate_config
from appliance.gallery.bundle import read_bundle
from appliance.gallery.gallery import INDEX_FILE, STORE_FILE, Gallery
from appliance.gallery.index import TemplateIndex
from appliance.gallery.store import TemplateStore
from appliance.vision.analyzer import FaceAnalyzer
from tests.conftest import REPO_ROOT
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import ROOT, Daemon, command, daemon_config, event_documents, passage_video, wait_online

NAME = "Quintessa Marlowe-Fitzgibbon"
IDENTITY = "qmf-7731"
#: A run of base64 long enough to be an image or a vector, not a word.
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{80,}={0,2}")
#: Sixteen or more numbers in a row: an embedding printed as a list.
FLOAT_RUN = re.compile(r"(?:-?\d+\.\d+(?:e-?\d+)?[,\s]+){16,}")


def _personal_data_in(text: str) -> List[str]:
    found = [what for what in (NAME, IDENTITY, "Marlowe", "Barack Obama") if what in text]
    found += [f"base64 run {m.group(0)[:20]}…" for m in BASE64_RUN.finditer(text)]
    found += [f"float run {m.group(0)[:40]}…" for m in FLOAT_RUN.finditer(text)]
    return found


def _sealed_blobs(database: Path, identity: str) -> List[bytes]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT embedding, crop FROM templates WHERE identity_id=?", (identity,)).fetchall()
    return [bytes(blob) for row in rows for blob in row if blob is not None]


def _files(folder: Path, name: str) -> Dict[str, bytes]:
    """A database file with its WAL and shared-memory files, as bytes (those that exist)."""
    return {
        f"{name}{suffix}": (folder / f"{name}{suffix}").read_bytes()
        for suffix in ("", "-wal", "-shm")
        if (folder / f"{name}{suffix}").exists()
    }


def _traces(files: Dict[str, bytes], needles: List[Tuple[str, bytes]]) -> List[str]:
    return [f"{what} in {name}" for name, data in files.items() for what, needle in needles if needle in data]


def test_no_personal_data_in_logs_or_events_and_no_trace_after_removal(
    tmp_path: Path,
    storage: Path,
    shared_models: Path,
    shared_data: Path,
    analyzer: FaceAnalyzer,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
) -> None:
    # The stranger of the door video is enrolled with the command line, at INFO.
    video = passage_video(tmp_path, shared_data)
    config_path = daemon_config(tmp_path, storage, shared_models, mosquitto, video, at_end="loop")
    photo = shared_data / "faces/fr_kit_harington/john2.jpeg"
    arguments = [
        "--log-level",
        "INFO",
        "enroll",
        "--config",
        str(config_path),
        "--name",
        NAME,
        "--id",
        IDENTITY,
    ]
    enrolled = subprocess.run(
        [sys.executable, "-m", "appliance", *arguments, str(photo)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert enrolled.returncode == 0, enrolled.stderr + enrolled.stdout
    assert not _personal_data_in(enrolled.stderr), _personal_data_in(enrolled.stderr)
    blobs = _sealed_blobs(storage / STORE_FILE, IDENTITY)
    assert len(blobs) == 2, "expected one sealed embedding and one sealed crop"
    config = validate_config({"storage": {"dir": str(storage)}})
    with TemplateStore.open(storage / STORE_FILE, config.gallery_key_file) as store:
        embedding = next(store.templates(identity_id=IDENTITY)).embedding

    daemon = Daemon(config_path)
    try:
        wait_online(recorder, daemon)
        recorder.wait_for(
            lambda ms: any((e.get("identity") or {}).get("id") == IDENTITY for e in event_documents(ms)),
            120,
            "a granted event for the new identity",
        )
        removed = command(recorder, "remove", {"request_id": "forget-1", "id": IDENTITY})
        assert removed["ok"] and removed["result"]["templates_removed"] == 1, removed
        # Events after the removal are the stranger's again; the outbox drains.
        recorder.wait_for(
            lambda ms: any(
                m.topic == f"{ROOT}/state"
                and json.loads(m.payload)["gallery"]["identities"] == 1
                and json.loads(m.payload)["outbox"]["depth"] == 0
                for m in ms
            ),
            60,
            "a state after the removal with the outbox drained",
        )
        # While it runs (as after a power cut now): no copy of the name in the outbox or its WAL.
        running = _traces(_files(storage, "outbox.db"), [("the name", NAME.encode())])
        running += _traces(_files(storage, STORE_FILE), [("the name", NAME.encode())])
        assert not running, running
    finally:
        code = daemon.stop()
    assert code == 0, daemon.text[-3000:]

    # Logs above DEBUG and events.
    assert not _personal_data_in(daemon.text), _personal_data_in(daemon.text)
    events = event_documents(recorder.messages)
    assert events
    for event in events:
        assert "crop" not in event and not any("embedding" in key for key in event)
        numbers = [v for v in json.dumps(event).split(",") if re.fullmatch(r"\s*-?\d+\.\d+\s*", v)]
        assert len(numbers) < 16, "an event carries a vector"

    # No trace in the store (free pages and WAL included), the outbox, the index or an export.
    needles = [("the name", NAME.encode()), ("the identity id", IDENTITY.encode())]
    needles += [(f"sealed blob {n}", blob[12:44]) for n, blob in enumerate(blobs)]
    traces = _traces(_files(storage, STORE_FILE), needles)
    traces += _traces(_files(storage, "outbox.db"), needles[:2])
    traces += _traces({INDEX_FILE: (storage / INDEX_FILE).read_bytes()}, needles[:2])
    assert not traces, traces
    with Gallery.open(config, analyzer.embedder.version, analyzer.embedder.dim) as gallery:
        assert IDENTITY not in {identity.id for identity in gallery.identities()}
        index = TemplateIndex.load(storage / INDEX_FILE, analyzer.embedder.version, gallery.store.generation)
        scores, _ = index.search(np.asarray(embedding, np.float32)[None], 1)
        assert float(scores[0][0]) < 0.99, "the index still holds the removed embedding"
        bundle: Any = gallery.export("export passphrase")
    identities = read_bundle(bundle, "export passphrase")
    assert [identity.id for identity in identities] == ["obama"]
