"""The two-person rule: held grants, companions, expiry, and the judge that applies it after the
policy and anti-passback (the daemon's part: tests/integration/test_access_control.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from appliance.access.judge import AccessJudge
from appliance.access.passback import PASSBACK
from appliance.access.policy import IdentityPolicy, parse_instant
from appliance.access.presence import PRESENCE_FILE, PresenceStore
from appliance.access.settings import AccessConfig
from appliance.access.two_person import TWO_PERSON, TwoPersonRule, Waiting
from appliance.config_load import validate_config
from appliance.decisions import Decision
from appliance.events import access_event
from appliance.gallery.store import TemplateStore

VERSION = "mobilefacenet@foamliu-v1.0"
NOON = parse_instant("2026-12-07T12:00:00Z", "t")


def test_a_vault_member_waits_for_a_supervisor() -> None:
    rule = TwoPersonRule(["vault"], ["supervisors"], within_s=30)
    assert rule.admit("ada", ["vault"], "cam", 100.0) == (False, ())
    assert rule.admit("ada", ["vault"], "cam", 110.0) == (False, ())  # alone again: she waits on
    assert rule.admit("bob", ["staff"], "cam", 120.0) == (True, ())  # not a companion: passes alone
    assert rule.waiting() == (Waiting("ada", "cam", 110.0),)
    assert rule.admit("sue", ["supervisors"], "cam2", 125.0) == (True, (Waiting("ada", "cam", 110.0),))
    assert rule.waiting() == ()
    assert rule.admit("sue", ["supervisors"], "cam2", 126.0) == (True, ())  # nobody left to accompany


def test_a_held_grant_expires_after_within_s() -> None:
    rule = TwoPersonRule(["vault"], ["supervisors"], within_s=30)
    rule.admit("ada", ["vault"], "cam", 100.0)
    assert rule.waiting(130.0) != ()
    assert rule.admit("sue", ["supervisors"], "cam", 130.5) == (True, ())  # too late: ada must come again
    rule.admit("ada", ["vault"], "cam", 200.0)
    assert rule.waiting(150.0) == ()  # a clock set back drops her too: never a companion from the future


def test_without_companion_groups_two_members_pass_together_and_nobody_accompanies_themself() -> None:
    rule = TwoPersonRule(["vault"], [], within_s=30)
    assert rule.admit("ada", ["vault"], "cam", 0.0) == (False, ())
    assert rule.admit("ada", ["vault"], "cam", 1.0) == (False, ())
    assert rule.admit("cy", ["vault"], "cam", 2.0) == (True, (Waiting("ada", "cam", 1.0),))
    rule.admit("ada", ["vault"], "cam", 3.0)
    rule.admit("cy", ["vault", "x"], "cam", 3.0)  # completes ada: both pass
    assert rule.waiting() == ()
    rule.admit("ada", ["vault"], "cam", 10.0)
    rule.admit("dan", ["vault"], "cam", 11.0)  # completes ada
    assert rule.admit("eve", ["staff"], "cam", 12.0) == (True, ())  # anyone accompanies; nobody waits


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[TemplateStore]:
    with TemplateStore.open(tmp_path / "gallery.db", tmp_path / "gallery.key") as store:
        for seed, (who, groups) in enumerate({"ada": ("vault",), "sue": ("supervisors",), "tom": ()}.items()):
            vector = np.random.default_rng(seed).normal(size=(1, 128)).astype(np.float32)
            store.add(
                who,
                who.title(),
                VERSION,
                vector / np.linalg.norm(vector),
                policy=IdentityPolicy(groups=groups),
            )
        yield store


def _access(**sections: Any) -> AccessConfig:
    return AccessConfig.model_validate(
        {"two_person": {"groups": ["vault"], "companions": ["supervisors"], "within_s": 30}, **sections}
    )


def test_the_judge_holds_then_completes_and_records_both_passages(
    gallery: TemplateStore, tmp_path: Path
) -> None:
    with PresenceStore.open(tmp_path / PRESENCE_FILE) as presence:
        access = _access(anti_passback={"mode": "hard", "same_passage_s": 0})
        judge = AccessJudge.for_door(access, gallery, presence, {"entry": "in", "exit": "out"})
        assert judge.judge_passage("ada", "entry", NOON).reason == TWO_PERSON
        assert presence.last("ada") is None  # held: not a passage yet
        assert judge.judge_passage("tom", "entry", NOON).companions == ()  # not a supervisor
        verdict = judge.judge_passage("sue", "entry", NOON + timedelta(seconds=5))
        assert verdict.reason is None and verdict.companions == ("ada",)
        assert presence.last("ada").direction == "in" and presence.last("sue").direction == "in"
        # anti-passback comes first: ada, in already, is refused before she waits again
        assert judge.judge_passage("ada", "entry", NOON + timedelta(minutes=1)).reason == PASSBACK
        assert judge.two_person.waiting() == ()
        # asked only (access check --camera): the rule is left out, nothing is held
        assert judge.judge_passage("ada", "exit", NOON + timedelta(minutes=2), record=False).reason is None
        assert judge.two_person.waiting() == ()


def test_the_rule_is_off_without_groups_and_its_section_is_checked(gallery: TemplateStore) -> None:
    assert AccessJudge.for_door(AccessConfig(), gallery).two_person is None
    assert AccessJudge.for_door(AccessConfig(), gallery).judge_passage("ada", "cam", NOON).reason is None
    for section, match in (
        ({"companions": ["supervisors"]}, "groups is empty"),
        ({"groups": ["a b"]}, "groups"),
        ({"groups": ["vault"], "within_s": 0}, "within_s"),
        ({"groups": ["vault"], "alone": True}, "alone"),
    ):
        with pytest.raises(Exception, match=match):
            validate_config({"access": {"two_person": section}})


def test_the_completing_event_names_the_companions() -> None:
    decision = Decision(
        1, "granted", "sue", "Sue", 0.8, 0.5, 5, None, np.zeros(4, np.float32), 0.9, 0.0, 1.0, "", None, None
    )
    assert "companions" not in access_event(decision, "door", "cam0", {}, 1.0)
    event = access_event(Decision(**{**decision.__dict__, "companions": ("ada",)}), "door", "cam0", {}, 1.0)
    assert event["companions"] == ["ada"] and event["decision"] == "granted"
