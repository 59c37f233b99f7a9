"""Template kinds in the store (schema 4): enrolled and adaptive templates through a migration, the
fleet, a re-embedding and a bundle; the ``[adaptive]`` section's validation.

The behaviour on real faces (what is learnt, what is refused, the CLI, the byte scan) is in
``tests/integration/test_templates.py``; these check the store's bookkeeping.
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import pytest

from appliance.access.policy import IdentityPolicy
from appliance.config_load import validate_config
from appliance.errors import ConfigError
from appliance.gallery.bundle import export_bundle, open_bundle
from appliance.gallery.crypto import Sealer, create_key
from appliance.gallery.errors import IdentityError
from appliance.gallery.gallery import Gallery
from appliance.gallery.reembed import reembed, rows_for
from appliance.gallery.store import (
    ADAPTIVE,
    ENROLLED,
    KEY_CHECK_PLAINTEXT,
    MIGRATIONS,
    TemplateOrigin,
    TemplateStore,
)
from tests.synthetic import random_crops, unit_vectors

VERSION = "mobilefacenet@foamliu-v1.0"
NEW = "mobilefacenet@next"


def _adapt(gallery: Gallery, identity_id: str, seed: int, keep: int = 3, event: str = "ev") -> int:
    added, _ = gallery.add_adaptive(
        identity_id,
        unit_vectors(1, seed)[0],
        random_crops(1, seed)[0],
        0.8,
        TemplateOrigin(ADAPTIVE, event, 0.7, 0.2),
        keep,
    )
    return added


def test_a_schema_3_gallery_is_migrated_and_its_templates_are_enrolled(tmp_path: Path) -> None:
    path, key_file = tmp_path / "gallery.db", tmp_path / "gallery.key"
    sealer = Sealer(create_key(key_file))
    with sqlite3.connect(str(path)) as db:
        for version in (1, 2, 3):
            for statement in MIGRATIONS[version]:
                db.execute(statement)
        check = base64.b64encode(sealer.seal(KEY_CHECK_PLAINTEXT, "key-check")).decode()
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("schema_version", "3"),
                ("key_check", check),
                ("generation", "1"),
                ("created_at", "2026-01-01"),
            ],
        )
        db.execute(
            "INSERT INTO identities (id, name, consent_at, created_at) VALUES ('ada', 'Ada', 'x', 'x')"
        )
        blob = sealer.seal(unit_vectors(1, 1)[0].tobytes(), f"embedding:ada:{VERSION}")
        db.execute(
            "INSERT INTO templates (identity_id, model_version, embedding, quality, created_at) "
            "VALUES ('ada', ?, ?, 0.9, '2026-01-01T00:00:00.000Z')",
            (VERSION, blob),
        )
    with TemplateStore.open(path, key_file) as store:
        (info,) = store.template_infos("ada")
        assert info.origin == TemplateOrigin(ENROLLED)
        (template,) = store.templates()
        assert template.origin.kind == ENROLLED and store.check() == []


def test_eviction_is_per_identity_and_never_touches_enrolled_templates(gallery: Gallery) -> None:
    gallery.add("ada", "Ada", unit_vectors(2, 1), random_crops(2, 1), [0.9, 0.8])
    gallery.add("bob", "Bob", unit_vectors(1, 2), random_crops(1, 2), [0.9])
    bob = _adapt(gallery, "bob", 30, keep=1)
    ada = [_adapt(gallery, "ada", seed, keep=2) for seed in (10, 11, 12)]
    kinds = [(info.id, info.origin.kind) for info in gallery.store.template_infos("ada")]
    assert [kind for _, kind in kinds] == [ENROLLED, ENROLLED, ADAPTIVE, ADAPTIVE]
    assert [template_id for template_id, kind in kinds if kind == ADAPTIVE] == ada[1:]
    assert [info.id for info in gallery.store.template_infos("bob")][-1] == bob  # another identity's stays
    assert len(gallery) == 6
    with pytest.raises(IdentityError, match="no identity 'nobody'"):
        _adapt(gallery, "nobody", 1)
    with pytest.raises(IdentityError, match="at least 1"):
        _adapt(gallery, "ada", 1, keep=0)
    # Removal: an adaptive one, an enrolled one while another is left, never the last enrolled one.
    gallery.remove_template("ada", ada[1])
    enrolled = [info.id for info in gallery.store.template_infos("ada") if info.origin.kind == ENROLLED]
    gallery.remove_template("ada", enrolled[0])
    with pytest.raises(IdentityError, match="last enrolled template"):
        gallery.remove_template("ada", enrolled[1])
    with pytest.raises(IdentityError, match="has no template"):
        gallery.remove_template("ada", bob)
    assert len(gallery) == 4 and gallery.store.check() == []


def test_a_fleet_record_replaces_the_enrolled_templates_and_keeps_the_adaptive_ones(gallery: Gallery) -> None:
    def apply(revision: int, seed: int) -> None:
        gallery.apply_fleet_identity(
            "p-1",
            revision,
            "Person",
            None,
            "2026-12-01T00:00:00Z",
            IdentityPolicy(),
            unit_vectors(2, seed),
            random_crops(2, seed),
            [0.9, 0.9],
        )

    apply(1, seed=1)
    learnt = _adapt(gallery, "p-1", 5)
    apply(2, seed=2)  # a newer revision (another photo, or only a policy change)
    infos = gallery.store.template_infos("p-1")
    assert [info.origin.kind for info in infos] == [ADAPTIVE, ENROLLED, ENROLLED]  # by id: learnt first
    assert infos[0].id == learnt and infos[0].origin.source_event == "ev"
    assert len(gallery) == 3 and gallery.search(unit_vectors(1, 1))[0][0].score < 0.5  # revision 1's are gone
    gallery.remove_fleet_identity("p-1", 3)  # a tombstone deletes everything, adaptive included
    assert gallery.store.identity("p-1") is None and len(gallery) == 0


def test_a_re_embedding_keeps_each_template_kind_and_event_and_bundles_carry_enrolled_ones_only(
    gallery: Gallery,
) -> None:
    gallery.add("ada", "Ada", unit_vectors(1, 1), random_crops(1, 1), [0.9])
    learnt = _adapt(gallery, "ada", 7, event="ev-7")
    (before,) = [info for info in gallery.store.template_infos("ada") if info.id == learnt]
    store = gallery.store
    result = reembed(store, VERSION, lambda crops: unit_vectors(len(crops), 99))
    assert store.put_version(NEW, rows_for(store, result)) == 2
    moved = [info for info in store.template_infos("ada") if info.model_version == NEW]
    assert [info.origin.kind for info in moved] == [ENROLLED, ADAPTIVE]
    assert moved[1].origin.source_event == "ev-7" and moved[1].created_at == before.created_at
    assert moved[1].origin.score == pytest.approx(0.7) and moved[1].origin.margin == pytest.approx(0.2)

    bundle = open_bundle(export_bundle(store, "a long passphrase"), "a long passphrase")
    (identity,) = bundle.identities
    assert len(identity.templates) == 2  # the enrolled template of each version, no adaptive one


def test_adaptive_learning_without_liveness_must_be_asked_for() -> None:
    with pytest.raises(ConfigError, match="require_liveness"):
        validate_config({"adaptive": {"enabled": True}})
    assert validate_config({"adaptive": {"enabled": True}, "liveness": {"enabled": True}}).adaptive.enabled
    relaxed = validate_config({"adaptive": {"enabled": True, "require_liveness": False}})
    assert not relaxed.adaptive.require_liveness
    assert not validate_config({}).adaptive.enabled  # off by default
    with pytest.raises(ConfigError, match="max_per_identity"):
        validate_config({"adaptive": {"max_per_identity": 0}})
    with pytest.raises(ConfigError, match="min_enrolled_similarity"):
        validate_config({"adaptive": {"min_enrolled_similarity": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown_key|extra"):
        validate_config({"adaptive": {"unknown_key": 1}})
