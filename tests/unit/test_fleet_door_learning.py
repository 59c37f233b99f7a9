"""``fleet learn-card`` / ``learn-pin`` at the authority (:mod:`appliance.fleet.door_learning`) against a
broker double that answers as a door would — or as a broken or hostile one: every answer that is not
the door's learning for this request publishes nothing and says why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.access.credentials import hash_pin, verify_pin
from appliance.fleet.door_learning import MAX_ANSWER_BYTES, learn_at_door
from appliance.fleet.errors import FleetError
from appliance.fleet.records import IdentityRecord, open_record
from appliance.fleet.sealed_pin import seal_pin_hash
from tests.unit.test_fleet_authority import SITE, FakeBroker, _authority, _carded

DOOR = "door-a"
COMMAND = f"face-appliance/{DOOR}/cmd/learn_pin"


class DoorBroker(FakeBroker):
    """A broker whose door answers each learning command with ``answer(command)`` (``None``: silence)."""

    def __init__(self, answer: Callable[[Dict[str, Any]], Optional[Any]]) -> None:
        super().__init__()
        self.answer = answer
        self.commands: list = []

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        if "/cmd/" not in topic:
            return super().publish(topic, payload, retain)
        assert retain is False  # a door refuses a retained command
        command = json.loads(payload)
        self.commands.append(command)
        answer = self.answer(command)
        if answer is not None:
            self.retained[f"{topic}/result"] = (
                answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            )
        return None


def _sealed_answer(
    key: bytes, what: str = "pin", pin: str = "2580", **changes: Any
) -> Callable[[Dict[str, Any]], Any]:
    def answer(command: Dict[str, Any]) -> Dict[str, Any]:
        sealed = seal_pin_hash(key, SITE, command["id"], command["request_id"], what, hash_pin(pin))
        result = {"id": command["id"], what: "sealed", "sealed": sealed}
        return {"request_id": command["request_id"], "ok": True, "result": {**result, **changes}}

    return answer


@pytest.fixture(scope="module")
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _learn(
    tmp_path: Path, signer: Ed25519PrivateKey, answer: Callable[[Dict[str, Any]], Any], what: str = "pin"
) -> Any:
    broker = DoorBroker(answer)
    authority = _authority(tmp_path, signer, broker, timeout_s=0.2, broker_wait_s=0.05)
    if "p-vera" not in authority.state.index.identities:
        authority.enroll(_carded("p-vera", "Vera", "w26:7:1"))
    return authority, broker, lambda: learn_at_door(authority, "p-vera", DOOR, what, 5.0)


def test_a_pin_learned_at_a_door_is_published_as_its_hash(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    authority, broker, learn = _learn(tmp_path, signer, _sealed_answer(bytes(32)))
    learned = learn()
    (command,) = broker.commands
    assert command["id"] == "p-vera" and command["for_fleet"] is True and command["duress"] is False
    assert command["ts"].endswith("Z") and command["within_s"] == 5.0
    record = open_record(broker.retained[learned.published.topic], SITE, bytes(32), authority.trusted)
    assert isinstance(record, IdentityRecord) and verify_pin("2580", record.policy.pin)
    assert record.policy.cards == ("w26:7:1",) and learned.published.revision == 2


def test_a_card_learned_at_a_door_is_added_unless_the_site_holds_it(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    def card(value: str) -> Callable[[Dict[str, Any]], Any]:
        return lambda c: {
            "request_id": c["request_id"],
            "ok": True,
            "result": {"id": c["id"], "card": value, "for_fleet": True},
        }

    authority, broker, learn = _learn(tmp_path, signer, card("w26:7:2"), "card")
    assert learn().card == "w26:7:2"
    published = list(broker.published)
    again = learn()  # a card they hold already: nothing to publish
    assert again.published is None and broker.published == published
    assert broker.commands[0]["within_s"] == 5.0 and "duress" not in broker.commands[0]
    authority.enroll(_carded("p-alan", "Alan", "w26:9:9"))
    broker.answer = card("w26:9:9")
    with pytest.raises(FleetError, match="held by identity 'p-alan'"):
        learn()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda c: None, "no answer from door 'door-a'"),
        (lambda c: {"request_id": "another", "ok": True, "result": {}}, "no answer"),  # another request's
        (lambda c: b"\xff not json", "no answer"),
        (lambda c: b"[" * 200_000, "no answer"),  # too large to be read
        (
            lambda c: {
                "request_id": c["request_id"],
                "ok": False,
                "error": {"code": "timeout", "message": "no PIN"},
            },
            "answered timeout: no PIN",
        ),
        (lambda c: {"request_id": c["request_id"], "ok": False, "error": "x" * 10_000}, "answered an error"),
        (
            lambda c: {"request_id": c["request_id"], "ok": True, "result": {"id": "p-other"}},
            "another identity",
        ),
        (
            lambda c: {"request_id": c["request_id"], "ok": True, "result": {"id": c["id"], "pin": "set"}},
            "no sealed pin",
        ),
        (_sealed_answer(bytes(32), sealed="AAAA"), "does not open"),
        (_sealed_answer(bytes(range(32))), "does not open"),  # another site's key
        (_sealed_answer(bytes(32), what="duress_pin"), "no sealed pin"),
    ],
)
def test_every_answer_that_is_not_the_learning_publishes_nothing(
    tmp_path: Path, signer: Ed25519PrivateKey, answer: Callable[[Dict[str, Any]], Any], message: str
) -> None:
    authority, broker, learn = _learn(tmp_path, signer, answer)
    published = list(broker.published)
    with pytest.raises(FleetError, match=message):
        learn()
    assert broker.published == published and authority.state.counter == 1


def test_an_offline_door_an_unknown_identity_and_a_bad_door_are_refused_before_asking(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    authority, broker, learn = _learn(tmp_path, signer, _sealed_answer(bytes(32)))
    broker.retained[f"face-appliance/{DOOR}/availability"] = b"offline"
    with pytest.raises(FleetError, match="is offline"):
        learn()
    with pytest.raises(FleetError, match="not enrolled"):
        learn_at_door(authority, "p-nobody", DOOR, "pin", 5.0)
    with pytest.raises(FleetError, match="not a device id"):
        learn_at_door(authority, "p-vera", "door/a/#", "pin", 5.0)
    assert broker.commands == [] and MAX_ANSWER_BYTES < 200_000
