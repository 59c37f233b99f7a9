"""Multi-factor access: cards and PINs on identities, the rule that holds a face grant for them, the
judge and the pipeline that complete it, the duress PIN, and what commands, the store and the
configuration accept (the reader itself: tests/integration/test_card_reader.py)."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import numpy as np
import pytest

from appliance.access.credentials import (
    CredentialInbox,
    PresentedCredential,
    card_from_bits,
    check_pin_hash,
    hash_pin,
    parse_card,
    verify_pin,
)
from appliance.access.errors import PolicyError
from appliance.access.judge import AccessJudge, Verdict
from appliance.access.passback import PASSBACK
from appliance.access.policy import IdentityPolicy, parse_instant
from appliance.access.presence import PRESENCE_FILE, PresenceStore
from appliance.access.second_factor import (
    CREDENTIAL_LOCKOUT,
    MAX_WAITING,
    SECOND_FACTOR,
    WRONG_CREDENTIAL,
    Completion,
    Refusal,
    SecondFactorRule,
)
from appliance.access.settings import AccessConfig
from appliance.commands import CommandError, parse
from appliance.config_load import validate_config
from appliance.decisions import Decision, DecisionSettings
from appliance.events import access_event
from appliance.gallery.errors import IdentityError
from appliance.gallery.store import TemplateStore
from appliance.metrics import Latencies
from appliance.osdp.credential import encode
from appliance.osdp.settings import OsdpCredentialConfig
from appliance.pipeline import CameraLane, Pipeline

VERSION = "mobilefacenet@foamliu-v1.0"
NOON = parse_instant("2026-12-07T12:00:00Z", "t")
T0 = NOON.timestamp()
CARD = "w26:7:12345"
READER = "reader"


# -- cards and PINs ----------------------------------------------------------------------------------


def test_card_reads_become_one_canonical_text_and_misreads_are_refused() -> None:
    assert card_from_bits(26, bytes.fromhex("83981CC0")) == CARD  # the example of appliance.osdp.credential
    for number, config in (
        ("12345", OsdpCredentialConfig(format="wiegand34", facility_code=300)),
        ("65535", OsdpCredentialConfig(format="wiegand26", facility_code=255)),
        ("0", OsdpCredentialConfig(format="wiegand26", facility_code=0)),
    ):
        data = encode(number, config)  # what our own OSDP reader sends a panel reads back the same
        expected = f"w{data.bits}:{config.facility_code}:{number}"
        assert card_from_bits(data.bits, data.data) == expected == parse_card(expected.upper())
    assert (
        card_from_bits(37, bytes.fromhex("0000abcde0")) == "raw:37:1579bc"
    )  # 40 bits sent, the last 3 padding
    assert card_from_bits(8, b"\x00\xff") == "raw:8:0"  # extra bytes beyond the bit count are ignored
    flipped = bytes([0x83 ^ 0x80]) + bytes.fromhex("981CC0")  # the leading even parity bit flipped
    for bits, data, match in (
        (26, flipped, "parity"),
        (26, bytes.fromhex("83981C"), "needs 4"),
        (0, b"", "1–128"),
        (129, bytes(17), "1–128"),
    ):
        with pytest.raises(PolicyError, match=match):
            card_from_bits(bits, data)


@pytest.mark.parametrize(
    "text", ["", "w26:256:1", "w26:1:65536", "w34:65536:1", "raw:0:0", "raw:4:1f", "7:12345", "w26:-1:2", 42]
)
def test_a_malformed_card_is_refused(text: Any) -> None:
    with pytest.raises(PolicyError):
        parse_card(text)


def test_pins_are_kept_only_as_salted_hashes_with_a_bounded_cost() -> None:
    first, second = hash_pin("123456"), hash_pin("123456")
    assert first != second and "123456" not in first  # a fresh salt each time
    assert verify_pin("123456", first) and verify_pin("123456", second)
    assert not verify_pin("123457", first) and not verify_pin("123456", None)
    assert not verify_pin("12345x", first) and not verify_pin("123456", "scrypt$garbage")
    for pin in ("123", "123456789", "12a4", "", " 1234"):
        with pytest.raises(PolicyError, match="4–8 digits"):
            hash_pin(pin)
    costly = first.replace("scrypt$12$", "scrypt$24$")  # a hostile record asking for minutes of work
    with pytest.raises(PolicyError, match="out of bounds"):
        check_pin_hash(costly)
    assert not verify_pin("123456", costly)


def test_the_inbox_is_bounded_and_wakes_the_pipeline() -> None:
    woken: List[int] = []
    inbox = CredentialInbox(capacity=2, wake=lambda: woken.append(1))
    presented = [PresentedCredential("pin", "1234", READER, T0 + i) for i in range(3)]
    assert [inbox.offer(c) for c in presented] == [True, True, False]
    assert len(woken) == 2  # the refused one woke nobody
    assert inbox.drain() == presented[:2] and inbox.drain() == []
    assert "1234" not in repr(presented[0])  # a PIN never reaches a log through a repr


# -- an identity's credentials -----------------------------------------------------------------------


def test_an_identitys_cards_and_pins_change_and_round_trip_without_showing_the_hashes() -> None:
    policy = IdentityPolicy().changed({"add_cards": ["W26:007:12345", "raw:37:1abc"], "pin": "2468"})
    assert policy.cards == ("raw:37:1abc", CARD) and verify_pin("2468", policy.pin)
    assert IdentityPolicy.from_document(json.loads(json.dumps(policy.document()))) == policy
    public = policy.public_document()
    assert public["pin"] is True and public["duress_pin"] is False and "scrypt" not in json.dumps(public)
    assert "scrypt" not in repr(policy)
    # without credentials the document is what an older firmware wrote and reads
    assert set(IdentityPolicy().document()) == {"valid_from", "valid_until", "suspended", "groups"}
    duress = policy.changed({"duress_pin": "9999", "remove_cards": ["raw:37:1ABC"]})
    assert duress.cards == (CARD,) and verify_pin("9999", duress.duress_pin) and duress.pin == policy.pin
    assert duress.changed({"pin": None, "cards": []}).document().keys() == {
        "valid_from",
        "valid_until",
        "suspended",
        "groups",
        "duress_pin",
    }
    for changes, match in (
        ({"duress_pin": "2468"}, "must differ"),
        ({"pin": "12"}, "policy.pin: a PIN is 4–8 digits"),
        ({"add_cards": "w26:7:1"}, "list of cards"),
        ({"add_cards": ["w26:7:1"] * 1 + [f"w26:7:{i}" for i in range(2, 10)]}, "at most 8 cards"),
    ):
        with pytest.raises(PolicyError, match=match):
            policy.changed(changes)
    with pytest.raises(PolicyError, match="must differ"):
        duress.changed({"pin": "9999"})
    with pytest.raises(PolicyError, match="pin must be a PIN hash"):
        IdentityPolicy.from_document({"pin": "1234"})  # a record holds hashes, never PINs


def test_the_store_keeps_credentials_refuses_a_card_held_by_another_and_reads_a_damaged_row_as_suspended(
    tmp_path: Path,
) -> None:
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        for who in ("ada", "bob"):
            store.add(who, who.title(), VERSION, _unit(len(who) + ord(who[0])))
        store.set_policy("ada", IdentityPolicy().changed({"cards": [CARD], "pin": "2468"}))
        with pytest.raises(IdentityError, match="already 'ada'"):
            store.set_policy("bob", IdentityPolicy(cards=(CARD,)))
        store.set_policy("ada", store.identity("ada").policy)  # her own card again: fine
        with pytest.raises(IdentityError, match="already 'ada'"):
            store.add("cy", "Cy", VERSION, _unit(5), policy=IdentityPolicy(cards=(CARD,)))
        assert store.identity("cy") is None  # nothing of the enrolment was kept
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        ada = store.identity("ada")
        assert ada.policy.cards == (CARD,) and verify_pin("2468", ada.policy.pin)
        assert ada.document()["policy"]["pin"] is True  # gallery list --json
    with sqlite3.connect(str(tmp_path / "gallery.db")) as db:
        db.execute("UPDATE identities SET credentials='{\"pin\": \"1234\"}' WHERE id='ada'")
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        assert store.identity("ada").policy.suspended  # never a grant from a damaged row
        [problem] = store.check()  # and gallery check says why
        assert problem.startswith("identity ada: access policy unreadable") and "PIN hash" in problem


def test_the_set_policy_command_takes_cards_and_pins_and_refuses_bad_ones() -> None:
    def command(**keys: Any) -> Any:
        return parse("set_policy", json.dumps({"request_id": "r", "id": "ada", **keys}).encode())[1]

    assert command(add_cards=[CARD], pin="2468").changes() == {"add_cards": [CARD], "pin": "2468"}
    assert command(pin=None).changes() == {"pin": None}
    assert "2468" not in repr(command(pin="2468"))
    for keys, match in (
        ({"pin": "12"}, "a PIN is 4–8 digits"),
        ({"pin": 1234}, "pin"),
        ({"duress_pin": "123456789"}, "at most 8"),
        ({"add_cards": ["w26:300:1"]}, "facility 0–255"),
        ({"remove_cards": [CARD] * 9}, "remove_cards"),
    ):
        with pytest.raises(CommandError, match=match):
            command(**keys)


# -- the rule ----------------------------------------------------------------------------------------


def _credential(kind: str, value: str, at: float, reader: str = READER) -> PresentedCredential:
    return PresentedCredential(kind, value, reader, T0 + at)  # type: ignore[arg-type]


def _policies(**policies: IdentityPolicy) -> Any:
    return policies.get


ADA = IdentityPolicy(groups=("vault",), cards=(CARD,), pin=hash_pin("2468"), duress_pin=hash_pin("1357"))
BOB = IdentityPolicy(groups=("vault",), cards=("w26:7:1",), pin=hash_pin("1111"))


def test_a_face_waits_for_its_own_card_and_a_wrong_one_counts_as_an_attempt() -> None:
    rule = SecondFactorRule("card", ["vault"], 15, 2, {READER: []})
    assert rule.needs(["vault", "x"]) and not rule.needs(["staff"])
    assert rule.hold("ada", "cam", ADA, T0) is None
    policies = _policies(ada=ADA, bob=BOB)
    assert rule.present(_credential("pin", "2468", 1), policies) == []  # not asked for here: ignored
    assert rule.present(_credential("card", "w26:7:1", 2), policies) == [
        Refusal("ada", "cam", "card", READER, False)
    ]
    assert rule.present(_credential("card", CARD, 3), policies) == [
        Completion("ada", "cam", "card", False, READER)
    ]
    assert rule.waiting() == ()
    rule.hold("ada", "cam", ADA, T0 + 10)
    rule.present(_credential("card", "w26:7:1", 11), policies)
    assert rule.present(_credential("card", "w26:7:2", 12), policies) == [
        Refusal("ada", "cam", "card", READER, True)  # max_attempts: the wait is given up
    ]
    assert rule.waiting() == ()
    assert rule.present(_credential("card", CARD, 13), policies) == []  # nobody waits: it waits for a face


def test_a_pin_completes_its_owner_among_several_and_the_duress_pin_says_so() -> None:
    rule = SecondFactorRule("card_or_pin", [], 15, 3, {READER: ["entry"]})
    rule.hold("ada", "entry", ADA, T0)
    rule.hold("bob", "entry", BOB, T0 + 1)
    policies = _policies(ada=ADA, bob=BOB)
    assert rule.present(_credential("pin", "1111", 2), policies) == [
        Completion("bob", "entry", "pin", False, READER)
    ]
    assert rule.present(_credential("pin", "1357", 3), policies) == [
        Completion("ada", "entry", "pin", True, READER)
    ]
    # a reader serves only its cameras; an unknown reader is ignored
    rule.hold("ada", "exit", ADA, T0 + 4)
    assert rule.present(_credential("pin", "2468", 5), policies) == []
    assert rule.present(_credential("pin", "2468", 6, reader="elsewhere"), policies) == []
    assert [w.identity_id for w in rule.waiting()] == ["ada"]


def test_a_card_first_waits_for_its_face_within_s_and_is_used_once() -> None:
    rule = SecondFactorRule("card", [], 15, 3, {READER: []})
    policies = _policies(ada=ADA)
    assert rule.present(_credential("card", CARD, 0), policies) == []
    assert rule.hold("bob", "cam", BOB, T0 + 1) is None  # not bob's card: he waits
    assert rule.hold("ada", "cam", ADA, T0 + 2) == Completion("ada", "cam", "card", False, READER)
    assert rule.hold("ada", "cam", ADA, T0 + 3) is None  # used up
    rule.present(_credential("card", CARD, 100), policies)
    assert rule.hold("ada", "cam", ADA, T0 + 116) is None  # too late
    assert [w.identity_id for w in rule.waiting(T0 + 116)] == ["ada"]  # bob's wait expired


def test_waits_are_bounded_and_a_removed_identitys_wait_ends() -> None:
    rule = SecondFactorRule("pin", [], 15, 3, {READER: []})
    for i in range(MAX_WAITING + 2):
        rule.hold(f"p{i}", "cam", ADA, T0 + i)
    assert [w.identity_id for w in rule.waiting()] == [f"p{i}" for i in range(2, MAX_WAITING + 2)]
    assert rule.present(_credential("pin", "2468", 7), _policies()) == []  # every one removed meanwhile
    assert rule.waiting() == ()
    with pytest.raises(ValueError, match="require"):
        SecondFactorRule("face", [], 15, 3, {})


# -- the judge and the pipeline ------------------------------------------------------------------------


def _unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=(1, 128)).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[TemplateStore]:
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.add("ada", "Ada", VERSION, _unit(1), policy=ADA)
        store.add("tom", "Tom", VERSION, _unit(2), policy=IdentityPolicy(groups=("staff",)))
        yield store


def _access(**second_factor: Any) -> AccessConfig:
    return AccessConfig.model_validate(
        {"second_factor": {"require": "card_or_pin", "groups": ["vault"], **second_factor}}
    )


def test_the_judge_holds_a_grant_records_it_when_completed_and_asks_the_policy_again(
    gallery: TemplateStore, tmp_path: Path
) -> None:
    with PresenceStore.open(tmp_path / PRESENCE_FILE) as presence:
        access = _access().model_copy(
            update={
                "anti_passback": AccessConfig.model_validate(
                    {"anti_passback": {"mode": "hard"}}
                ).anti_passback
            }
        )
        judge = AccessJudge.for_door(access, gallery, presence, {"entry": "in"}, {READER: []})
        assert judge.judge_passage("tom", "entry", NOON).factors == ()  # not in a group that needs it
        assert judge.judge_passage("ada", "entry", NOON).reason == SECOND_FACTOR
        assert presence.last("ada") is None  # held: not a passage yet
        assert judge.judge_passage("ada", "entry", NOON, record=False).reason is None  # access check
        [passage] = judge.present(_credential("card", CARD, 5))
        verdict = passage.verdict
        assert (passage.identity_id, passage.camera_id, verdict.reason, verdict.factors, verdict.duress) == (
            "ada",
            "entry",
            None,
            ("face", "card"),
            False,
        )
        assert presence.last("ada").direction == "in"
        assert judge.judge_passage("ada", "entry", NOON + timedelta(minutes=3)).reason == PASSBACK
        # suspended while she waited: the PIN completes the wait, the policy still refuses
        presence.reset(["ada"], None, None)
        judge.judge_passage("ada", "entry", NOON + timedelta(minutes=5))
        gallery.set_policy("ada", ADA.changed({"suspended": True}))
        [verdict] = _verdicts(judge, _credential("pin", "2468", 301))
        assert verdict.reason == "suspended"
        gallery.set_policy("ada", ADA)
        judge.judge_passage("ada", "entry", NOON + timedelta(minutes=10))
        [verdict] = _verdicts(judge, _credential("pin", "0000", 601))
        assert verdict.reason == WRONG_CREDENTIAL
    assert AccessJudge.for_door(AccessConfig(), gallery).second_factor is None
    assert AccessJudge.for_door(AccessConfig(), gallery).present(_credential("card", CARD, 0)) == []


def _verdicts(judge: AccessJudge, credential: PresentedCredential) -> List[Verdict]:
    return [passage.verdict for passage in judge.present(credential)]


class _NoModels:
    analyzer = None


def _pipeline_and_vote(judge: AccessJudge) -> Tuple[Pipeline, CameraLane, Decision]:
    """A pipeline without models around ``judge``, its camera's lane, and Ada's granted vote there."""
    pipeline = Pipeline(_NoModels(), None, DecisionSettings(), Latencies(), judge)  # type: ignore[arg-type]
    vote = Decision(7, "granted", "ada", "Ada", 0.8, 0.5, 5, None, np.zeros(4, np.float32), 0.9, 0.0, 1.0, "")
    return pipeline, pipeline.lanes["cam0"], vote


def test_the_pipeline_reports_the_held_face_then_the_grant_its_pin_completed_with_the_duress_flag(
    gallery: TemplateStore,
) -> None:
    judge = AccessJudge.for_door(_access(), gallery, readers={READER: []})
    pipeline, lane, vote = _pipeline_and_vote(judge)
    lane.best_crop[7] = (0.9, np.zeros((112, 112, 3), np.uint8))
    held = pipeline._outcome(lane, vote, 1.0, keep=True)
    assert (held.decision.decision, held.decision.access_reason) == ("denied", SECOND_FACTOR)
    at = judge.second_factor.waiting()[0].at
    presented = [
        PresentedCredential("pin", "0000", READER, at + 1),
        PresentedCredential("pin", "1357", READER, at + 2),
    ]
    wrong, opened = pipeline.present_credentials(presented, 50.0)
    assert (wrong.decision.decision, wrong.decision.access_reason) == ("denied", WRONG_CREDENTIAL)
    assert opened.decision.decision == "granted" and opened.captured_at == 50.0
    assert opened.crop is held.crop and opened.camera_id == "cam0"
    event = access_event(opened.decision, "door", "cam0", {}, 1.0)
    assert event["factors"] == ["face", "pin"] and event["duress"] is True and event["reason"] is None
    assert "factors" not in access_event(held.decision, "door", "cam0", {}, 1.0)
    assert pipeline.present_credentials([], 51.0) == [] and pipeline._held == {}


# -- the configuration ---------------------------------------------------------------------------------


READER_SECTION = {"enabled": True, "port": "/dev/ttyUSB1", "secure_channel": False}


def test_the_configuration_asks_for_a_reader_at_known_cameras() -> None:
    config = validate_config(
        {"access": {"second_factor": {"require": "pin"}}, "credential_reader": {**READER_SECTION, "id": "r1"}}
    )
    assert config.reader_cameras == {"r1": []}
    assert config.access.door_document()["second_factor"] == {"require": "pin", "groups": []}  # access show
    assert "second_factor" not in AccessConfig().door_document()
    assert validate_config({}).reader_cameras == {}
    for document, match in (
        ({"access": {"second_factor": {"require": "card"}}}, r"\[credential_reader\]"),
        ({"credential_reader": {**READER_SECTION, "cameras": ["nowhere"]}}, "nowhere"),
        ({"access": {"second_factor": {"require": "face"}}}, "require"),
        ({"access": {"second_factor": {"require": "pin", "within_s": 1}}}, "within_s"),
        (
            {
                "credential_reader": {**READER_SECTION, "id": "door"},
                "door": {"enabled": True, "relay": {"line": 12}},
            },
            "id of its own",
        ),
    ):
        with pytest.raises(Exception, match=match):
            validate_config(document)


def test_doctor_names_the_people_who_hold_nothing_the_door_asks_for(tmp_path: Path) -> None:
    from appliance.doctor import OK, WARN, check_access

    document = {
        "storage": {"dir": str(tmp_path)},
        "access": {"second_factor": {"require": "card", "groups": ["vault"]}},
        "credential_reader": READER_SECTION,
    }
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.add("ada", "Ada", VERSION, _unit(1), policy=ADA)
        store.add(
            "bob", "Bob", VERSION, _unit(2), policy=IdentityPolicy(groups=("vault",), pin=hash_pin("1111"))
        )
        store.add("tom", "Tom", VERSION, _unit(3), policy=IdentityPolicy(groups=("staff",)))
    [check] = [c for c in check_access(validate_config(document)) if c.subject == "access.second_factor"]
    assert check.status == WARN and "1 of the 2 people" in check.detail and check.detail.endswith(": bob")
    document["access"] = {"second_factor": {"require": "card_or_pin", "groups": ["vault"]}}
    [check] = [c for c in check_access(validate_config(document)) if c.subject == "access.second_factor"]
    assert check.status == OK and "for 2 people; 1 hold a duress PIN" in check.detail


def test_the_command_line_sets_cards_and_reads_pins_from_standard_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import io

    from appliance import cli

    config = tmp_path / "appliance.toml"
    config.write_text(f'[storage]\ndir = "{tmp_path}"\n')
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        store.add("ada", "Ada", VERSION, _unit(1))
    monkeypatch.setattr("sys.stdin", io.StringIO("2468\n1357\n"))
    arguments = [
        "gallery",
        "set",
        "ada",
        "--card",
        "w26:7:12345",
        "--pin",
        "--duress-pin",
        "--config",
        str(config),
    ]
    assert cli.main(arguments) == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == "ada: · 1 card · PIN · duress PIN"
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        policy = store.identity("ada").policy
    assert (
        policy.cards == (CARD,) and verify_pin("2468", policy.pin) and verify_pin("1357", policy.duress_pin)
    )
    clear = ["gallery", "set", "ada", "--clear-pin", "--remove-card", CARD, "--json", "--config", str(config)]
    assert cli.main(clear) == cli.EXIT_OK
    shown = json.loads(capsys.readouterr().out)["policy"]
    assert (shown["cards"], shown["pin"], shown["duress_pin"]) == ([], False, True)
    monkeypatch.setattr("sys.stdin", io.StringIO("12\n"))
    assert cli.main(["gallery", "set", "ada", "--pin", "--config", str(config)]) != cli.EXIT_OK
    assert "a PIN is 4–8 digits" in capsys.readouterr().err
    # a roster gives its own policies: --pin with it is refused before any PIN is asked for
    monkeypatch.setattr("sys.stdin", io.StringIO("2468\n"))
    roster = ["enroll", "--roster", str(tmp_path / "people.csv"), "--pin", "--config", str(config)]
    assert cli.main(roster) == cli.EXIT_CONFIG
    assert "--roster gives each person's" in capsys.readouterr().err and sys.stdin.read() == "2468\n"


def test_wrong_credentials_across_waits_lock_the_face_out_until_lockout_s_has_passed(
    gallery: TemplateStore,
) -> None:
    access = _access(max_attempts=2, lockout_after=4, lockout_s=600)
    judge = AccessJudge.for_door(access, gallery, readers={READER: []})
    seconds = 0
    for _ in range(2):  # two waits, two wrong PINs each: the fourth locks her out
        assert judge.judge_passage("ada", "cam", NOON + timedelta(seconds=seconds)).reason == SECOND_FACTOR
        for _ in range(2):
            seconds += 1
            [verdict] = _verdicts(judge, _credential("pin", "0000", seconds))
            assert verdict.reason == WRONG_CREDENTIAL
    later = NOON + timedelta(seconds=seconds + 599)
    assert judge.judge_passage("ada", "cam", later).reason == CREDENTIAL_LOCKOUT
    assert judge.second_factor.waiting() == ()  # not held: nothing to guess at
    assert judge.judge_passage("tom", "cam", later).reason is None  # nobody else is affected
    free = NOON + timedelta(seconds=seconds + 601)
    assert judge.judge_passage("ada", "cam", free).reason == SECOND_FACTOR
    [verdict] = _verdicts(judge, _credential("pin", "2468", seconds + 602))
    assert verdict.reason is None and verdict.factors == ("face", "pin")
    # a wrong PIN that locks her out ends the wait it came on, whatever tries it had left
    access = _access(max_attempts=3, lockout_after=2, lockout_s=600)
    judge = AccessJudge.for_door(access, gallery, readers={READER: []})
    judge.judge_passage("ada", "cam", NOON)
    _verdicts(judge, _credential("pin", "0000", 1))
    [verdict] = _verdicts(judge, _credential("pin", "0001", 2))
    assert verdict.reason == WRONG_CREDENTIAL and judge.second_factor.waiting() == ()
    assert _verdicts(judge, _credential("pin", "2468", 3)) == []  # nothing left to complete
    never = AccessJudge.for_door(_access(max_attempts=1, lockout_after=0), gallery, readers={READER: []})
    for i in range(20):
        never.judge_passage("ada", "cam", NOON + timedelta(seconds=2 * i))
        never.present(_credential("pin", "0000", 2 * i + 1))
    assert never.judge_passage("ada", "cam", NOON + timedelta(seconds=50)).reason == SECOND_FACTOR


def test_a_card_is_learned_from_the_reader_and_every_learning_is_answered(gallery: TemplateStore) -> None:
    from appliance.access.learning import CredentialLearning

    answers: List[Any] = []
    learning = CredentialLearning(lambda *answer: answers.append(answer))
    assert learning.arm("tom", "learn_card", "l1", None, T0 + 30)
    assert not learning.arm("ada", "learn_card", "l2", None, T0 + 30)  # one at a time
    pin, card = _credential("pin", "2468", 1), _credential("card", "w26:9:777", 2)
    assert learning.take([pin, card], gallery, T0 + 2) == [pin]  # the PIN goes on; the card is learned
    assert answers.pop() == ("learn_card", "l1", {"id": "tom", "card": "w26:9:777", "added": True}, None)
    assert gallery.identity("tom").policy.cards == ("w26:9:777",) and learning.armed is None
    assert learning.take([card], gallery, T0 + 3) == [card]  # nothing armed: it goes to the second factor

    learning.arm("tom", "learn_card", "l3", "elsewhere", T0 + 30)
    assert learning.take([card], gallery, T0 + 4) == [card]  # another reader's card is not taken
    assert learning.take([], gallery, T0 + 31) == [] and answers.pop()[3][0] == "timeout"
    learning.arm("tom", "learn_card", "l4", None, T0 + 60)
    learning.take([_credential("card", CARD, 40)], gallery, T0 + 40)  # ada's card
    _, request_id, outcome, (code, message) = answers.pop()
    assert (request_id, outcome, code) == ("l4", None, "invalid") and "already 'ada'" in message
    assert gallery.identity("tom").policy.cards == ("w26:9:777",)
    learning.arm("tom", "learn_card", "l5", None, T0 + 60)
    learning.abandon("stopping")
    assert answers.pop() == ("learn_card", "l5", None, ("busy", "stopping"))
    learning.abandon("stopping")
    assert answers == []  # nothing armed: nothing answered twice


def test_a_pin_is_learned_typed_twice_at_one_reader_and_never_leaves_the_door(
    gallery: TemplateStore, caplog: pytest.LogCaptureFixture
) -> None:
    from appliance.access.learning import CredentialLearning

    caplog.set_level("DEBUG")
    answers: List[Any] = []
    learning = CredentialLearning(lambda *answer: answers.append(answer))
    assert learning.arm("tom", "learn_pin", "p1", None, T0 + 60, "pin")
    card, first = _credential("card", "w26:9:777", 1), _credential("pin", "2580", 2)
    assert learning.take([card, first], gallery, T0 + 2) == [card]  # the card goes on; the PIN is taken
    assert answers == [] and learning.armed == "tom"
    other = _credential("pin", "2580", 3, reader="elsewhere")
    assert learning.take([other], gallery, T0 + 3) == [
        other
    ]  # the second entry must come at the first's reader
    assert learning.take([_credential("pin", "2580", 4)], gallery, T0 + 4) == []
    assert answers.pop() == ("learn_pin", "p1", {"id": "tom", "pin": "set"}, None)
    policy = gallery.identity("tom").policy
    assert verify_pin("2580", policy.pin) and "2580" not in json.dumps(policy.document())
    # the duress PIN: two entries that differ are refused; one equal to the PIN is refused
    learning.arm("tom", "learn_pin", "p2", None, T0 + 60, "duress_pin")
    learning.take([_credential("pin", "1357", 5), _credential("pin", "1358", 6)], gallery, T0 + 6)
    _, request_id, outcome, (code, message) = answers.pop()
    assert (request_id, outcome, code) == ("p2", None, "invalid") and "differ" in message
    learning.arm("tom", "learn_pin", "p3", None, T0 + 60, "duress_pin")
    learning.take([_credential("pin", "2580", 7), _credential("pin", "2580", 8)], gallery, T0 + 8)
    assert answers.pop()[3][0] == "invalid" and gallery.identity("tom").policy.duress_pin is None
    learning.arm("tom", "learn_pin", "p4", None, T0 + 60, "duress_pin")
    learning.take([_credential("pin", "1357", 9), _credential("pin", "1357", 10)], gallery, T0 + 10)
    assert answers.pop() == ("learn_pin", "p4", {"id": "tom", "duress_pin": "set"}, None)
    assert verify_pin("1357", gallery.identity("tom").policy.duress_pin)
    learning.arm("tom", "learn_pin", "p5", None, T0 + 60, "pin")
    learning.take([_credential("pin", "9999", 11)], gallery, T0 + 11)
    assert learning.take([], gallery, T0 + 61) == [] and answers.pop()[3][0] == "timeout"
    assert verify_pin("2580", gallery.identity("tom").policy.pin)  # unchanged
    assert not [
        r for r in caplog.records if any(p in r.getMessage() for p in ("2580", "1357", "1358", "9999"))
    ]
    with pytest.raises(ValueError, match="learning sets"):
        learning.arm("tom", "learn_pin", "p6", None, T0 + 60, "groups")
    # someone who holds cards shows one first, at the reader the PIN is then typed at
    learning.arm("ada", "learn_pin", "p9", None, T0 + 60, "pin")
    early = _credential("pin", "4444", 20)
    assert learning.take([early], gallery, T0 + 20) == [early]  # before her card: not the learning's
    learning.take([_credential("card", "w26:9:777", 21)], gallery, T0 + 21)  # tom's card
    _, request_id, outcome, (code, message) = answers.pop()
    assert (request_id, code) == ("p9", "invalid") and "not theirs" in message
    learning.arm("ada", "learn_pin", "p10", None, T0 + 60, "pin")
    assert learning.take([_credential("card", CARD, 22)], gallery, T0 + 22) == []  # her card, taken
    elsewhere = _credential("pin", "4444", 23, reader="elsewhere")
    assert learning.take([elsewhere], gallery, T0 + 23) == [elsewhere]  # the reader of her card only
    learning.take([_credential("pin", "4444", 24), _credential("pin", "4444", 25)], gallery, T0 + 25)
    assert answers.pop() == ("learn_pin", "p10", {"id": "ada", "pin": "set"}, None)
    assert verify_pin("4444", gallery.identity("ada").policy.pin)
    # the command: a PIN never travels in it
    command = parse("learn_pin", json.dumps({"request_id": "p7", "id": "tom", "duress": True}).encode())[1]
    assert (command.id, command.within_s, command.duress, command.reader) == ("tom", 60.0, True, None)
    for payload in (
        {"id": "tom", "pin": "2580"},
        {"id": "tom", "within_s": 1},
        {"id": "tom", "duress": "yes"},
    ):
        with pytest.raises(CommandError) as refused:
            parse("learn_pin", json.dumps({"request_id": "p8", **payload}).encode())
        assert refused.value.code == "invalid"


def test_a_card_and_a_pin_learned_for_the_fleet_are_answered_not_stored(
    gallery: TemplateStore, caplog: pytest.LogCaptureFixture
) -> None:
    """``for_fleet``: the same checks as a learning for the door, nothing stored, the card answered and
    the PIN's hash answered sealed for the authority, bound to the request (it opens for nothing else)."""
    import functools

    from appliance.access.learning import CredentialLearning
    from appliance.fleet.errors import FleetError
    from appliance.fleet.sealed_pin import open_pin_hash, seal_pin_hash

    caplog.set_level("DEBUG")
    key = bytes(range(32))
    answers: List[Any] = []
    learning = CredentialLearning(lambda *answer: answers.append(answer))
    before = gallery.identity("tom").policy
    assert learning.arm("tom", "learn_card", "f1", None, T0 + 30, "card", for_fleet=True)
    learning.take([_credential("card", "w26:9:777", 1)], gallery, T0 + 1)
    assert answers.pop() == ("learn_card", "f1", {"id": "tom", "card": "w26:9:777", "for_fleet": True}, None)
    learning.arm("tom", "learn_card", "f2", None, T0 + 30, "card", for_fleet=True)
    learning.take([_credential("card", CARD, 2)], gallery, T0 + 2)  # ada's card here
    _, _, outcome, (code, message) = answers.pop()
    assert (outcome, code) == (None, "invalid") and "held by 'ada' here" in message

    seal = functools.partial(seal_pin_hash, key, "hq", "tom", "f3", "pin")
    learning.arm("tom", "learn_pin", "f3", None, T0 + 60, "pin", for_fleet=True, seal=seal)
    learning.take([_credential("pin", "2580", 3), _credential("pin", "2580", 4)], gallery, T0 + 4)
    name, request_id, result, error = answers.pop()
    assert (name, request_id, error, result["id"], result["pin"]) == (
        "learn_pin",
        "f3",
        None,
        "tom",
        "sealed",
    )
    pin_hash = open_pin_hash(result["sealed"], key, "hq", "tom", "f3", "pin")
    assert verify_pin("2580", pin_hash) and "2580" not in result["sealed"]
    for wrong in (
        (bytes(32), "hq", "tom", "f3", "pin"),  # another site's key
        (key, "lab", "tom", "f3", "pin"),
        (key, "hq", "ada", "f3", "pin"),  # moved to another person
        (key, "hq", "tom", "f4", "pin"),  # replayed into another request
        (key, "hq", "tom", "f3", "duress_pin"),  # taken as the other PIN
    ):
        with pytest.raises(FleetError, match="does not open"):
            open_pin_hash(result["sealed"], *wrong)
    for hostile, why in (("x" * 600, "at most 512"), (None, "at most 512"), ("not base64!", "not base64")):
        with pytest.raises(FleetError, match=why):
            open_pin_hash(hostile, key, "hq", "tom", "f3", "pin")
    not_a_hash = seal_pin_hash(key, "hq", "tom", "f3", "pin", "2580")
    with pytest.raises(FleetError, match="holds no PIN hash"):
        open_pin_hash(not_a_hash, key, "hq", "tom", "f3", "pin")
    # the duress PIN equal to the stored PIN is refused at the door, as for a learning there
    gallery.set_policy("tom", before.changed({"pin": "2580"}))
    learning.arm("tom", "learn_pin", "f5", None, T0 + 60, "duress_pin", for_fleet=True, seal=seal)
    learning.take([_credential("pin", "2580", 5), _credential("pin", "2580", 6)], gallery, T0 + 6)
    assert answers.pop()[3][0] == "invalid"
    assert gallery.identity("tom").policy.cards == before.cards  # nothing learned for the fleet was stored
    assert gallery.identity("tom").policy.duress_pin is None
    assert not [r for r in caplog.records if "2580" in r.getMessage()]
    with pytest.raises(ValueError, match="needs what seals"):
        learning.arm("tom", "learn_pin", "f6", None, T0 + 60, "pin", for_fleet=True)


def test_a_turnstile_has_a_reader_per_way_each_on_its_own_port_or_both_on_one_line() -> None:
    from appliance.osdp.card_reader import CardReader
    from appliance.peripherals import create_peripherals

    cameras = [{"id": "entry", "source": "0"}, {"id": "exit", "source": "1"}]
    readers = [
        {"id": "entry-reader", "port": "/dev/ttyUSB1", "secure_channel": False, "cameras": ["entry"]},
        {"id": "exit-reader", "port": "/dev/ttyUSB2", "secure_channel": False, "cameras": ["exit"]},
    ]
    document = {
        "cameras": cameras,
        "credential_readers": readers,
        "access": {"second_factor": {"require": "card"}},
    }
    config = validate_config(document)
    assert config.reader_cameras == {"entry-reader": ["entry"], "exit-reader": ["exit"]}
    built = create_peripherals(config, CredentialInbox())
    assert [(p.name, p.source) for p in built] == [
        ("entry-reader", "credential_reader"),
        ("exit-reader", "credential_reader"),
    ]
    assert all(isinstance(p, CardReader) for p in built)
    assert built[0].line is not built[1].line  # type: ignore[attr-defined]
    # Both on one RS-485 line, at addresses of their own: one control panel polls the two.
    one_line = [readers[0], {**readers[1], "port": "/dev/ttyUSB1", "address": 1}]
    shared = validate_config({**document, "credential_readers": one_line})
    assert shared.reader_cameras == {"entry-reader": ["entry"], "exit-reader": ["exit"]}
    built = create_peripherals(shared, CredentialInbox())
    assert [(p.name, p.source) for p in built] == [
        ("entry-reader", "credential_reader"),
        ("exit-reader", "credential_reader"),
    ]
    line = built[0].line  # type: ignore[attr-defined]
    assert built[1].line is line and line.reader_ids == ["entry-reader", "exit-reader"]  # type: ignore[attr-defined]
    off = [dict(readers[0]), {**readers[1], "enabled": False}]
    assert list(validate_config({**document, "credential_readers": off}).reader_cameras) == ["entry-reader"]
    for change, match in (
        (
            {"credential_readers": [readers[0], {**readers[1], "port": "/dev/ttyUSB1"}]},
            r"readers 'entry-reader' and 'exit-reader' both name address 0 on port /dev/ttyUSB1; .*"
            r"an address of their own",
        ),
        (
            {"credential_readers": [readers[0], {**one_line[1], "baud_rate": 19200}]},
            r"readers 'entry-reader' and 'exit-reader' share port /dev/ttyUSB1 but not its baud_rate "
            r"\(9600 and 19200\)",
        ),
        ({"credential_readers": [readers[0], {**readers[1], "id": "entry-reader"}]}, "an id of its own"),
        (
            {"credential_readers": [readers[0], {k: v for k, v in readers[1].items() if k != "id"}]},
            "has no id",
        ),
        ({"credential_readers": []}, "empty list"),
        ({"credential_reader": {**READER_SECTION}}, r"\[credential_reader\] and \[\[credential_readers\]\]"),
        ({"credential_readers": [{**readers[0], "cameras": ["lobby"]}]}, "lobby"),
    ):
        with pytest.raises(Exception, match=match):
            validate_config({**document, **change})


def test_the_pipeline_keeps_the_outcomes_of_the_waiting_grants_only(gallery: TemplateStore) -> None:
    """Faces held and never completed do not pile up: their outcomes (with crops) go when their wait
    ends, at the next hold, without a card or PIN ever coming."""
    gallery.set_policy("tom", IdentityPolicy(groups=("vault",)))
    judge = AccessJudge.for_door(_access(), gallery, readers={READER: []})
    pipeline, lane, vote = _pipeline_and_vote(judge)
    pipeline._outcome(lane, vote, 1.0, keep=True)
    assert set(pipeline._held) == {"ada"}
    waits = judge.second_factor._waiting
    waits["ada"] = replace(waits["ada"], at=waits["ada"].at - 60)  # her wait ended a while ago
    pipeline._outcome(lane, replace(vote, track_id=8, identity_id="tom", name="Tom"), 2.0, keep=True)
    assert set(pipeline._held) == {"tom"}


def test_a_credential_read_a_moment_before_the_wait_began_still_completes_it() -> None:
    """The reader's thread stamps a card as it reads it; the pipeline may hold the face a few ms
    later: that order is no reason to drop the wait (only a gap over within_s either way is)."""
    rule = SecondFactorRule("card", [], 15, 3, {READER: []})
    rule.hold("ada", "cam", ADA, T0 + 5.0)
    assert rule.present(_credential("card", CARD, 4.99), _policies(ada=ADA)) == [
        Completion("ada", "cam", "card", False, READER)
    ]
    rule.hold("ada", "cam", ADA, T0 + 100.0)
    assert (
        rule.present(_credential("card", CARD, 80.0), _policies(ada=ADA)) == []
    )  # 20 s before: a clock step
    assert rule.waiting() == ()


def test_a_face_that_finds_its_card_or_duress_pin_already_presented_opens_with_its_factors(
    gallery: TemplateStore,
) -> None:
    judge = AccessJudge.for_door(_access(), gallery, readers={READER: []})
    pipeline, lane, vote = _pipeline_and_vote(judge)
    now = time.time()
    assert pipeline.present_credentials([PresentedCredential("card", CARD, READER, now)], 1.0) == []
    opened = pipeline._outcome(lane, vote, 2.0, keep=True)
    assert (opened.decision.decision, opened.decision.factors, opened.decision.duress) == (
        "granted",
        ("face", "card"),
        False,
    )
    assert pipeline.present_credentials([PresentedCredential("pin", "1357", READER, time.time())], 3.0) == []
    duress = pipeline._outcome(lane, replace(vote, track_id=8), 4.0, keep=True).decision
    assert (duress.decision, duress.factors, duress.duress) == ("granted", ("face", "pin"), True)
    assert access_event(duress, "door", "cam0", {}, 1.0)["duress"] is True
