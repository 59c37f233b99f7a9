"""``fleet rotate-key``: the site's records resealed under a new fleet key at the same revisions, the
old key kept as ``.previous``, an interrupted rotation finished by running it again; a door given both
keys opens both, a door left with the old one opens nothing published after; area events signed under
either key verify where both are known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.event_mac import EventKey, EventMacError
from appliance.fleet import authority as authority_module
from appliance.fleet.errors import FleetError
from appliance.fleet.records import (
    FleetRecordError,
    IdentityRecord,
    Tombstone,
    open_record,
    read_fleet_key,
    read_previous_fleet_key,
    record_topic,
    reseal_record,
)
from tests.unit.test_fleet_authority import PREFIX, SITE, FakeBroker, _authority, _carded

OLD = bytes(32)  # the test authority's fleet key


@pytest.fixture(scope="module")
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _site(tmp_path: Path, signer: Ed25519PrivateKey) -> Any:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    authority.enroll_many([_carded("p-ada", "Ada", "w26:7:1"), _carded("p-alan", "Alan", "w26:7:2")])
    authority.remove("p-alan", removed_at="2026-12-07T10:00:00Z")
    return authority, broker


def _topic(identity_id: str) -> str:
    return record_topic(PREFIX, SITE, identity_id)


def test_a_rotation_reseals_every_record_at_its_revision_under_a_new_key(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    authority, broker = _site(tmp_path, signer)
    before = {i: broker.retained[_topic(i)] for i in ("p-ada", "p-alan")}
    broker.published.clear()
    resealed, published = authority.rotate_fleet_key()
    assert (resealed, published) == (2, 2) and sorted(broker.published) == [_topic("p-ada"), _topic("p-alan")]
    keys = tmp_path / "keys"
    new = read_fleet_key(keys / "fleet.key")
    assert new != OLD and read_previous_fleet_key(keys / "fleet.key.previous") == OLD
    assert not (keys / "fleet.key.next").exists() and authority.fleet_key == new
    assert oct((keys / "fleet.key.previous").stat().st_mode & 0o777) == "0o600"
    ada = open_record(broker.retained[_topic("p-ada")], SITE, new, authority.trusted)
    alan = open_record(broker.retained[_topic("p-alan")], SITE, new, authority.trusted)
    assert isinstance(ada, IdentityRecord) and isinstance(alan, Tombstone)
    assert (
        (ada.revision, alan.revision) == (1, 3) and ada.policy.cards == ("w26:7:1",) and len(ada.crops) == 1
    )
    assert broker.retained[_topic("p-ada")] == authority.state.sealed("p-ada")  # the state's too
    # A door left with the old key opens nothing published now; one given both keys opens old and new.
    with pytest.raises(FleetRecordError) as refused:
        open_record(broker.retained[_topic("p-ada")], SITE, OLD, authority.trusted)
    assert refused.value.reason == "decrypt_failed" and "fleet rotate-key" in str(refused.value)
    assert open_record(before["p-ada"], SITE, new, authority.trusted, previous_key=OLD).revision == 1
    # Card digests are keyed with the fleet key: made again, a clash is still found.
    with pytest.raises(FleetError, match="held by identity 'p-ada'"):
        authority.enroll(_carded(None, "Eve", "w26:7:1"))
    assert authority.state.index.identities["p-ada"].card_digests == (authority.card_digest("w26:7:1"),)


@pytest.mark.parametrize("interrupted", ["before the key files", "while publishing"])
def test_an_interrupted_rotation_refuses_other_changes_and_is_finished_with_the_same_key(
    tmp_path: Path, signer: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch, interrupted: str
) -> None:
    authority, broker = _site(tmp_path, signer)
    keys = tmp_path / "keys"
    if interrupted == "before the key files":
        writer = authority_module.atomic_writer

        def crash(path: Path, *args: Any, **kwargs: Any) -> Any:
            if Path(path).name.startswith("fleet.key"):  # the state is written; the key files are not
                raise OSError("power lost")
            return writer(path, *args, **kwargs)

        monkeypatch.setattr(authority_module, "atomic_writer", crash)
        with pytest.raises(OSError, match="power lost"):
            authority.rotate_fleet_key()
        monkeypatch.undo()
        assert not (keys / "fleet.key").exists() and authority.fleet_key == OLD  # the test's key: in memory
    else:
        broker.fail_after = len(broker.published) + 1  # one record out, then the broker is gone
        with pytest.raises(
            FleetError, match="rotation is not finished: run `face-appliance fleet rotate-key`"
        ):
            authority.rotate_fleet_key()
        broker.fail_after = None
        assert read_fleet_key(keys / "fleet.key") != OLD  # the key files were switched
    pending = read_fleet_key(keys / "fleet.key.next")  # the state holds records sealed under it now
    published = list(broker.published)
    for change in (lambda: authority.enroll(_carded(None, "Eve")), authority.republish, authority.prune):
        with pytest.raises(FleetError, match="rotation was interrupted"):
            change()
    assert broker.published == published
    resealed, count = authority.rotate_fleet_key()
    assert count == 2 and resealed == 0  # every state record was resealed before the interruption
    assert read_fleet_key(keys / "fleet.key") == pending and not (keys / "fleet.key.next").exists()
    assert read_previous_fleet_key(keys / "fleet.key.previous") == OLD  # not the new key, on the rerun
    for identity_id in ("p-ada", "p-alan"):
        assert open_record(broker.retained[_topic(identity_id)], SITE, pending, authority.trusted)
    authority.enroll(_carded("p-eve", "Eve"))  # changes go on, under the new key
    assert open_record(broker.retained[_topic("p-eve")], SITE, pending, authority.trusted).name == "Eve"


def test_a_record_that_cannot_be_resealed_leaves_the_key_as_it_was(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    authority, broker = _site(tmp_path, signer)
    authority.state.drop_sealed("p-ada")
    broker.retained.pop(_topic("p-ada"))  # neither in the state nor on the broker
    with pytest.raises(FleetError, match=r"not rotated: 1 record\(s\) .*p-ada \(not found\)"):
        authority.rotate_fleet_key()
    keys = tmp_path / "keys"
    assert not (keys / "fleet.key.next").exists() and not (keys / "fleet.key.previous").exists()
    assert authority.fleet_key == OLD


def test_reseal_leaves_a_record_under_the_new_key_as_it_is(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    authority, broker = _site(tmp_path, signer)
    payload = broker.retained[_topic("p-ada")]
    new = bytes(range(32))
    resealed, changed = reseal_record(payload, SITE, [OLD], new, signer, authority.trusted)
    assert changed and json.loads(resealed)["revision"] == 1
    assert reseal_record(resealed, SITE, [OLD], new, signer, authority.trusted) == (resealed, False)
    with pytest.raises(FleetRecordError, match="decrypt"):
        reseal_record(payload, SITE, [bytes([7] * 32)], new, signer, authority.trusted)


def test_area_events_signed_under_either_key_verify_where_both_are_known(tmp_path: Path) -> None:
    new = bytes(range(32))
    old_door, rotated_door = EventKey(OLD), EventKey(new, previous=OLD)
    event_old: dict = {"event_id": "e-1", "device_id": "door-a"}
    event_new: dict = {"event_id": "e-2", "device_id": "door-b"}
    old_door.sign(event_old)
    rotated_door.sign(event_new)
    assert event_new["mac"]["key_id"] == EventKey(new).key_id  # signed under the new key only
    rotated_door.verify(event_old)
    rotated_door.verify(event_new)
    with pytest.raises(EventMacError, match="given the rotated key before this one"):
        old_door.verify(event_new)
    empty = tmp_path / "fleet_key_previous"
    empty.write_bytes(b"")
    empty.chmod(0o600)
    assert read_previous_fleet_key(empty) is None and read_previous_fleet_key(None) is None
    empty.write_text(OLD.hex() + "\n")
    assert read_previous_fleet_key(empty) == OLD


def test_doctor_names_the_door_s_key_ids_and_a_previous_key_installed_as_the_current(tmp_path: Path) -> None:
    from appliance.config_load import validate_config
    from appliance.doctor import FAIL, OK, WARN, check_fleet
    from appliance.fleet.records import fleet_key_id

    current, previous = tmp_path / "fleet_key", tmp_path / "fleet_key_previous"
    for path, key in ((current, bytes(range(32))), (previous, OLD)):
        path.write_text(key.hex() + "\n")
        path.chmod(0o600)
    config = validate_config(
        {"fleet": {"fleet_key_file": str(current), "previous_fleet_key_file": str(previous)}}
    )

    def checks() -> Any:
        return {c.subject: c for c in check_fleet(config)}

    found = checks()
    assert fleet_key_id(bytes(range(32))) in found["fleet key"].detail
    assert (
        found["previous fleet key"].status == OK and fleet_key_id(OLD) in found["previous fleet key"].detail
    )
    previous.write_text(bytes(range(32)).hex() + "\n")  # the rotated key in both credentials
    assert checks()["previous fleet key"].status == WARN
    previous.write_text("")
    assert checks()["previous fleet key"].status == OK and "empty" in checks()["previous fleet key"].detail
    previous.write_text("not a key\n")
    assert checks()["previous fleet key"].status == FAIL
