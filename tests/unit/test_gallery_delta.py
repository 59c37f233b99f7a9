"""The saved index as a snapshot plus an append-only delta (issue 16, part 5).

An enrolment appends one record and leaves the snapshot alone; a removal writes a new snapshot and
deletes the delta, so no file keeps the removed embedding; every state a crash or a hostile file can
leave opens as the store's state — the delta replayed when it reaches the store's generation exactly,
the index rebuilt from the store otherwise.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest

from appliance.access.policy import IdentityPolicy
from appliance.config_load import validate_config
from appliance.gallery import delta as delta_module
from appliance.gallery.delta import (
    DELTA_HEADER_BYTES,
    DeltaRecord,
    delta_path,
    encode_header,
    encode_record,
    read_delta,
    saved_generation,
)
from appliance.gallery.errors import GalleryBusyError
from appliance.gallery.gallery import INDEX_FILE, Gallery
from appliance.gallery.index import FORMAT_VERSION, TemplateIndex, as_unit_vectors, read_snapshot_header
from appliance.gallery.store import ADAPTIVE, TemplateOrigin, TemplateStore
from tests.support import Held, meanwhile
from tests.synthetic import unit_vectors

DEADLINE_S = 10.0  # every wait on another thread: a gallery that blocks fails instead of hanging
VERSION = "mobilefacenet@foamliu-v1.0"
D = 128
RECORD_OF_ONE = 8 + 24 + 8 + 4 * D  # prefix, head, one id, one vector


def _open(state: Path, precision: str = "float16", min_bytes: int = 1 << 20, **gallery: object) -> Gallery:
    config = validate_config(
        {"storage": {"dir": str(state)}, "gallery": {"index_precision": precision, **gallery}}
    )
    return Gallery.open(config, VERSION, D, compact_min_bytes=min_bytes)


def _fill(state: Path, people: int, seed: int = 100) -> None:
    """``people`` identities of two templates each, straight into the store, then a snapshot."""
    with TemplateStore.open(state / "gallery.db", state / "gallery.key") as store:
        for number in range(people):
            store.add(f"p{number}", f"P {number}", VERSION, unit_vectors(2, seed + number, dim=D))
    with _open(state):
        pass


@pytest.fixture
def state(tmp_path: Path) -> Path:
    _fill(tmp_path, 50)
    return tmp_path


def _top(gallery: Gallery, vectors: np.ndarray) -> List[Optional[str]]:
    return [hits[0].identity_id if hits else None for hits in gallery.search(vectors, 1)]


def _files(state: Path) -> List[str]:
    return sorted(p.name for p in state.iterdir() if p.name.startswith("gallery.index"))


# -- appending -----------------------------------------------------------------------------------


def test_an_enrolment_appends_one_record_and_leaves_the_snapshot(state: Path) -> None:
    snapshot = (state / INDEX_FILE).read_bytes()
    with _open(state) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
        assert (state / INDEX_FILE).read_bytes() == snapshot
        assert delta_path(state / INDEX_FILE).stat().st_size == DELTA_HEADER_BYTES + RECORD_OF_ONE
        gallery.add("bob", "Bob", unit_vectors(3, 2, dim=D))
        assert delta_path(state / INDEX_FILE).stat().st_size == DELTA_HEADER_BYTES + 2 * RECORD_OF_ONE + 2 * (
            8 + 4 * D
        )
        assert gallery.saved.snapshots_written == 0
        generation = gallery.store.generation
    assert (state / INDEX_FILE).read_bytes() == snapshot
    assert (
        saved_generation(state / INDEX_FILE)
        == generation
        == read_snapshot_header(state / INDEX_FILE)["generation"] + 2
    )
    assert oct(delta_path(state / INDEX_FILE).stat().st_mode & 0o777) == "0o600"


def test_reopening_replays_the_delta_without_a_rebuild(state: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _open(state) as gallery:
        for number in range(5):
            gallery.add(f"new{number}", f"New {number}", unit_vectors(1, 1000 + number, dim=D))
        before = _top(gallery, unit_vectors(1, 1003, dim=D))
    caplog.set_level(logging.INFO)
    with _open(state) as gallery:
        assert len(gallery) == 105 and _top(gallery, unit_vectors(1, 1003, dim=D)) == before == ["new3"]
        assert _top(gallery, unit_vectors(2, 100, dim=D)) == ["p0", "p0"]
    assert "replayed 5 delta record(s)" in caplog.text and "rebuilding" not in caplog.text


def test_the_delta_is_folded_into_a_snapshot_once_past_its_ratio(tmp_path: Path) -> None:
    _fill(tmp_path, 10)
    snapshot_bytes = (tmp_path / INDEX_FILE).stat().st_size
    with _open(tmp_path, min_bytes=0, index_delta_ratio=0.25) as gallery:
        appended = 0
        while gallery.saved.snapshots_written == 0:
            gallery.add(f"n{appended}", f"N {appended}", unit_vectors(1, 500 + appended, dim=D))
            appended += 1
        # It compacted at the first append past a quarter of the snapshot, not before.
        assert DELTA_HEADER_BYTES + (appended - 1) * RECORD_OF_ONE <= snapshot_bytes / 4 + RECORD_OF_ONE
        assert _files(tmp_path) == [INDEX_FILE]
        assert read_snapshot_header(tmp_path / INDEX_FILE)["generation"] == gallery.store.generation
        gallery.add("after", "After", unit_vectors(1, 999, dim=D))  # a new delta against the new snapshot
        assert _files(tmp_path) == [INDEX_FILE, INDEX_FILE + ".delta"]
    with _open(tmp_path) as gallery:
        assert len(gallery) == 20 + appended + 1


def test_a_ratio_of_zero_rewrites_the_snapshot_at_every_change(state: Path) -> None:
    with _open(state, index_delta_ratio=0) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
        gallery.add("bob", "Bob", unit_vectors(1, 2, dim=D))
        assert gallery.saved.snapshots_written == 2 and _files(state) == [INDEX_FILE]


def test_fleet_changes_applied_without_saving_are_appended_together(state: Path) -> None:
    snapshot = (state / INDEX_FILE).read_bytes()
    with _open(state) as gallery:
        for number in range(3):
            gallery.apply_fleet_identity(
                f"f{number}", 1, f"F {number}", None, "2026-01-01T00:00:00Z", IdentityPolicy(),
                unit_vectors(1, 700 + number, dim=D), np.zeros((1, 112, 112, 3), np.uint8), [0.9], save=False,
            )  # fmt: skip
        assert not delta_path(state / INDEX_FILE).exists()
        gallery.save_index()
        assert delta_path(state / INDEX_FILE).stat().st_size == DELTA_HEADER_BYTES + 3 * RECORD_OF_ONE
        assert (state / INDEX_FILE).read_bytes() == snapshot
        gallery.remove_fleet_identity("f1", 2, save=False)
        gallery.save_index()  # a removal among them: a new snapshot, no delta
        assert _files(state) == [INDEX_FILE] and (state / INDEX_FILE).read_bytes() != snapshot
    with _open(state) as gallery:
        assert len(gallery) == 102 and _top(gallery, unit_vectors(1, 702, dim=D)) == ["f2"]


def test_changes_not_saved_yet_are_written_at_close(state: Path) -> None:
    with _open(state) as gallery:
        gallery.apply_fleet_identity(
            "f0", 1, "F", None, "2026-01-01T00:00:00Z", IdentityPolicy(), unit_vectors(1, 9, dim=D),
            np.zeros((1, 112, 112, 3), np.uint8), [0.9], save=False,
        )  # fmt: skip
    assert saved_generation(state / INDEX_FILE) == 51


# -- removal: nothing of the removed embedding stays in a file --------------------------------------


@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_a_removal_writes_a_snapshot_and_leaves_no_trace_in_either_file(
    tmp_path: Path, precision: str
) -> None:
    _fill(tmp_path, 20)
    removed = unit_vectors(2, 4242, dim=D)
    unit = as_unit_vectors(removed, D)  # as the index normalises them
    traces = [unit.astype("<f4").tobytes()[:64], unit.astype("<f2").tobytes()[:32]]
    with _open(tmp_path, precision) as gallery:
        gallery.add("gone", "Gone", removed)
        gallery.add("kept", "Kept", unit_vectors(1, 4343, dim=D))
        files = (tmp_path / INDEX_FILE).read_bytes() + delta_path(tmp_path / INDEX_FILE).read_bytes()
        assert traces[0] in files  # the scan finds it while enrolled (the delta holds float32 rows)
        gallery.remove("gone")
        assert _files(tmp_path) == [INDEX_FILE]
        snapshot = (tmp_path / INDEX_FILE).read_bytes()
        assert not [trace for trace in traces if trace in snapshot]
        assert _top(gallery, removed[:1]) != ["gone"]
    with _open(tmp_path, precision) as gallery:
        assert len(gallery) == 41 and _top(gallery, unit_vectors(1, 4343, dim=D)) == ["kept"]


def test_a_search_goes_on_while_a_removals_snapshot_is_written(
    state: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The removal's snapshot is held at the start of its write (a slow disk). Meanwhile a search
    from another thread runs, a template update that must not wait is refused, and an enrolment
    waits for the write: it would change the index being written."""
    removed = unit_vectors(2, 4242, dim=D)
    traces = [as_unit_vectors(removed, D).astype("<f2").tobytes()[:32]]
    with _open(state) as gallery:
        gallery.add("gone", "Gone", removed)
        write = Held(monkeypatch, gallery.saved, "save")
        remover = threading.Thread(target=gallery.remove, args=("gone",))
        enrolled = threading.Event()

        def enrol() -> None:
            gallery.add("late", "Late", unit_vectors(1, 4545, dim=D))
            enrolled.set()

        enroller = threading.Thread(target=enrol)
        try:
            remover.start()
            assert write.entered.wait(DEADLINE_S)
            found = meanwhile(lambda: _top(gallery, removed[:1]))
            assert found and found[0] != ["gone"]  # searched during the write, without the removed
            with pytest.raises(GalleryBusyError, match="busy"):
                gallery.add_adaptive(
                    "p1",
                    unit_vectors(1, 7, dim=D)[0],
                    None,
                    0.9,
                    TemplateOrigin(ADAPTIVE, "e1"),
                    3,
                    save=False,
                    wait=False,
                )
            enroller.start()
            assert not enrolled.wait(0.2)  # waits for the snapshot
        finally:
            write.release()
            remover.join(DEADLINE_S)
            enroller.join(DEADLINE_S)
        assert enrolled.is_set() and not remover.is_alive()
        assert not [trace for trace in traces if trace in (state / INDEX_FILE).read_bytes()]
        assert _files(state) == [INDEX_FILE, INDEX_FILE + ".delta"]  # the enrolment after the snapshot
    with TemplateStore.open(state / "gallery.db", state / "gallery.key") as store:
        assert len(list(store.templates(VERSION, "p1"))) == 2  # the refused update stored nothing
    with caplog.at_level(logging.INFO, logger="appliance.gallery"), _open(state) as gallery:
        assert len(gallery) == 101 and _top(gallery, unit_vectors(1, 4545, dim=D)) == ["late"]
    assert "rebuilding" not in caplog.text  # the snapshot and the delta after it chain to the store


@pytest.mark.parametrize("tombstone", [False, True])
def test_a_removed_person_is_not_found_while_the_index_is_still_being_changed(
    state: Path, monkeypatch: pytest.MonkeyPatch, tombstone: bool
) -> None:
    """The index's own removal is held (an HNSW rebuild: minutes at 10⁶, searched meanwhile): a
    search then already finds no template of the removed identity, and does not wait."""
    vectors = unit_vectors(2, 4747, dim=D)
    with _open(state) as gallery:
        if tombstone:
            crops = np.zeros((2, 112, 112, 3), np.uint8)
            gallery.apply_fleet_identity(
                "gone", 1, "Gone", None, "2026-12-05T00:00:00Z", IdentityPolicy(), vectors, crops, [0.9, 0.9]
            )
            remover = threading.Thread(target=gallery.remove_fleet_identity, args=("gone", 2))
        else:
            gallery.add("gone", "Gone", vectors)
            remover = threading.Thread(target=gallery.remove, args=("gone",))
        assert _top(gallery, vectors) == ["gone", "gone"] and gallery._index is not None
        removal = Held(monkeypatch, gallery._index, "remove")
        try:
            remover.start()
            assert removal.entered.wait(DEADLINE_S)
            found = meanwhile(lambda: _top(gallery, vectors))
            assert found and "gone" not in found[0], found
        finally:
            removal.release()
            remover.join(DEADLINE_S)
        assert not remover.is_alive() and "gone" not in _top(gallery, vectors)


def test_a_search_goes_on_while_the_index_is_refreshed(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh reads the snapshot and the delta again, or rebuilds: a search from another thread
    meanwhile uses the index in memory, which the new one replaces at the end."""
    vector = unit_vectors(1, 4646, dim=D)
    with _open(state) as gallery:
        gallery.add("ada", "Ada", vector)
        load = Held(monkeypatch, gallery.saved, "load")
        refresher = threading.Thread(target=gallery.refresh)
        try:
            refresher.start()
            assert load.entered.wait(DEADLINE_S)
            assert meanwhile(lambda: _top(gallery, vector)) == [["ada"]]
        finally:
            load.release()
            refresher.join(DEADLINE_S)
        assert not refresher.is_alive() and _top(gallery, vector) == ["ada"] and len(gallery) == 101


def test_a_sequence_of_store_steps_holds_off_other_changes_not_searches(state: Path) -> None:
    """A model switch reads the templates, writes them for the new model and switches, holding
    ``changing()``: a removal on another thread waits until it is done (else the removed template
    would come back under the new model); a search does not wait."""
    vectors = unit_vectors(2, 4848, dim=D)
    with _open(state) as gallery:
        gallery.add("gone", "Gone", vectors)
        removed = threading.Event()

        def remove() -> None:
            gallery.remove("gone")
            removed.set()

        remover = threading.Thread(target=remove)
        with gallery.changing():
            remover.start()
            assert not removed.wait(0.2)  # the removal waits for the sequence
            assert meanwhile(lambda: _top(gallery, vectors)) == [["gone", "gone"]]
        remover.join(DEADLINE_S)
        assert removed.is_set() and "gone" not in _top(gallery, vectors)


def test_a_delta_left_beside_a_newer_snapshot_is_deleted_at_open(state: Path) -> None:
    """Killed between the snapshot's rename and the delta's deletion: the old delta is ignored."""
    with _open(state) as gallery:
        gallery.add("gone", "Gone", unit_vectors(1, 1, dim=D))
        old = delta_path(state / INDEX_FILE).read_bytes()
        gallery.remove("gone")
    delta_path(state / INDEX_FILE).write_bytes(old)
    with _open(state) as gallery:
        assert len(gallery) == 100 and _top(gallery, unit_vectors(1, 1, dim=D)) != ["gone"]
    assert _files(state) == [INDEX_FILE]


# -- crash states ----------------------------------------------------------------------------------


def test_a_store_ahead_of_the_delta_is_rebuilt_from(state: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Killed between the store's commit and the append: the delta ends one generation short."""
    with _open(state) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
        gallery.store.add("bob", "Bob", VERSION, unit_vectors(1, 2, dim=D))  # committed, never appended
    caplog.set_level(logging.INFO)
    with _open(state) as gallery:
        assert len(gallery) == 102 and _top(gallery, unit_vectors(1, 2, dim=D)) == ["bob"]
    assert "reach generation 51, the store is at 52" in caplog.text
    assert _files(state) == [INDEX_FILE]  # rebuilt and saved as a snapshot


@pytest.mark.parametrize("cut", [1, 9, RECORD_OF_ONE - 1])
def test_a_torn_last_record_is_refused_and_the_store_decides(state: Path, cut: int) -> None:
    with _open(state) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
        gallery.add("bob", "Bob", unit_vectors(1, 2, dim=D))
    path = delta_path(state / INDEX_FILE)
    path.write_bytes(path.read_bytes()[:-cut])
    found = read_delta(path, 1 << 20)
    assert len(found.records) == 1 and "truncated" in (found.problem or "")
    with _open(state) as gallery:
        assert len(gallery) == 102 and _top(gallery, unit_vectors(1, 2, dim=D)) == ["bob"]


def test_a_damaged_tail_past_the_store_generation_is_cut_back(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _open(state) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
    path = delta_path(state / INDEX_FILE)
    good = path.read_bytes()
    path.write_bytes(good + b"\x07" * 100)
    with _open(state) as gallery:
        assert len(gallery) == 101 and gallery.saved.snapshots_written == 0
        gallery.add("bob", "Bob", unit_vectors(1, 2, dim=D))  # appended after the last good record
    assert "cut the gallery index delta" in caplog.text
    assert path.read_bytes()[: len(good)] == good and len(read_delta(path, 1 << 20).records) == 2
    with _open(state) as gallery:
        assert len(gallery) == 102 and gallery.saved.snapshots_written == 0


def test_a_bad_tail_that_cannot_be_cut_makes_the_next_write_a_snapshot(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _open(state) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
    path = delta_path(state / INDEX_FILE)
    path.write_bytes(path.read_bytes() + b"\x07" * 100)

    def read_only(*_: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(delta_module.os, "truncate", read_only)
    with _open(state) as gallery:
        assert len(gallery) == 101 and gallery.saved.generation is None
        monkeypatch.undo()
        gallery.add("bob", "Bob", unit_vectors(1, 2, dim=D))  # never appended after the bad tail
        assert gallery.saved.snapshots_written == 1 and _files(state) == [INDEX_FILE]
    with _open(state) as gallery:
        assert len(gallery) == 102


def test_a_delta_past_the_store_is_not_replayed(state: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A restored backup of the store: the records past its generation never come back."""
    backup = (state / "gallery.db").read_bytes()
    with _open(state) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
    (state / "gallery.db").write_bytes(backup)
    for suffix in ("-wal", "-shm"):
        Path(f"{state / 'gallery.db'}{suffix}").unlink(missing_ok=True)
    with _open(state) as gallery:
        assert len(gallery) == 100 and _top(gallery, unit_vectors(1, 1, dim=D)) != ["ada"]
    assert "a restored backup?" in caplog.text and _files(state) == [INDEX_FILE]


# -- hostile deltas: bounded, refused, the store decides -----------------------------------------------


def _snapshot_id(state: Path) -> str:
    return str(read_snapshot_header(state / INDEX_FILE)["snapshot_id"])


def _forge(state: Path, records: bytes, *, base: int = 50, snapshot_id: Optional[str] = None) -> None:
    header = encode_header(D, base, snapshot_id or _snapshot_id(state))
    delta_path(state / INDEX_FILE).write_bytes(header + records)


def test_forged_records_with_wrong_ids_are_refused(state: Path) -> None:
    """A well-formed record naming a template id the store gives another person: never used."""
    with TemplateStore.open(state / "gallery.db", state / "gallery.key") as store:
        store.add("eve", "Eve", VERSION, unit_vectors(1, 5, dim=D))
        eve_id = max(t.id for t in store.templates(VERSION))
    _forge(state, encode_record(DeltaRecord(50, 51, np.array([eve_id + 7]), unit_vectors(1, 6, dim=D))))
    with _open(state) as gallery:
        assert len(gallery) == 101 and _top(gallery, unit_vectors(1, 5, dim=D)) == ["eve"]
        assert gallery.search(unit_vectors(1, 6, dim=D), 1)[0][0].score < 0.5


@pytest.mark.parametrize(
    "damage",
    ["huge length", "flipped bit", "zero vector", "negative id", "repeated id", "two generations", "header"],
)
def test_hostile_deltas_are_refused_quickly(state: Path, damage: str) -> None:
    record = bytearray(encode_record(DeltaRecord(50, 51, np.array([10**6]), unit_vectors(1, 6, dim=D))))
    if damage == "huge length":
        record[:4] = struct.pack("<I", 0xFFFFFFF0)
    elif damage == "flipped bit":
        record[100] ^= 0x10
    else:
        body = bytearray(record[8:])
        if damage == "zero vector":
            body[32:] = bytes(4 * D)
        elif damage == "negative id":
            body[24:32] = struct.pack("<q", -5)
        elif damage == "two generations":
            body[8:16] = struct.pack("<Q", 52)
        elif damage == "repeated id":
            body = bytearray(
                encode_record(DeltaRecord(50, 51, np.array([3, 3]), unit_vectors(2, 6, dim=D)))[8:]
            )
        record = bytearray(struct.pack("<II", len(body), zlib.crc32(bytes(body))) + bytes(body))
    _forge(state, bytes(record))
    if damage == "header":
        raw = bytearray(delta_path(state / INDEX_FILE).read_bytes())
        raw[20] ^= 0x01
        delta_path(state / INDEX_FILE).write_bytes(bytes(raw))
    else:
        assert read_delta(delta_path(state / INDEX_FILE), 1 << 20).records == []
    with TemplateStore.open(state / "gallery.db", state / "gallery.key") as store:
        store.add("eve", "Eve", VERSION, unit_vectors(1, 5, dim=D))  # the store moved on: generation 51
    with _open(state) as gallery:
        assert len(gallery) == 101 and _top(gallery, unit_vectors(1, 5, dim=D)) == ["eve"]
    assert _files(state) == [INDEX_FILE]


def test_a_delta_beyond_the_read_bounds_stops_there(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = b"".join(
        encode_record(DeltaRecord(50 + n, 51 + n, np.array([10**6 + n]), unit_vectors(1, n, dim=D)))
        for n in range(3)
    )
    _forge(state, records)
    found = read_delta(delta_path(state / INDEX_FILE), DELTA_HEADER_BYTES + 2 * RECORD_OF_ONE)
    assert len(found.records) == 2 and "past the" in (found.problem or "")
    monkeypatch.setattr(delta_module, "MAX_DELTA_RECORDS", 1)
    found = read_delta(delta_path(state / INDEX_FILE), 1 << 20)
    assert len(found.records) == 1 and found.problem == "more than 1 records"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_in_place_of_the_delta_does_not_hang(state: Path) -> None:
    os.mkfifo(delta_path(state / INDEX_FILE))
    with _open(state) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
        assert len(gallery) == 101
    with _open(state) as gallery:
        assert len(gallery) == 101


def test_a_delta_of_another_snapshot_or_model_is_ignored(state: Path) -> None:
    record = encode_record(DeltaRecord(50, 51, np.array([10**6]), unit_vectors(1, 6, dim=D)))
    _forge(state, record, snapshot_id="0" * 32)
    with _open(state) as gallery:
        assert len(gallery) == 100
    assert _files(state) == [INDEX_FILE]
    _forge(state, record, base=49)
    with _open(state) as gallery:
        assert len(gallery) == 100
    assert _files(state) == [INDEX_FILE]


def test_a_graph_built_on_its_own_thread_is_saved_as_a_new_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The enrolment that takes the gallery past ``approximate_above`` returns before the graph is
    built; once it is, it is saved as a snapshot, and the next start loads it instead of building it."""
    _fill(tmp_path, 499)  # 998 templates: exact
    with _open(tmp_path, approximate_above=1000) as gallery:
        gallery.add("ada", "Ada", unit_vectors(3, 1, dim=D))
        assert gallery.wait_rebuilt(DEADLINE_S) and gallery.approximate and len(gallery) == 1001
        header = read_snapshot_header(tmp_path / INDEX_FILE)
        assert (header["kind"], header["count"], header["generation"]) == (
            "hnsw",
            1001,
            gallery.store.generation,
        )
        assert _files(tmp_path) == [INDEX_FILE]
    caplog.set_level(logging.INFO)
    caplog.clear()
    with _open(tmp_path, approximate_above=1000) as gallery:
        assert gallery.approximate and _top(gallery, unit_vectors(3, 1, dim=D)[:1]) == ["ada"]
    assert "loaded hnsw index of 1001 templates" in caplog.text, caplog.text
    assert "rebuilding" not in caplog.text and "HNSW index over" not in caplog.text  # no graph built


@pytest.mark.parametrize("snapshot", ["exact above the threshold", "none"])
def test_a_gallery_that_calls_for_a_graph_opens_with_the_exact_index_and_builds_the_graph_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, snapshot: str
) -> None:
    """A door restarted while its graph was being built finds an exact snapshot above
    ``approximate_above`` (so does one whose threshold was lowered); one with no usable snapshot
    builds from the store. Either way it opens with the exact index and serves while the graph is
    built on its own thread, then saves it: the door does not wait minutes for the graph."""
    _fill(tmp_path, 600)  # 1 200 templates, an exact snapshot
    if snapshot == "none":
        (tmp_path / INDEX_FILE).unlink()
    held = Held(monkeypatch, TemplateIndex, "_build_replacement", DEADLINE_S)
    caplog.set_level(logging.INFO)
    with _open(tmp_path, approximate_above=1000) as gallery:
        assert held.entered.wait(DEADLINE_S)  # the graph's build has started, and is held
        assert not gallery.approximate and len(gallery) == 1200
        assert _top(gallery, unit_vectors(2, 107, dim=D)[:1]) == ["p7"]  # the exact index serves
        header = read_snapshot_header(tmp_path / INDEX_FILE)
        assert (header["kind"], header["count"]) == ("exact", 1200)
        held.release()
        assert gallery.wait_rebuilt(DEADLINE_S) and gallery.approximate
        assert _top(gallery, unit_vectors(2, 107, dim=D)[:1]) == ["p7"]
        header = read_snapshot_header(tmp_path / INDEX_FILE)
        assert (header["kind"], header["count"]) == ("hnsw", 1200)
    loaded = "loaded exact index of 1200 templates" in caplog.text
    assert loaded == (snapshot != "none"), caplog.text


def _as_version_1(path: Path) -> None:
    """Rewrite an index file as this software's predecessor wrote it: format 1, no snapshot_id."""
    data = path.read_bytes()
    _, _, length = struct.unpack("<8sHI", data[:14])
    header = json.loads(data[14 : 14 + length])
    del header["snapshot_id"]
    encoded = json.dumps(header).encode()
    prefix = struct.pack("<8sHI", b"FAGALIDX", 1, len(encoded))
    path.write_bytes(prefix + encoded + struct.pack("<I", zlib.crc32(encoded)) + data[14 + length + 4 :])


def test_a_version_1_snapshot_is_read_and_a_delta_beside_it_deleted(state: Path) -> None:
    """An index file written before deltas existed: still a valid snapshot, and nothing extends it."""
    _forge(state, encode_record(DeltaRecord(50, 51, np.array([10**6]), unit_vectors(1, 6, dim=D))))
    _as_version_1(state / INDEX_FILE)
    assert read_snapshot_header(state / INDEX_FILE)["snapshot_id"] is None
    assert saved_generation(state / INDEX_FILE) == 50
    with _open(state) as gallery:
        assert len(gallery) == 100 and gallery.saved.snapshots_written == 0
        assert _files(state) == [INDEX_FILE]
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))  # not a delta of a version-1 file: a snapshot
        assert read_snapshot_header(state / INDEX_FILE)["format"] == FORMAT_VERSION
    with _open(state) as gallery:
        assert len(gallery) == 101


# -- failures while writing ---------------------------------------------------------------------------


def test_a_full_disk_during_an_append_leaves_no_torn_record(
    state: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with _open(state) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
        size = delta_path(state / INDEX_FILE).stat().st_size
        real_write = os.write

        def full(fd: int, data: object) -> int:
            real_write(fd, bytes(memoryview(data))[:100])  # type: ignore[call-overload]
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(delta_module.os, "write", full)
        gallery.add("bob", "Bob", unit_vectors(1, 2, dim=D))  # stored; the index file could not follow
        monkeypatch.undo()
        assert delta_path(state / INDEX_FILE).stat().st_size == size  # cut back to the last record
        assert "could not save the gallery index" in caplog.text
        assert _top(gallery, unit_vectors(1, 2, dim=D)) == ["bob"]  # searchable from memory
        gallery.add("cy", "Cy", unit_vectors(1, 3, dim=D))  # the files were behind: a snapshot now
        assert _files(state) == [INDEX_FILE]
    with _open(state) as gallery:
        assert len(gallery) == 103 and gallery.saved.snapshots_written == 0


def test_persist_index_off_deletes_the_delta_too(state: Path) -> None:
    with _open(state) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1, 1, dim=D))
    with _open(state, persist_index=False) as gallery:
        gallery.add("bob", "Bob", unit_vectors(1, 2, dim=D))
        assert _files(state) == []
    assert _files(state) == []
