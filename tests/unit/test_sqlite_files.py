"""Every SQLite store of the appliance is opened private, in WAL mode, with secure_delete and foreign keys."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Callable, Dict, Iterator, Type

import pytest

from appliance.access import presence
from appliance.access.presence import PresenceError, PresenceStore
from appliance.gallery.errors import GalleryStoreError
from appliance.gallery.store import TemplateStore
from appliance.outbox import Outbox
from appliance.sightings.errors import SightingStoreError
from appliance.sightings.store import SightingStore
from appliance.sqlite_files import Synchronous, open_private_database

# Each store as the appliance opens it, under ``folder`` (created by the store).
OPENERS = {
    "gallery": lambda folder: TemplateStore.open(folder / "gallery.db", folder.parent / "gallery.key"),
    "outbox": lambda folder: Outbox.open(folder / "outbox.db", max_events=100, max_age_s=3600.0),
    "sightings": lambda folder: SightingStore.open(folder / "sightings.db", folder.parent / "gallery.key"),
    "presence": lambda folder: PresenceStore.open(folder / "presence.db"),
}


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The permissive umask of an administrator's shell, so that only the code can make files private."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("store", sorted(OPENERS))
def test_every_store_is_private_whatever_the_umask(store: str, tmp_path: Path, open_umask: None) -> None:
    folder = tmp_path / "state"
    opened = OPENERS[store](folder)
    try:
        database = next(folder.glob("*.db"))
        assert _mode(folder) == 0o700
        assert _mode(database) == 0o600
        wal = Path(f"{database}-wal")
        assert wal.exists(), "the store is not in WAL mode"
        assert _mode(wal) == 0o600 and _mode(Path(f"{database}-shm")) == 0o600
    finally:
        opened.close()


def test_the_connection_has_the_pragmas_every_store_relies_on(tmp_path: Path) -> None:
    db = open_private_database(tmp_path / "a.db", synchronous="NORMAL", timeout_s=1.0)
    try:
        pragmas = {
            name: db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("journal_mode", "synchronous")
        }
        pragmas.update(
            {name: db.execute(f"PRAGMA {name}").fetchone()[0] for name in ("secure_delete", "foreign_keys")}
        )
        assert pragmas == {"journal_mode": "wal", "synchronous": 1, "secure_delete": 1, "foreign_keys": 1}
        assert db.isolation_level is None
    finally:
        db.close()


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    """Opening does not chmod a file the operator set up (e.g. 0640 for a backup group)."""
    path = tmp_path / "a.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    open_private_database(path, synchronous="FULL", timeout_s=1.0).close()
    assert _mode(path) == 0o640


STORE_ERRORS: Dict[str, Type[Exception]] = {
    "gallery": GalleryStoreError,
    "sightings": SightingStoreError,
    "presence": PresenceError,
}


@pytest.mark.parametrize("store", sorted(STORE_ERRORS))
def test_a_file_that_is_not_a_database_is_named_so(store: str, tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / f"{store}.db").write_bytes(b"this is not SQLite" * 100)
    opener: Callable[[Path], object] = OPENERS[store]
    with pytest.raises(STORE_ERRORS[store], match="not a usable"):
        opener(folder)


@pytest.mark.parametrize("store", sorted(STORE_ERRORS))
def test_a_folder_that_cannot_be_created_is_an_open_error_not_damage(store: str, tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(STORE_ERRORS[store], match="cannot open") as caught:
        OPENERS[store](blocker / "inner")
    assert "not a usable" not in str(caught.value)


def test_a_locked_database_is_an_open_error_not_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "presence.db"
    PresenceStore.open(path).close()

    def impatient(path: Path, synchronous: Synchronous, timeout_s: float) -> sqlite3.Connection:
        return open_private_database(path, synchronous, timeout_s=0.1)  # not the store's 10 s

    monkeypatch.setattr(presence, "open_private_database", impatient)
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(PresenceError, match=r"cannot open the presence store .*locked"):
            PresenceStore.open(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
