"""Logging to journald through ``systemd.journal.JournalHandler``: when it is chosen, and the structured
fields of an access event as libsystemd receives them (``systemd.journal.sendv``) and, where a
private journald can be started, as ``journalctl -o json`` reads them back."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
import systemd.journal

from appliance import logs
from appliance.config_load import validate_config
from appliance.decisions import Decision
from appliance.event_recorder import ACCESS_EVENT_MESSAGE_ID, EventRecorder, access_event_fields
from appliance.metrics import Latencies
from appliance.outbox import Outbox
from appliance.peripherals import Passage
from appliance.pipeline import Outcome

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "Alice Example"
MODELS = {"detector": "mtcnn-1.2", "embedder": "mobilefacenet-3", "liveness": "minifas-1"}


def make_recorder(tmp_path: Path, passages: List[Passage]) -> EventRecorder:
    """An EventRecorder with a real outbox, face crops on (so that there is a face to keep out)."""
    config = validate_config(
        {
            "device": {"id": "door-1"},
            "camera": {"source": "/srv/clip.mp4", "at_end": "loop"},
            "mqtt": {"host": "broker.local"},
            "storage": {"dir": "state"},
            "models": {"dir": "/opt/models"},
            "events": {"face_crop": True},
        },
        base_dir=tmp_path,
    )
    outbox = Outbox.open(tmp_path / "outbox.db", 100, 3600.0)
    return EventRecorder(config, outbox, Latencies(), lambda: None, True, passages.append)


def outcome(decision: str, identity_id: Optional[str], access_reason: Optional[str] = None) -> Outcome:
    crop = np.random.default_rng(7).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    return Outcome(
        Decision(
            track_id=7,
            decision=decision,  # type: ignore[arg-type]
            identity_id=identity_id,
            name=NAME if identity_id else None,
            score=0.71,
            threshold=0.5,
            frames=5,
            liveness=None,
            box=np.array([10.0, 20.0, 90.0, 120.0]),
            quality=0.9,
            first_seen=time.monotonic(),
            decided_at=time.monotonic(),
            reason="3 of 5 votes for id-a",
            access_reason=access_reason,
        ),
        time.monotonic(),
        crop,
    )


def parse_lines(lines: Tuple[Any, ...]) -> Dict[str, str]:
    """``sendv``'s ``FIELD=value`` arguments as a dict (every field here is sent once)."""
    fields: Dict[str, str] = {}
    for line in lines:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
        name, _, value = text.partition("=")
        assert name not in fields, f"{name} sent twice"
        fields[name] = value
    return fields


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, str]]:
    """What ``systemd.journal.send`` hands to libsystemd (``sendv``), one dict per record."""
    records: List[Dict[str, str]] = []

    def sendv(*lines: Any) -> None:
        records.append(parse_lines(lines))

    monkeypatch.setattr(systemd.journal, "sendv", sendv)
    return records


@pytest.fixture
def journal_logger() -> Iterator[logging.Logger]:
    """``appliance.event_recorder``'s records go to a fresh journal handler (and not to the root's)."""
    handler = logs.journal_handler()
    assert handler is not None, "systemd-python is part of the dev extra"
    logger = logging.getLogger("appliance.event_recorder")
    logger.addHandler(handler)
    previous = (logger.level, logger.propagate)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    logger.removeHandler(handler)
    logger.setLevel(previous[0])
    logger.propagate = previous[1]


def access_records(records: List[Dict[str, str]]) -> List[Dict[str, str]]:
    return [r for r in records if r.get("MESSAGE_ID") == ACCESS_EVENT_MESSAGE_ID]


# -- choosing the handler -----------------------------------------------------------------------------


def stream_ids(path: Path) -> str:
    status = os.stat(path)
    return f"{status.st_dev}:{status.st_ino}"


def test_journal_stream_must_name_stderr_itself(tmp_path: Path) -> None:
    """systemd.exec(5): compare JOURNAL_STREAM with stderr's device and inode; a redirected stderr
    (a shell a service started, a test's pipe) keeps the text on stderr."""
    path = tmp_path / "stderr"
    other = tmp_path / "other"
    other.touch()
    with path.open("w") as stream:
        assert logs.stderr_is_journal(stream, {"JOURNAL_STREAM": stream_ids(path)})
        assert not logs.stderr_is_journal(stream, {"JOURNAL_STREAM": stream_ids(other)})
        assert not logs.stderr_is_journal(stream, {})
        for garbage in ("", "1", "a:b", "1:", ":2", "1:2:3"):
            assert not logs.stderr_is_journal(stream, {"JOURNAL_STREAM": garbage})

    class NoFileno:
        def fileno(self) -> int:
            raise OSError("not a file")

    assert not logs.stderr_is_journal(NoFileno(), {"JOURNAL_STREAM": stream_ids(path)})  # type: ignore[arg-type]


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def fake_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal: bool) -> None:
    path = tmp_path / "stderr"
    stream = path.open("w")
    monkeypatch.setattr(sys, "stderr", stream)
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", stream_ids(path))
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)


@pytest.mark.usefixtures("restore_root_logging")
def test_under_journald_setup_logging_installs_the_journal_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_stderr(tmp_path, monkeypatch, journal=True)
    logs.setup_logging("DEBUG")
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, systemd.journal.JournalHandler)
    assert handler._extra == {"SYSLOG_IDENTIFIER": "face-appliance"}
    assert logging.getLogger().level == logging.DEBUG


@pytest.mark.usefixtures("restore_root_logging")
def test_elsewhere_setup_logging_writes_timestamped_text_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_stderr(tmp_path, monkeypatch, journal=False)
    logs.setup_logging()
    (handler,) = logging.getLogger().handlers
    assert type(handler) is logging.StreamHandler
    assert handler.formatter is not None and handler.formatter._fmt == logs.TEXT_FORMAT


@pytest.mark.usefixtures("restore_root_logging")
def test_under_journald_without_the_library_text_without_timestamps_goes_to_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_stderr(tmp_path, monkeypatch, journal=True)
    monkeypatch.setitem(sys.modules, "systemd", None)  # import systemd fails: as if not installed
    assert logs.journal_handler() is None
    logs.setup_logging()
    (handler,) = logging.getLogger().handlers
    assert type(handler) is logging.StreamHandler
    assert handler.formatter is not None and handler.formatter._fmt == logs.JOURNAL_TEXT_FORMAT


# -- the fields ---------------------------------------------------------------------------------------


def test_field_names_are_made_valid_and_none_values_left_out() -> None:
    assert logs.journal_field_name("embedder") == "EMBEDDER"
    assert logs.journal_field_name("MODEL_anti-spoof") == "MODEL_ANTI_SPOOF"
    for bad in ("", "_PRIVATE", "1ST", "-x"):
        with pytest.raises(ValueError, match="journal field"):
            logs.journal_field_name(bad)
    assert logs.journal_fields({"decision": "granted", "reason": None, "track_id": 7}) == {
        "DECISION": "granted",
        "TRACK_ID": "7",
    }
    assert logs.model_fields({"detector": "mtcnn-1", "liveness": None}) == {"MODEL_DETECTOR": "mtcnn-1"}


def test_an_access_event_reaches_libsystemd_with_its_fields_and_without_face_or_name(
    tmp_path: Path,
    sent: List[Dict[str, str]],
    journal_logger: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    passages: List[Passage] = []
    recorder = make_recorder(tmp_path, passages)
    try:
        recorder.record([outcome("granted", "id-a")], MODELS)
    finally:
        recorder.outbox.close()
    (event,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert event["identity"]["name"] == NAME and event["crop"]  # the event has both; the journal neither
    (record,) = access_records(sent)
    assert record["MESSAGE"] == "INFO appliance.event_recorder: access event: granted, track 7, 5 frames"
    assert record["DECISION"] == "granted"
    assert "REASON" not in record
    assert record["EVENT_ID"] == event["event_id"] == passages[0].event_id
    assert record["IDENTITY_ID"] == "id-a"
    assert record["TRACK_ID"] == "7"
    assert record["MODEL_DETECTOR"] == "mtcnn-1.2"
    assert record["MODEL_EMBEDDER"] == "mobilefacenet-3"
    assert record["MODEL_LIVENESS"] == "minifas-1"
    assert record["SYSLOG_IDENTIFIER"] == "face-appliance"
    assert record["PRIORITY"] == "6"
    assert record["LOGGER"] == "appliance.event_recorder"
    # The location of the logging call, which JournalHandler takes from the record.
    assert record["CODE_FILE"].endswith(os.path.join("appliance", "event_recorder.py"))
    assert record["CODE_FUNC"] == "record"
    assert record["CODE_LINE"].isdigit()
    # Only valid client field names reach libsystemd: none of the record's own attributes.
    assert all(logs._JOURNAL_FIELD.fullmatch(name) for name in record), sorted(record)
    text = json.dumps(record)
    assert NAME not in text and "Alice" not in text
    assert event["crop"][:64] not in text
    assert "0.71" not in text  # the score stays in the event


def test_a_denied_event_carries_its_reason_and_an_unknown_one_no_identity(
    tmp_path: Path, sent: List[Dict[str, str]], journal_logger: logging.Logger
) -> None:
    recorder = make_recorder(tmp_path, [])
    try:
        recorder.record([outcome("denied", "id-b", "outside_schedule"), outcome("unknown", None)], MODELS)
    finally:
        recorder.outbox.close()
    denied, unknown = access_records(sent)
    assert (denied["DECISION"], denied["REASON"], denied["IDENTITY_ID"]) == (
        "denied",
        "outside_schedule",
        "id-b",
    )
    assert unknown["DECISION"] == "unknown"
    assert "IDENTITY_ID" not in unknown and "REASON" not in unknown
    assert denied["EVENT_ID"] != unknown["EVENT_ID"]


def test_access_event_fields_follow_the_event_document() -> None:
    event = {
        "event_id": "e-1",
        "decision": "denied",
        "reason": "liveness",
        "identity": None,  # a liveness failure names nobody in the event: nor in the journal
        "track_id": 3,
        "models": {"detector": "d-1", "embedder": "e-2"},
        "crop": "AAAA",
    }
    assert access_event_fields(event) == {
        "MESSAGE_ID": ACCESS_EVENT_MESSAGE_ID,
        "DECISION": "denied",
        "REASON": "liveness",
        "EVENT_ID": "e-1",
        "TRACK_ID": "3",
        "MODEL_DETECTOR": "d-1",
        "MODEL_EMBEDDER": "e-2",
    }


def test_a_journald_that_cannot_be_reached_leaves_the_line_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def sendv(*lines: Any) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(systemd.journal, "sendv", sendv)
    handler = logs.journal_handler()
    assert handler is not None
    logger = logging.getLogger("tests.journal.unreachable")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("camera lost: %s", "timeout")
    finally:
        logger.removeHandler(handler)
    assert capsys.readouterr().err == "WARNING tests.journal.unreachable: camera lost: timeout\n"


# -- a real journald ----------------------------------------------------------------------------------

#: Run in a private mount namespace by the test below: a tmpfs over /run and a journald of its own,
#: a process whose stderr is what JOURNAL_STREAM names, the appliance's set-up and an access event,
#: then journalctl's JSON of this journal. Nothing of the host's /run or journal is touched.
JOURNALD_SCRIPT = r"""
set -eu
mount -t tmpfs tmpfs /run
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journal
"$JOURNALD" >"$WORK/journald.log" 2>&1 &
journald=$!
trap 'kill $journald 2>/dev/null; wait $journald 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
exec 3>"$WORK/stderr"
JOURNAL_STREAM=$(stat -c '%d:%i' "$WORK/stderr") "$PYTHON" -c "$SCRIPT" "$WORK" >"$WORK/stdout" 2>&3
journalctl --directory=/run/log/journal --output=json --no-pager SYSLOG_IDENTIFIER=face-appliance
"""

APPLIANCE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from appliance.logs import setup_logging
    from tests.unit.test_journal_logging import MODELS, make_recorder, outcome

    setup_logging("INFO")
    recorder = make_recorder(Path(sys.argv[1]), [])
    recorder.record([outcome("denied", "id-b", "expired")], MODELS)
    recorder.outbox.close()
    """
)


def private_journald() -> Optional[str]:
    """Why a private journald cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (a mount namespace with a tmpfs over /run)"
    for tool in ("unshare", "journalctl"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    for path in ("/lib/systemd/systemd-journald", "/etc/machine-id"):
        if not os.path.exists(path):
            return f"no {path}"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return "unshare --mount is not allowed here"
    return None


def test_journalctl_reads_the_access_event_back_from_a_real_journald(tmp_path: Path) -> None:
    """journald as on the device: ``journalctl DECISION=denied`` finds the event by its fields."""
    reason = private_journald()
    if reason is not None:
        pytest.skip(f"no private journald: {reason}")
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    env.update(
        JOURNALD="/lib/systemd/systemd-journald",
        WORK=str(work),
        PYTHON=sys.executable,
        SCRIPT=APPLIANCE_SCRIPT,
        PYTHONPATH=str(REPO_ROOT),
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", JOURNALD_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO_ROOT),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + (work / "stderr").read_text()
    entries = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    (entry,) = [e for e in entries if e.get("MESSAGE_ID") == ACCESS_EVENT_MESSAGE_ID]
    assert entry["MESSAGE"] == "INFO appliance.event_recorder: access event: denied, track 7, 5 frames"
    assert (entry["DECISION"], entry["REASON"], entry["IDENTITY_ID"]) == ("denied", "expired", "id-b")
    assert entry["TRACK_ID"] == "7" and len(entry["EVENT_ID"]) == 36
    assert (entry["MODEL_DETECTOR"], entry["MODEL_EMBEDDER"]) == ("mtcnn-1.2", "mobilefacenet-3")
    assert entry["CODE_FILE"].endswith("event_recorder.py") and entry["CODE_FUNC"] == "record"
    assert entry["_TRANSPORT"] == "journal"  # the native protocol, not stderr's text
    assert entry["PRIORITY"] == "6" and entry["_PID"].isdigit()
    assert NAME not in result.stdout
    assert "access event" not in (work / "stderr").read_text()  # nothing went to stderr instead
