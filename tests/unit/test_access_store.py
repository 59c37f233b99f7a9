"""The access policy in the gallery store and in bundles: migration of a schema-1 gallery, persistence,
changes, damaged rows (never a grant), and bundles that carry the policy, groups and calendars."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from appliance.access.errors import PolicyError
from appliance.access.judge import GONE, AccessJudge
from appliance.access.policy import AccessGroup, AccessPolicy, HolidayCalendar, IdentityPolicy, parse_instant
from appliance.commands import CommandError, parse
from appliance.gallery.bundle import open_bundle, parse_bundle
from appliance.gallery.crypto import Sealer, create_key
from appliance.gallery.errors import BundleError, IdentityError
from appliance.gallery.store import KEY_CHECK_PLAINTEXT, MIGRATIONS, SCHEMA_VERSION, TemplateStore
from tests.unit.test_gallery_store import _forge

VERSION = "mobilefacenet@foamliu-v1.0"
VISITOR = IdentityPolicy(
    parse_instant("2026-12-01T08:00:00+01:00", "t"),
    parse_instant("2026-12-04T18:00:00+01:00", "t"),
    groups=("visitors",),
)


def _vector(seed: int = 0) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=(1, 128)).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TemplateStore]:
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as opened:
        yield opened


def test_a_schema_1_gallery_is_migrated_and_its_people_keep_passing(tmp_path: Path) -> None:
    db_path, key_path = tmp_path / "gallery.db", tmp_path / "gallery.key"
    sealer = Sealer(create_key(key_path))
    with sqlite3.connect(str(db_path)) as db:  # as the previous firmware left it
        for statement in MIGRATIONS[1]:
            db.execute(statement)
        check = base64.b64encode(sealer.seal(KEY_CHECK_PLAINTEXT, "key-check")).decode()
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("schema_version", "1"),
                ("key_check", check),
                ("generation", "0"),
                ("created_at", "2025-01-01T00:00:00Z"),
            ],
        )
        db.execute(
            "INSERT INTO identities VALUES ('ada', 'Ada', 'B-17', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z')"
        )
    with TemplateStore.open(db_path, key_path) as store:
        (ada,) = store.identities()
        assert ada.policy == IdentityPolicy() and ada.external_id == "B-17"
        assert store.policy_tables().groups == {}
        assert AccessJudge(AccessPolicy([], "UTC"), store).judge("ada") is None
    with sqlite3.connect(str(db_path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
            SCHEMA_VERSION
        )


def test_policy_is_stored_changed_and_survives_a_reopen(tmp_path: Path) -> None:
    paths = (tmp_path / "gallery.db", tmp_path / "gallery.key")
    with TemplateStore.open(*paths) as store:
        store.add("vera", "Vera", VERSION, _vector(), policy=VISITOR)
        store.add("ada", "Ada", VERSION, _vector(1))
        store.put_group(AccessGroup.from_parts("visitors", ["mon-fri 09:00-17:00"], ["de"]))
        store.put_calendar(HolidayCalendar.from_parts("de", ["2026-12-25"]))
        generation = store.generation
        store.set_policy("ada", IdentityPolicy(suspended=True, groups=("staff",)))
        assert store.generation == generation  # a policy change does not stale the search index
        with pytest.raises(IdentityError, match="no identity"):
            store.set_policy("nobody", IdentityPolicy())
    with TemplateStore.open(*paths) as store:
        assert store.identity("vera").policy == VISITOR
        assert store.identity("ada").policy == IdentityPolicy(suspended=True, groups=("staff",))
        tables = store.policy_tables()
        assert tables.groups["visitors"].schedule.texts() == ("mon-fri 09:00-17:00",)
        assert tables.calendars["de"].document() == {"name": "de", "days": ["2026-12-25"]}
        judge = AccessJudge(AccessPolicy(["visitors"], "Europe/Berlin"), store)
        assert judge.judge("vera", parse_instant("2026-12-02T10:00:00+01:00", "t")) is None
        assert judge.judge("vera", parse_instant("2026-12-02T08:00:00+01:00", "t")) == "outside_schedule"
        assert judge.judge("ada") == "suspended"
        assert judge.judge("nobody") == GONE
        assert store.remove_group("visitors") and not store.remove_group("visitors")
        assert judge.judge("vera", parse_instant("2026-12-02T10:00:00+01:00", "t")) == "outside_schedule"
        assert store.remove_calendar("de") and not store.remove_calendar("de")


def test_a_damaged_policy_row_never_grants(store: TemplateStore) -> None:
    store.add("ada", "Ada", VERSION, _vector())
    with sqlite3.connect(str(store.path)) as db:
        db.execute("UPDATE identities SET groups='not json', valid_until='garbage' WHERE id='ada'")
    assert store.identity("ada").policy.suspended
    assert AccessJudge(AccessPolicy([], "UTC"), store).judge("ada") == "suspended"


def test_bundles_carry_the_policy_groups_and_calendars(tmp_path: Path, store: TemplateStore) -> None:
    from appliance.gallery.bundle import export_bundle

    store.add("vera", "Vera", VERSION, _vector(), policy=VISITOR)
    store.put_group(AccessGroup.from_parts("visitors", ["mon-fri 09:00-17:00"], ["de"]))
    store.put_calendar(HolidayCalendar.from_parts("de", ["2026-12-25", "2026-12-26"]))
    bundle = open_bundle(export_bundle(store, "correct horse battery"), "correct horse battery")
    (vera,) = bundle.identities
    assert vera.policy == VISITOR
    assert set(bundle.tables.groups) == {"visitors"} and set(bundle.tables.calendars) == {"de"}
    assert bundle.tables.groups["visitors"].holidays == ("de",)


def _document(**identity_extra: object) -> dict:
    vector = base64.b64encode(np.ascontiguousarray(_vector()[0], "<f4").tobytes()).decode()
    identity = {
        "id": "vera",
        "name": "Vera",
        "consent_at": "2026-01-01T00:00:00Z",
        "templates": [{"model_version": VERSION, "embedding": vector, "crop": None, "quality": 0.9}],
    }
    identity.update(identity_extra)
    return {"format": 1, "identities": [identity]}


def test_older_bundles_import_unrestricted_and_bad_policies_are_refused_by_key() -> None:
    (old,) = parse_bundle(json.dumps(_document()).encode()).identities
    assert old.policy == IdentityPolicy()
    for policy, message in (
        ({"valid_until": "2026-12-31"}, r"identities\[0\].policy.valid_until .* no offset"),
        ({"groups": ["a b"]}, "group name"),
        ({"suspended": 1}, "suspended must be true or false"),
        ({"expires": "x"}, "unknown key"),
        ("all", "expected an object"),
    ):
        with pytest.raises(BundleError, match=message):
            open_bundle(_forge(_document(policy=policy)), "correct horse battery")
    for access, message in (
        ({"groups": [{"name": "x", "schedule": ["mon 9-17"]}]}, r"access.groups\[0\]: window"),
        ({"calendars": [{"name": "de", "days": ["2026-13-01"]}]}, r"access.calendars\[0\]: .*not a date"),
        ({"groups": [{"name": "x", "schedule": [], "open": True}]}, "unknown key"),
        ({"rooms": []}, "expected an object with"),
    ):
        with pytest.raises(BundleError, match=message):
            open_bundle(_forge({**_document(), "access": access}), "correct horse battery")


def test_policy_commands_validate_before_anything_is_done() -> None:
    _, command = parse(
        "set_policy", b'{"request_id": "r1", "id": "vera", "valid_until": null, "add_groups": ["x"]}'
    )
    assert command.changes() == {
        "add_groups": ["x"],
        "valid_until": None,
    }  # absent keys are kept, null clears
    for name, payload, message in (
        ("set_policy", b'{"request_id": "r", "id": "vera"}', "nothing to change"),
        (
            "set_policy",
            b'{"request_id": "r", "id": "vera", "valid_from": "2026-12-01T00:00:00"}',
            "no offset",
        ),
        ("set_policy", b'{"request_id": "r", "id": "vera", "groups": "staff"}', "valid list"),
        (
            "set_group",
            b'{"request_id": "r", "name": "staff", "schedule": ["weekdays 8-18"]}',
            "DAYS HH:MM-HH:MM",
        ),
        ("set_calendar", b'{"request_id": "r", "name": "de", "days": ["tomorrow"]}', "not a date"),
        (
            "enroll",
            b'{"request_id": "r", "name": "V", "image": "aaaa", "valid_until": "soon"}',
            "not an ISO 8601",
        ),
    ):
        with pytest.raises(CommandError, match=message) as raised:
            parse(name, payload)
        assert raised.value.code == "invalid" and raised.value.request_id == "r"
    with pytest.raises(PolicyError):
        AccessGroup.from_parts("x", ["mon 25:00-26:00"], [])


def test_a_model_swap_rewrites_templates_and_keeps_the_policy(store: TemplateStore) -> None:
    store.add("vera", "Vera", VERSION, _vector(), policy=VISITOR)
    store.put_version("other@2.0", [("vera", _vector(5), None, 0.9)])
    store.drop_versions(keep="other@2.0")
    assert store.model_versions() == {"other@2.0": 1} and store.identity("vera").policy == VISITOR


def test_doctor_says_when_the_door_admits_nobody(tmp_path: Path) -> None:
    from appliance.config_load import validate_config
    from appliance.doctor import FAIL, OK, WARN, check_access

    config = validate_config({"storage": {"dir": str(tmp_path)}, "access": {"groups": ["staff", "night"]}})
    assert [c.status for c in check_access(config)] == [OK]  # no gallery yet: nothing is created
    assert not (tmp_path / "gallery.db").exists()
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.add("ada", "Ada", VERSION, _vector(), policy=IdentityPolicy(groups=("cleaners",)))
        store.put_group(AccessGroup.from_parts("staff", ["mon-fri 08:00-18:00"], ["xmas"]))
    checks = check_access(config)
    found = {(c.status, c.subject, c.detail.split(":")[0]) for c in checks}
    assert (FAIL, "access group night", "admitted by this door (access.groups) but not defined") in found
    assert (WARN, "access group staff", "names holiday calendar 'xmas', which is not defined") in found
    assert any(c.status == WARN and "none of the 1 identities" in c.detail for c in checks)
    assert any(c.status == WARN and "undefined groups: cleaners" in c.detail for c in checks)
