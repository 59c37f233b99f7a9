"""Schema migrations of the appliance's SQLite stores (the gallery, the sightings store).

Each store keeps its schema version in its ``meta`` table and a table of migrations, version → the
statements that bring the version before it there; a store runs them inside one of its write
transactions, so an interrupted migration leaves it as it was.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)


def schema_version(db: sqlite3.Connection) -> int:
    """The store's schema version from its ``meta`` table: 0 for a new (empty) file."""
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
    if not has_meta:
        return 0
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(db: sqlite3.Connection, migrations: Mapping[int, Sequence[str]], version: int, what: str) -> None:
    """Within an open write transaction: bring a store of schema ``version`` (0: a new file) to the
    newest of ``migrations``, and record that version in ``meta``.

    Args:
        migrations: version → the statements that bring version − 1 to it, from 1.
        what: the store in the log, e.g. ``"gallery /var/lib/…/gallery.db"``.
    """
    latest = max(migrations)
    for target in range(version + 1, latest + 1):
        for statement in migrations[target]:
            db.execute(statement)
        if version:  # a new store is created, not migrated
            logger.info("%s migrated to schema version %d", what, target)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(latest),))


__all__ = ["migrate", "schema_version"]
