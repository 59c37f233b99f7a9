"""``load_analyzer(..., embedder=False)``, as ``detect`` loads the models: the embedder is opened on its
first use only, reports the same versions, embeds exactly as an embedder opened at once, is closed
with the analyzer, and a missing embedder file still fails at load as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.config_load import validate_config
from appliance.runtime.loading import DeferredBackend, load_analyzer
from appliance.vision.analyzer import FaceAnalyzer
from appliance.vision.image import read_image
from engines.errors import InferenceError, ModelMissingError


def test_the_embedder_opens_on_first_use(
    tmp_path: Path, shared_models: Path, shared_data: Path, analyzer: FaceAnalyzer
) -> None:
    config = validate_config({"models": {"dir": str(shared_models)}, "storage": {"dir": str(tmp_path)}})
    image = read_image(shared_data / "faces/fr_obama/obama.jpg")
    with load_analyzer(config, liveness=False, embedder=False) as lazy:
        backend = lazy.embedder.backend
        assert isinstance(backend, DeferredBackend) and not backend.opened
        assert lazy.model_versions == analyzer.model_versions
        assert list(lazy.model_versions) == ["detector", "embedder"]
        faces = lazy.detect(image, still=True)
        assert len(faces) == 1 and not backend.opened
        crops = lazy.analyze(image, embed=False, faces=faces).crops
        assert crops is not None
        embeddings = lazy.embedder.embed(np.concatenate([crops, crops]))
        assert backend.opened
        np.testing.assert_array_equal(embeddings, analyzer.embedder.embed(np.concatenate([crops, crops])))
    assert backend.closed and not backend.opened
    with pytest.raises(InferenceError, match="closed"):
        backend.run(crops.astype(np.float32))


def test_a_missing_embedder_still_fails_at_load(tmp_path: Path, shared_models: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for folder in shared_models.iterdir():
        if folder.name != "mobilefacenet_foamliu":
            (models / folder.name).symlink_to(folder)
    config = validate_config({"models": {"dir": str(models)}, "storage": {"dir": str(tmp_path / "state")}})
    with pytest.raises(ModelMissingError, match="mobilefacenet"):
        load_analyzer(config, liveness=False, embedder=False)
