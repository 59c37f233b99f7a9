"""A removal command runs off the pipeline thread: the frames and their searches go on while its
snapshot is written, and the commands after it wait for its answer (:mod:`appliance.command_service`).

The snapshot's write is held on an event (a slow disk); every wait has a deadline, so a pipeline
that blocks on the write fails the test instead of hanging it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from appliance.change_thread import ChangeThread
from appliance.command_service import STORE_WATCH_S, CommandService
from appliance.config_load import validate_config
from appliance.gallery.gallery import INDEX_FILE, Gallery
from appliance.gallery.index import as_unit_vectors
from tests.support import Held
from tests.synthetic import unit_vectors

D = 128
DEADLINE_S = 10.0


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    config = validate_config({"storage": {"dir": str(tmp_path)}})
    with Gallery.open(config, "mobilefacenet@foamliu-v1.0", D) as opened:
        for number in range(20):
            opened.add(f"p{number}", f"P {number}", unit_vectors(2, 100 + number, dim=D))
        yield opened


@pytest.fixture
def changes() -> Iterator[ChangeThread]:
    thread = ChangeThread()
    yield thread
    thread.join(DEADLINE_S)
    thread.close()


def _service(
    gallery: Gallery, tmp_path: Path, answers: List[Tuple[str, Dict[str, Any]]], changes: ChangeThread
) -> CommandService:
    return CommandService(
        validate_config({"storage": {"dir": str(tmp_path)}}),
        None,
        SimpleNamespace(gallery=gallery),  # type: ignore[arg-type]
        SimpleNamespace(settings=SimpleNamespace(threshold=0.5)),  # type: ignore[arg-type]
        lambda name, document: answers.append((name, document)),
        dict,
        changes=changes,
    )


def test_the_pipeline_goes_on_while_a_removal_writes_its_snapshot(
    gallery: Gallery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: ChangeThread
) -> None:
    removed = unit_vectors(2, 4242, dim=D)
    gallery.add("gone", "Gone", removed)
    write = Held(monkeypatch, gallery.saved, "save", DEADLINE_S)
    answers: List[Tuple[str, Dict[str, Any]]] = []
    service = _service(gallery, tmp_path, answers, changes)
    service.receive("remove", json.dumps({"request_id": "r1", "id": "gone"}).encode())
    service.receive("templates", json.dumps({"request_id": "r2", "id": "p3"}).encode())
    try:
        service.run_pending()  # this thread is the pipeline's: it returns with the write under way
        assert write.entered.wait(DEADLINE_S) and service.busy()
        # The frames go on: a search from the pipeline's thread, without the removed identity.
        assert [hits[0].identity_id for hits in gallery.search(removed, 1)] != ["gone", "gone"]
        service.run_pending()  # the next command waits for the removal's answer
        assert answers == []
    finally:
        write.release()
        service.changes.join(DEADLINE_S)
    assert not service.busy()
    service.run_pending()
    assert [(name, document["request_id"], document["ok"]) for name, document in answers] == [
        ("remove", "r1", True),
        ("templates", "r2", True),
    ]
    assert answers[0][1]["result"] == {"id": "gone", "templates_removed": 2}
    trace = as_unit_vectors(removed, D).astype("<f2").tobytes()[:32]
    assert trace not in (tmp_path / INDEX_FILE).read_bytes()  # answered once no file keeps it


def test_a_refused_removal_off_the_pipeline_is_answered_and_the_queue_goes_on(
    gallery: Gallery, tmp_path: Path, changes: ChangeThread
) -> None:
    answers: List[Tuple[str, Dict[str, Any]]] = []
    service = _service(gallery, tmp_path, answers, changes)
    service.receive("remove", json.dumps({"request_id": "r1", "id": "nobody"}).encode())
    service.receive(
        "remove_template", json.dumps({"request_id": "r2", "id": "p1", "template_id": 1}).encode()
    )
    service.receive("status", json.dumps({"request_id": "r3"}).encode())
    for _ in range(3):
        service.run_pending()
        service.changes.join(DEADLINE_S)
    service.run_pending()
    assert [(document["request_id"], document["ok"]) for _, document in answers] == [
        ("r1", False),
        ("r2", False),  # template 1 is p0's, not p1's
        ("r3", True),
    ]
    assert answers[0][1]["error"]["code"] == "refused" and "nobody" in answers[0][1]["error"]["message"]


def test_a_change_made_by_another_process_is_read_again_without_a_reload(
    gallery: Gallery, tmp_path: Path, changes: ChangeThread
) -> None:
    """The command line changes the store while the daemon runs: between two frames the daemon
    notices it (at most every STORE_WATCH_S) and reads the gallery again off the pipeline thread."""
    answers: List[Tuple[str, Dict[str, Any]]] = []
    service = _service(gallery, tmp_path, answers, changes)
    kept, added = unit_vectors(2, 103, dim=D), unit_vectors(1, 5151, dim=D)
    gallery.add("own", "Own", unit_vectors(1, 5050, dim=D))  # the daemon's own change: in memory already
    assert not gallery.changed_elsewhere() and not service.watch_store(now=100.0)
    other = Gallery.open(validate_config({"storage": {"dir": str(tmp_path)}}), gallery.model_version, D)
    try:  # the command line: `gallery remove p3`, then an enrolment
        other.remove("p3")
        other.add("cli", "Cli", added)
    finally:
        other.close()
    assert [hits[0].identity_id for hits in gallery.search(kept, 1)] == ["p3", "p3"]  # not seen yet
    assert gallery.changed_elsewhere()
    assert not service.watch_store(now=101.0)  # asked less than STORE_WATCH_S ago
    assert service.watch_store(now=100.0 + STORE_WATCH_S)
    service.changes.join(DEADLINE_S)
    assert not service.busy() and not gallery.changed_elsewhere()
    assert "p3" not in [hits[0].identity_id for hits in gallery.search(kept, 1)]
    assert [hits[0].identity_id for hits in gallery.search(added, 1)] == ["cli"]
    assert not service.watch_store(now=200.0) and answers == []


def test_a_removal_after_the_change_thread_closed_is_answered_busy(
    gallery: Gallery, tmp_path: Path, changes: ChangeThread
) -> None:
    """The daemon's stop closes the gallery-change thread: a removal taken after that is answered,
    not dropped, and nothing is removed."""
    answers: List[Tuple[str, Dict[str, Any]]] = []
    service = _service(gallery, tmp_path, answers, changes)
    changes.close()
    service.receive("remove", json.dumps({"request_id": "r1", "id": "p1"}).encode())
    assert service.run_pending() == 1
    assert [(name, document["ok"], document["error"]["code"]) for name, document in answers] == [
        ("remove", False, "busy")
    ]
    assert "p1" in [identity.id for identity in gallery.identities()]
