"""A vanished gallery database is refused, not replaced by an empty one (issue 12, finding 1).

The saved search index records the store's generation: an index of a later generation than a
missing, empty or newly created store proves that people were enrolled. Opening must then fail with
a clear error and leave the index (the last copy of the templates) and the key untouched; a real
first start (no store, no index, with or without a provisioned key) still works.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import pytest

from appliance.config import ApplianceConfig
from appliance.config_load import validate_config
from appliance.gallery.errors import GalleryStoreError
from appliance.gallery.gallery import INDEX_FILE, STORE_FILE, Gallery
from appliance.gallery.store import TemplateStore
from tests.support import run_cli
from tests.synthetic import unit_vectors

VERSION = "mobilefacenet@foamliu-v1.0"


def _config(state: Path) -> ApplianceConfig:
    return validate_config({"storage": {"dir": str(state)}})


def _enrol_three(config: ApplianceConfig, version: str = VERSION, dim: int = 128) -> None:
    with Gallery.open(config, version, dim) as gallery:
        for number, name in enumerate(["Ada", "Bob", "Cy"]):
            gallery.add(name.lower(), name, unit_vectors(1, seed=number)[:, :dim])


def _files(state: Path) -> Dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(state.iterdir()) if path.is_file()}


def _lose(state: Path, how: str) -> None:
    database = state / STORE_FILE
    if how == "deleted":
        database.unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
    else:
        database.write_bytes(b"")


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_vanished_store_is_refused_and_the_evidence_kept(tmp_path: Path, how: str) -> None:
    config = _config(tmp_path)
    _enrol_three(config)
    _lose(tmp_path, how)
    before = _files(tmp_path)
    with pytest.raises(GalleryStoreError, match=r"saved at generation 3 and its key .* is still there"):
        Gallery.open(config, VERSION, 128)
    assert _files(tmp_path) == before, "the index, the key or the store changed"


def test_a_store_recreated_empty_is_refused_too(tmp_path: Path) -> None:
    """An empty store made before the check (an older firmware, or the store opened on its own)."""
    config = _config(tmp_path)
    _enrol_three(config)
    _lose(tmp_path, "deleted")
    TemplateStore.open(tmp_path / STORE_FILE, config.gallery_key_file).close()
    index = (tmp_path / INDEX_FILE).read_bytes()
    with pytest.raises(GalleryStoreError, match=r"is empty, but the search index .* generation 3"):
        Gallery.open(config, VERSION, 128)
    assert (tmp_path / INDEX_FILE).read_bytes() == index


def test_a_vanished_store_with_an_unreadable_index_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _enrol_three(config)
    _lose(tmp_path, "deleted")
    (tmp_path / INDEX_FILE).write_bytes(b"FAGALIDX garbage")
    with pytest.raises(GalleryStoreError, match="its header cannot be read"):
        Gallery.open(config, VERSION, 128)
    assert not (tmp_path / STORE_FILE).exists()


def test_first_start_and_an_empty_past_still_open(tmp_path: Path) -> None:
    provisioned = tmp_path / "provisioned"
    provisioned.mkdir()
    key = provisioned / "gallery.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    with Gallery.open(_config(provisioned), VERSION, 128) as gallery:  # a key, nothing else
        assert len(gallery) == 0
    fresh = _config(tmp_path / "fresh")
    with Gallery.open(fresh, VERSION, 128) as gallery:  # nothing at all
        assert len(gallery) == 0
    _lose(tmp_path / "fresh", "deleted")  # an index of generation 0: no one was ever enrolled
    with Gallery.open(fresh, VERSION, 128) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1))


def test_an_older_backup_is_rebuilt_from(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path)
    with Gallery.open(config, VERSION, 128) as gallery:
        gallery.add("ada", "Ada", unit_vectors(1))
    backup = (tmp_path / STORE_FILE).read_bytes()
    _enrol_three(config)
    (tmp_path / STORE_FILE).write_bytes(backup)
    with Gallery.open(config, VERSION, 128) as gallery:
        assert [i.id for i in gallery.identities()] == ["ada"] and len(gallery) == 1
    assert "a restored backup?" in caplog.text


def test_gallery_list_and_check_refuse_a_vanished_store(tmp_path: Path) -> None:
    from appliance.cli.gallery_cmd import open_gallery

    state = tmp_path / "state"
    toml = tmp_path / "appliance.toml"
    toml.write_text(f'[storage]\ndir = "{state}"\n')
    config = _config(state)
    with open_gallery(config) as gallery:  # the CLI's own embedder version and length
        version, dim = gallery.model_version, gallery.dim
    _enrol_three(config, version, dim)
    listed = run_cli("gallery", "list", "--config", str(toml))
    assert listed.returncode == 0 and "3 identities" in listed.stdout, listed.stderr
    _lose(state, "deleted")
    before = _files(state)
    for action in ("list", "check"):
        result = run_cli("gallery", action, "--config", str(toml))
        assert result.returncode == 1, (action, result.stdout, result.stderr)
        assert "gallery ok" not in result.stdout and "0 identities" not in result.stdout
        assert (
            "saved at generation 3" in result.stderr and "Restore gallery.db from its backup" in result.stderr
        )
    assert _files(state) == before
