"""What a model swap leaves on disk: the active-model pointer and the re-embedded gallery versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from appliance.gallery.reembed import reembed, rows_for
from appliance.gallery.store import TemplateStore
from appliance.updates.active import ActiveModels, InstalledModel
from appliance.updates.errors import UpdateError

OLD = "mobilefacenet@foamliu-v1.0"
NEW = "mobilefacenet@2.0.0"


def _entry(version: str, release: int) -> InstalledModel:
    return InstalledModel(
        name="mobilefacenet",
        version=version,
        release=release,
        directory=f"packages/mobilefacenet-{version}-r{release}",
        file="model.onnx",
        size=10,
        sha256="0" * 64,
    )


def test_pointer_starts_empty_and_resolves_to_the_registry(tmp_path: Path) -> None:
    active = ActiveModels(tmp_path)
    spec, folder = active.resolve("mobilefacenet", tmp_path / "models")
    assert spec.version == "foamliu-v1.0" and folder == tmp_path / "models"
    assert active.release("mobilefacenet") is None
    assert not active.path.exists()


def test_activate_commit_reopen_and_rollback_toggle(tmp_path: Path) -> None:
    active = ActiveModels(tmp_path)
    active.commit(active.with_active(_entry("2.0.0", 2)))
    reopened = ActiveModels(tmp_path)
    spec, folder = reopened.resolve("mobilefacenet", tmp_path / "models")
    assert spec.version == "2.0.0" and spec.file == "model.onnx" and spec.sha256 == "0" * 64
    assert folder == tmp_path / "models" / "packages" / "mobilefacenet-2.0.0-r2"
    assert reopened.release("mobilefacenet") == 2 and reopened.snapshot().last == "mobilefacenet"

    reopened.commit(reopened.with_active(_entry("3.0.0", 3)))
    reopened.commit(reopened.with_rollback("mobilefacenet"))
    assert reopened.entry("mobilefacenet").version == "2.0.0"  # type: ignore[union-attr]
    # The anti-rollback counter keeps the highest release ever activated.
    assert reopened.release("mobilefacenet") == 3
    reopened.commit(reopened.with_rollback("mobilefacenet"))  # and back again
    assert reopened.entry("mobilefacenet").version == "3.0.0"  # type: ignore[union-attr]


def test_rollback_to_the_registry_default(tmp_path: Path) -> None:
    active = ActiveModels(tmp_path)
    with pytest.raises(UpdateError, match="no previous model"):
        active.with_rollback("mobilefacenet")
    active.commit(active.with_active(_entry("2.0.0", 2)))
    active.commit(active.with_rollback("mobilefacenet"))
    assert active.entry("mobilefacenet") is None


@pytest.mark.parametrize(
    "content, found",
    [
        ("{not json", "damaged"),
        (json.dumps({"schema": 9}), "damaged"),
        (
            json.dumps(
                {
                    "schema": 1,
                    "active": {"mobilefacenet": {**_entry("2", 2).to_json(), "directory": "../../etc"}},
                    "previous": {},
                    "max_release": {},
                }
            ),
            "leaves the models folder",
        ),
        (
            json.dumps(
                {
                    "schema": 1,
                    "active": {"m": {**_entry("2", 2).to_json(), "evil": 1}},
                    "previous": {},
                    "max_release": {},
                }
            ),
            "unknown fields",
        ),
    ],
)
def test_a_damaged_pointer_is_named_not_guessed(tmp_path: Path, content: str, found: str) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "active.json").write_text(content)
    active = ActiveModels(tmp_path)  # the registry's models, degraded: the door stays usable
    assert active.damaged is not None and found in active.damaged
    assert active.snapshot().active == {}


def test_prune_keeps_active_and_previous_folders(tmp_path: Path) -> None:
    active = ActiveModels(tmp_path)
    active.commit(active.with_active(_entry("2.0.0", 2)))
    active.commit(active.with_active(_entry("3.0.0", 3)))
    for name in ("mobilefacenet-2.0.0-r2", "mobilefacenet-3.0.0-r3", "mobilefacenet-4.0.0-r4"):
        (active.packages_dir / name).mkdir(parents=True)
    removed = active.prune()
    assert [p.name for p in removed] == ["mobilefacenet-4.0.0-r4"]
    assert sorted(p.name for p in active.packages_dir.iterdir()) == [
        "mobilefacenet-2.0.0-r2",
        "mobilefacenet-3.0.0-r3",
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TemplateStore]:
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as opened:
        yield opened


def _unit(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.normal(size=(count, 128)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _mean_colour_embedding(crops: np.ndarray) -> np.ndarray:
    """A stand-in embedder: deterministic, depends only on the crop (what re-embedding must preserve)."""
    features = crops.reshape(len(crops), -1, 3).mean(axis=1).astype(np.float32)
    features = np.concatenate([features, np.ones((len(crops), 1), np.float32)], axis=1)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def test_reembed_writes_the_new_version_from_the_crops(store: TemplateStore) -> None:
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    store.add("ada", "Ada", OLD, _unit(rng, 2), crops[:2], [0.9, 0.8])
    store.add("bob", "Bob", OLD, _unit(rng, 1), None, [0.7])  # no crop: cannot follow
    calls = []

    def embed(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return _mean_colour_embedding(batch)

    result = reembed(store, OLD, embed)
    assert len(result.embeddings) == 2 and len(result.without_crop) == 1
    # Enrolled meanwhile: only that template is embedded on the second pass.
    store.add("cyd", "Cyd", OLD, _unit(rng, 1), crops[2:], [0.6])
    reembed(store, OLD, embed, done=result)
    assert calls == [2, 1]
    store.remove("ada")  # removed meanwhile: its rows are not written
    written = store.put_version(NEW, rows_for(store, result))
    assert written == 1
    (template,) = store.templates(NEW)
    assert template.identity_id == "cyd"
    np.testing.assert_allclose(template.embedding, _mean_colour_embedding(crops[2:])[0], atol=1e-6)
    np.testing.assert_array_equal(template.crop, crops[2])

    # Writing the version again replaces it (an interrupted attempt leaves no duplicates).
    assert store.put_version(NEW, rows_for(store, result)) == 1 and len(list(store.templates(NEW))) == 1
    assert store.drop_versions(NEW) == 2  # bob and cyd's old templates
    assert store.model_versions() == {NEW: 1} and store.check() == []
