"""Identities without a face (GDPR art. 9: a person who declines, or withdraws consent to, face
enrolment passes with card and PIN): created with no template, carried by bundles and fleet records,
and a face forgotten for real — every template, crop and impostor example deleted, the index and its
files without a trace — while the identity keeps its name, cards and PIN.

Real SQLite stores, real Faiss indexes; the fleet's records are sealed and opened with real keys and
its embeddings stated (:func:`tests.synthetic.unit_vectors`): no model is needed, and a path that
asks for one fails.
"""

from __future__ import annotations

import io
import json
import random
import sqlite3
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.access.credentials import verify_pin
from appliance.access.policy import IdentityPolicy
from appliance.change_thread import ChangeThread
from appliance.command_service import CommandService
from appliance.commands import CommandError, EnrollCommand, ForgetFaceCommand, parse
from appliance.config_load import validate_config
from appliance.fleet.authority import Enrolment
from appliance.fleet.errors import FleetRecordError
from appliance.fleet.member import EmbeddingJob, apply_batch
from appliance.fleet.records import IdentityRecord, Tombstone, open_record, record_topic, seal_record
from appliance.gallery.bundle import export_bundle, open_bundle, parse_bundle
from appliance.gallery.delta import delta_path
from appliance.gallery.errors import BundleError, IdentityError
from appliance.gallery.gallery import INDEX_FILE, Gallery
from appliance.gallery.index import as_unit_vectors
from appliance.gallery.reembed import reembed, rows_for
from appliance.gallery.store import TemplateOrigin, TemplateStore
from appliance.updates.keys import key_id
from tests.synthetic import random_crops, unit_vectors
from tests.unit.test_fleet_authority import FakeBroker, _authority
from tests.unit.test_gallery_store import _forge

VERSION = "mobilefacenet@foamliu-v1.0"
OTHER = "arcface@2.0"
D = 128
CARD = "w26:7:12345"
NOW = "2026-12-01T00:00:00Z"
PASSPHRASE = "correct horse battery"
SITE = "hq"
FLEET_KEY = bytes(range(32))
DEADLINE_S = 10.0
WITH_CARD = IdentityPolicy().changed({"cards": [CARD], "pin": "2468", "groups": ["staff"]})


def _config(state: Path) -> Any:
    return validate_config({"storage": {"dir": str(state)}})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TemplateStore]:
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as opened:
        yield opened


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    with Gallery.open(_config(tmp_path), VERSION, D, compact_min_bytes=1 << 20) as opened:
        for number in range(5):
            opened.add(f"p{number}", f"P {number}", unit_vectors(2, 100 + number, dim=D))
        yield opened


def _top(gallery: Gallery, vectors: np.ndarray, depth: int = 1) -> List[List[str]]:
    return [[hit.identity_id for hit in hits] for hits in gallery.search(vectors, depth)]


def _index_bytes(state: Path) -> bytes:
    index = state / INDEX_FILE
    delta = delta_path(index)
    return index.read_bytes() + (delta.read_bytes() if delta.exists() else b"")


def _store_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def _traces(vectors: np.ndarray) -> List[bytes]:
    """What the index files would hold of each of ``vectors``: its float32 row (the delta) and its
    float16 one (the snapshot), their first bytes."""
    unit = as_unit_vectors(vectors, D)
    return [row.astype(kind).tobytes()[:32] for row in unit for kind in ("<f4", "<f2")]


# -- the store -----------------------------------------------------------------------------------------


def test_an_identity_without_a_face_holds_its_policy_and_no_template(store: TemplateStore) -> None:
    generation = store.generation
    store.add_identity("ada", "Ada Lovelace", "B-1815", NOW, WITH_CARD)
    ada = store.identity("ada")
    assert ada is not None and ada.templates == 0 and store.generation == generation + 1
    assert (ada.name, ada.external_id, ada.consent_at) == ("Ada Lovelace", "B-1815", NOW)
    assert ada.policy.cards == (CARD,) and verify_pin("2468", ada.policy.pin)
    assert ada.document()["templates"] == 0 and store.check() == []  # `gallery check` flags nothing
    assert store.embeddings(VERSION)[0].size == 0 and store.model_versions() == {}
    # every check of a new identity, and nothing written when one fails
    for arguments, message in (
        (("ada", "Ada Again"), "'ada' exists already"),
        (("../x", "X"), "not allowed"),
        (("eve", "Eve\x1b[2J"), "ESCAPE"),
        (("eve", "Eve", "B\u202e1"), "RIGHT-TO-LEFT OVERRIDE"),
        (("eve", "Eve", None, None, IdentityPolicy(cards=(CARD,))), "already 'ada''s"),
    ):
        with pytest.raises(IdentityError, match=message):
            store.add_identity(*arguments)  # type: ignore[arg-type]
    assert [i.id for i in store.identities()] == ["ada"] and store.generation == generation + 1
    # photos enrolled later (consent given after all) give the same identity its templates
    store.add("ada", "Ada Lovelace", VERSION, unit_vectors(1, dim=D))
    assert store.identity("ada").templates == 1 and store.identity("ada").policy == WITH_CARD


def _enrol_everything(store: TemplateStore) -> Dict[str, List[bytes]]:
    """Ada with enrolled templates of two embedders (crops kept), an adaptive one and an impostor
    example; Bob beside her. Returns Ada's sealed blobs, to look for in the files afterwards."""
    store.add_identity("ada", "Ada", policy=WITH_CARD)
    store.add("ada", "Ada", VERSION, unit_vectors(2, 1, dim=D), random_crops(2, 1), [0.9, 0.8])
    store.add("ada", "Ada", OTHER, unit_vectors(2, 2, dim=64), random_crops(2, 2), [0.9, 0.8])
    store.add_adaptive(
        "ada", VERSION, unit_vectors(1, 3, dim=D)[0], random_crops(1, 3)[0], 0.9, TemplateOrigin(), keep=3
    )
    store.add_impostor("ada", VERSION, unit_vectors(1, 4, dim=D)[0], random_crops(1, 4)[0], "e-1", 0.7)
    store.add("bob", "Bob", VERSION, unit_vectors(2, 5, dim=D), random_crops(2, 5))
    with sqlite3.connect(str(store.path)) as db:
        templates = db.execute("SELECT embedding, crop FROM templates WHERE identity_id='ada'").fetchall()
        impostors = db.execute("SELECT embedding, crop FROM impostors WHERE identity_id='ada'").fetchall()
    return {
        "templates": [b for row in templates for b in row],
        "impostors": [b for row in impostors for b in row],
    }


def test_a_forgotten_face_leaves_no_template_crop_or_example_and_keeps_the_cards(
    store: TemplateStore,
) -> None:
    secrets = _enrol_everything(store)
    assert len(secrets["templates"]) == 10 and len(secrets["impostors"]) == 2
    assert store.forget_face("ada") == 5  # two embedders' enrolled templates and the adaptive one
    raw = _store_bytes(store.path)
    for blob in secrets["templates"] + secrets["impostors"]:
        assert blob[:64] not in raw, "a forgotten face left bytes in the database or its WAL"
    with sqlite3.connect(str(store.path)) as db:
        assert db.execute("SELECT COUNT(*) FROM templates WHERE identity_id='ada'").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM impostors WHERE identity_id='ada'").fetchone() == (0,)
    ada = store.identity("ada")
    assert ada is not None and ada.templates == 0 and ada.policy == WITH_CARD and ada.name == "Ada"
    assert store.impostors("ada") == [] and store.identity("bob").templates == 2
    assert store.check() == []
    generation = store.generation
    assert store.forget_face("ada") == 0 and store.generation == generation  # nothing left: no change
    with pytest.raises(IdentityError, match="no identity 'nobody'"):
        store.forget_face("nobody")


def test_a_model_switch_keeps_the_people_without_a_face(store: TemplateStore) -> None:
    store.add_identity("ada", "Ada", policy=WITH_CARD)
    store.add("bob", "Bob", VERSION, unit_vectors(2, 5, dim=D), random_crops(2, 5))
    result = reembed(store, VERSION, lambda crops: unit_vectors(len(crops), 9, dim=64))
    assert store.put_version(OTHER, rows_for(store, result)) == 2
    store.drop_versions(keep=OTHER)
    assert {i.id: i.templates for i in store.identities()} == {"ada": 0, "bob": 2}
    assert store.identity("ada").policy == WITH_CARD and store.check() == []


# -- the gallery and its index -------------------------------------------------------------------------


def test_the_gallery_forgets_a_face_from_its_index_and_files(gallery: Gallery, tmp_path: Path) -> None:
    face = unit_vectors(3, 4242, dim=D)
    gallery.add("ada", "Ada", face, policy=WITH_CARD)
    gallery.store.add("ada", "Ada", OTHER, unit_vectors(1, 7, dim=64))  # another embedder's, not indexed
    gallery.add_impostor("ada", unit_vectors(1, 8, dim=D)[0], random_crops(1, 8)[0], "e-1", 0.6)
    assert _top(gallery, face) == [["ada"]] * 3 and _traces(face)[0] in _index_bytes(tmp_path)
    searchable = len(gallery)
    assert gallery.forget_face("ada") == 4
    assert len(gallery) == searchable - 3
    assert all("ada" not in hits for hits in _top(gallery, face, depth=5))
    files = _index_bytes(tmp_path)
    assert not [trace for trace in _traces(face) if trace in files], "the index files keep the face"
    assert not delta_path(tmp_path / INDEX_FILE).exists()  # a new snapshot, as a removal writes
    (ada,) = [i for i in gallery.identities() if i.id == "ada"]
    assert ada.templates == 0 and ada.policy == WITH_CARD
    assert gallery.forget_face("ada") == 0
    with pytest.raises(IdentityError, match="no identity"):
        gallery.forget_face("nobody")
    gallery.close()
    with Gallery.open(_config(tmp_path), VERSION, D) as again:  # the saved index is the store's
        assert len(again) == searchable - 3
        assert all("ada" not in hits for hits in _top(again, face, depth=5))


def test_an_identity_without_a_face_is_never_searched_and_keeps_the_index_current(
    gallery: Gallery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    searchable = len(gallery)
    gallery.add_identity("ada", "Ada", "B-1815", NOW, WITH_CARD)
    with pytest.raises(IdentityError, match="exists already"):
        gallery.add_identity("ada", "Ada", policy=WITH_CARD)
    assert len(gallery) == searchable
    queries = unit_vectors(50, 77, dim=D)
    assert all("ada" not in hits for hits in _top(gallery, queries, depth=6))
    gallery.close()
    with caplog.at_level("INFO"), Gallery.open(_config(tmp_path), VERSION, D) as again:
        assert "rebuilding the gallery index" not in caplog.text  # the delta reached the store's generation
        assert len(again) == searchable
        again.add("ada", "Ada", unit_vectors(1, 55, dim=D))  # consent given later: a face
        assert _top(again, unit_vectors(1, 55, dim=D)) == [["ada"]]
        again.switch_model(OTHER, 64)  # no template of OTHER yet: nobody is searchable
        assert len(again) == 0 and {i.id for i in again.identities()} >= {"ada", "p0"}


# -- bundles ---------------------------------------------------------------------------------------------


def test_a_bundle_carries_an_identity_without_a_face(store: TemplateStore, tmp_path: Path) -> None:
    store.add_identity("ada", "Ada", "B-1815", NOW, WITH_CARD)
    store.add("bob", "Bob", VERSION, unit_vectors(1, 5, dim=D), random_crops(1, 5))
    bundle = open_bundle(export_bundle(store, PASSPHRASE), PASSPHRASE)
    ada = next(i for i in bundle.identities if i.id == "ada")
    assert ada.templates == [] and ada.policy == WITH_CARD
    other = tmp_path / "other"
    other.mkdir()
    data = export_bundle(store, PASSPHRASE)
    with Gallery.open(_config(other), VERSION, D) as imported:
        report = imported.import_bundle(data, PASSPHRASE)
        assert sorted(report.imported) == ["ada", "bob"] and report.skipped == {}
        copy = imported.store.identity("ada")
        assert copy is not None and copy.templates == 0 and copy.policy == WITH_CARD
        assert (copy.external_id, copy.consent_at) == ("B-1815", NOW)
        assert imported.import_bundle(data, PASSPHRASE).skipped.keys() == {"ada", "bob"}
        replaced = imported.import_bundle(data, PASSPHRASE, replace=True)
        assert sorted(replaced.replaced) == ["ada", "bob"] and imported.store.identity("ada").templates == 0
        assert len(imported) == 1 and imported.store.check() == []


def _faceless_document(**changes: Any) -> Dict[str, Any]:
    identity: Dict[str, Any] = {
        "id": "ada",
        "name": "Ada",
        "consent_at": NOW,
        "policy": {"cards": [CARD], "groups": ["staff"]},
        "templates": [],
    }
    identity.update(changes)
    return {"format": 1, "identities": [identity]}


def test_a_hostile_bundle_without_faces_is_refused_by_its_field() -> None:
    (ada,) = parse_bundle(json.dumps(_faceless_document()).encode()).identities
    assert ada.templates == [] and ada.policy.cards == (CARD,)
    for changes, message in (
        ({"templates": None}, r"identities\[0\]\.templates: expected a list of 0–1000"),
        ({"templates": {}}, r"identities\[0\]\.templates"),
        ({"templates": [{}] * 1001}, r"identities\[0\]\.templates"),
        ({"id": "a/b"}, r"identities\[0\]\.id"),
        ({"name": "Ada\u202e"}, r"identities\[0\]\.name"),
        ({"name": ""}, r"identities\[0\]\.name"),
        ({"external_id": "\x00"}, r"identities\[0\]\.external_id"),
        ({"policy": {"cards": ["w26:999:1"]}}, r"identities\[0\]\.policy"),
        ({"policy": {"pin": "1234"}}, r"identities\[0\]\.policy"),  # a hash is stored, never digits
        ({"policy": "card"}, r"identities\[0\]\.policy"),
        ({"consent_at": 7}, r"identities\[0\]\.consent_at"),
    ):
        with pytest.raises(BundleError, match=message):
            open_bundle(_forge(_faceless_document(**changes)), PASSPHRASE)


def test_seeded_mutations_of_a_faceless_bundle_only_ever_raise_bundle_error() -> None:
    rng = random.Random(20261207)
    junk: List[Any] = [None, "", "x" * 300, 7, -1.5, True, [], {}, [None], {"a": 1}, "\ud7ff", "../"]
    keys = ["id", "name", "external_id", "consent_at", "policy", "templates", "created_at"]
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(300):
        document = _faceless_document()
        identity = document["identities"][0]
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(keys)
            if key == "policy" and rng.random() < 0.5:
                identity["policy"] = {rng.choice(["cards", "pin", "groups", "x"]): rng.choice(junk)}
            else:
                identity[key] = rng.choice(junk)
        try:
            parse_bundle(json.dumps(document).encode())
            outcomes["parsed"] += 1
        except BundleError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 200 and sum(outcomes.values()) == 300


# -- fleet records -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def trusted(signer: Ed25519PrivateKey) -> Dict[str, Ed25519PublicKey]:
    return {key_id(signer.public_key()): signer.public_key()}


def _record(
    identity_id: str, revision: int, crops: int = 0, policy: IdentityPolicy = WITH_CARD
) -> IdentityRecord:
    images = tuple(random_crops(crops, revision)) if crops else ()
    return IdentityRecord(identity_id, revision, "Fleet Person", None, NOW, policy, images, (0.9,) * crops)


def test_a_record_without_crops_is_sealed_and_opened(
    signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    sealed = seal_record(_record("p-000000000001", 4), SITE, FLEET_KEY, signer)
    opened = open_record(sealed, SITE, FLEET_KEY, trusted, topic_id="p-000000000001")
    assert isinstance(opened, IdentityRecord)
    assert (opened.crops, opened.qualities, opened.revision) == ((), (), 4)
    assert opened.policy == WITH_CARD


def _forged_record(plaintext: Any, signer: Ed25519PrivateKey) -> bytes:
    from tests.unit.test_fleet_records import FLEET_KEY as RECORDS_KEY
    from tests.unit.test_fleet_records import _forge as forge_record

    assert RECORDS_KEY == FLEET_KEY
    return forge_record(plaintext, signer)


def _faceless_plaintext(**changes: Any) -> Dict[str, Any]:
    document: Dict[str, Any] = {
        "name": "Ada",
        "external_id": None,
        "consent_at": NOW,
        "policy": WITH_CARD.document(),
        "crops": [],
        "qualities": [],
    }
    document.update(changes)
    return document


def test_a_hostile_record_without_crops_is_refused_when_another_field_is_wrong(
    signer: Ed25519PrivateKey, trusted: Dict[str, Ed25519PublicKey]
) -> None:
    assert open_record(_forged_record(_faceless_plaintext(), signer), SITE, FLEET_KEY, trusted).crops == ()
    for changes, words in (
        ({"qualities": [0.5]}, "qualities"),
        ({"qualities": None}, "qualities"),
        ({"crops": None}, "crops"),
        ({"crops": {}}, "crops"),
        ({"name": "\x1b[2JAdmin"}, "ESCAPE"),
        ({"consent_at": "now"}, "consent_at"),
        ({"policy": {"cards": ["not a card"]}}, "card"),
        ({"policy": {"pin": "2468"}}, "pin"),  # digits where a door keeps only a hash
        ({"no_face": True}, "exactly"),
    ):
        with pytest.raises(FleetRecordError) as caught:
            open_record(_forged_record(_faceless_plaintext(**changes), signer), SITE, FLEET_KEY, trusted)
        assert caught.value.reason == "invalid" and words in str(caught.value), (changes, str(caught.value))
    rng = random.Random(7)
    junk: List[Any] = [None, "", 0, -1, 1.5, True, [], {}, [0.5], ["AAAA"], "x" * 300, {"x": 1}]
    for _ in range(200):
        plaintext = _faceless_plaintext()
        for _ in range(rng.randint(1, 3)):
            plaintext[rng.choice(sorted(plaintext))] = rng.choice(junk)
        try:
            open_record(_forged_record(plaintext, signer), SITE, FLEET_KEY, trusted)
        except FleetRecordError as err:
            assert err.reason == "invalid"


# -- a door applying records ---------------------------------------------------------------------------


def _no_model(crops: np.ndarray) -> EmbeddingJob:
    raise AssertionError("a record without crops asked for the models")


def _embedded(gallery: Gallery, vectors: np.ndarray) -> Any:
    """``embed`` for ``apply_batch``: the stated ``vectors`` (one per crop), as the door's embedder."""

    def embed(crops: np.ndarray) -> EmbeddingJob:
        assert len(crops) == len(vectors)
        future: Future = Future()
        future.set_result((gallery.model_version, vectors))
        return future

    return embed


def test_a_door_applies_a_record_without_crops_with_no_model(gallery: Gallery) -> None:
    assert apply_batch(gallery, [_record("p-000000000001", 1)], _no_model, lambda: 8, save=True) == (1, 0, [])
    person = gallery.store.identity("p-000000000001")
    assert person is not None and person.templates == 0 and person.policy == WITH_CARD
    assert gallery.store.fleet_identities() == {"p-000000000001": 1}
    # mixed with records that carry crops: only theirs are embedded
    batch = [
        _record("p-000000000002", 2, crops=2),
        _record("p-000000000003", 3),
        _record("p-000000000004", 4, crops=1),
    ]
    embed = _embedded(gallery, unit_vectors(3, 31, dim=D))
    assert apply_batch(gallery, batch, embed, lambda: 8, save=True) == (3, 0, [])
    counts = {i.id: i.templates for i in gallery.identities() if i.id.startswith("p-")}
    assert counts == {"p-000000000001": 0, "p-000000000002": 2, "p-000000000003": 0, "p-000000000004": 1}


def test_a_record_going_to_no_crops_deletes_the_face_at_the_door(gallery: Gallery, tmp_path: Path) -> None:
    face = unit_vectors(2, 61, dim=D)
    gallery.add("local-ada", "Ada", face[:1])  # enrolled here: the record's faces match her
    record = _record("p-000000000009", 1, crops=2)
    assert apply_batch(gallery, [record], _embedded(gallery, face), lambda: 8, True, 0.6) == (1, 0, [])
    gallery.add_adaptive("p-000000000009", unit_vectors(1, 62, dim=D)[0], None, 0.9, TemplateOrigin(), keep=3)
    gallery.add_impostor("p-000000000009", unit_vectors(1, 63, dim=D)[0], None, "e-2", 0.5)
    assert gallery.store.look_alikes()[0] == 1 and gallery.store.identity("p-000000000009").templates == 3
    gone = np.concatenate([face, unit_vectors(1, 62, dim=D)])
    assert _top(gallery, gone[1:]) == [["p-000000000009"]] * 2
    # N → 0 crops: the authority's `fleet set --forget-face`; the faces kept of the passages go too
    told: List[str] = []
    gallery.face_forgotten = told.append
    assert apply_batch(gallery, [_record("p-000000000009", 2)], _no_model, lambda: 8, save=True) == (1, 0, [])
    assert told == ["p-000000000009"]
    person = gallery.store.identity("p-000000000009")
    assert person is not None and person.templates == 0 and person.policy == WITH_CARD
    assert gallery.store.impostors("p-000000000009") == [] and gallery.store.look_alikes()[0] == 0
    assert gallery.store.fleet_identities() == {"p-000000000009": 2}
    assert all("p-000000000009" not in hits for hits in _top(gallery, gone, depth=5))
    files = _index_bytes(tmp_path)
    assert not [trace for trace in _traces(gone[1:]) if trace in files]  # gone[0] is local-ada's too
    # a door refuses (and keeps) a local enrolment, a record without crops as any other
    local = IdentityRecord("local-ada", 3, "Ada", None, NOW, IdentityPolicy(), (), ())
    (refusal,) = apply_batch(gallery, [local], _no_model, lambda: 8, save=True)[2]
    assert refusal[1] == "local_identity" and gallery.store.identity("local-ada").templates == 1
    tombstone = Tombstone("p-000000000009", 3, NOW)
    assert apply_batch(gallery, [tombstone], _no_model, lambda: 8, save=True) == (0, 1, [])
    assert told == ["p-000000000009"] * 2 and gallery.store.identity("p-000000000009") is None


# -- the authority ---------------------------------------------------------------------------------------


def test_the_authority_publishes_a_person_without_a_face_and_forgets_a_face(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    trusted = authority.trusted

    def retained(identity_id: str) -> IdentityRecord:
        payload = broker.retained[record_topic(authority.prefix, authority.site, identity_id)]
        record = open_record(payload, authority.site, authority.fleet_key, trusted, topic_id=identity_id)
        assert isinstance(record, IdentityRecord)
        return record

    faceless = authority.enroll(Enrolment("p-0000000000aa", "Ada", "B-1", NOW, WITH_CARD, (), ()))
    assert retained(faceless.identity_id).crops == () and retained(faceless.identity_id).policy == WITH_CARD
    crop = np.full((112, 112, 3), 120, np.uint8)
    faced = authority.enroll(Enrolment("p-0000000000bb", "Bob", None, NOW, IdentityPolicy(), (crop,), (0.8,)))
    assert len(retained(faced.identity_id).crops) == 1
    forgotten = authority.set_policy(faced.identity_id, {"add_cards": ["w26:7:99"]}, forget_face=True)
    bob = retained(faced.identity_id)
    assert forgotten.revision > faced.revision and bob.crops == () and bob.policy.cards == ("w26:7:99",)
    state = open_record(
        authority.state.sealed(faced.identity_id) or b"", authority.site, authority.fleet_key, trusted
    )
    assert isinstance(state, IdentityRecord) and state.crops == ()  # the state holds no crop of it either


# -- the command line --------------------------------------------------------------------------------------


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, stdin: str, *argv: str
) -> Tuple[int, str, str]:
    from appliance import cli

    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_command_line_enrols_without_a_face_and_forgets_a_face(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(f'[storage]\ndir = "{tmp_path}"\n[models]\ndir = "{tmp_path / "no-models"}"\n')
    conf = ("--config", str(config))
    photo = tmp_path / "ada.jpg"
    photo.write_bytes(b"never read")
    code, out, err = _cli(
        monkeypatch,
        capsys,
        "2468\n",
        "enroll",
        "--no-face",
        "--name",
        "Ada Lovelace",
        "--card",
        CARD,
        "--pin",
        *conf,
    )
    assert code == 0, err
    assert out.strip() == "ada-lovelace (Ada Lovelace): added without a face, 0 templates · 1 card · PIN"
    assert "warning" not in err
    code, out, err = _cli(
        monkeypatch, capsys, "", "enroll", "--no-face", "--name", "Vera", "--id", "vera", "--json", *conf
    )
    assert code == 0 and json.loads(out)["templates"] == 0
    assert "warning: vera has no face and holds no card" in err and "learn_card" in err
    for argv, message in (
        (("enroll", "--no-face", "--name", "Eve", str(photo)), "takes no photos"),
        (("enroll", "--no-face", "--name", "Eve", "--from-dir", str(tmp_path)), "takes no --from-dir"),
        (("enroll", "--no-face", "--roster", str(tmp_path / "people.csv")), "takes no --roster"),
        (("enroll", "--no-face", "--name", "Eve", "--largest"), "takes no --largest"),
        (("enroll", "--no-face", "--id", "eve"), "needs --name"),
        (("enroll", "--name", "Eve"), "or --no-face"),
        (("gallery", "set", "vera"), "or --forget-face"),
    ):
        code, out, err = _cli(monkeypatch, capsys, "", *argv, *conf)
        assert code == 2 and message in err, (argv, code, err)
    code, _, err = _cli(
        monkeypatch, capsys, "", "enroll", "--no-face", "--name", "Vera", "--id", "vera", *conf
    )
    assert code == 1 and "'vera' exists already" in err
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        ada = store.identity("ada-lovelace")
        assert ada is not None and ada.templates == 0 and verify_pin("2468", ada.policy.pin)
        store.add("vera", "Vera", VERSION, unit_vectors(2, 3, dim=D), random_crops(2, 3))
    code, out, _ = _cli(monkeypatch, capsys, "", "gallery", "list", *conf)
    assert code == 0 and "0 template(s), no face" in out and "2 template(s)\n" in out
    code, out, err = _cli(monkeypatch, capsys, "", "gallery", "set", "vera", "--forget-face", *conf)
    assert code == 0, err
    assert out.startswith("vera: face forgotten, 2 template(s) and crops deleted") and "no card" in err
    code, out, _ = _cli(
        monkeypatch, capsys, "", "gallery", "set", "ada-lovelace", "--forget-face", "--json", *conf
    )
    assert code == 0 and json.loads(out)["templates_removed"] == 0 and json.loads(out)["policy"]["pin"]
    code, _, err = _cli(monkeypatch, capsys, "", "gallery", "set", "nobody", "--forget-face", *conf)
    assert code == 1 and "no identity 'nobody'" in err
    code, out, _ = _cli(monkeypatch, capsys, "", "gallery", "list", "--json", *conf)
    assert {i["id"]: i["templates"] for i in json.loads(out)["identities"]} == {"ada-lovelace": 0, "vera": 0}
    assert _cli(monkeypatch, capsys, "", "gallery", "check", *conf)[0] == 0


def test_the_fleet_command_line_refuses_what_a_person_without_a_face_cannot_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    auth = tmp_path / "AUTH.toml"
    auth.write_text(
        f'[authority]\nsite = "{SITE}"\nsigning_key = "keys/a.key"\nfleet_key_file = "keys/fleet.key"\n'
        'state_dir = "state"\n[mqtt]\nhost = "127.0.0.1"\nport = 9\n'
    )
    photo = tmp_path / "ada.jpg"
    photo.write_bytes(b"never read")
    for argv, message in (
        (("enroll", "--no-face", "--name", "Ada", str(photo)), "takes no photos"),
        (("enroll", "--no-face", "--name", "Ada", "--face", "2"), "takes no --face"),
        (("enroll", "--name", "Ada"), "or --no-face"),
        (("set", "p-0123456789ab"), "or --forget-face"),
    ):
        code, _, err = _cli(monkeypatch, capsys, "", "fleet", *argv, "--config", str(auth))
        assert code == 2 and message in err, (argv, code, err)


def test_a_roster_enrols_people_without_a_face_with_their_cards_at_a_door(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``enroll --roster`` with ``cards`` and ``no_face`` columns: people without a face enrolled with no
    model (the models folder does not exist), a card another identity holds refusing the roster whole."""
    config = tmp_path / "appliance.toml"
    config.write_text(f'[storage]\ndir = "{tmp_path}"\n[models]\ndir = "{tmp_path / "no-models"}"\n')
    conf = ("--config", str(config))
    assert (
        _cli(monkeypatch, capsys, "", "enroll", "--no-face", "--name", "Vera", "--card", CARD, *conf)[0] == 0
    )
    roster = tmp_path / "people.csv"
    roster.write_text("name,external_id,cards,no_face\nGrace Hopper,B-1906,w26:1:1 w26:1:2,yes\nHedy,,,yes\n")
    code, out, err = _cli(monkeypatch, capsys, "", "enroll", "--roster", str(roster), "--json", *conf)
    assert code == 0, err
    report = json.loads(out)
    assert (report["enrolled"], report["held"], report["refused"]) == (2, 0, 0)
    assert [(p["id"], p["templates"]) for p in report["people"]] == [("grace-hopper", 0), ("hedy", 0)]
    assert "line 3: hedy has no face and holds no card" in err and "grace" not in err
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        grace = store.identity("grace-hopper")
        assert grace.templates == 0 and grace.policy.cards == ("w26:1:1", "w26:1:2")
        assert grace.external_id == "B-1906"
    code, out, _ = _cli(monkeypatch, capsys, "", "enroll", "--roster", str(roster), *conf)
    assert code == 0 and "0 enrolled, 2 enrolled already" in out
    clash = tmp_path / "clash.csv"
    clash.write_text(f"name,cards,no_face\nAlan,{CARD},yes\nJoan,w26:1:2,yes\nKate,w26:3:3,yes\n")
    code, _, err = _cli(monkeypatch, capsys, "", "enroll", "--roster", str(clash), *conf)
    assert code == 2 and "nothing was enrolled" in err
    assert f"line 2: card {CARD} is held by identity 'vera'" in err
    assert "line 3: card w26:1:2 is held by identity 'grace-hopper'" in err
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        assert sorted(i.id for i in store.identities()) == ["grace-hopper", "hedy", "vera"]
    # With --update, people enrolled already take the roster's groups and cards: Hedy the card Grace
    # gives up in the same run; a card another holds still refuses the roster whole.
    export = tmp_path / "export.csv"
    export.write_text("name,groups,cards,no_face\nGrace Hopper,night,w26:1:3,yes\nHedy,,w26:1:1,yes\n")
    code, out, err = _cli(monkeypatch, capsys, "", "enroll", "--roster", str(export), "--update", *conf)
    assert code == 0 and "0 enrolled, 2 updated, 0 enrolled already" in out, out + err
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        grace, hedy = store.identity("grace-hopper"), store.identity("hedy")
        assert grace.policy.cards == ("w26:1:3",) and grace.policy.groups == ("night",)
        assert hedy.policy.cards == ("w26:1:1",) and grace.external_id == "B-1906"  # not a policy column
    code, out, _ = _cli(monkeypatch, capsys, "", "enroll", "--roster", str(export), "--update", *conf)
    assert code == 0 and "0 updated, 2 enrolled already" in out
    export.write_text("name,groups\nGrace Hopper,staff\n")  # an HR export has no photos column
    code, out, err = _cli(monkeypatch, capsys, "", "enroll", "--roster", str(export), "--update", *conf)
    assert code == 0 and "0 enrolled, 1 updated" in out, out + err
    export.write_text("name,groups\nGrace Hopper,staff\nNew Person,staff\n")
    code, _, err = _cli(monkeypatch, capsys, "", "enroll", "--roster", str(export), "--update", *conf)
    assert code == 2 and "line 3: 'new-person' is not enrolled yet: give photos, or no_face" in err
    code, _, err = _cli(monkeypatch, capsys, "", "enroll", "--roster", str(export), *conf)
    assert code == 2 and "line 2: photos are required" in err  # without --update, every row needs them
    export.write_text(f"name,cards,no_face\nHedy,{CARD},yes\n")  # Vera's
    code, _, err = _cli(monkeypatch, capsys, "", "enroll", "--roster", str(export), "--update", *conf)
    assert code == 2 and f"line 2: card {CARD} is held by identity 'vera'" in err
    code, _, err = _cli(monkeypatch, capsys, "", "enroll", "--name", "X", "--update", *conf)
    assert code == 2 and "--update goes with --roster" in err


def test_a_fleet_roster_publishes_people_without_a_face_and_refuses_a_sites_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """``fleet enroll-batch`` with ``no_face`` rows: records without crops, no model loaded (none is
    configured); a card that a live identity holds refuses the roster, ``--check`` included."""
    from appliance.fleet import authority as authority_module
    from appliance.fleet.records import read_fleet_key
    from appliance.updates.keys import load_public_key

    broker = FakeBroker()
    monkeypatch.setattr(authority_module, "FleetBroker", lambda *args: broker)
    auth = tmp_path / "AUTH.toml"
    auth.write_text(
        f'[authority]\nsite = "{SITE}"\nsigning_key = "keys/a.key"\nfleet_key_file = "keys/fleet.key"\n'
        f'state_dir = "state"\n[mqtt]\nhost = "127.0.0.1"\nport = 9\n[models]\ndir = "{tmp_path / "none"}"\n'
    )
    fleet = ("fleet", "enroll-batch", "--config", str(auth))
    assert _cli(monkeypatch, capsys, "", "fleet", "init", "--config", str(auth))[0] == 0
    roster = tmp_path / "people.csv"
    roster.write_text("name,id,cards,no_face\nGrace,p-grace,w26:1:1,yes\nHedy,p-hedy,,yes\n")
    code, out, err = _cli(monkeypatch, capsys, "", *fleet, "--json", str(roster))
    assert code == 0, err
    report = json.loads(out)
    assert report["published"] == 2 and [p["note"] for p in report["people"]] == [
        "without a face",
        "without a face, holding no card yet",
    ]
    public = load_public_key(tmp_path / "keys" / "a.pub")
    grace = open_record(
        broker.retained[record_topic("face-appliance-fleet", SITE, "p-grace")],
        SITE,
        read_fleet_key(tmp_path / "keys" / "fleet.key"),
        {key_id(public): public},
    )
    assert isinstance(grace, IdentityRecord) and grace.crops == () and grace.policy.cards == ("w26:1:1",)
    clash = tmp_path / "clash.csv"
    clash.write_text("name,id,cards,no_face\nAlan,p-alan,w26:1:1,yes\n")
    published = list(broker.published)
    for check in ((), ("--check",)):
        code, _, err = _cli(monkeypatch, capsys, "", *fleet, *check, str(clash))
        assert code == 2 and "line 2: card w26:1:1 of Alan is held by identity 'p-grace' (Grace)" in err, err
    assert broker.published == published
    # The HR export again, with --update: Grace's groups and cards change, Hedy gets a card, and Ida,
    # new, takes the card Grace gives up in the same run; run again, nothing changes.
    export = tmp_path / "export.csv"
    export.write_text(
        "name,id,groups,cards,no_face\nGrace,p-grace,night,w26:1:5,yes\nHedy,p-hedy,,w26:1:6,yes\n"
        "Ida,p-ida,,w26:1:1,yes\n"
    )
    code, out, err = _cli(monkeypatch, capsys, "", *fleet, "--update", "--json", str(export))
    assert code == 0, err
    report = json.loads(out)
    assert (report["updated"], report["published"], report["held"]) == (2, 1, 0)
    assert [p["status"] for p in report["people"]] == ["updated", "updated", "published"]
    grace = open_record(
        broker.retained[record_topic("face-appliance-fleet", SITE, "p-grace")],
        SITE,
        read_fleet_key(tmp_path / "keys" / "fleet.key"),
        {key_id(public): public},
    )
    assert grace.policy.cards == ("w26:1:5",) and grace.policy.groups == ("night",)
    code, out, err = _cli(monkeypatch, capsys, "", *fleet, "--update", str(export))
    assert code == 0 and "0 published, 0 updated, 3 enrolled already" in out, out
    export.write_text("id,name,groups\np-grace,Grace,staff\np-new,New,staff\n")
    code, _, err = _cli(monkeypatch, capsys, "", *fleet, "--update", str(export))
    assert code == 2 and "line 3: not enrolled yet: give photos, or no_face" in err, err
    export.write_text("id,name,groups\np-grace,Grace,staff\n")
    code, out, err = _cli(monkeypatch, capsys, "", *fleet, "--update", str(export))
    assert code == 0 and "1 updated" in out, out + err
    with pytest.raises(SystemExit) as usage:
        _cli(monkeypatch, capsys, "", *fleet, "--update", "--replace", str(export))
    assert usage.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# -- MQTT commands ---------------------------------------------------------------------------------------


def _payload(**document: Any) -> bytes:
    return json.dumps({"request_id": "r1", **document}).encode()


def test_the_enroll_and_forget_face_commands_are_validated_before_anything_is_done() -> None:
    _, command = parse(
        "enroll", _payload(name="Ada", no_face=True, cards=[CARD], pin="2468", groups=["staff"], id="ada")
    )
    assert isinstance(command, EnrollCommand) and command.no_face and command.image is None
    policy = command.policy()
    assert policy.cards == (CARD,) and policy.groups == ("staff",) and verify_pin("2468", policy.pin)
    assert "2468" not in repr(command)
    _, command = parse("forget_face", _payload(id="ada"))
    assert isinstance(command, ForgetFaceCommand) and command.id == "ada"
    for name, document, words in (
        (
            "enroll",
            {"name": "Ada", "no_face": True, "image": "AAAA"},
            "no_face: a person without a face takes no image",
        ),
        ("enroll", {"name": "Ada", "no_face": True, "event_id": "e-1"}, "takes no event_id"),
        ("enroll", {"name": "Ada", "no_face": True, "face": 1}, "takes no face"),
        ("enroll", {"name": "Ada"}, "no_face: true"),
        ("enroll", {"name": "Ada", "no_face": "yes"}, "no_face"),
        ("enroll", {"name": "Ada", "no_face": True, "cards": ["w26:999:1"]}, "cards"),
        ("enroll", {"name": "Ada", "no_face": True, "cards": "w26:7:1"}, "cards"),
        ("enroll", {"name": "Ada", "no_face": True, "pin": "12"}, "pin"),
        ("enroll", {"name": "Ada", "no_face": True, "pin": 2468}, "pin"),
        ("enroll", {"name": "Ada", "no_face": True, "valid_until": "soon"}, "valid_until"),
        ("enroll", {"name": "Ada\u202e", "no_face": True}, "name"),
        ("enroll", {"name": "Ada", "no_face": True, "badge": "x"}, "badge: unknown key"),
        ("forget_face", {}, "id: required"),
        ("forget_face", {"id": ""}, "id"),
        ("forget_face", {"id": "x" * 65}, "id"),
        ("forget_face", {"id": 7}, "id"),
        ("forget_face", {"id": "ada", "templates": True}, "templates: unknown key"),
    ):
        with pytest.raises(CommandError, match=words) as caught:
            parse(name, _payload(**document))
        assert caught.value.code == "invalid" and caught.value.request_id == "r1", document


@pytest.fixture
def changes() -> Iterator[ChangeThread]:
    thread = ChangeThread()
    yield thread
    thread.join(DEADLINE_S)
    thread.close()


def test_the_commands_enrol_without_a_face_and_forget_a_face_on_the_running_gallery(
    gallery: Gallery, tmp_path: Path, changes: ChangeThread
) -> None:
    answers: List[Tuple[str, Dict[str, Any]]] = []
    service = CommandService(
        _config(tmp_path),
        None,
        SimpleNamespace(gallery=gallery),  # type: ignore[arg-type]
        SimpleNamespace(settings=SimpleNamespace(threshold=0.5)),  # type: ignore[arg-type]
        lambda name, document: answers.append((name, document)),
        dict,
        changes=changes,
    )

    def run(command: str, **document: Any) -> Dict[str, Any]:
        answers.clear()
        service.receive(command, _payload(**document))
        service.run_pending()
        assert service.changes.join(DEADLINE_S)
        service.run_pending()
        ((answered, answer),) = answers
        assert answered == command
        return answer

    answer = run("enroll", name="Ada", id="ada", no_face=True, cards=[CARD], pin="2468")
    assert answer["ok"] and answer["result"]["templates"] == 0 and "warning" not in answer["result"]
    assert answer["result"]["policy"]["cards"] == [CARD] and answer["result"]["policy"]["pin"] is True
    assert "2468" not in json.dumps(answer)
    answer = run("enroll", name="Vera", no_face=True)
    assert answer["result"]["id"] == "vera" and "no card" in answer["result"]["warning"]
    refused = run("enroll", name="Ada", id="ada", no_face=True)
    assert refused["error"]["code"] == "refused" and "exists already" in refused["error"]["message"]
    refused = run("enroll", name="Eve", id="eve", no_face=True, cards=[CARD])
    assert refused["error"]["code"] == "refused" and "already 'ada''s" in refused["error"]["message"]
    refused = run("enroll", name="Eve", id="../eve", no_face=True)
    assert refused["error"]["code"] == "invalid" and refused["error"]["message"].startswith("id: ")
    face = unit_vectors(2, 4242, dim=D)
    gallery.add("bob", "Bob", face)
    assert run("forget_face", id="bob")["result"] == {"id": "bob", "removed": 2}
    assert all("bob" not in hits for hits in _top(gallery, face, depth=5))
    assert gallery.store.identity("bob").templates == 0
    assert run("forget_face", id="ada")["result"] == {"id": "ada", "removed": 0}
    refused = run("forget_face", id="nobody")
    assert refused["error"]["code"] == "refused" and "no identity 'nobody'" in refused["error"]["message"]
    invalid = run("forget_face", id="bob", extra=1)
    assert invalid["error"]["code"] == "invalid" and "extra: unknown key" in invalid["error"]["message"]
