"""Card and PIN without a face (appliance.access.without_face): the rule, the judge on a real store, the
pipeline's outcomes and their schema-2 events, the configuration, doctor, the area's reading of such
events and Home Assistant's duress sensor."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest

from appliance.access.area import parse_passage
from appliance.access.credentials import PresentedCredential, hash_pin
from appliance.access.judge import GONE, AccessJudge
from appliance.access.passback import PASSBACK
from appliance.access.policy import IdentityPolicy, parse_instant
from appliance.access.presence import PRESENCE_FILE, PresenceStore
from appliance.access.second_factor import CREDENTIAL_LOCKOUT, SECOND_FACTOR, WRONG_CREDENTIAL
from appliance.access.settings import AccessConfig
from appliance.access.without_face import CardWait, PinMatch, PinMismatch, WithoutFaceRule
from appliance.config_load import validate_config
from appliance.decisions import DecisionSettings
from appliance.events import access_event
from appliance.gallery.errors import IdentityError
from appliance.gallery.store import TemplateStore
from appliance.metrics import Latencies
from appliance.pipeline import Pipeline

VERSION = "mobilefacenet@foamliu-v1.0"
NOON = parse_instant("2026-12-07T12:00:00Z", "t")
T0 = NOON.timestamp()
VERA_CARD = "w26:7:100"
ADA_CARD = "w26:7:200"
READER = "entry-reader"
VERA = IdentityPolicy(cards=(VERA_CARD,), pin=hash_pin("2468"), duress_pin=hash_pin("1357"))


def _at(seconds: float, kind: str, value: str, reader: str = READER) -> PresentedCredential:
    return PresentedCredential(kind, value, reader, T0 + seconds)


# -- the rule --------------------------------------------------------------------------------------------


def test_a_card_waits_at_its_reader_for_its_pin_within_s() -> None:
    rule = WithoutFaceRule("card_and_pin", 10.0, 3, {READER: "entry"})
    assert rule.needs_pin and rule.camera_of(READER) == "entry" and rule.camera_of("other") is None
    wait = rule.hold("vera", READER, T0)
    assert wait == CardWait("vera", READER, "entry", T0)
    assert rule.pin(_at(1, "pin", "2468", "other"), VERA) is None  # another reader: nothing waits there
    assert rule.pin(_at(2, "pin", "2468"), VERA) == PinMatch(wait, False)
    assert rule.waiting(READER, T0 + 3) is None  # used up
    rule.hold("vera", READER, T0 + 10)
    assert rule.pin(_at(11, "pin", "1357"), VERA) == PinMatch(
        CardWait("vera", READER, "entry", T0 + 10), True
    )
    rule.hold("vera", READER, T0 + 20)
    assert rule.pin(_at(30.5, "pin", "2468"), VERA) is None  # 10.5 s after the card: lapsed
    rule.hold("vera", READER, T0 + 40)
    assert rule.waiting(READER, T0 + 39) is None  # a clock set back ends it too


def test_wrong_pins_give_a_card_up_after_max_attempts_and_lock_it_out_across_waits() -> None:
    rule = WithoutFaceRule("card_and_pin", 10.0, 2, {READER: "entry"}, lockout_after=3, lockout_s=600.0)
    first = rule.hold("vera", READER, T0)
    assert rule.pin(_at(1, "pin", "0000"), VERA) == PinMismatch(first, False)
    assert rule.waiting(READER, T0 + 1.5).attempts == 1
    assert rule.pin(_at(2, "pin", "1111"), VERA) == PinMismatch(replace(first, attempts=1), True)
    assert rule.waiting(READER, T0 + 3) is None  # given up: the card must be shown again
    assert not rule.locked_out("vera", T0 + 3)
    rule.hold("vera", READER, T0 + 5)
    locking = rule.pin(_at(6, "pin", "2222"), VERA)  # the third wrong PIN across two waits
    assert rule.locked_out("vera", T0 + 7)
    assert isinstance(locking, PinMismatch) and locking.given_up  # the lockout ends the wait it came on
    assert rule.waiting(READER, T0 + 7) is None
    assert rule.locked_out("vera", T0 + 6 + 600) and not rule.locked_out("vera", T0 + 6 + 601)
    with pytest.raises(ValueError, match="require"):
        WithoutFaceRule("pin", 10.0, 3, {})


# -- the judge, on a real store ---------------------------------------------------------------------------


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=(1, 128)).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TemplateStore]:
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as opened:
        opened.add_identity("vera", "Vera", policy=VERA)
        opened.add(
            "ada", "Ada", VERSION, _unit(1), policy=IdentityPolicy(cards=(ADA_CARD,), pin=hash_pin("9999"))
        )
        yield opened


def _access(require: str = "card_and_pin", **more: Any) -> AccessConfig:
    return AccessConfig.model_validate({"without_face": {"require": require, **more}})


def test_a_card_then_its_pin_opens_for_someone_without_a_face(store: TemplateStore, tmp_path: Path) -> None:
    access = _access().model_copy(
        update={
            "anti_passback": AccessConfig.model_validate({"anti_passback": {"mode": "hard"}}).anti_passback
        }
    )
    with PresenceStore.open(tmp_path / PRESENCE_FILE) as presence:
        judge = AccessJudge.for_door(access, store, presence, {"entry": "in"}, {READER: []}, ["entry"])
        assert judge.takes_credentials and judge.second_factor is None
        [held] = judge.present(_at(0, "card", VERA_CARD))
        assert (
            held.identity_id,
            held.name,
            held.camera_id,
            held.verdict.reason,
            held.faceless,
            held.factors,
        ) == (
            "vera",
            "Vera",
            "entry",
            SECOND_FACTOR,
            True,
            ("card",),
        )
        assert presence.last("vera") is None  # held for the PIN: not a passage yet
        [wrong] = judge.present(_at(2, "pin", "0000"))
        assert (wrong.verdict.reason, wrong.factors) == (WRONG_CREDENTIAL, ("card", "pin"))
        [opened] = judge.present(_at(4, "pin", "2468"))
        assert (opened.verdict.reason, opened.verdict.factors, opened.verdict.duress) == (
            None,
            ("card", "pin"),
            False,
        )
        assert presence.last("vera").direction == "in"  # anti-passback counts it at the reader's camera
        [again] = judge.present(_at(90, "card", VERA_CARD))  # past same_passage_s (60 s)
        assert again.verdict.reason == PASSBACK  # refused before the PIN is asked for
        presence.reset(["vera"], None, None)
        judge.present(_at(120, "card", VERA_CARD))
        [duress] = judge.present(_at(121, "pin", "1357"))
        assert (duress.verdict.reason, duress.verdict.duress) == (None, True)
        # someone with a face: their card is no way in without it (no second factor here: ignored)
        assert judge.present(_at(200, "card", ADA_CARD)) == []
        assert judge.present(_at(201, "pin", "9999")) == []  # a PIN with no card waiting
        [nobody] = judge.present(_at(202, "card", "w26:1:1"))
        assert (nobody.identity_id, nobody.verdict.reason, nobody.faceless) == (None, None, True)
        assert judge.present(_at(203, "card", VERA_CARD, "elsewhere")) == []  # a reader it does not serve


def test_a_face_optional_group_passes_by_card_and_pin_but_a_held_face_is_completed_by_its_card(
    store: TemplateStore,
) -> None:
    """``face_optional_groups``: Ada, with a face, in ``maintenance``, passes by her card and PIN too
    (schema-2, no face); Tom, with a face in no such group, does not; while the second factor holds
    Ada's face, her card completes it instead."""
    store.set_policy("ada", IdentityPolicy(groups=("maintenance",), cards=(ADA_CARD,), pin=hash_pin("9999")))
    store.add("tom", "Tom", VERSION, _unit(2), policy=IdentityPolicy(groups=("staff",), cards=("w26:7:300",)))
    judge = AccessJudge.for_door(
        _access(face_optional_groups=["maintenance"]), store, readers={READER: ["entry"]}
    )
    [held] = judge.present(_at(0, "card", ADA_CARD))
    assert (held.identity_id, held.verdict.reason, held.faceless) == ("ada", SECOND_FACTOR, True)
    [opened] = judge.present(_at(1, "pin", "9999"))
    assert (opened.verdict.reason, opened.verdict.factors) == (None, ("card", "pin"))
    assert judge.present(_at(5, "card", "w26:7:300")) == []  # Tom: his face is his way in
    assert (
        AccessJudge.for_door(_access(), store, readers={READER: ["entry"]}).present(_at(6, "card", ADA_CARD))
        == []
    )  # without the option, her card alone is no way in
    # With the second factor too: her face held, her card completes it (face and card), not a wait.
    both = _access(face_optional_groups=["maintenance"]).model_copy(
        update={
            "second_factor": AccessConfig.model_validate(
                {"second_factor": {"require": "card", "groups": ["maintenance"]}}
            ).second_factor
        }
    )
    judge = AccessJudge.for_door(both, store, readers={READER: ["entry"]})
    assert judge.judge_passage("ada", "entry", NOON).reason == SECOND_FACTOR
    [completed] = judge.present(_at(10, "card", ADA_CARD))
    assert (completed.verdict.reason, completed.verdict.factors) == (None, ("face", "card"))
    assert not completed.faceless and judge.without_face.waiting(READER, T0 + 11) is None
    [alone] = judge.present(_at(70, "card", ADA_CARD))  # no face held now: the card waits for her PIN
    assert (alone.verdict.reason, alone.factors) == (SECOND_FACTOR, ("card",))


def test_face_optional_groups_need_the_rule_and_doctor_counts_their_people(tmp_path: Path) -> None:
    from appliance.doctor import OK, WARN, check_access

    with pytest.raises(ValueError, match="face_optional_groups is set but"):
        _access("off", face_optional_groups=["maintenance"])
    document: Dict[str, Any] = {
        "storage": {"dir": str(tmp_path)},
        "credential_reader": READER_SECTION,
        "access": {"without_face": {"require": "card_and_pin", "face_optional_groups": ["maintenance"]}},
    }

    def check() -> Any:
        subject = "access.without_face.face_optional_groups"
        [found] = [c for c in check_access(validate_config(document)) if c.subject == subject]
        return found

    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.add("ada", "Ada", VERSION, _unit(1), policy=IdentityPolicy(groups=("staff",)))
    assert check().status == WARN and "nobody with a face is in maintenance" in check().detail
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.set_policy("ada", IdentityPolicy(groups=("maintenance",), cards=(ADA_CARD,)))
    assert check().status == WARN and check().detail.endswith("only their face lets them in: ada")
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.set_policy(
            "ada", IdentityPolicy(groups=("maintenance",), cards=(ADA_CARD,), pin=hash_pin("9999"))
        )
    assert check().status == OK and check().detail.startswith(
        "people with a face in these groups (1) may also pass"
    )


def test_the_policy_is_asked_at_the_card_and_again_at_the_pin(store: TemplateStore) -> None:
    judge = AccessJudge.for_door(_access(), store, readers={READER: ["entry"]})
    store.set_policy("vera", VERA.changed({"suspended": True}))
    [refused] = judge.present(_at(0, "card", VERA_CARD))
    assert refused.verdict.reason == "suspended"  # no PIN asked for
    assert judge.present(_at(1, "pin", "2468")) == []
    store.set_policy("vera", VERA)
    judge.present(_at(10, "card", VERA_CARD))
    store.set_policy("vera", VERA.changed({"suspended": True}))
    [late] = judge.present(_at(11, "pin", "2468"))
    assert late.verdict.reason == "suspended"  # suspended while the PIN was typed
    store.set_policy("vera", VERA)
    judge.present(_at(20, "card", VERA_CARD))
    store.remove("vera")
    [gone] = judge.present(_at(21, "pin", "2468"))
    assert gone.verdict.reason == GONE


def test_the_card_alone_opens_under_require_card_and_guessing_locks_a_card_out(store: TemplateStore) -> None:
    judge = AccessJudge.for_door(_access("card"), store, readers={READER: ["entry"]})
    [opened] = judge.present(_at(0, "card", VERA_CARD))
    assert (opened.verdict.reason, opened.verdict.factors) == (None, ("card",))
    judge = AccessJudge.for_door(
        _access(max_attempts=3, lockout_after=4, lockout_s=600), store, readers={READER: ["entry"]}
    )
    judge.present(_at(0, "card", VERA_CARD))
    for second in (1, 2, 3):
        [wrong] = judge.present(_at(second, "pin", f"000{second}"))
        assert wrong.verdict.reason == WRONG_CREDENTIAL
    assert judge.present(_at(4, "pin", "2468")) == []  # given up after 3: the card must come again
    judge.present(_at(5, "card", VERA_CARD))
    judge.present(_at(6, "pin", "0004"))  # the fourth wrong PIN
    [locked] = judge.present(_at(7, "card", VERA_CARD))
    assert locked.verdict.reason == CREDENTIAL_LOCKOUT
    assert judge.present(_at(8, "pin", "2468")) == []  # no wait was started
    [served] = judge.present(_at(6 + 601, "card", VERA_CARD))
    assert served.verdict.reason == SECOND_FACTOR


def test_a_card_two_fleet_records_hold_opens_nothing(store: TemplateStore, tmp_path: Path) -> None:
    store.add_identity("vic", "Vic")
    with sqlite3.connect(tmp_path / "gallery.db") as db:  # as two clashing fleet records would leave it
        db.execute(
            "UPDATE identities SET credentials=? WHERE id='vic'", (json.dumps({"cards": [VERA_CARD]}),)
        )
        db.execute("INSERT INTO cards (card, identity_id) VALUES (?, 'vic')", (VERA_CARD,))
    assert [i.id for i in store.card_holders(VERA_CARD)] == ["vera", "vic"]
    judge = AccessJudge.for_door(_access("card"), store, readers={READER: ["entry"]})
    [passage] = judge.present(_at(0, "card", VERA_CARD))
    assert passage.identity_id is None and passage.faceless


# -- the pipeline and the events -------------------------------------------------------------------------


class _NoModels:
    analyzer = None


def test_the_pipeline_reports_passages_without_a_face_as_schema_2_events(store: TemplateStore) -> None:
    judge = AccessJudge.for_door(_access(), store, readers={READER: []}, cameras=["entry"])
    pipeline = Pipeline(  # type: ignore[arg-type]
        _NoModels(), None, DecisionSettings(threshold=0.45), Latencies(), judge, ["entry"]
    )
    held, wrong, opened, nobody = pipeline.present_credentials(
        [_at(0, "card", VERA_CARD), _at(1, "pin", "1111"), _at(2, "pin", "1357"), _at(3, "card", "w26:1:1")],
        50.0,
    )
    assert (held.decision.decision, held.decision.access_reason) == ("denied", SECOND_FACTOR)
    assert (wrong.decision.decision, wrong.decision.access_reason) == ("denied", WRONG_CREDENTIAL)
    assert opened.decision.decision == "granted" and opened.camera_id == "entry" and opened.crop is None
    assert opened.captured_at == 50.0 and opened.sample is None
    assert nobody.decision.decision == "unknown" and nobody.decision.identity_id is None
    events: List[Dict[str, Any]] = [
        access_event(
            o.decision,
            "door",
            o.camera_id,
            {"detector": "mtcnn"},
            1.0,
            crop=np.zeros((112, 112, 3), np.uint8),
        )
        for o in (held, wrong, opened, nobody)
    ]
    for event in events:
        assert event["schema"] == 2 and "crop" not in event
        assert (event["face"], event["score"], event["track_id"], event["liveness"], event["frames"]) == (
            None,
            None,
            None,
            None,
            0,
        )
    assert [e["factors"] for e in events] == [["card"], ["card", "pin"], ["card", "pin"], ["card"]]
    assert events[0]["identity"] == {"id": "vera", "name": "Vera"} and events[0]["reason"] == SECOND_FACTOR
    assert events[2]["duress"] is True and events[2]["reason"] is None and events[2]["threshold"] == 0.45
    assert events[3]["identity"] is None and events[3]["decision"] == "unknown"
    assert pipeline._held == {}  # nothing of a face is kept for these


def test_an_area_door_reads_a_passage_without_a_face() -> None:
    event = {
        "schema": 2,
        "event_id": "e1",
        "ts": "2026-12-07T12:00:00.000Z",
        "device_id": "door-2",
        "camera_id": "entry",
        "decision": "granted",
        "identity": {"id": "vera", "name": "Vera"},
        "direction": "in",
        "factors": ["card", "pin"],
        "face": None,
    }
    passage = parse_passage("door-2", json.dumps(event).encode())
    assert passage is not None and (passage.identity_id, passage.direction) == ("vera", "in")
    with pytest.raises(ValueError, match="schema"):
        parse_passage("door-2", json.dumps({**event, "schema": 3}).encode())


# -- configuration, doctor, Home Assistant ---------------------------------------------------------------


READER_SECTION = {"enabled": True, "port": "/dev/ttyUSB1", "secure_channel": False}
TWO_CAMERAS = [{"id": "entry", "source": "0"}, {"id": "exit", "source": "1"}]


def test_the_configuration_asks_for_a_reader_that_counts_at_one_camera() -> None:
    config = validate_config(
        {"access": {"without_face": {"require": "card_and_pin"}}, "credential_reader": READER_SECTION}
    )
    assert config.access.door_document()["without_face"] == {
        "require": "card_and_pin",
        "face_optional_groups": [],
    }
    assert "without_face" not in AccessConfig().door_document()
    judge = AccessJudge.for_appliance(config, None)  # type: ignore[arg-type]
    assert judge.without_face is not None and judge.without_face.reader_cameras == {"reader": "cam0"}
    two_ways = {
        "cameras": TWO_CAMERAS,
        "credential_readers": [
            {**READER_SECTION, "id": "in-reader", "cameras": ["entry"]},
            {**READER_SECTION, "id": "out-reader", "port": "/dev/ttyUSB2", "cameras": ["exit"]},
        ],
        "access": {"without_face": {"require": "card"}},
    }
    judge = AccessJudge.for_appliance(validate_config(two_ways), None)  # type: ignore[arg-type]
    assert judge.without_face.reader_cameras == {"in-reader": "entry", "out-reader": "exit"}  # type: ignore[union-attr]
    for document, match in (
        ({"access": {"without_face": {"require": "card"}}}, r"\[credential_reader\]"),
        (
            {
                "cameras": TWO_CAMERAS,
                "credential_reader": READER_SECTION,
                "access": {"without_face": {"require": "card"}},
            },
            "stands at 2",
        ),
        ({"access": {"without_face": {"require": "pin"}}}, "require"),
        ({"access": {"without_face": {"require": "card", "within_s": 0.5}}}, "within_s"),
    ):
        with pytest.raises(Exception, match=match):
            validate_config(document)


def test_doctor_names_the_people_without_a_face_who_cannot_pass(tmp_path: Path) -> None:
    from appliance.doctor import OK, WARN, check_access

    document: Dict[str, Any] = {"storage": {"dir": str(tmp_path)}, "credential_reader": READER_SECTION}
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.add_identity("vera", "Vera", policy=VERA)
        store.add_identity("vic", "Vic", policy=IdentityPolicy(cards=("w26:7:300",)))
        store.add("ada", "Ada", VERSION, _unit(1))

    def check() -> Any:
        [found] = [c for c in check_access(validate_config(document)) if c.subject == "access.without_face"]
        return found

    assert check().status == WARN and "2 people have no face enrolled" in check().detail
    document["access"] = {"without_face": {"require": "card_and_pin"}}
    assert check().status == WARN and check().detail.endswith("lack a card and a PIN and cannot pass: vic")
    document["access"] = {"without_face": {"require": "card"}}
    assert check().status == OK and "for 2 people without a face" in check().detail


def test_doctor_names_a_card_that_several_identities_hold(tmp_path: Path) -> None:
    """A fleet record taken as it is can give a card a local identity holds: it then opens nothing."""
    from appliance.doctor import WARN, check_access

    document: Dict[str, Any] = {"storage": {"dir": str(tmp_path)}}
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.add_identity("vera", "Vera", policy=VERA)
    assert not [c for c in check_access(validate_config(document)) if c.subject == "cards"]
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.put_fleet_identity(
            "p-1",
            3,
            "Fleet",
            None,
            "2026-12-01T00:00:00Z",
            IdentityPolicy(cards=(VERA_CARD,)),
            VERSION,
            np.zeros((0, 0), np.float32),
            np.zeros((0, 112, 112, 3), np.uint8),
            [],
        )
    [found] = [c for c in check_access(validate_config(document)) if c.subject == "cards"]
    assert found.status == WARN and found.detail.endswith(f"open nothing: {VERA_CARD} (p-1, vera)")


def test_home_assistant_offers_the_duress_sensor_where_people_without_a_face_type_pins() -> None:
    from appliance.mqtt_link import home_assistant_discovery

    def components(access: Dict[str, Any]) -> List[str]:
        config = validate_config(
            {
                "mqtt": {"homeassistant": {"discovery": True}},
                "credential_reader": READER_SECTION,
                "access": access,
            }
        )
        return [topic.split("/")[-2] for topic, _ in home_assistant_discovery(config)]

    assert "duress" in components({"without_face": {"require": "card_and_pin"}})
    assert "duress" not in components({"without_face": {"require": "card"}})


def test_a_pin_after_within_s_or_after_another_card_opens_nothing(store: TemplateStore) -> None:
    judge = AccessJudge.for_door(_access(), store, readers={READER: ["entry"]})
    judge.present(_at(0, "card", VERA_CARD))
    assert judge.without_face.waiting(READER, T0 + 9.9) is not None  # type: ignore[union-attr]
    assert judge.present(_at(10.5, "pin", "2468")) == []  # too late: the card must come again
    # another card shown at the reader meanwhile, whoever's, ends the wait: the PIN is not Vera's then
    for other in (ADA_CARD, "w26:1:1"):
        [held] = judge.present(_at(20, "card", VERA_CARD))
        assert held.verdict.reason == SECOND_FACTOR
        judge.present(_at(21, "card", other))
        assert judge.present(_at(22, "pin", "2468")) == []


def test_cards_are_found_by_an_index_that_an_older_store_gains_on_opening(tmp_path: Path) -> None:
    path, key = tmp_path / "gallery.db", tmp_path / "gallery.key"
    with TemplateStore.open(path, key) as store:
        store.add_identity("vera", "Vera", policy=VERA)
        store.add_identity("vic", "Vic", policy=IdentityPolicy(cards=("w26:7:300", "w34:9:9")))
        store.set_policy("vic", IdentityPolicy(cards=("w34:9:9",)))  # w26:7:300 let go
        assert [i.id for i in store.card_holders("w34:9:9")] == ["vic"]
        assert store.card_holders("w26:7:300") == []
    with sqlite3.connect(path) as db:  # as schema 8 left it: the credentials, no index
        db.execute("DROP TABLE cards")
        db.execute("UPDATE meta SET value='8' WHERE key='schema_version'")
    with TemplateStore.open(path, key) as store:
        assert [i.id for i in store.card_holders(VERA_CARD)] == ["vera"]
        assert [i.id for i in store.card_holders("w34:9:9")] == ["vic"]
        with pytest.raises(IdentityError, match="'vera'"):  # a card names one person, by the index too
            store.add_identity("val", "Val", policy=IdentityPolicy(cards=(VERA_CARD,)))
        store.remove("vera")
        assert store.card_holders(VERA_CARD) == []  # gone with its holder
        store.add_identity("val", "Val", policy=IdentityPolicy(cards=(VERA_CARD,)))
        assert [i.id for i in store.card_holders(VERA_CARD)] == ["val"]
