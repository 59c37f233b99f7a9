"""Fuzzing MQTT command payloads: the parser, the daemon's handler in-process, and a live daemon.

* :func:`appliance.commands.parse` on arbitrary bytes, arbitrary JSON and near-valid commands: a
  command of the right class or :class:`CommandError` with a known code; nothing else.
* The daemon's own command path (``CommandService.receive`` → queue → ``run_pending`` on the
  pipeline side) with the real models, gallery and outbox, no camera and no broker: every command
  gets exactly one answer that can go on the wire; a refused command leaves the gallery as it was.
* A running daemon (subprocess, real Mosquitto) takes a burst of random payloads on random command
  topics and still answers ``status`` afterwards.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from appliance.command_service import CommandService
from appliance.commands import COMMANDS, CommandError, parse
from appliance.config_load import validate_config
from appliance.daemon import OUTBOX_FILE, Appliance
from appliance.decisions import DecisionSettings
from appliance.enrollment import Enroller
from appliance.gallery.gallery import Gallery
from appliance.mqtt_link import encode_document
from appliance.outbox import Outbox
from appliance.pipeline import Pipeline
from appliance.runtime import ModelLoader, ModelRuntime, model_targets
from appliance.vision.image import read_image
from tests.fuzz.conftest import fuzz_settings
from tests.mqtt_broker import MosquittoBroker, Recorder
from tests.support import DEVICE, ROOT, Daemon, daemon_config, passage_video

#: Error codes the daemon itself may answer with (the link adds payload_too_large, retained, handler_failed).
DAEMON_CODES = {"invalid_json", "unknown_command", "invalid", "refused", "busy", "stale", "failed"}

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["\ud800", "\x00", "é" * 300, "A" * 300]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)
_FIELDS = {
    "request_id": st.text(max_size=140) | _json,
    "name": st.text(max_size=210) | _json,
    "image": st.sampled_from(["", "AAAA", "!!!!", "iVBORw0KGgo=", "/9j/4AAQ"]) | st.text(max_size=40) | _json,
    "id": st.text(max_size=70) | st.sampled_from(["obama", "nobody", "../x", "a" * 64]) | _json,
    "external_id": st.text(max_size=210) | _json,
    "consent_at": st.text(max_size=45) | _json,
    "face": st.integers(min_value=-5, max_value=200) | _json,
    "threshold": st.floats() | st.sampled_from([0.0, 1.0, 1e-9, 0.5, 2.0]) | _json,
    "ids": st.lists(st.text(max_size=70) | st.sampled_from(["obama", "nobody", "a" * 65]), max_size=3)
    | _json,
    "direction": st.sampled_from(["in", "out", "none", "IN", ""]) | _json,
    "limit": st.integers(min_value=-5, max_value=6000) | _json,
    "all": st.booleans() | _json,
}


@st.composite
def _near_valid(draw: st.DrawFn) -> Tuple[str, bytes]:
    """A command name and a JSON object built from the command's own fields (some wrong, some extra)."""
    name = draw(st.sampled_from(sorted(COMMANDS)) | st.text(min_size=1, max_size=12))
    model = COMMANDS.get(name)
    keys = sorted(model.model_fields) if model is not None else ["request_id"]
    document: Dict[str, Any] = {}
    for key in keys:
        if draw(st.integers(min_value=0, max_value=9)) < 8:
            document[key] = draw(_FIELDS.get(key, _json))
    if draw(st.booleans()):
        document[draw(st.text(max_size=10))] = draw(_json)
    return name, json.dumps(document).encode("utf-8")


_payloads = st.one_of(
    st.tuples(st.sampled_from(sorted(COMMANDS)) | st.text(max_size=12), st.binary(max_size=300)),
    st.tuples(
        st.sampled_from(sorted(COMMANDS)),
        _json.map(lambda value: json.dumps(value).encode("utf-8")),
    ),
    _near_valid(),
)

#: Inputs that once broke something (kept as regression examples).
_REGRESSIONS: List[Tuple[str, bytes]] = [
    # a lone surrogate escape: valid JSON, but not encodable as UTF-8 in the answer or the database
    ("status", b'{"request_id": "\\ud800"}'),
    ("enroll", b'{"request_id": "r", "name": "\\udfff", "image": "AAAA"}'),
    # nesting deeper than the JSON parser's recursion limit
    ("status", b"[" * 200_000),
    ("remove", b'{"request_id": "r", "id": "\\u0000"}'),
    ("set_threshold", b'{"request_id": "r", "threshold": NaN}'),
    ("set_threshold", b'{"request_id": "r", "threshold": 1e400}'),
    ("status", b'{"request_id": 1' + b"0" * 5000 + b"}"),
]


def _check_parse(name: str, payload: bytes) -> Optional[object]:
    try:
        request_id, command = parse(name, payload)
    except CommandError as err:
        assert err.code in {"invalid_json", "unknown_command", "invalid"}, err.code
        assert str(err)
        assert err.request_id is None or (isinstance(err.request_id, str) and len(err.request_id) <= 128)
        if err.request_id is not None:
            err.request_id.encode("utf-8")  # goes into the answer
        return None
    assert isinstance(command, COMMANDS[name])
    assert request_id == command.request_id
    return command


def test_parse_never_fails_otherwise(budget: Any) -> None:
    spent = budget("commands: parse")

    @fuzz_settings(800)
    @given(_payloads)
    @example(_REGRESSIONS[0])
    @example(_REGRESSIONS[1])
    @example(_REGRESSIONS[2])
    @example(_REGRESSIONS[3])
    @example(_REGRESSIONS[4])
    @example(_REGRESSIONS[5])
    @example(_REGRESSIONS[6])
    def run(case: Tuple[str, bytes]) -> None:
        if spent.spend():
            _check_parse(*case)

    run()


# -- the daemon's handler, in-process ---------------------------------------------------------------------


class _Answering(Appliance):
    """The daemon with its answers kept here instead of published (no broker in this test)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answers: List[Tuple[str, Dict[str, Any]]] = []

    def _answer(self, name: str, document: Dict[str, Any]) -> None:
        self.answers.append((name, document))


@pytest.fixture
def appliance(tmp_path: Path, shared_models: Path, shared_data: Path) -> Iterator[_Answering]:
    config = validate_config(
        {"device": {"id": DEVICE}, "models": {"dir": str(shared_models)}, "storage": {"dir": str(tmp_path)}}
    )
    daemon = _Answering(config)
    daemon.outbox = Outbox.open(tmp_path / OUTBOX_FILE, 1000, 3600.0)
    runtime = ModelRuntime(config, ModelLoader(config))
    runtime.own()  # this test's thread plays the pipeline thread
    runtime.load(*model_targets(config, liveness=False))
    daemon.runtime = runtime
    daemon.gallery = Gallery.open(config, *runtime.embedder)
    runtime.attach_gallery(daemon.gallery)
    daemon.pipeline = Pipeline(
        runtime, daemon.gallery, DecisionSettings.from_config(config), daemon.latencies
    )
    daemon.commands = CommandService(
        config, None, runtime, daemon.pipeline, daemon._answer, daemon.state, changes=daemon.changes
    )
    Enroller(runtime.analyzer, daemon.gallery, config.gallery).enroll(
        "obama", "Barack Obama", [("obama.jpg", read_image(shared_data / "faces/fr_obama/obama.jpg"))]
    )
    try:
        yield daemon
    finally:
        runtime.close()
        daemon.gallery.close()
        daemon.outbox.close()


def _gallery_state(daemon: Appliance) -> Tuple[Any, ...]:
    assert daemon.gallery is not None
    return (daemon.gallery.store.generation, tuple(daemon.gallery.identities()), len(daemon.gallery))


def test_daemon_command_handler(appliance: _Answering, shared_data: Path, budget: Any) -> None:
    spent = budget("commands: daemon handler")
    photos = [
        base64.b64encode((shared_data / path).read_bytes()).decode()
        for path in ("faces/fr_biden/biden.jpg", "no_face/dlib_dog.jpg", "multi_face/fr_two_people.jpg")
        if (shared_data / path).is_file()
    ]
    real_enrolls = st.builds(
        lambda photo, name, face: (
            "enroll",
            json.dumps({"request_id": "e", "name": name, "image": photo, **face}).encode(),
        ),
        st.sampled_from(photos),
        st.text(min_size=1, max_size=20),
        st.sampled_from([{}, {"face": 1}, {"face": 7}, {"id": "obama"}]),
    )

    @fuzz_settings(250)
    @given(_payloads | real_enrolls)
    @example(_REGRESSIONS[0])
    @example(_REGRESSIONS[1])
    @example(_REGRESSIONS[2])
    @example(_REGRESSIONS[3])
    @example(_REGRESSIONS[4])
    @example(("remove", b'{"request_id": "r", "id": "nobody"}'))
    @example(("enroll", b'{"request_id": "r", "name": "x", "image": "' + b"A" * 400 + b'"}'))
    def run(case: Tuple[str, bytes]) -> None:
        if not spent.spend():
            return
        name, payload = case
        before = _gallery_state(appliance)
        appliance.answers.clear()
        assert appliance.commands is not None
        appliance.commands.receive(name, payload)
        appliance.commands.run_pending()
        appliance.changes.join(60.0)  # a removal is carried out, and answered, on its own thread
        assert len(appliance.answers) == 1, appliance.answers
        answered, document = appliance.answers[0]
        assert answered == name
        encode_document(document)  # what the link publishes must be encodable
        if document["ok"]:
            assert name in COMMANDS
        else:
            assert document["error"]["code"] in DAEMON_CODES, document
            assert document["error"]["code"] != "failed", f"an unexpected failure: {document}"
            assert _gallery_state(appliance) == before, "a refused command changed the gallery"

    run()


# -- a running daemon ------------------------------------------------------------------------------------


def _burst(seed: int, count: int) -> List[Tuple[str, bytes]]:
    """Random command names and payloads (seeded): bytes, JSON, near-valid documents, and the regressions."""
    rng = random.Random(seed)
    names = [*COMMANDS, "frobnicate", "é", "x" * 200, "status "]
    burst = list(_REGRESSIONS)
    for _ in range(count):
        name = rng.choice(names)
        kind = rng.random()
        if kind < 0.3:
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        elif kind < 0.6:
            document = {"request_id": rng.choice(["", "r", "x" * 200, 5, None])}
            for key in rng.sample(list(_FIELDS), rng.randint(0, 4)):
                document[key] = rng.choice([None, True, -1, 0.5, "", "A" * 50, [], {}, "\u0000", "obama"])
            payload = json.dumps(document).encode()
        else:
            payload = rng.choice(
                [b"{}", b"[]", b"null", b"1e999", b'"', b"{" * 5000, b'{"request_id": "\\ud800"}']
            )
        burst.append((name, payload))
    return burst


def test_running_daemon_survives_a_burst(
    tmp_path: Path,
    shared_models: Path,
    shared_data: Path,
    mosquitto: MosquittoBroker,
    recorder: Recorder,
    storage: Path,
    budget: Any,
) -> None:
    video = passage_video(tmp_path, shared_data)
    daemon = Daemon(daemon_config(tmp_path, storage, shared_models, mosquitto, video, at_end="loop"))
    spent = budget("commands: live daemon burst")
    try:
        recorder.wait_for_message(f"{ROOT}/availability", b"online", timeout=90)
        burst = _burst(seed=8, count=300)
        for name, payload in burst:
            spent.spend()
            recorder.publish(f"{ROOT}/cmd/{name}", payload)
        recorder.publish(f"{ROOT}/cmd/status", b'{"request_id": "after-the-burst"}')
        messages = recorder.wait_for(
            lambda ms: any(
                m.topic == f"{ROOT}/cmd/status/result" and b'"after-the-burst"' in m.payload for m in ms
            ),
            90,
            "the status answer after the burst",
        )
        status = [json.loads(m.payload) for m in messages if b'"after-the-burst"' in m.payload][-1]
        assert status["ok"] and status["result"]["gallery"]["identities"] == 1, status
        assert daemon.process.poll() is None, daemon.text
        results = [m for m in messages if m.topic.startswith(f"{ROOT}/cmd/") and m.topic.endswith("/result")]
        # One answer per command (the broker keeps the order of one connection's messages).
        assert len(results) == len(burst) + 1, f"{len(results)} answers to {len(burst) + 1} commands"
        for message in results:
            document = json.loads(message.payload)
            if not document["ok"]:
                assert document["error"]["code"] != "failed", document
        assert not [line for line in daemon.log if "Traceback" in line or "pipeline failed" in line], (
            daemon.text
        )
    finally:
        daemon.stop()
