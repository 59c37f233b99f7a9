"""The encrypted template store and export bundles: keys, sealing, real deletion, migrations, bundles."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np
import pytest

from appliance.gallery.bundle import MAGIC, export_bundle, read_bundle
from appliance.gallery.errors import BundleError, GalleryKeyError, GalleryStoreError, IdentityError
from appliance.gallery.store import SCHEMA_VERSION, TemplateStore, slugify
from tests.synthetic import random_crops, unit_vectors

VERSION = "mobilefacenet@foamliu-v1.0"


@pytest.fixture
def paths(tmp_path: Path) -> Tuple[Path, Path]:
    return tmp_path / "gallery.db", tmp_path / "gallery.key"


@pytest.fixture
def store(paths: Tuple[Path, Path]) -> Iterator[TemplateStore]:
    with TemplateStore.open(*paths) as opened:
        yield opened


def test_round_trip_and_generation(store: TemplateStore) -> None:
    embeddings, crops = unit_vectors(3), random_crops(3)
    ids = store.add("ada", "Ada Lovelace", VERSION, embeddings, crops, [0.9, 0.8, 0.7], external_id="B-17")
    assert len(ids) == 3 and store.generation == 1
    (identity,) = store.identities()
    assert (identity.id, identity.name, identity.external_id, identity.templates) == (
        "ada",
        "Ada Lovelace",
        "B-17",
        3,
    )
    templates = list(store.templates())
    np.testing.assert_array_equal(np.stack([t.embedding for t in templates]), embeddings)
    np.testing.assert_array_equal(np.stack([t.crop for t in templates]), crops)
    got_ids, vectors, owners = store.embeddings(VERSION)
    np.testing.assert_array_equal(vectors, embeddings)
    assert got_ids.tolist() == ids and owners == ["ada"] * 3
    assert store.embeddings("other@1")[0].size == 0
    assert store.check() == []


def test_a_new_key_is_created_only_for_an_empty_gallery(paths: Tuple[Path, Path]) -> None:
    database, key = paths
    with TemplateStore.open(database, key) as store:
        store.add("ada", "Ada", VERSION, unit_vectors(1))
    assert key.stat().st_mode & 0o777 == 0o600
    key.rename(key.with_suffix(".bak"))
    with pytest.raises(GalleryKeyError, match=r"its key .* is missing"):
        TemplateStore.open(database, key)
    assert not key.exists(), "a new key was written over existing data"


def test_the_wrong_key_is_refused(paths: Tuple[Path, Path], tmp_path: Path) -> None:
    database, key = paths
    TemplateStore.open(database, key).close()
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    with pytest.raises(GalleryKeyError, match="encrypted with another key"):
        TemplateStore.open(database, other)


def test_key_file_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o644)
    with pytest.raises(GalleryKeyError, match="readable by other users"):
        TemplateStore.open(tmp_path / "g.db", key)
    key.chmod(0o600)
    TemplateStore.open(tmp_path / "g.db", key).close()  # hex is accepted
    short = tmp_path / "short"
    short.write_bytes(b"x" * 10)
    short.chmod(0o600)
    with pytest.raises(GalleryKeyError, match="32-byte key"):
        TemplateStore.open(tmp_path / "h.db", short)
    # A systemd credential is protected by systemd, whatever its mode.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    credential = credentials / "gallery_key"
    credential.write_bytes(os.urandom(32))
    credential.chmod(0o440)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    TemplateStore.open(tmp_path / "i.db", credential).close()


def test_values_are_encrypted_and_bound_to_their_row(store: TemplateStore, paths: Tuple[Path, Path]) -> None:
    embeddings = unit_vectors(1)
    store.add("ada", "Ada", VERSION, embeddings, random_crops(1))
    store.add("bob", "Bob", VERSION, unit_vectors(1, seed=1))
    raw = paths[0].read_bytes() + paths[0].with_name(paths[0].name + "-wal").read_bytes()
    assert embeddings.tobytes() not in raw and embeddings[0, :8].tobytes() not in raw
    # Move Ada's sealed embedding into Bob's row: it must not open there.
    db = sqlite3.connect(str(paths[0]))
    blob = db.execute("SELECT embedding FROM templates WHERE identity_id='ada'").fetchone()[0]
    db.execute("UPDATE templates SET embedding=? WHERE identity_id='bob'", (blob,))
    db.commit()
    db.close()
    problems = store.check()
    assert len(problems) == 1 and "does not decrypt" in problems[0]


def test_remove_leaves_no_bytes_behind(store: TemplateStore, paths: Tuple[Path, Path]) -> None:
    store.add("keep", "Kept Person", VERSION, unit_vectors(2, seed=5), random_crops(2, seed=5))
    store.add("gone", "Removed Person Xyzzy", VERSION, unit_vectors(3, seed=7), random_crops(3, seed=7))
    db = sqlite3.connect(str(paths[0]))
    blobs = [row for row in db.execute("SELECT embedding, crop FROM templates WHERE identity_id='gone'")]
    db.close()
    secrets = [blob for row in blobs for blob in row] + [b"Removed Person Xyzzy"]
    assert store.remove("gone") == 3
    files = [p for p in paths[0].parent.iterdir() if p.name.startswith(paths[0].name)]
    raw = b"".join(p.read_bytes() for p in files)
    for secret in secrets:
        assert secret[:64] not in raw, "a removed template left bytes in the database or its WAL"
    assert [i.id for i in store.identities()] == ["keep"]
    assert store.check() == []
    with pytest.raises(IdentityError, match="no identity 'gone'"):
        store.remove("gone")


def test_identity_rules(store: TemplateStore) -> None:
    store.add("ada", "Ada", VERSION, unit_vectors(1))
    with pytest.raises(IdentityError, match="another name"):
        store.add("ada", "Bob", VERSION, unit_vectors(1))
    with pytest.raises(IdentityError, match="not allowed"):
        store.add("../etc", "Eve", VERSION, unit_vectors(1))
    with pytest.raises(IdentityError, match="finite"):
        store.add("nan", "Nan", VERSION, np.full((1, 128), np.nan, np.float32))
    with pytest.raises(IdentityError, match="no identity"):
        store.add("nobody", "Nobody", VERSION, unit_vectors(1), create=False)
    assert slugify("Ada  Lovelace!") == "ada-lovelace" and slugify("!!!") == "person"


def test_newer_schema_and_garbage_files_are_refused(paths: Tuple[Path, Path], tmp_path: Path) -> None:
    database, key = paths
    TemplateStore.open(database, key).close()
    db = sqlite3.connect(str(database))
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(GalleryStoreError, match="newer than this firmware"):
        TemplateStore.open(database, key)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(GalleryStoreError, match="not a usable gallery database"):
        TemplateStore.open(garbage, key)


def test_bundle_round_trip(store: TemplateStore, tmp_path: Path) -> None:
    # The name is long enough that random ciphertext cannot hold it by chance (a 3-byte name
    # is in a 100 KB bundle about once in 160 runs, as the CI found).
    name = "Ada Lovelace of Ockham Park"
    store.add("ada", name, VERSION, unit_vectors(2), random_crops(2), [0.5, 0.6], external_id="B-1")
    data = export_bundle(store, "correct horse battery")
    assert data.startswith(MAGIC) and name.encode() not in data
    (identity,) = read_bundle(data, "correct horse battery")
    assert identity.id == "ada" and identity.name == name and identity.external_id == "B-1"
    assert len(identity.templates) == 2
    np.testing.assert_array_equal(identity.templates[0].embedding, unit_vectors(2)[0])
    np.testing.assert_array_equal(identity.templates[1].crop, random_crops(2)[1])


def test_bundle_refusals(store: TemplateStore) -> None:
    store.add("ada", "Ada", VERSION, unit_vectors(1))
    data = export_bundle(store, "correct horse battery")
    with pytest.raises(BundleError, match="wrong passphrase"):
        read_bundle(data, "wrong horse battery")
    tampered = bytearray(data)
    tampered[-5] ^= 1
    with pytest.raises(BundleError, match="altered"):
        read_bundle(bytes(tampered), "correct horse battery")
    with pytest.raises(BundleError, match="bad magic"):
        read_bundle(b"PK\x03\x04" + data[4:], "correct horse battery")
    with pytest.raises(BundleError, match="too short"):
        read_bundle(MAGIC, "correct horse battery")
    with pytest.raises(BundleError, match="at least 8"):
        export_bundle(store, "short")


def _forge(document: object, passphrase: str = "correct horse battery") -> bytes:
    """A correctly encrypted bundle around arbitrary content (what a hostile exporter could send)."""
    import json

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from appliance.gallery.bundle import _key

    salt, nonce = os.urandom(16), os.urandom(12)
    payload = json.dumps(document).encode()
    return MAGIC + salt + nonce + AESGCM(_key(passphrase, salt)).encrypt(nonce, payload, MAGIC)


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([], "format"),
        ({"format": 2, "identities": []}, "format"),
        ({"format": 1}, "no identities"),
        ({"format": 1, "identities": ["x"]}, r"identities\[0\]: expected an object"),
        (
            {"format": 1, "identities": [{"id": "../x", "name": "n", "consent_at": "t", "templates": []}]},
            "not an allowed",
        ),
        (
            {"format": 1, "identities": [{"id": "a", "name": "n", "consent_at": "t", "templates": {}}]},
            "0–1000 templates",
        ),
        (
            {
                "format": 1,
                "identities": [
                    {
                        "id": "a",
                        "name": "n",
                        "consent_at": "t",
                        "templates": [{"model_version": "m", "embedding": "!!"}],
                    }
                ],
            },
            "not base64",
        ),
        (
            {
                "format": 1,
                "identities": [
                    {
                        "id": "a",
                        "name": "n",
                        "consent_at": "t",
                        "templates": [{"model_version": "m", "embedding": "AAAAAAAAAAA="}],
                    }
                ],
            },
            "unit vector",
        ),
    ],
)
def test_forged_bundles_are_refused_with_the_field(document: object, reason: str) -> None:
    with pytest.raises(BundleError, match=reason):
        read_bundle(_forge(document), "correct horse battery")


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_a_gallery_without_a_saved_index_keeps_embeddings_only_encrypted(
    tmp_path: Path, precision: str
) -> None:
    from appliance.config_load import validate_config
    from appliance.gallery.gallery import INDEX_FILE, Gallery

    embeddings = unit_vectors(4, seed=5)
    saving = validate_config({"storage": {"dir": str(tmp_path)}, "gallery": {"index_precision": precision}})
    with Gallery.open(saving, VERSION, 128) as gallery:
        gallery.add("ada", "Ada", embeddings[:2])
    assert (tmp_path / INDEX_FILE).exists()

    private = validate_config(
        {"storage": {"dir": str(tmp_path)}, "gallery": {"persist_index": False, "index_precision": precision}}
    )
    with Gallery.open(private, VERSION, 128) as gallery:
        assert not (tmp_path / INDEX_FILE).exists()  # the old plaintext index is gone at open
        gallery.add("bob", "Bob", embeddings[2:])
        gallery.remove("ada")
        assert not (tmp_path / INDEX_FILE).exists()
        (best,) = gallery.search(embeddings[3:])[0][:1]
        assert best.identity_id == "bob" and best.score > 0.99
    with Gallery.open(private, VERSION, 128) as gallery:  # rebuilt from the store at start
        assert len(gallery) == 2 and [i.id for i in gallery.identities()] == ["bob"]
