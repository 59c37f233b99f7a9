"""Fuzzing the gallery import bundle: a mutated bundle is imported correctly or refused, never half-done.

A real bundle is exported from a gallery of two identities (random unit embeddings of the active
length and of an older model version, real PNG crops). Its decrypted JSON content is mutated
structurally (values replaced by any JSON value, keys deleted or added, lists emptied or duplicated)
and fed to the parser; a smaller number of mutated documents are sealed as real bundles and imported
into a live gallery; and the sealed bytes themselves are truncated and flipped. Invariants: the
parser returns identities or raises :class:`BundleError`; an import either succeeds and leaves a
gallery that still opens, searches and passes its integrity check, or raises a
:class:`GalleryError` and leaves the gallery exactly as it was.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, Union

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import example, given
from hypothesis import strategies as st

from appliance.gallery.bundle import MAGIC, NONCE_BYTES, SALT_BYTES, _key, parse_payload
from appliance.gallery.errors import BundleError, GalleryError
from appliance.gallery.gallery import Gallery
from appliance.gallery.store import TemplateStore
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.test_fuzz_images import png_bomb

MODEL = "mobilefacenet@1"
OLD_MODEL = "mobilefacenet@0"
DIM = 128
PASSPHRASE = "correct horse battery"
KeyPath = Tuple[Union[str, int], ...]


def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _open(folder: Path) -> Gallery:
    store = TemplateStore.open(folder / "gallery.db", folder / "gallery.key")
    return Gallery(store, MODEL, DIM, folder / "gallery.index")


@pytest.fixture
def source_bundle(tmp_path: Path) -> Tuple[bytes, Dict[str, Any]]:
    """A real bundle of two identities, and its decrypted document."""
    rng = np.random.default_rng(1)
    crop = np.random.default_rng(2).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    with _open(tmp_path / "source") as gallery:
        gallery.add(
            "ada", "Ada Lovelace", np.stack([_unit(rng, DIM), _unit(rng, DIM)]), np.stack([crop, crop])
        )
        gallery.store.add("grace", "Grace Hopper", OLD_MODEL, _unit(rng, 64)[None], None, [0.5])
        data = gallery.export(PASSPHRASE)
    salt = data[len(MAGIC) : len(MAGIC) + SALT_BYTES]
    nonce = data[len(MAGIC) + SALT_BYTES : len(MAGIC) + SALT_BYTES + NONCE_BYTES]
    payload = AESGCM(_key(PASSPHRASE, salt)).decrypt(
        nonce, data[len(MAGIC) + SALT_BYTES + NONCE_BYTES :], MAGIC
    )
    return data, json.loads(payload)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Gallery]:
    """The gallery imported into: one identity of its own."""
    with _open(tmp_path / "target") as gallery:
        gallery.add("obama", "Barack Obama", _unit(np.random.default_rng(3), DIM)[None])
        yield gallery


def _paths(node: Any, prefix: KeyPath = ()) -> List[KeyPath]:
    found: List[KeyPath] = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", "a\n", "x" * 300, "\ud800", "AAAA", "obama", "ada", MODEL]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def _special_values(dim_mismatch_embedding: str, bomb: str) -> st.SearchStrategy[Any]:
    return st.sampled_from([dim_mismatch_embedding, bomb, "AAAAAA==", "////", 1e308, float("nan"), -1, []])


@st.composite
def _mutated(draw: st.DrawFn, document: Dict[str, Any], specials: st.SearchStrategy[Any]) -> Dict[str, Any]:
    document = copy.deepcopy(document)
    paths = _paths(document)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(paths))
        parent: Any = document
        try:
            for part in path[:-1]:
                parent = parent[part]
            if not path:
                document = draw(_json)
                break
            leaf = path[-1]
            action = draw(st.sampled_from(["replace", "special", "delete", "add", "duplicate"]))
            if action == "replace":
                parent[leaf] = draw(_json)
            elif action == "special":
                parent[leaf] = draw(specials)
            elif action == "delete":
                del parent[leaf]
            elif action == "add" and isinstance(parent, dict):
                parent[draw(st.text(max_size=8))] = draw(_json)
            elif action == "duplicate" and isinstance(parent, list):
                parent.append(copy.deepcopy(parent[leaf]))
        except (KeyError, IndexError, TypeError):
            continue
    return document


def _specials() -> st.SearchStrategy[Any]:
    other_dim = base64.b64encode(_unit(np.random.default_rng(4), 96).astype("<f4").tobytes()).decode()
    return _special_values(other_dim, base64.b64encode(png_bomb(30_000, 30_000)).decode())


def _check_parsed(payload: bytes) -> None:
    try:
        identities = parse_payload(payload)
    except BundleError as err:
        assert str(err)
        return
    for identity in identities:
        assert identity.id == identity.id.strip() and "\n" not in identity.id
        for text in (identity.id, identity.name, identity.external_id or "", identity.consent_at):
            text.encode("utf-8")  # goes into the database (an unpaired surrogate would not)
        for template in identity.templates:
            template.model_version.encode("utf-8")  # goes into the sealed values' associated data
            assert template.embedding.dtype == np.float32 and template.embedding.ndim == 1
            assert np.isfinite(template.embedding).all()
            assert template.crop is None or template.crop.shape == (112, 112, 3)
            assert template.quality is None or np.isfinite(template.quality)


def test_parse_mutated_documents(source_bundle: Tuple[bytes, Dict[str, Any]], budget: Any) -> None:
    _, document = source_bundle
    spent = budget("bundle: parse mutated content")
    specials = _specials()

    bomb_crop = copy.deepcopy(document)
    bomb_crop["identities"][0]["templates"][0]["crop"] = base64.b64encode(png_bomb(30_000, 30_000)).decode()
    newline_id = copy.deepcopy(document)
    newline_id["identities"][0]["id"] = "ada\n"

    @fuzz_settings(400)
    @given(_mutated(document, specials) | st.binary(max_size=200).map(lambda raw: {"raw": raw}))
    @example({"raw": b"[" * 100_000})
    @example(bomb_crop)  # a 30 000 × 30 000 PNG as a crop: refused from its header, never decoded
    @example(newline_id)  # "ada\n" passed a `$`-anchored pattern
    def run(mutated: Dict[str, Any]) -> None:
        if not spent.spend():
            return
        raw = mutated.get("raw") if isinstance(mutated, dict) else None
        _check_parsed(raw if isinstance(raw, bytes) else json.dumps(mutated).encode("utf-8", "surrogatepass"))

    run()
    _check_parsed(json.dumps(document).encode())


def _seal(document: Any) -> bytes:
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    payload = json.dumps(document).encode("utf-8", "surrogatepass")
    return MAGIC + salt + nonce + AESGCM(_key(PASSPHRASE, salt)).encrypt(nonce, payload, MAGIC)


def _state(gallery: Gallery) -> Tuple[Any, ...]:
    return (
        gallery.store.generation,
        tuple(gallery.identities()),
        len(gallery),
        tuple(sorted(gallery.store.model_versions().items())),
    )


def _consistent(gallery: Gallery, folder: Path) -> None:
    assert not gallery.store.check()
    probe = _unit(np.random.default_rng(5), DIM)[None]
    gallery.search(probe)
    with _open(folder) as reopened:  # what the daemon does at its next start
        assert len(reopened) == len(gallery)
        reopened.search(probe)


def test_import_mutated_bundles(
    tmp_path: Path, source_bundle: Tuple[bytes, Dict[str, Any]], target: Gallery, budget: Any
) -> None:
    _, document = source_bundle
    spent = budget("bundle: import mutated (sealed)")
    specials = _specials()
    other_dim = base64.b64encode(_unit(np.random.default_rng(6), 96).astype("<f4").tobytes()).decode()
    same_version_other_dim = copy.deepcopy(document)
    same_version_other_dim["identities"][1]["templates"][0]["model_version"] = MODEL
    active_other_dim = copy.deepcopy(document)
    active_other_dim["identities"][0]["templates"][0]["embedding"] = other_dim
    active_other_dim["identities"][0]["templates"][1]["embedding"] = other_dim
    blank_name_replacing = copy.deepcopy(document)
    blank_name_replacing["identities"][0].update(id="obama", name="   ")
    surrogate_version = copy.deepcopy(document)
    surrogate_version["identities"][0]["templates"][0]["model_version"] = "\ud800"

    @fuzz_settings(25)
    @given(_mutated(document, specials) | st.just(document))
    @example(same_version_other_dim)  # the active version with a 64-long embedding: bricked the index
    @example(active_other_dim)  # one identity entirely of the wrong length
    @example(blank_name_replacing)  # replaced "obama", then could not add the new one: obama was lost
    @example(surrogate_version)  # a UnicodeEncodeError when sealing, not a refusal (bench.reliability)
    def run(mutated: Any) -> None:
        if not spent.spend():
            return
        before = _state(target)
        try:
            target.import_bundle(_seal(mutated), PASSPHRASE, replace=True)
        except GalleryError as err:
            assert str(err)
            assert _state(target) == before, "a refused import changed the gallery"
        else:
            kept = {identity.id for identity in target.identities()}
            assert {identity.id for identity in before[1]} <= kept, "an import lost an identity"
        _consistent(target, tmp_path / "target")

    run()


def test_import_mutated_bytes(
    tmp_path: Path, source_bundle: Tuple[bytes, Dict[str, Any]], target: Gallery, budget: Any
) -> None:
    data, _ = source_bundle
    spent = budget("bundle: import mutated bytes")

    @fuzz_settings(30)
    @given(
        st.one_of(
            st.integers(min_value=0, max_value=len(data) - 1).map(lambda n: data[:n]),
            st.tuples(st.integers(min_value=0, max_value=len(data) - 1), st.integers(1, 255)).map(
                lambda change: (
                    data[: change[0]] + bytes([data[change[0]] ^ change[1]]) + data[change[0] + 1 :]
                )
            ),
            st.binary(max_size=100),
        )
    )
    def run(mutated: bytes) -> None:
        if not spent.spend():
            return
        before = _state(target)
        with pytest.raises(BundleError):
            target.import_bundle(mutated, PASSPHRASE)
        assert _state(target) == before

    run()
    target.import_bundle(data, PASSPHRASE)  # the untouched bundle still imports
    assert {identity.id for identity in target.identities()} == {"obama", "ada", "grace"}
    _consistent(target, tmp_path / "target")
