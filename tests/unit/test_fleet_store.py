"""Fleet records in the gallery: applied in one transaction each, newer revisions only through the
member, tombstones delete for real and are remembered, local enrolments never touched — and, at a
fleet door, the site's identities never changed locally."""

from __future__ import annotations

import pytest

from appliance.access.policy import IdentityPolicy
from appliance.gallery.bundle import read_bundle
from appliance.gallery.errors import FleetIdentityError, IdentityError
from appliance.gallery.gallery import Gallery
from appliance.gallery.store import ADAPTIVE, TemplateOrigin
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


def test_a_fleet_door_refuses_local_changes_to_the_sites_identities(gallery: Gallery) -> None:
    """At a door in a fleet, what a record brought is the authority's: a change made here would be
    undone by the identity's next record (and no other door would have it), so it is refused with the
    authority's command; the door's own identities, and what the door learns, stay its own."""
    gallery.store.fleet_managed = True  # as Gallery.open does with [fleet] enabled
    _apply(gallery, "p-1", 3, seed=1)
    gallery.add("ada", "Ada", unit_vectors(1, 7))  # a local enrolment
    policy = gallery.store.identity("p-1").policy
    refused = [
        (lambda: gallery.store.set_policy("p-1", policy.changed({"suspended": True})), "fleet set p-1 …"),
        (lambda: gallery.store.set_policy("p-1", policy.changed({"pin": "2580"})), "fleet set p-1 …"),
        (lambda: gallery.remove("p-1"), "fleet remove p-1"),
        (lambda: gallery.forget_face("p-1"), "fleet set p-1 --forget-face"),
        (lambda: gallery.add("p-1", "Person 1", unit_vectors(1, 5)), "fleet enroll --id p-1 --replace"),
        (lambda: gallery.store.check_local_change("p-1", "policy"), "fleet set p-1 …"),
    ]
    enrolled = gallery.store.template_infos("p-1")
    refused.append((lambda: gallery.remove_template("p-1", enrolled[0].id), "fleet enroll --id p-1"))
    for change, authority_command in refused:
        with pytest.raises(FleetIdentityError, match="fleet record r3") as caught:
            change()
        assert authority_command in str(caught.value)
    identity = gallery.store.identity("p-1")
    assert identity.policy == policy and identity.templates == 2 and len(gallery) == 3
    # What the door learned of the person is its own: an adaptive template is added and removed.
    added, _ = gallery.add_adaptive("p-1", unit_vectors(1, 9)[0], None, 0.9, TemplateOrigin(ADAPTIVE), keep=3)
    assert gallery.remove_template("p-1", added).id == added
    # The door's own identity takes every change; a door that left the fleet owns everything again.
    gallery.store.set_policy("ada", IdentityPolicy(suspended=True))
    assert gallery.forget_face("ada") == 1
    gallery.store.fleet_managed = False
    gallery.store.set_policy("p-1", policy.changed({"suspended": True}))
    assert gallery.remove("p-1") == 2 and gallery.store.identity("p-1") is None


def test_a_fleet_door_imports_no_bundle_over_the_sites_identities(gallery: Gallery) -> None:
    gallery.store.fleet_managed = True
    _apply(gallery, "p-1", 3, seed=1)
    gallery.add("ada", "Ada", unit_vectors(1, 7))
    bundle = read_bundle(gallery.export("a passphrase of some length"), "a passphrase of some length")
    report = gallery.import_identities(bundle, replace=True)
    assert report.replaced == ["ada"] and list(report.skipped) == ["p-1"]
    assert "fleet record r3" in report.skipped["p-1"]
    assert gallery.store.fleet_identities() == {"p-1": 3} and len(gallery) == 3


def test_gallery_open_makes_a_fleet_doors_store_fleet_managed(tmp_path, monkeypatch) -> None:
    from appliance.config_load import validate_config

    for enabled in (False, True):
        config = validate_config({"storage": {"dir": str(tmp_path / str(enabled))}})
        monkeypatch.setattr(config.fleet, "enabled", enabled)
        with Gallery.open(config, "mobilefacenet@foamliu-v1.0", 128) as opened:
            assert opened.store.fleet_managed is enabled
