"""Fleet records in the gallery: applied in one transaction each, newer revisions only through the
member, tombstones delete for real and are remembered, local enrolments never touched."""

from __future__ import annotations

import pytest

from appliance.access.policy import IdentityPolicy
from appliance.gallery.errors import IdentityError
from appliance.gallery.gallery import Gallery
from tests.synthetic import random_crops, unit_vectors


def _apply(gallery: Gallery, identity_id: str, revision: int, seed: int, count: int = 2) -> None:
    gallery.apply_fleet_identity(
        identity_id,
        revision,
        f"Person {seed}",
        f"B-{seed}",
        "2026-12-01T00:00:00Z",
        IdentityPolicy(groups=("staff",)),
        unit_vectors(count, seed),
        random_crops(count, seed),
        [0.9] * count,
    )


def test_records_replace_older_revisions_and_are_searchable(gallery: Gallery) -> None:
    _apply(gallery, "p-1", 3, seed=1)
    assert gallery.store.fleet_identities() == {"p-1": 3} and len(gallery) == 2
    (hit,) = gallery.search(unit_vectors(1, 1))[0][:1]
    assert hit.identity_id == "p-1" and hit.score > 0.99 and hit.name == "Person 1"
    _apply(gallery, "p-1", 5, seed=2, count=3)  # a newer record: name, templates and policy replaced
    assert gallery.store.fleet_identities() == {"p-1": 5} and len(gallery) == 3
    assert gallery.search(unit_vectors(1, 2))[0][0].name == "Person 2"
    assert gallery.search(unit_vectors(1, 1))[0][0].score < 0.5  # the old templates are gone from the index
    identity = gallery.store.identity("p-1")
    assert identity.external_id == "B-2" and identity.policy.groups == ("staff",) and identity.templates == 3
    assert [t.crop.shape for t in gallery.store.templates(identity_id="p-1")] == [(112, 112, 3)] * 3


def test_tombstones_delete_for_real_and_are_remembered(gallery: Gallery) -> None:
    _apply(gallery, "p-1", 3, seed=1)
    assert b"Person 1" in _bytes_on_disk(gallery)
    assert gallery.remove_fleet_identity("p-1", 4) == 2
    assert (
        gallery.store.identity("p-1") is None and len(gallery) == 0 and gallery.store.fleet_identities() == {}
    )
    assert gallery.store.fleet_revisions() == {"p-1": (4, "tombstone")}
    assert b"Person 1" not in _bytes_on_disk(gallery)  # secure_delete and the WAL checkpoint


def _bytes_on_disk(gallery: Gallery) -> bytes:
    files = [gallery.store.path, gallery.store.path.with_name(gallery.store.path.name + "-wal")]
    return b"".join(path.read_bytes() for path in files if path.exists())


def test_local_enrolments_are_never_replaced_or_removed_by_the_fleet(gallery: Gallery) -> None:
    gallery.add("ada", "Ada", unit_vectors(1, 7))
    with pytest.raises(IdentityError, match="enrolled locally"):
        _apply(gallery, "ada", 9, seed=8)
    with pytest.raises(IdentityError, match="enrolled locally"):
        gallery.remove_fleet_identity("ada", 9)
    assert gallery.store.identity("ada").name == "Ada" and gallery.store.fleet_revisions() == {}
    assert len(gallery) == 1
