"""Fuzzing card and PIN without a face (:mod:`appliance.access.without_face`) through the judge on a real
store: any sequence of cards and PINs, at two readers and one it does not know, at any pace.

Whatever comes, a door opens without a face only for Vera (enrolled without a face), only on her PIN or
duress PIN right after her card at the same reader within ``within_s``, with ``"duress"`` exactly for
the duress PIN; never for Ada (enrolled with a face) nor for Sue (suspended); a card nobody holds is
reported as nobody's; a reader it does not serve decides nothing; a card waits at most once per reader.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from appliance.access.credentials import PresentedCredential
from appliance.access.judge import AccessJudge
from appliance.access.policy import IdentityPolicy
from appliance.access.settings import AccessConfig
from appliance.gallery.store import TemplateStore
from tests.fuzz.conftest import fuzz_settings

VERA, ADA, SUE, NOBODY = "w26:7:100", "w26:7:200", "w26:7:300", "w26:1:1"
PIN, DURESS = "2468", "1357"
READERS = {"r1": ["entry"], "r2": ["exit"]}
WITHIN_S = 10.0
T0 = 1_800_000_000.0


def _cheap_hash(pin: str) -> str:
    """A PIN hash of the stored form at the lowest cost the appliance accepts (the fuzz runs thousands)."""
    salt = hashlib.sha256(pin.encode()).digest()[:16]
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=1 << 10, r=1, p=1, dklen=32)
    return f"scrypt$10$1$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["card", "pin"]),
        st.sampled_from([VERA, ADA, SUE, NOBODY]),
        st.sampled_from([PIN, DURESS, "9999", "1111", "0000"]),
        st.sampled_from(["r1", "r2", "r1", "r2", "unknown-reader"]),
        st.floats(0.0, 14.0),
    ),
    max_size=30,
)


@fuzz_settings(300)
@given(_STEPS, st.sampled_from(["card_and_pin", "card"]))
def test_only_vera_passes_without_a_face_and_only_as_the_rule_says(
    steps: List[Tuple[str, str, str, str, float]], require: str
) -> None:
    with tempfile.TemporaryDirectory() as folder, TemplateStore.open(
        Path(folder) / "gallery.db", Path(folder) / "gallery.key"
    ) as store:
        store.add_identity(
            "vera",
            "Vera",
            policy=IdentityPolicy(cards=(VERA,), pin=_cheap_hash(PIN), duress_pin=_cheap_hash(DURESS)),
        )
        face = np.ones((1, 128), np.float32) / np.sqrt(128)
        store.add("ada", "Ada", "m@1", face, policy=IdentityPolicy(cards=(ADA,), pin=_cheap_hash("9999")))
        store.add_identity(
            "sue", "Sue", policy=IdentityPolicy(suspended=True, cards=(SUE,), pin=_cheap_hash("1111"))
        )
        access = AccessConfig.model_validate({"without_face": {"require": require, "within_s": WITHIN_S}})
        judge = AccessJudge.for_door(access, store, readers=READERS)
        rule = judge.without_face
        assert rule is not None
        at = T0
        last_card: Dict[str, Tuple[str, float]] = {}  # reader → the last card shown there, when
        for kind, card, pin, reader, pause in steps:
            at += pause
            value = card if kind == "card" else pin
            passages = judge.present(PresentedCredential(kind, value, reader, at))
            if reader not in READERS:
                assert passages == []
                continue
            shown: Optional[Tuple[str, float]] = last_card.get(reader)
            if kind == "card":
                last_card[reader] = (card, at)
            for passage in passages:
                assert passage.faceless and passage.camera_id == READERS[reader][0]
                assert passage.identity_id in ("vera", "sue", None)  # never Ada: she has a face
                if passage.identity_id is None:
                    assert kind == "card" and card == NOBODY
                if passage.verdict.reason is not None:
                    assert not passage.verdict.duress
                    continue
                if passage.identity_id is None:
                    continue  # a card nobody holds: reported as unknown
                assert passage.identity_id == "vera"  # granted: never Sue
                if require == "card":
                    assert kind == "card" and card == VERA and passage.verdict.factors == ("card",)
                else:
                    assert kind == "pin" and pin in (PIN, DURESS)
                    assert shown is not None and shown[0] == VERA and 0 <= at - shown[1] <= WITHIN_S
                    assert passage.verdict.factors == ("card", "pin")
                    assert passage.verdict.duress == (pin == DURESS)
        waiting = [rule.waiting(reader, at) for reader in READERS]
        assert all(w is None or w.identity_id == "vera" for w in waiting)  # only a card that may pass waits
