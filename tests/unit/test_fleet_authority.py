"""The enrolment authority without a broker: its revision counter (monotonic across restarts and a
restored older state), the adoption of the broker's manifest, the door status comparison, and its
configuration file's errors with key paths."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.access.policy import IdentityPolicy
from appliance.cli.fleet_cmd import _status_lines
from appliance.errors import ConfigError
from appliance.fleet.authority import (
    Authority,
    AuthorityState,
    Enrolment,
    Entry,
    Held,
    Published,
    StatusReport,
    compare_doors,
)
from appliance.fleet.errors import FleetError
from appliance.fleet.records import (
    IdentityRecord,
    LookAlikeNote,
    Manifest,
    Refusal,
    Tombstone,
    door_document,
    door_topic,
    fleet_digest,
    fleet_key_id,
    manifest_topic,
    open_manifest,
    open_record,
    record_topic,
)
from appliance.fleet.settings import load_authority_config, validate_authority

SITE = "hq"
PREFIX = "face-appliance-fleet"
NOW = "2026-01-02T03:04:05Z"


class FakeBroker:
    """What a broker retains, shared by every connection made from it (the authority's commands)."""

    def __init__(self) -> None:
        self.retained: Dict[str, bytes] = {}
        self.published: List[str] = []
        self.down = False
        self.fail_after: Optional[int] = None  # publishes accepted before the broker goes away
        self._filters: List[str] = []

    def __call__(self) -> FakeBroker:
        return self

    def __enter__(self) -> FakeBroker:
        if self.down:
            raise FleetError("cannot reach the MQTT broker fake:1883: connection refused")
        self._filters = []
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        if self.fail_after is not None and len(self.published) >= self.fail_after:
            raise FleetError("the MQTT broker fake:1883 did not acknowledge the message: connection lost")
        self.published.append(topic)
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)

    def subscribe(self, filters: Sequence[str]) -> List[bool]:
        self._filters.extend(filters)
        return [True] * len(filters)

    def collect(
        self, wait_s: float, enough: Optional[Callable[[Dict[str, bytes]], bool]] = None
    ) -> Dict[str, bytes]:
        def matches(topic: str, filter_: str) -> bool:
            parts, wanted = topic.split("/"), filter_.split("/")
            return len(parts) == len(wanted) and all(w in ("+", p) for p, w in zip(parts, wanted))

        return {t: p for t, p in self.retained.items() if any(matches(t, f) for f in self._filters)}


@pytest.fixture(scope="module")
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _config(tmp_path: Path, **authority: Any) -> Any:
    section = {
        "site": SITE,
        "signing_key": "keys/a.key",
        "fleet_key_file": "keys/fleet.key",
        "state_dir": "state",
        **authority,
    }
    return validate_authority({"authority": section}, base_dir=tmp_path)


def _authority(tmp_path: Path, signer: Ed25519PrivateKey, broker: FakeBroker, **settings: Any) -> Authority:
    return Authority(_config(tmp_path, **settings), signer, bytes(32), broker)


def _person(
    identity_id: Optional[str] = None, name: str = "Ada", external_id: Optional[str] = None
) -> Enrolment:
    crop = np.full((112, 112, 3), 120, np.uint8)
    return Enrolment(identity_id, name, external_id, NOW, IdentityPolicy(), (crop,), (0.8,))


def _enroll(authority: Authority, identity_id: Optional[str] = None, name: str = "Ada") -> Any:
    return authority.enroll(_person(identity_id, name), replace=True)


# -- the revision counter ----------------------------------------------------------------------------------


def test_counter_grows_across_restarts(tmp_path: Path) -> None:
    state = AuthorityState(tmp_path / "state", SITE)
    with state.locked():
        assert state.revision == 0
        assert [state.allocate(), state.allocate(), state.allocate()] == [1, 2, 3]
    again = AuthorityState(tmp_path / "state", SITE)
    with again.locked():
        assert again.revision == 3
        assert again.allocate() == 4
        assert again.allocate(floor=10) == 11  # the broker's manifest is newer: above it
        assert again.allocate(floor=5) == 12
    assert (tmp_path / "state" / "revision").read_text() == "12\n"
    assert oct((tmp_path / "state" / "revision").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"


def test_counter_lost_or_damaged(tmp_path: Path) -> None:
    state = AuthorityState(tmp_path / "state", SITE)
    with state.locked():
        state.index.identities["p-1"] = Entry(9, NOW)
        state.save_index()
    # Without its counter file the state still knows revision 9 from its index.
    with state.locked():
        assert state.allocate() == 10
    (tmp_path / "state" / "revision").write_text("ten\n")
    with state.locked(), pytest.raises(FleetError, match="damaged"):
        state.allocate()


def test_one_changing_command_at_a_time(tmp_path: Path) -> None:
    state = AuthorityState(tmp_path / "state", SITE)
    with state.locked(), pytest.raises(FleetError, match="another fleet command"):
        with AuthorityState(tmp_path / "state", SITE).locked():
            pass


def test_state_of_another_site_is_refused(tmp_path: Path) -> None:
    with AuthorityState(tmp_path / "state", SITE).locked() as state:
        state.save_index()
    with pytest.raises(FleetError, match="site 'hq'"):
        _ = AuthorityState(tmp_path / "state", "annex").index


def test_restored_older_state_never_reuses_a_revision(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    first = _enroll(authority, "p-aaaaaaaaaaaa")
    assert first.revision == 1
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "state", backup)
    second = _enroll(authority, "p-bbbbbbbbbbbb", "Grace")
    gone = authority.remove("p-aaaaaaaaaaaa")
    assert (second.revision, gone.revision) == (2, 3)

    # The authority machine is restored from the backup taken after the first enrolment.
    shutil.rmtree(tmp_path / "state")
    shutil.copytree(backup, tmp_path / "state")
    restored = _authority(tmp_path, signer, broker)
    third = _enroll(restored, "p-cccccccccccc", "Hedy")
    assert third.revision == 4  # above the broker's manifest r3, not 2 again
    manifest = open_manifest(broker.retained[manifest_topic(PREFIX, SITE)], SITE, restored.trusted)
    # What the restored state lacked was adopted, so nothing is dropped from the manifest.
    assert manifest.entries == {"p-bbbbbbbbbbbb": 2, "p-cccccccccccc": 4}
    assert manifest.tombstones == {"p-aaaaaaaaaaaa": 3}
    assert manifest.revision == 4
    # The stale sealed record of the removed identity is never sent again over its tombstone.
    count, _ = restored.republish()
    assert count == 1  # only p-cccc…: the others were adopted from the broker
    tombstone = open_record(
        broker.retained[record_topic(PREFIX, SITE, "p-aaaaaaaaaaaa")], SITE, bytes(32), restored.trusted
    )
    assert isinstance(tombstone, Tombstone) and tombstone.revision == 3


def test_enroll_remove_set_prune(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker, tombstone_days=30)
    published = _enroll(authority)
    assert published.identity_id.startswith("p-") and len(published.identity_id) == 14
    with pytest.raises(FleetError, match="enrolled already"):
        authority.enroll(_person(published.identity_id))
    changed = authority.set_policy(published.identity_id, {"suspended": True, "add_groups": ["night"]})
    record = open_record(broker.retained[changed.topic], SITE, bytes(32), authority.trusted)
    assert isinstance(record, IdentityRecord) and record.revision == 2 and record.name == "Ada"
    assert record.policy.suspended and record.policy.groups == ("night",)
    assert authority.state.index.identities[published.identity_id].name == "Ada"

    removal = authority.remove(published.identity_id, removed_at=NOW)
    assert removal.kind == "tombstone" and authority.state.index.identities == {}
    with pytest.raises(FleetError, match="not enrolled"):
        authority.remove(published.identity_id)
    assert authority.prune(now=datetime(2026, 1, 20, tzinfo=timezone.utc)) == []
    cleared = authority.prune(now=datetime(2026, 1, 2, tzinfo=timezone.utc) + timedelta(days=31))
    assert cleared == [published.identity_id]
    assert record_topic(PREFIX, SITE, published.identity_id) not in broker.retained
    manifest = open_manifest(broker.retained[manifest_topic(PREFIX, SITE)], SITE, authority.trusted)
    assert (manifest.revision, manifest.entries, manifest.tombstones) == (4, {}, {})


def test_names_are_not_kept_when_asked(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    authority = _authority(tmp_path, signer, FakeBroker(), keep_names=False)
    _enroll(authority, "p-aaaaaaaaaaaa", "Ada Lovelace")
    assert b"Ada" not in (tmp_path / "state" / "index.json").read_bytes()
    assert oct((tmp_path / "state" / "index.json").stat().st_mode & 0o777) == "0o600"


def test_broker_down_changes_nothing_then_republish(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    broker.down = True
    with pytest.raises(FleetError, match="cannot reach"):
        _enroll(authority)
    assert authority.state.revision == 0 and authority.state.index.identities == {}
    broker.down = False
    _enroll(authority, "p-aaaaaaaaaaaa")
    broker.retained.clear()  # the broker lost its retained messages
    count, manifest = authority.republish()
    assert count == 1 and manifest.revision == 2
    assert set(broker.retained) == {
        record_topic(PREFIX, SITE, "p-aaaaaaaaaaaa"),
        manifest_topic(PREFIX, SITE),
    }


# -- a batch (fleet enroll-batch) ------------------------------------------------------------------------


def test_a_batch_is_one_change_and_a_second_run_holds_everyone(
    tmp_path: Path, signer: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    writes: List[int] = []
    save_index = AuthorityState.save_index
    monkeypatch.setattr(AuthorityState, "save_index", lambda state: (writes.append(1), save_index(state)))
    people = [_person("p-grace", "Grace"), _person(None, "Ada", "B-1815"), _person(None, "Alan", "B-1912")]
    first = authority.enroll_many(people)
    assert [type(outcome) for outcome in first] == [Published] * 3
    assert [outcome.revision for outcome in first] == [1, 2, 3]
    grace, ada, alan = (outcome.identity_id for outcome in first)
    assert grace == "p-grace" and ada.startswith("p-") and alan.startswith("p-") and ada != alan
    record_topics = [record_topic(PREFIX, SITE, i) for i in (grace, ada, alan)]
    assert broker.published == [*record_topics, manifest_topic(PREFIX, SITE)]  # one manifest, last
    assert len(writes) == 1  # one index write for the batch
    manifest = open_manifest(broker.retained[manifest_topic(PREFIX, SITE)], SITE, authority.trusted)
    assert (manifest.revision, manifest.entries) == (3, {grace: 1, ada: 2, alan: 3})
    record = open_record(broker.retained[record_topics[1]], SITE, bytes(32), authority.trusted)
    assert isinstance(record, IdentityRecord) and (record.name, record.external_id) == ("Ada", "B-1815")

    # The same roster again: found by id and by external id, nothing published, no revision used.
    again = authority.enroll_many(people)
    assert again == [Held(grace, 1), Held(ada, 2), Held(alan, 3)]
    assert len(broker.published) == 4 and authority.state.counter == 3

    # With replace, a person without an id replaces the holder of their external id.
    (replaced,) = authority.enroll_many([_person(None, "Ada L.", "B-1815")], replace=True)
    assert isinstance(replaced, Published) and (replaced.identity_id, replaced.revision) == (ada, 4)
    assert authority.state.index.identities[ada].name == "Ada L."
    # One enrolment (fleet enroll) of a badge that is enrolled: refused, and says whose it is.
    with pytest.raises(FleetError, match="enrolled already as the holder of external id 'B-1912'"):
        authority.enroll(_person(None, "Alan", "B-1912"))


def test_a_badge_held_by_another_identity_refuses_the_batch(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    (ada,) = authority.enroll_many([_person(None, "Ada", "B-1815")])
    published = list(broker.published)
    with pytest.raises(FleetError, match=f"external id 'B-1815' is held by identity '{ada.identity_id}'"):
        authority.enroll_many([_person("p-new", "New"), _person("p-grace", "Grace", "B-1815")], replace=True)
    assert broker.published == published and authority.state.counter == 1
    assert set(authority.state.index.identities) == {ada.identity_id}
    # A changed badge frees the old one within the same batch.
    moved = authority.enroll_many(
        [_person(ada.identity_id, "Ada", "B-2000"), _person(None, "Grace", "B-1815")], replace=True
    )
    assert moved[1].identity_id != ada.identity_id
    assert authority.state.index.by_external_id() == {
        "B-2000": ada.identity_id,
        "B-1815": moved[1].identity_id,
    }


def _carded(identity_id: Optional[str], name: str, *cards: str) -> Enrolment:
    return dataclasses.replace(_person(identity_id, name), policy=IdentityPolicy(cards=cards))


def test_a_card_names_one_person_across_the_site(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    """A card another live identity holds is refused at enrolment, in a batch (against the site and
    within the batch) and at `fleet set`, naming the holder; a replaced record gives its cards up; the
    index keeps keyed digests of the cards, never their numbers."""
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    ada = authority.enroll(_carded("p-ada", "Ada", "w26:7:1", "w26:7:2"))
    published = list(broker.published)
    refusals = [
        (
            lambda: authority.enroll(_carded(None, "Alan", "w26:7:2")),
            "card w26:7:2 of Alan is held by identity 'p-ada' (Ada), r1",
        ),
        (
            lambda: authority.check_enrollable(None, None, False, "Alan", ["w26:7:1"]),
            "fleet set p-ada --remove-card w26:7:1",
        ),
        (
            lambda: authority.enroll_many(
                [_carded(None, "Alan", "w26:9:1"), _carded("p-grace", "Grace", "w26:9:1")]
            ),
            "card w26:9:1 is given to Grace and to Alan",
        ),
    ]
    for refused, message in refusals:
        with pytest.raises(FleetError, match=re.escape(message)):
            refused()
    assert broker.published == published and authority.state.counter == 1
    alan = authority.enroll(_carded("p-alan", "Alan", "w26:9:1"))
    with pytest.raises(FleetError, match="card w26:9:1 of Ada is held by identity 'p-alan'"):
        authority.set_policy(ada.identity_id, {"add_cards": ["w26:9:1"]})
    # Ada's record replaced without card 2 frees it, in the same batch that gives it to Grace.
    moved = authority.enroll_many(
        [_carded("p-ada", "Ada", "w26:7:1"), _carded("p-grace", "Grace", "w26:7:2")], replace=True
    )
    assert [m.identity_id for m in moved] == ["p-ada", "p-grace"]
    authority.set_policy(alan.identity_id, {"remove_cards": ["w26:9:1"]})
    authority.set_policy(ada.identity_id, {"add_cards": ["w26:9:1"]})  # free now
    index = (tmp_path / "state" / "index.json").read_bytes()
    assert b"w26" not in index and b"card_digests" in index
    digests = {
        i: e.card_digests for i, e in AuthorityState(tmp_path / "state", SITE).index.identities.items()
    }
    assert digests == {
        "p-ada": tuple(sorted(authority.card_digest(c) for c in ("w26:7:1", "w26:9:1"))),
        "p-grace": (authority.card_digest("w26:7:2"),),
        "p-alan": (),
    }


def test_policies_of_many_are_set_as_one_change_keeping_their_faces(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    authority.enroll_many([_carded("p-ada", "Ada", "w26:7:1"), _carded("p-alan", "Alan", "w26:7:2")])
    broker.published.clear()
    changed = authority.set_policies(
        [
            ("p-ada", {"cards": ["w26:7:9"], "groups": ["night"]}),  # gives w26:7:1 up …
            ("p-alan", {"cards": ["w26:7:2"]}),  # as it is: nothing published
        ]
    )
    assert changed[1] is None and changed[0].revision == 3
    assert broker.published == [changed[0].topic, manifest_topic(PREFIX, SITE)]  # one record, one manifest
    record = open_record(broker.retained[changed[0].topic], SITE, bytes(32), authority.trusted)
    assert record.policy.cards == ("w26:7:9",) and record.policy.groups == ("night",)
    assert len(record.crops) == 1 and record.name == "Ada"  # the face kept
    (moved,) = authority.set_policies([("p-alan", {"add_cards": ["w26:7:1"]})])  # … now free
    assert moved is not None
    with pytest.raises(FleetError, match="card w26:7:9 of Alan is held by identity 'p-ada'"):
        authority.set_policies([("p-alan", {"add_cards": ["w26:7:9"]})])
    with pytest.raises(FleetError, match="not enrolled"):
        authority.set_policies([("p-nobody", {"groups": []})])


def test_an_index_older_than_card_digests_gets_them_from_the_sealed_records(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    authority.enroll(_carded("p-ada", "Ada", "w26:7:1"))
    path = tmp_path / "state" / "index.json"
    document = json.loads(path.read_text())
    del document["identities"]["p-ada"]["card_digests"]  # as an older authority wrote it
    path.write_text(json.dumps(document))
    later = _authority(tmp_path, signer, broker)
    with pytest.raises(FleetError, match="held by identity 'p-ada'"):
        later.enroll(_carded(None, "Alan", "w26:7:1"))
    assert later.state.index.identities["p-ada"].card_digests == (later.card_digest("w26:7:1"),)
    for damaged in (["w26:7:1"], "0" * 32, [1]):  # a card number, not a list, not a digest
        document["identities"]["p-ada"]["card_digests"] = damaged
        path.write_text(json.dumps(document))
        with pytest.raises(FleetError, match=r"card_digests: .* is not a list of card digests"):
            assert AuthorityState(tmp_path / "state", SITE).index is None


def test_a_broker_lost_half_way_leaves_the_whole_batch_to_republish(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    broker.fail_after = 1
    people = [_person(f"p-{index}", f"Person {index}") for index in range(3)]
    with pytest.raises(FleetError, match="run `face-appliance fleet republish`"):
        authority.enroll_many(people)
    assert broker.published == [record_topic(PREFIX, SITE, "p-0")]
    assert {i: e.revision for i, e in authority.state.index.identities.items()} == {
        "p-0": 1,
        "p-1": 2,
        "p-2": 3,
    }
    broker.fail_after = None
    count, manifest = authority.republish()
    assert count == 3 and manifest.entries == {"p-0": 1, "p-1": 2, "p-2": 3}
    # Run again, the batch holds everyone: nothing is enrolled twice.
    assert [type(o) for o in authority.enroll_many(people)] == [Held] * 3


def test_leavers_are_removed_as_one_change_by_id_or_badge(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    people = [_person(None, f"Person {index}", f"B-{index}") for index in range(4)]
    ids = [outcome.identity_id for outcome in authority.enroll_many(people)]
    before, counter = len(broker.published), authority.state.counter
    # An unknown id and a badge nobody holds: every one named, nothing removed, no revision used.
    with pytest.raises(FleetError) as refused:
        authority.remove_many([ids[0], "p-nobody"], ["B-1", "B-99"])
    assert "nothing was removed" in str(refused.value)
    assert "'p-nobody': not enrolled" in str(refused.value) and "external id 'B-99'" in str(refused.value)
    assert len(broker.published) == before and authority.state.counter == counter

    # Person 0 by id and by badge (once), person 2 by badge.
    removed = authority.remove_many([ids[0]], ["B-0", "B-2"], removed_at=NOW)
    assert [(p.identity_id, p.revision, p.kind) for p in removed] == [
        (ids[0], 5, "tombstone"),
        (ids[2], 6, "tombstone"),
    ]
    assert broker.published[before:] == [
        record_topic(PREFIX, SITE, ids[0]),
        record_topic(PREFIX, SITE, ids[2]),
        manifest_topic(PREFIX, SITE),
    ]
    manifest = open_manifest(broker.retained[manifest_topic(PREFIX, SITE)], SITE, authority.trusted)
    assert manifest.entries == {ids[1]: 2, ids[3]: 4} and manifest.tombstones == {ids[0]: 5, ids[2]: 6}
    assert authority.state.index.by_external_id() == {"B-1": ids[1], "B-3": ids[3]}


# -- status ------------------------------------------------------------------------------------------------


def _door(device_id: str, entries: Dict[str, int], revision: Optional[int], **changes: Any) -> bytes:
    document = door_document(device_id, SITE, revision, entries, 0, None, NOW)
    document.update(changes)
    return json.dumps(document).encode()


def test_a_door_holding_another_fleet_key_is_not_in_step_and_a_forgotten_door_is_not_listed(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    manifest = Manifest(9, {"p-1": 3}, {}, NOW)
    documents = {d: _door(d, {"p-1": 3}, 9) for d in ("door-1", "door-2", "door-3")}
    site = fleet_key_id(bytes(32))
    statuses = {
        s.device_id: s
        for s in compare_doors(
            manifest, SITE, documents, {}, {"door-1": site, "door-2": fleet_key_id(bytes(range(32)))}, site
        )
    }
    assert [(statuses[d].fleet_key, statuses[d].ok) for d in sorted(statuses)] == [
        ("current", True),
        ("other", False),  # in step today, but it cannot open what comes next
        (None, True),  # its state not read
    ]
    assert "holds another fleet key" in statuses["door-2"].differences(manifest)[0]
    assert statuses["door-2"].document(manifest)["fleet_key"] == "other"
    # Read from the doors' retained …/state by `fleet status`; a forgotten door is no longer listed.
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    for device, key in (("door-1", bytes(32)), ("door-2", bytes(range(32)))):
        broker.retained[door_topic(PREFIX, SITE, device)] = documents[device]
        state = {"fleet": {"key_id": fleet_key_id(key)}}
        broker.retained[f"face-appliance/{device}/state"] = json.dumps(state).encode()
    broker.retained["face-appliance/door-3/state"] = b"[" * 2_000_000  # too large: says nothing
    report = authority.status(0.0)
    assert {d.device_id: d.fleet_key for d in report.doors} == {"door-1": "current", "door-2": "other"}
    assert not report.all_in_step
    for bad, message in ((["door-9"], "no door door-9 has a digest"), (["door/#"], "not a device id")):
        with pytest.raises(FleetError, match=message):
            authority.forget_doors(["door-2", *bad])
    assert door_topic(PREFIX, SITE, "door-2") in broker.retained  # nothing cleared
    authority.forget_doors(["door-2"])
    report = authority.status(0.0)
    assert [d.device_id for d in report.doors] == ["door-1"]


def test_compare_doors() -> None:
    manifest = Manifest(9, {"p-1": 3, "p-2": 9}, {"p-3": 8}, NOW)
    documents = {
        "door-1": _door("door-1", {"p-1": 3, "p-2": 9}, 9),
        "door-2": _door("door-2", {"p-1": 3}, 7),  # offline during the last enrolment
        "door-3": _door("door-3", {"p-1": 3, "p-2": 8}, 9),  # a stale record
        "door-4": _door("door-4", {"p-1": 3, "p-2": 9, "p-3": 4}, 9),  # missed a tombstone
        "door-5": b"{not json",
        "door-6": _door("door-6", {"p-1": 3, "p-2": 9}, 9, site="annex"),
        "door-7": _door("elsewhere", {"p-1": 3, "p-2": 9}, 9),
        "door-8": _door("door-8", {"p-1": 3, "p-2": 9}, 9),
    }
    refused = door_document(
        "door-3", SITE, 9, {"p-1": 3, "p-2": 8}, 2, Refusal("p-2", "bad_signature", NOW), NOW
    )
    documents["door-3"] = json.dumps(refused).encode()
    statuses = {
        s.device_id: s
        for s in compare_doors(manifest, SITE, documents, {"door-1": "online", "door-8": "offline"})
    }
    assert [statuses[d].in_step for d in sorted(statuses)] == [
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    assert statuses["door-1"].ok and statuses["door-1"].reachable is True
    assert statuses["door-2"].reachable is None and not statuses["door-2"].ok
    assert not statuses["door-8"].ok  # in step, but offline
    notes = {d: " | ".join(s.differences(manifest)) for d, s in statuses.items()}
    assert notes["door-1"] == ""
    assert "1 identit(ies) missing (1 of 2)" in notes["door-2"] and "last manifest r7" in notes["door-2"]
    assert "other revisions" in notes["door-3"] and "2 record(s) refused" in notes["door-3"]
    assert "bad_signature" in notes["door-3"]
    assert "1 identit(ies) extra" in notes["door-4"]
    assert "unreadable" in notes["door-5"]
    assert "site 'annex'" in notes["door-6"]
    assert "names device 'elsewhere'" in notes["door-7"]
    document = statuses["door-2"].document(manifest)
    assert document["applied"] == 1 and document["expected"] == 2 and document["manifest_revision"] == 7

    report = StatusReport(manifest, "broker", [statuses["door-1"]])
    assert report.all_in_step and report.document()["manifest"]["digest"] == fleet_digest(manifest.entries)
    # In step, but on an older manifest: said, not counted against it.
    behind = compare_doors(manifest, SITE, {"door-9": _door("door-9", {"p-1": 3, "p-2": 9}, 8)})
    lines = _status_lines(StatusReport(manifest, "broker", behind), SITE)
    assert behind[0].ok and any(
        "door-9" in line and "follows manifest r8, the site's is r9" in line for line in lines
    )
    assert lines[-1] == "all 1 door(s) in step"
    assert not StatusReport(manifest, "broker", []).all_in_step  # no door reported: not "all in step"
    assert not StatusReport(manifest, "broker", list(statuses.values())).all_in_step


def test_the_doors_look_alikes_are_listed_once_a_pair() -> None:
    """Each door lists the pairs it found from its side (the identity whose record found it first);
    the report lists each pair once, either way round, with its best score and every door."""
    manifest = Manifest(3, {"p-1": 1, "p-2": 2, "p-3": 3}, {}, NOW)
    entries = dict(manifest.entries)

    def door(device_id: str, *notes: LookAlikeNote, count: Optional[int] = None) -> bytes:
        document = door_document(device_id, SITE, 3, entries, 0, None, NOW, list(notes))
        if count is not None:
            document["look_alikes"]["count"] = count
        return json.dumps(document).encode()

    documents = {
        "door-1": door("door-1", LookAlikeNote("p-2", "p-1", 0.81), LookAlikeNote("p-3", None, 0.7)),
        "door-2": door("door-2", LookAlikeNote("p-1", "p-2", 0.84), count=25),  # applied in another order
        "door-3": door("door-3", LookAlikeNote("p-3", None, 0.65)),  # another local identity there
    }
    report = StatusReport(manifest, "broker", compare_doors(manifest, SITE, documents), names={"p-1": "Ann"})
    assert [pair.document() for pair in report.look_alikes()] == [
        {"id": "p-1", "like": "p-2", "score": 0.84, "doors": ["door-1", "door-2"]},
        {"id": "p-3", "like": None, "score": 0.7, "doors": ["door-1", "door-3"]},
    ]
    assert report.document()["look_alikes"] == [pair.document() for pair in report.look_alikes()]
    assert report.all_in_step  # a look-alike is a warning, not a difference from the manifest
    lines = _status_lines(report, SITE)
    assert "  p-1 (Ann) ~ p-2 0.84 at door-1, door-2" in lines
    assert "  p-3 ~ an identity enrolled at the door 0.70 at door-1, door-3" in lines
    assert "  door-2 holds 25 look-alike pair(s) and lists the 1 best" in lines


def test_two_people_marked_distinct_are_not_listed_as_look_alikes(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    """Twins stay look-alikes at every door; ``fleet distinct`` keeps them out of the report, and the
    mark goes with either identity."""
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    for identity_id in ("p-ann", "p-bea", "p-cy"):
        _enroll(authority, identity_id)
    with pytest.raises(FleetError, match="twice"):
        authority.mark_distinct("p-ann", "p-ann")
    with pytest.raises(FleetError, match="not live here: p-zed"):
        authority.mark_distinct("p-ann", "p-zed")
    assert authority.mark_distinct("p-bea", "p-ann") and not authority.mark_distinct("p-ann", "p-bea")
    again = AuthorityState(tmp_path / "state", SITE)  # saved with the index
    assert again.index.distinct == {("p-ann", "p-bea")}

    manifest = again.index.manifest(again.revision)
    notes = [LookAlikeNote("p-bea", "p-ann", 0.9), LookAlikeNote("p-cy", "p-ann", 0.7)]
    documents = {
        "door-1": json.dumps(door_document("door-1", SITE, 3, manifest.entries, 0, None, NOW, notes))
    }
    report = StatusReport(
        manifest, "broker", compare_doors(manifest, SITE, documents), distinct=again.index.distinct_live()
    )
    assert [(pair.id, pair.like) for pair in report.look_alikes()] == [("p-cy", "p-ann")]
    lines = _status_lines(report, SITE)
    assert "look-alikes: 1 pair(s) marked distinct people (`fleet distinct`) not listed" in lines
    assert report.document()["distinct"] == [["p-ann", "p-bea"]]

    assert authority.mark_distinct("p-ann", "p-bea", distinct=False)
    assert not authority.mark_distinct("p-ann", "p-bea", distinct=False)
    assert authority.mark_distinct("p-ann", "p-cy")
    authority.remove("p-cy")  # the mark goes with it
    assert AuthorityState(tmp_path / "state", SITE).index.document()["distinct"] == []


def test_status_against_the_broker(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    broker = FakeBroker()
    authority = _authority(tmp_path, signer, broker)
    published = _enroll(authority, "p-aaaaaaaaaaaa")
    broker.retained[door_topic(PREFIX, SITE, "door-1")] = _door("door-1", {"p-aaaaaaaaaaaa": 1}, 1)
    broker.retained["face-appliance/door-1/availability"] = b"online"
    report = authority.status(0.1)
    assert report.source == "broker" and report.all_in_step and report.notes == []
    authority.remove(published.identity_id)
    report = authority.status(0.1)
    assert not report.all_in_step and report.manifest.revision == 2
    # The broker lost the manifest: the state's is compared, and a note says to republish.
    del broker.retained[manifest_topic(PREFIX, SITE)]
    report = authority.status(0.1)
    assert report.source == "state" and any("republish" in note for note in report.notes)


# -- configuration -----------------------------------------------------------------------------------------


def test_config_file_resolves_paths_and_reads_secrets(tmp_path: Path) -> None:
    (tmp_path / "mqtt_password").write_text("s3cret\n")
    path = tmp_path / "AUTH.toml"
    path.write_text(
        '[authority]\nsite = "hq"\nsigning_key = "keys/a.key"\nfleet_key_file = "/etc/fleet.key"\n'
        'state_dir = "state"\n[mqtt]\nhost = "broker"\nusername = "authority"\npassword_file = "mqtt_password"\n'
        "[gallery]\nmin_face_px = 80\n"
    )
    config = load_authority_config(path)
    assert config.authority.signing_key == tmp_path / "keys" / "a.key"
    assert config.authority.fleet_key_file == Path("/etc/fleet.key")
    assert config.authority.state_dir == tmp_path / "state"
    assert config.authority.prefix == PREFIX and config.authority.tombstone_days == 30
    secret = config.mqtt.secret_password()
    assert secret is not None and secret.get_secret_value() == "s3cret"
    appliance = config.appliance_config()
    assert appliance.gallery.min_face_px == 80 and appliance.storage.dir == tmp_path / "state"


def test_config_errors_name_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "AUTH.toml"
    path.write_text(
        '[authority]\nsite = "h q"\nsigning_ky = "a.key"\ntombstone_days = 0\nprefix = "a//b"\n'
        '[mqtt]\nprefix = "x"\nport = "1883"\npassword_file = "absent"\nusername = "u"\n[camera]\nsource = "x"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_authority_config(path)
    issues = {issue.path: issue.message for issue in caught.value.issues}
    assert "pattern" in issues["authority.site"]
    assert "did you mean 'signing_key'" in issues["authority.signing_ky"]
    assert issues["authority.signing_key"] == "required key is missing"
    assert issues["authority.fleet_key_file"] == "required key is missing"
    assert "≥ 1" in issues["authority.tombstone_days"]
    assert "empty topic level" in issues["authority.prefix"]
    assert "authority.prefix" in issues["mqtt.prefix"]
    assert "'1883'" in issues["mqtt.port"]
    assert "keys allowed in the top level: authority, backend" in issues["camera"]
    assert str(path) in str(caught.value)

    with pytest.raises(ConfigError) as caught:
        load_authority_config(tmp_path / "absent.toml")
    assert "does not exist" in str(caught.value)
    path.write_text(
        '[authority]\nsite = "hq"\nsigning_key = "a.key"\nfleet_key_file = "f"\nstate_dir = "s"\n'
        '[mqtt]\nusername = "u"\npassword_file = "absent"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_authority_config(path)
    assert [issue.path for issue in caught.value.issues] == ["mqtt.password_file"]
    path.write_text("[authority\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_authority_config(path)
