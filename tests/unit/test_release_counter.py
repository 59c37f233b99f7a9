"""The active-model pointer's release counter survives pointer damage, and a damaged pointer does not
keep the daemon from starting: the registry's models run, degraded, and the damaged file is kept."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from appliance.config_load import validate_config
from appliance.runtime.loading import model_targets
from appliance.updates.active import COUNTER_FILE, POINTER_FILE, ActiveModels, InstalledModel
from engines.registry import get_model

EMBEDDER = "mobilefacenet"


def _installed(release: int) -> InstalledModel:
    return InstalledModel(
        name=EMBEDDER,
        version=f"2.{release}",
        release=release,
        directory=f"packages/{EMBEDDER}-{release}",
        file="model.onnx",
        size=10,
        sha256="0" * 64,
    )


def _activate(storage: Path, *releases: int) -> ActiveModels:
    active = ActiveModels(storage)
    for release in releases:
        active.commit(active.with_active(_installed(release)))
    return active


def test_a_damaged_pointer_falls_back_to_the_registry_and_keeps_the_counter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _activate(tmp_path, 3, 9)
    pointer = tmp_path / "models" / POINTER_FILE
    pointer.write_bytes(b'{"schema": 1, "active": {"mobilefacenet": ')  # cut short / overwritten
    caplog.set_level(logging.DEBUG)
    active = ActiveModels(tmp_path)  # used to raise UpdateError: the daemon did not start
    assert active.entry(EMBEDDER) is None  # the registry's model
    assert active.release(EMBEDDER) == 9  # anti-rollback is not reset
    assert active.damaged is not None and str(pointer) in active.damaged
    kept = sorted(pointer.parent.glob(f"{POINTER_FILE}.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b'{"schema": 1, "active"')
    assert kept[0].name in active.damaged
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "damaged" in errors[0].getMessage()

    # the next switch writes a good pointer; the counter carries on from 9
    active.commit(active.with_active(_installed(4)))
    again = ActiveModels(tmp_path)
    assert again.damaged is None and again.entry(EMBEDDER) == _installed(4)
    assert again.release(EMBEDDER) == 9


def test_deleting_the_pointer_does_not_reset_the_release_counter(tmp_path: Path) -> None:
    _activate(tmp_path, 9)
    (tmp_path / "models" / POINTER_FILE).unlink()
    active = ActiveModels(tmp_path)
    assert active.entry(EMBEDDER) is None and active.damaged is None
    assert active.release(EMBEDDER) == 9


def test_a_damaged_counter_is_reported_and_the_pointer_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _activate(tmp_path, 5)
    counter = tmp_path / "models" / COUNTER_FILE
    document = json.loads(counter.read_text())
    document["max_release"][EMBEDDER] = 1  # edited: the checksum no longer matches
    counter.write_text(json.dumps(document))
    caplog.set_level(logging.ERROR)
    active = ActiveModels(tmp_path)
    assert active.release(EMBEDDER) == 5
    assert any("release counter" in r.getMessage() for r in caplog.records)
    counter.write_bytes(b" " * (1024 * 1024))  # oversized: refused unread, not parsed
    assert ActiveModels(tmp_path).release(EMBEDDER) == 5
    active.commit(active.with_active(_installed(6)))
    (tmp_path / "models" / POINTER_FILE).unlink()
    assert ActiveModels(tmp_path).release(EMBEDDER) == 6  # the counter was written again


def test_the_daemon_reports_a_damaged_pointer_as_degraded(tmp_path: Path) -> None:
    _activate(tmp_path, 2)
    (tmp_path / "models" / POINTER_FILE).write_text("not json")
    config = validate_config({"storage": {"dir": str(tmp_path)}})
    targets, notes = model_targets(config, names=[EMBEDDER])
    assert targets[0].spec.version == get_model(EMBEDDER).version
    assert targets[0].folder == config.models.dir
    assert any("pointer" in note and "registry" in note for note in notes)


def test_a_missing_pointer_with_installed_packages_is_damage_and_nothing_is_pruned(tmp_path: Path) -> None:
    """Deleting ``active.json`` must neither look like a fresh device nor let the start-up prune
    delete the installed packages (the evidence of what ran)."""
    _activate(tmp_path, 3)
    folder = tmp_path / "models" / "packages" / f"{EMBEDDER}-3"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "models" / POINTER_FILE).unlink()
    active = ActiveModels(tmp_path)
    assert active.damaged is not None and "missing although models were installed" in active.damaged
    assert active.prune() == [] and folder.is_dir()
    assert active.release(EMBEDDER) == 3
    targets, notes = model_targets(validate_config({"storage": {"dir": str(tmp_path)}}), names=[EMBEDDER])
    assert targets[0].spec == get_model(EMBEDDER) and any("missing" in note for note in notes)


def test_a_damaged_pointer_prunes_nothing(tmp_path: Path) -> None:
    _activate(tmp_path, 3)
    folder = tmp_path / "models" / "packages" / f"{EMBEDDER}-3"
    folder.mkdir(parents=True)
    (tmp_path / "models" / POINTER_FILE).write_bytes(b"\x00garbage")
    active = ActiveModels(tmp_path)
    assert active.damaged is not None
    assert active.prune() == [] and folder.is_dir()


def test_a_fresh_device_is_not_damaged(tmp_path: Path) -> None:
    active = ActiveModels(tmp_path)
    assert active.damaged is None and active.prune() == []
