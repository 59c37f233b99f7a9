"""Better templates from few photos (issue 17, part 1), on the real models and the real images.

* Enrolment ranks the accepted photos by quality and keeps the best up to the bound.
* Template update from confident passes: a granted passage with a clear margin, live, of good quality
  and close enough to the identity's enrolled templates adds an adaptive template; a low-margin, a
  not-live, a low-quality or a drifting one does not. The bound evicts the oldest adaptive template,
  never an enrolled one.
* ``gallery templates ID`` lists and ``--remove`` removes (through ``appliance.cli.main``), and the
  removed template leaves no trace in the database, its WAL or the index files.
* Over a sequence of passages of the people of ``shared/data`` enrolled from one photo each, the
  update grants more passages than the same gallery without it, and grants no one wrongly.
* The daemon's wiring: the real pipeline (liveness on) → the stored event → the template update.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
import pytest

from appliance.change_thread import ChangeThread
from appliance.cli import main
from appliance.command_service import CommandService
from appliance.commands import CommandError, ReloadCommand, RemoveTemplateCommand, TemplatesCommand
from appliance.config import ApplianceConfig
from appliance.config_load import load_config, validate_config
from appliance.decisions import GRANTED, DecisionEngine, DecisionSettings, Observation
from appliance.enrollment import Enroller
from appliance.event_recorder import EventRecorder
from appliance.face_views import FaceSample
from appliance.gallery import index as index_module
from appliance.gallery.delta import delta_path
from appliance.gallery.gallery import INDEX_FILE, STORE_FILE, Gallery
from appliance.gallery.store import ADAPTIVE, ENROLLED
from appliance.metrics import Latencies
from appliance.outbox import Outbox
from appliance.pipeline import CameraFrame, Outcome, Pipeline
from appliance.runtime import ModelRuntime
from appliance.template_update import TemplateUpdater
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from appliance.vision.quality import assess
from tests.support import Held, live_runtime, meanwhile

#: Frames a still photo is shown for as one passage (the default vote needs 3 of 5).
PASSAGE_FRAMES = 5


class Face(NamedTuple):
    """One photo's largest face: ``(D,)`` float32 embedding, ``(112, 112, 3)`` uint8 crop, quality."""

    embedding: np.ndarray
    crop: np.ndarray
    quality: float


def _face(analyzer: FaceAnalyzer, image: np.ndarray) -> Face:
    faces = analyzer.detect(image, still=True)
    largest = faces.largest()
    assert largest is not None
    analysis = analyzer.analyze(image, faces=faces.take([largest]))
    assert analysis.embeddings is not None and analysis.crops is not None
    (quality,) = assess(analysis.faces.boxes, analysis.faces.landmarks, analysis.crops)
    return Face(analysis.embeddings[0], analysis.crops[0], quality.score)


@pytest.fixture(scope="module")
def labelled(analyzer: FaceAnalyzer, shared_data: Path) -> List[Tuple[str, str, Face]]:
    """Every labelled photo of ``shared/data``: (path, identity, its face), in the labels file's order."""
    with (shared_data / "faces_identities.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    return [
        (row["path"], row["identity"], _face(analyzer, read_image(shared_data / row["path"]))) for row in rows
    ]


def _config(tmp_path: Path, **adaptive: object) -> ApplianceConfig:
    section: Dict[str, object] = {"enabled": True, "require_liveness": False, "min_interval_s": 0.0}
    section.update(adaptive)
    return validate_config({"storage": {"dir": str(tmp_path / "state")}, "adaptive": section})


@pytest.fixture
def gallery(tmp_path: Path, analyzer: FaceAnalyzer) -> Iterator[Gallery]:
    opened = Gallery.open(_config(tmp_path), analyzer.embedder.version, analyzer.embedder.dim)
    try:
        yield opened
    finally:
        opened.close()


def _enrol(gallery: Gallery, identity: str, faces: List[Face]) -> List[int]:
    return gallery.add(
        identity,
        identity,
        np.stack([f.embedding for f in faces]),
        np.stack([f.crop for f in faces]),
        [f.quality for f in faces],
    )


def _passage(
    gallery: Gallery,
    face: Face,
    liveness: Optional[Tuple[float, bool]] = None,
    settings: Optional[DecisionSettings] = None,
) -> Outcome:
    """One passage of a person showing ``face`` for :data:`PASSAGE_FRAMES` frames, decided by the
    real voting rules on the real gallery's candidates; the outcome carries the frame as its sample."""
    engine = DecisionEngine(settings or DecisionSettings(liveness_required=liveness is not None))
    candidates = gallery.search(face.embedding[None, :])[0]
    decision = None
    for frame in range(PASSAGE_FRAMES):
        observation = Observation(
            float(frame), np.array([0, 0, 100, 100]), face.quality, candidates, True, liveness
        )
        decision = engine.observe(1, observation) or decision
    decision = decision or engine.end_track(1, float(PASSAGE_FRAMES))
    assert decision is not None
    sample = FaceSample(face.quality, face.embedding, face.crop, liveness, gallery.model_version)
    return Outcome(decision, float(PASSAGE_FRAMES), face.crop, sample=sample)


def _kinds(gallery: Gallery, identity: str) -> List[str]:
    return [info.origin.kind for info in gallery.store.template_infos(identity)]


def _of(labelled: List[Tuple[str, str, Face]], identity: str) -> List[Tuple[str, Face]]:
    return [(path, face) for path, who, face in labelled if who == identity]


# -- enrolment ranked by quality --------------------------------------------------------------------


def test_enrolment_keeps_the_best_photos_by_quality(
    tmp_path: Path, analyzer: FaceAnalyzer, gallery: Gallery, shared_data: Path
) -> None:
    names = [
        "faces/fr_obama/obama3.jpg",
        "edge_cases/32bit.png",
        "faces/fr_obama/obama1.jpg",
        "faces/fr_obama/obama.jpg",
        "faces/fr_obama/obama_small.jpg",
    ]
    photos = [(name, read_image(shared_data / name)) for name in names]
    blurred = cv2.GaussianBlur(photos[3][1], (0, 0), 6)  # obama.jpg, much softer
    photos.append(("obama-blurred", blurred))
    config = _config(tmp_path)
    result = Enroller(analyzer, gallery, config.gallery).enroll("obama", "Barack Obama", photos, keep=2)

    checked = [p for p in result.photos if p.rank is not None]  # passed the checks, ranked
    assert len(checked) >= 4, [(p.source, p.reason) for p in result.photos]
    by_quality = sorted(checked, key=lambda p: -p.quality.score)  # type: ignore[union-attr]
    assert [p.rank for p in by_quality] == list(range(1, len(checked) + 1))
    kept = [p.source for p in result.photos if p.accepted]
    assert kept == [p.source for p in by_quality[:2]] or set(kept) == {p.source for p in by_quality[:2]}
    assert len(result.template_ids) == 2
    # The ranking matters here: the first two photos given are not the two best.
    assert set(kept) != set(names[:2])
    assert "obama-blurred" not in kept
    for photo in by_quality[2:]:
        assert not photo.accepted and photo.reason.startswith("not kept: quality"), photo.reason
    for photo in by_quality[:2]:
        assert photo.reason.startswith("accepted (quality"), photo.reason
    stored = sorted(info.quality for info in gallery.store.template_infos("obama"))  # type: ignore[type-var]
    assert stored == pytest.approx(sorted(p.quality.score for p in by_quality[:2]), abs=1e-6)  # type: ignore[union-attr]

    # The identity holds 2 now: another enrolment with the same bound keeps nothing, and says why.
    again = Enroller(analyzer, gallery, config.gallery).enroll("obama", "Barack Obama", photos[3:4], keep=2)
    assert again.template_ids == []
    assert "2 held already" in again.photos[0].reason


# -- template update from confident passes ----------------------------------------------------------


def test_a_confident_granted_passage_adds_an_adaptive_template_and_weak_ones_do_not(
    tmp_path: Path, gallery: Gallery, labelled: List[Tuple[str, str, Face]]
) -> None:
    obama = _of(labelled, "fr_obama")
    faces = dict(obama)
    _enrol(gallery, "obama", [faces["faces/fr_obama/obama.jpg"]])
    _enrol(gallery, "kit", [face for _, face in _of(labelled, "fr_kit_harington")[:1]])
    settings = _config(tmp_path).adaptive
    updater = TemplateUpdater(gallery, settings, liveness_enabled=False)
    good = _passage(gallery, faces["faces/fr_obama/obama_small.jpg"])
    assert good.decision.decision == GRANTED and good.decision.identity_id == "obama"
    assert good.decision.margin is not None and good.decision.margin > settings.min_margin

    # Not learnt: a low margin, low quality, a failed or missing liveness, a drifting face.
    low_margin = replace(good, decision=replace(good.decision, margin=settings.min_margin - 0.01))
    assert updater.consider(low_margin, "ev-margin").reason.startswith("low margin")
    low_quality = _passage(gallery, faces["faces/fr_obama/obama3.jpg"])  # a real photo of quality < 0.6
    assert low_quality.decision.decision == GRANTED and low_quality.sample is not None
    assert low_quality.sample.quality < settings.min_quality
    assert updater.consider(low_quality, "ev-quality").reason.startswith("low quality")
    live = TemplateUpdater(
        gallery, settings.model_copy(update={"require_liveness": True}), liveness_enabled=True
    )
    spoofed = _passage(gallery, faces["faces/fr_obama/obama_small.jpg"], liveness=(0.1, False))
    assert spoofed.decision.decision != GRANTED  # liveness required: a failed check grants nobody
    assert live.consider(spoofed, "ev-spoof").reason.startswith("not granted")
    unchecked = replace(good, decision=replace(good.decision, liveness=None))
    assert live.consider(unchecked, "ev-unchecked").reason.startswith("no liveness")
    not_configured = TemplateUpdater(
        gallery, settings.model_copy(update={"require_liveness": True}), liveness_enabled=False
    )
    assert not_configured.consider(good, "ev-off").reason == "no liveness: liveness.enabled is false"
    passed = replace(good, decision=replace(good.decision, liveness=(0.9, True)))
    frame_failed = replace(passed, sample=replace(passed.sample, liveness=(0.2, False)))  # type: ignore[arg-type]
    assert live.consider(frame_failed, "ev-frame").reason.startswith("no liveness")
    # Drift: person C's passage is granted, but is less similar to C's enrolled photo than a strict floor.
    person = _of(labelled, "deepface_personC")
    _enrol(gallery, "c", [person[0][1]])
    granted = [
        o for o in (_passage(gallery, face) for _, face in person[1:]) if o.decision.decision == GRANTED
    ]
    assert granted
    drifting = granted[0]
    similarity = float(drifting.sample.embedding @ person[0][1].embedding)  # type: ignore[union-attr]
    assert similarity < 0.95
    strict = TemplateUpdater(
        gallery, settings.model_copy(update={"min_enrolled_similarity": 0.95}), liveness_enabled=False
    )
    drift = strict.consider(drifting, "ev-drift")
    assert drift.reason.startswith("drift") and drift.similarity == pytest.approx(similarity, abs=1e-5)
    assert _kinds(gallery, "c") == [ENROLLED]
    assert _kinds(gallery, "obama") == [ENROLLED]

    # Learnt: the confident one, recorded with its event, score and margin.
    verdict = updater.consider(good, "ev-good")
    assert verdict.added is not None and verdict.evicted == [], verdict
    infos = gallery.store.template_infos("obama")
    assert [info.origin.kind for info in infos] == [ENROLLED, ADAPTIVE]
    added = infos[-1]
    assert added.id == verdict.added and added.origin.source_event == "ev-good"
    assert added.origin.score == pytest.approx(good.decision.score)
    assert added.origin.margin == pytest.approx(good.decision.margin)
    assert added.model_version == gallery.model_version
    assert added.quality == pytest.approx(good.sample.quality)  # type: ignore[union-attr]
    assert len(gallery) == 4  # obama, kit, c and the new one, searchable at once:
    assert gallery.search(good.sample.embedding[None, :])[0][0].score == pytest.approx(1.0, abs=1e-3)  # type: ignore[union-attr]
    # With a minimum interval, the next confident passage of the same person is not learnt yet.
    paced = TemplateUpdater(
        gallery, settings.model_copy(update={"min_interval_s": 3600.0}), liveness_enabled=False
    )
    assert paced.consider(good, "ev-soon").reason.startswith("too soon")


def test_the_bound_evicts_the_oldest_adaptive_template_never_an_enrolled_one(
    tmp_path: Path, gallery: Gallery, labelled: List[Tuple[str, str, Face]]
) -> None:
    person = _of(labelled, "deepface_personC")
    _, enrolled = person[0]
    _enrol(gallery, "c", [enrolled])
    _enrol(gallery, "obama", [face for _, face in _of(labelled, "fr_obama")[:1]])
    updater = TemplateUpdater(gallery, _config(tmp_path, max_per_identity=2, min_quality=0.0).adaptive, False)
    added: List[int] = []
    for path, face in person[1:]:
        verdict = updater.consider(_passage(gallery, face), f"ev-{Path(path).stem}")
        if verdict.added is not None:
            added.append(verdict.added)
            kept = [info.id for info in gallery.store.template_infos("c") if info.origin.kind == ADAPTIVE]
            assert kept == added[-2:], (kept, added)  # the newest two, oldest out first
            assert verdict.evicted == added[:-2][-1:]
    assert len(added) >= 3, "the data should give at least three confident passages of person C"
    kinds = _kinds(gallery, "c")
    assert kinds.count(ENROLLED) == 1 and kinds.count(ADAPTIVE) == 2
    # The index holds exactly the store's templates: the evicted ones are not searchable.
    ids, _, _ = gallery.store.embeddings(gallery.model_version)
    assert len(gallery) == len(ids)
    gallery.save_index()  # the daemon's update leaves the file to the next save; a removal snapshots it
    index = gallery.saved.load(gallery.store.generation)
    assert sorted(index.ids().tolist()) == sorted(ids.tolist())


def test_on_an_approximate_index_a_full_identity_learns_on_the_gallery_change_thread(
    tmp_path: Path,
    analyzer: FaceAnalyzer,
    labelled: List[Tuple[str, str, Face]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above ``gallery.approximate_above`` the index is HNSW, where replacing an identity's oldest
    adaptive template detaches its node with a scan of the graph's links. The pipeline thread only
    screens the passage and hands it to the ``gallery-change`` thread: held there in the scan, the
    door still searches, and another passage meanwhile is refused as ``gallery busy``, not queued.
    The full identity learns on, oldest out; the graph stays a graph and holds exactly the store's
    templates."""
    config = validate_config(
        {
            "storage": {"dir": str(tmp_path / "state")},
            "gallery": {"approximate_above": 1000},
            "adaptive": {
                "enabled": True,
                "require_liveness": False,
                "min_interval_s": 0.0,
                "max_per_identity": 2,
                "min_quality": 0.0,
            },
        }
    )
    gallery = Gallery.open(config, analyzer.embedder.version, analyzer.embedder.dim)
    changes = ChangeThread()
    try:
        rng = np.random.default_rng(16)
        for number in range(201):  # 1 005 templates of strangers: past approximate_above
            vectors = rng.standard_normal((5, gallery.dim)).astype(np.float32)
            gallery.add(
                f"stranger-{number}", f"stranger {number}", vectors / np.linalg.norm(vectors, axis=1)[:, None]
            )
        person = _of(labelled, "deepface_personC")
        _enrol(gallery, "c", [person[0][1]])
        assert gallery.wait_rebuilt(30.0) and gallery.approximate  # the graph is built on its own thread
        updater = TemplateUpdater(gallery, config.adaptive, False, changes=changes)
        learnt: List[List[int]] = []  # the identity's adaptive templates after each passage that taught
        replaced = False
        for path, face in person[1:]:
            outcome = _passage(gallery, face)
            scan: Optional[Held] = None
            if len(learnt) >= 2 and not replaced:  # full: this one replaces the oldest
                scan = Held(monkeypatch, index_module, "_links_to")
            updater.on_stored(outcome, f"ev-{Path(path).stem}")
            if scan is not None:
                while not scan.entered.wait(0.01) and changes.busy():
                    pass
                if not scan.entered.is_set():  # refused before any write (drift, margin …)
                    monkeypatch.undo()
                else:
                    replaced = True
                    probe = face.embedding[None, :]
                    found = meanwhile(lambda: gallery.search(probe)[0])  # noqa: B023 (joined at once)
                    assert found and found[0][0].identity_id == "c"  # the door searches meanwhile
                    refused = updater.refused["gallery busy"]
                    updater.on_stored(outcome, "ev-while-busy")
                    assert updater.refused["gallery busy"] == refused + 1
                    scan.release()
            assert changes.join(30.0)
            kept = [info.id for info in gallery.store.template_infos("c") if info.origin.kind == ADAPTIVE]
            if not learnt or kept != learnt[-1]:
                learnt.append(kept)
        assert replaced, (learnt, dict(updater.refused))
        assert len(learnt[-1]) == 2 and updater.added == len(learnt) >= 3, (learnt, dict(updater.refused))
        for before, after in zip(learnt[1:], learnt[2:]):
            assert after[0] == before[1] and after[1] not in before  # the oldest went, the newest came
        assert "approximate index" not in updater.refused
        ids, _, _ = gallery.store.embeddings(gallery.model_version)
        assert gallery.approximate and sorted(gallery._index.ids().tolist()) == sorted(ids.tolist())
        assert len(gallery) == 1005 + 1 + 2
    finally:
        changes.join(30.0)
        changes.close()
        gallery.close()


def test_a_busy_gallery_is_not_waited_for_and_the_passage_teaches_nothing(
    tmp_path: Path, gallery: Gallery, labelled: List[Tuple[str, str, Face]]
) -> None:
    """The update does not wait for the gallery (on the ``gallery-change`` thread, waiting would hold
    the commands queued behind it): while another thread's change is in progress (a fleet batch's
    index file, an enrolment's store transaction), a passage that qualifies is refused as ``gallery
    busy``; once the gallery is free, the same passage is learnt."""
    person = _of(labelled, "deepface_personC")
    _enrol(gallery, "c", [person[0][1]])
    updater = TemplateUpdater(gallery, _config(tmp_path, min_quality=0.0).adaptive, False)
    outcome = _passage(gallery, person[1][1])
    held, release = threading.Event(), threading.Event()

    def hold_the_gallery() -> None:
        with gallery._changes:
            held.set()
            release.wait(10.0)

    holder = threading.Thread(target=hold_the_gallery)
    holder.start()
    try:
        assert held.wait(10.0)
        verdict = updater.consider(outcome, "ev-busy")
    finally:
        release.set()
        holder.join(10.0)
    assert verdict.added is None and verdict.reason.startswith("gallery busy"), verdict.reason
    assert updater.refused["gallery busy"] == 1 and _kinds(gallery, "c") == [ENROLLED]
    learnt = updater.consider(outcome, "ev-free")
    assert learnt.added is not None and _kinds(gallery, "c") == [ENROLLED, ADAPTIVE]


def test_the_pipeline_thread_screens_and_a_model_switch_meanwhile_leaves_no_stale_template(
    tmp_path: Path, gallery: Gallery, labelled: List[Tuple[str, str, Face]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``on_stored`` refuses what the outcome alone refuses on the calling (pipeline) thread, starting
    nothing; a passage that qualifies is learnt on the ``gallery-change`` thread. A model switch
    between the handing over and the write (the pipeline thread swaps models between frames) is
    caught under the change lock: the old model's embedding is not stored as a template of the new."""
    person = _of(labelled, "deepface_personC")
    _enrol(gallery, "c", [person[0][1]])
    changes = ChangeThread()
    updater = TemplateUpdater(
        gallery, _config(tmp_path, min_quality=0.0, min_margin=0.2).adaptive, False, changes=changes
    )
    outcome = _passage(gallery, person[1][1])
    weak = replace(outcome, decision=replace(outcome.decision, margin=0.1))
    updater.on_stored(weak, "ev-weak")
    assert not changes.busy() and dict(updater.refused) == {"low margin": 1}

    write = Held(monkeypatch, Gallery, "add_adaptive")
    updater.on_stored(outcome, "ev-switched")
    assert write.entered.wait(10.0) and changes.busy()
    old = gallery.model_version
    gallery.switch_model("another-embedder@2", gallery.dim)
    write.release()
    assert changes.join(10.0)
    assert updater.added == 0 and updater.refused["model switched"] == 1, dict(updater.refused)
    assert [info.origin.kind for info in gallery.store.template_infos("c")] == [ENROLLED]
    gallery.switch_model(old, gallery.dim)
    monkeypatch.undo()
    updater.on_stored(outcome, "ev-learnt")
    assert changes.join(10.0) and updater.added == 1 and _kinds(gallery, "c") == [ENROLLED, ADAPTIVE]
    changes.close()


def test_a_passage_of_someone_removed_since_teaches_nothing_and_is_counted(
    tmp_path: Path, gallery: Gallery, labelled: List[Tuple[str, str, Face]]
) -> None:
    """A removal runs on its own thread: the identity a passage was granted to may be gone when the
    update runs. That is a refusal of its own (``removed``), not a store error."""
    person = _of(labelled, "deepface_personC")
    _enrol(gallery, "c", [person[0][1]])
    updater = TemplateUpdater(gallery, _config(tmp_path, min_quality=0.0).adaptive, False)
    outcome = _passage(gallery, person[1][1])
    gallery.remove("c")
    updater.on_stored(outcome, "ev-gone")
    assert dict(updater.refused) == {"removed": 1} and updater.added == 0
    assert len(gallery) == 0


# -- gallery templates ID [--remove] ----------------------------------------------------------------


def _config_file(tmp_path: Path, shared_models: Path) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[storage]\ndir = "{tmp_path / "state"}"\n[models]\ndir = "{shared_models}"\n')
    return path


def _sealed(database: Path, template_id: int) -> List[bytes]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT embedding, crop FROM templates WHERE id=?", (template_id,)).fetchone()
    return [bytes(blob) for blob in row if blob is not None]


def _files(storage: Path) -> Dict[str, bytes]:
    names = [
        STORE_FILE,
        f"{STORE_FILE}-wal",
        f"{STORE_FILE}-shm",
        INDEX_FILE,
        delta_path(storage / INDEX_FILE).name,
    ]
    return {name: (storage / name).read_bytes() for name in names if (storage / name).exists()}


def test_the_templates_commands_list_and_remove_an_adaptive_template_in_the_running_gallery(
    tmp_path: Path, gallery: Gallery, labelled: List[Tuple[str, str, Face]]
) -> None:
    """The MQTT ``templates`` / ``remove_template`` commands as the pipeline thread runs them: the
    removal takes effect in the daemon's own gallery at once (no reload), the last enrolled template
    is refused. (The wire, with a broker, is in tests/integration/test_not_this.py.)"""
    person = _of(labelled, "deepface_personC")
    _enrol(gallery, "c", [person[0][1]])
    updater = TemplateUpdater(gallery, _config(tmp_path, min_quality=0.0).adaptive, False)
    learned = updater.consider(_passage(gallery, person[1][1]), "ev-7").added
    assert learned is not None
    probe = person[1][1].embedding[None]
    assert gallery.search(probe)[0][0].score > 0.99  # the probe is the learnt template itself
    service = CommandService(
        validate_config({"storage": {"dir": str(tmp_path / "state")}}),
        None,
        SimpleNamespace(gallery=gallery),  # type: ignore[arg-type]
        SimpleNamespace(settings=SimpleNamespace(threshold=0.5)),  # type: ignore[arg-type]
        lambda name, document: None,
        dict,
    )
    listed = service.execute(TemplatesCommand(request_id="r", id="c"))
    assert [(t["id"], t["kind"], t["source_event"]) for t in listed["templates"]][1] == (
        learned,
        ADAPTIVE,
        "ev-7",
    )
    (enrolled_id,) = [t["id"] for t in listed["templates"] if t["kind"] == ENROLLED]
    with pytest.raises(CommandError, match="last enrolled template"):
        service.execute(RemoveTemplateCommand(request_id="r", id="c", template_id=enrolled_id))
    with pytest.raises(CommandError, match="no identity 'nobody'"):
        service.execute(TemplatesCommand(request_id="r", id="nobody"))

    removed = service.execute(RemoveTemplateCommand(request_id="r", id="c", template_id=learned))
    assert removed["removed"]["id"] == learned and removed["removed"]["kind"] == ADAPTIVE
    assert [t["id"] for t in service.execute(TemplatesCommand(request_id="r", id="c"))["templates"]] == [
        enrolled_id
    ]
    assert gallery.search(probe)[0][0].score < 0.99  # the running gallery no longer holds it


def test_a_reload_applies_the_adaptive_rules_and_turns_the_update_off(
    tmp_path: Path, gallery: Gallery, labelled: List[Tuple[str, str, Face]], caplog: pytest.LogCaptureFixture
) -> None:
    """SIGHUP / ``reload`` re-reads ``[adaptive]``: a stricter margin refuses what the old one took, and
    ``enabled = false`` stops learning; turning it on needs a restart when it was off at the start."""
    person = _of(labelled, "deepface_personC")
    _enrol(gallery, "c", [person[0][1]])
    _enrol(gallery, "obama", [face for _, face in _of(labelled, "fr_obama")[:1]])  # a runner-up: a margin
    path = tmp_path / "appliance.toml"

    def write(adaptive: str) -> ApplianceConfig:
        path.write_text(f'[storage]\ndir = "{tmp_path / "state"}"\n[adaptive]\n{adaptive}\n')
        return load_config(path)

    config = write("enabled = true\nrequire_liveness = false\nmin_quality = 0.0\nmin_interval_s = 0.0")
    updater = TemplateUpdater(gallery, config.adaptive, False)
    pipeline = SimpleNamespace(settings=SimpleNamespace(threshold=0.5), set_threshold=lambda value: None)
    runtime = SimpleNamespace(gallery=gallery, analyzer=SimpleNamespace(liveness=None))
    service = CommandService(
        config,
        path,
        runtime,
        pipeline,
        lambda *_: None,
        dict,
        templates=updater,  # type: ignore[arg-type]
    )
    passage = _passage(gallery, person[1][1])
    assert passage.decision.margin is not None and 0.1 <= passage.decision.margin < 1.0, passage.decision
    assert updater.consider(passage, "ev-0").added is not None  # the rules at the start take it

    strict = (
        "enabled = true\nrequire_liveness = false\nmin_quality = 0.0\nmin_interval_s = 0.0\nmin_margin = 1.0"
    )
    write(strict)
    service.execute(ReloadCommand(request_id="r"))
    assert updater.settings.min_margin == 1.0 and service.config.adaptive.min_margin == 1.0
    assert updater.consider(passage, "ev-1").reason.startswith("low margin")

    write("enabled = false")
    service.execute(ReloadCommand(request_id="r"))
    assert updater.consider(passage, "ev-2").reason == "disabled"

    # Off at the start: no updater; a reload that turns it on says it needs a restart.
    service = CommandService(load_config(path), path, runtime, pipeline, lambda *_: None, dict)  # type: ignore[arg-type]
    write("enabled = true\nrequire_liveness = false")
    with caplog.at_level("WARNING", logger="appliance.command_service"):
        service.execute(ReloadCommand(request_id="r"))
    assert "takes effect at the next start" in caplog.text
    assert service.config.adaptive.enabled is False


def test_gallery_templates_lists_and_removes_and_the_removed_one_leaves_no_trace(
    tmp_path: Path,
    shared_models: Path,
    gallery: Gallery,
    labelled: List[Tuple[str, str, Face]],
    capsys: pytest.CaptureFixture,
) -> None:
    person = _of(labelled, "deepface_personC")
    _enrol(gallery, "c", [person[0][1]])
    _enrol(gallery, "obama", [face for _, face in _of(labelled, "fr_obama")[:1]])
    updater = TemplateUpdater(gallery, _config(tmp_path, min_quality=0.0).adaptive, False)
    verdict = updater.consider(_passage(gallery, person[1][1]), "ev-42")
    assert verdict.added is not None
    adaptive_id = verdict.added
    (enrolled_id,) = [info.id for info in gallery.store.template_infos("c") if info.origin.kind == ENROLLED]
    storage = tmp_path / "state"
    needles = _sealed(storage / STORE_FILE, adaptive_id)
    vector = person[1][1].embedding
    gallery.close()  # the command line opens the gallery itself
    config = str(_config_file(tmp_path, shared_models))

    assert main(["gallery", "templates", "c", "--json", "--config", config]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["id"], t["kind"]) for t in listed["templates"]] == [
        (enrolled_id, ENROLLED),
        (adaptive_id, ADAPTIVE),
    ]
    assert listed["templates"][1]["source_event"] == "ev-42" and listed["templates"][1]["margin"] is not None
    assert "embedding" not in json.dumps(listed) and "crop" not in json.dumps(listed)
    assert main(["gallery", "templates", "c", "--config", config]) == 0
    text = capsys.readouterr().out
    assert "adaptive" in text and "event ev-42" in text

    # Refused, with the reason: the last enrolled template, a template of another identity, no identity.
    assert main(["gallery", "templates", "c", "--remove", str(enrolled_id), "--config", config]) != 0
    assert "last enrolled template" in capsys.readouterr().err
    assert main(["gallery", "templates", "obama", "--remove", str(adaptive_id), "--config", config]) != 0
    assert "has no template" in capsys.readouterr().err
    assert main(["gallery", "templates", "nobody", "--config", config]) != 0
    assert "no identity 'nobody'" in capsys.readouterr().err

    assert main(["gallery", "templates", "c", "--remove", str(adaptive_id), "--config", config]) == 0
    assert f"removed template {adaptive_id} (adaptive)" in capsys.readouterr().out
    assert main(["gallery", "templates", "c", "--json", "--config", config]) == 0
    assert [t["id"] for t in json.loads(capsys.readouterr().out)["templates"]] == [enrolled_id]

    # No trace: not the sealed blobs in the database, its WAL or the index files, no vector in the index.
    files = _files(storage)
    assert STORE_FILE in files and INDEX_FILE in files
    assert not [f"{name}" for name, data in files.items() for needle in needles if needle in data]
    raw = np.ascontiguousarray(vector, "<f4").tobytes()
    assert not [name for name, data in files.items() if raw[:64] in data]
    config_model = validate_config({"storage": {"dir": str(storage)}})
    with Gallery.open(config_model, gallery.model_version, gallery.dim) as reopened:
        assert reopened.store.check() == []
        best = reopened.search(vector[None, :], identities=1)[0][0]
        assert best.identity_id == "c" and best.score < 0.999  # only the enrolled photo is left


# -- more grants over a sequence of passages --------------------------------------------------------


def _grants(
    tmp_path: Path, analyzer: FaceAnalyzer, labelled: List[Tuple[str, str, Face]], update: bool, rounds: int
) -> Tuple[List[int], int, int, int]:
    """People with 2+ photos enrolled from their first; every other photo passes ``rounds`` times in the
    labels file's order. Returns (granted per round, wrong grants, strangers granted, adaptive templates)."""
    config = _config(tmp_path / ("on" if update else "off"))
    people: Dict[str, List[int]] = {}
    for index, (_, who, _) in enumerate(labelled):
        people.setdefault(who, []).append(index)
    enrolled = {who: rows[0] for who, rows in people.items() if len(rows) >= 2}
    with Gallery.open(config, analyzer.embedder.version, analyzer.embedder.dim) as gallery:
        for who, row in enrolled.items():
            _enrol(gallery, who, [labelled[row][2]])
        updater = TemplateUpdater(gallery, config.adaptive, liveness_enabled=False)
        granted, wrong, strangers = [], 0, 0
        for round_ in range(rounds):
            count = 0
            for index, (_, who, face) in enumerate(labelled):
                if index in enrolled.values():
                    continue
                outcome = _passage(gallery, face)
                decision = outcome.decision
                if decision.decision == GRANTED:
                    if who not in enrolled:
                        strangers += 1
                    elif decision.identity_id == who:
                        count += 1
                    else:
                        wrong += 1
                if update:
                    updater.consider(outcome, f"ev-{round_}-{index}")
            granted.append(count)
        adaptive = sum(
            info.origin.kind == ADAPTIVE for who in enrolled for info in gallery.store.template_infos(who)
        )
    return granted, wrong, strangers, adaptive


def test_with_the_update_people_enrolled_from_one_photo_are_granted_more_often(
    tmp_path: Path, analyzer: FaceAnalyzer, labelled: List[Tuple[str, str, Face]]
) -> None:
    off, off_wrong, off_strangers, off_adaptive = _grants(
        tmp_path, analyzer, labelled, update=False, rounds=1
    )
    on, on_wrong, on_strangers, on_adaptive = _grants(tmp_path, analyzer, labelled, update=True, rounds=2)
    assert off_adaptive == 0 and on_adaptive > 0
    assert off_wrong == on_wrong == 0 and off_strangers == on_strangers == 0
    # The first round learns while it goes, the second profits from all of it; neither loses a grant.
    assert on[0] >= off[0] and on[1] >= on[0]
    # faceapi_leonard's leonard5.png scores 0.40 to the enrolled photo but 0.60 to leonard4.png, which
    # the first round learns: a gain of at least that one, far from the threshold either way.
    assert on[1] > off[0], (off, on)


# -- the daemon's wiring: pipeline → stored event → update ------------------------------------------


@pytest.fixture
def live_models(tmp_path: Path, shared_models: Path) -> Iterator[Tuple[ModelRuntime, ApplianceConfig]]:
    config = validate_config(
        {
            "models": {"dir": str(shared_models)},
            "storage": {"dir": str(tmp_path / "state")},
            "liveness": {"enabled": True},
            "adaptive": {"enabled": True, "min_interval_s": 0.0},
        }
    )
    with live_runtime(config) as runtime:
        yield runtime, config


def test_the_pipeline_teaches_the_gallery_after_a_stored_granted_event(
    live_models: Tuple[ModelRuntime, ApplianceConfig], shared_data: Path
) -> None:
    runtime, config = live_models
    with Gallery.open(config, *runtime.embedder) as gallery:
        Enroller(runtime.analyzer, gallery, config.gallery).enroll(
            "obama", "Barack Obama", [("obama.jpg", read_image(shared_data / "faces/fr_obama/obama.jpg"))]
        )
        Enroller(runtime.analyzer, gallery, config.gallery).enroll(
            "kit", "Kit", [("john1", read_image(shared_data / "faces/fr_kit_harington/john1.jpeg"))]
        )
        changes = ChangeThread()
        updater = TemplateUpdater(gallery, config.adaptive, config.liveness.enabled, changes=changes)
        stored: List[Tuple[str, str]] = []

        def on_stored(outcome: Outcome, event_id: str) -> None:
            stored.append((outcome.decision.decision, event_id))
            updater.on_stored(outcome, event_id)

        with Outbox.open(config.storage.dir / "outbox.db", 1000, 3600.0) as outbox:
            recorder = EventRecorder(config, outbox, Latencies(), lambda: None, on_stored=on_stored)
            settings = DecisionSettings.from_config(config)
            pipeline = Pipeline(runtime, gallery, settings, Latencies(), views=1)
            image = read_image(shared_data / "faces/fr_obama/obama-480p.jpg")
            for turn in range(40):
                recorder.record(pipeline.process_frames([CameraFrame("cam0", image, float(turn))]), {})
                if stored:
                    break
            assert stored and stored[0][0] == GRANTED, stored
            assert changes.join(30.0)  # the pipeline thread handed the passage over
            changes.close()
            event_id = stored[0][1]
            assert [entry.event_id for entry in outbox.pending(10)] == [event_id]
        infos = gallery.store.template_infos("obama")
        assert [info.origin.kind for info in infos] == [ENROLLED, ADAPTIVE], updater.refused
        assert infos[1].origin.source_event == event_id
        assert updater.added == 1
