"""Fuzzing what a card-and-keypad reader and an operator hand the second factor: card reads of any
length and content, key presses of any byte, card texts and stored PIN hashes of any form.

* :func:`~appliance.access.credentials.card_from_bits`: a canonical card that :func:`parse_card` reads
  back to itself, or :class:`PolicyError`; nothing else.
* :class:`~appliance.osdp.card_reader.KeypadEntry`: whatever the bytes and pauses, a PIN it gives is
  4–8 digits that were typed in that order, and nothing is held past the timeout.
* :func:`parse_card`, :func:`check_pin_hash` and :meth:`IdentityPolicy.from_document` (a fleet record's
  or a bundle's policy): a value or :class:`PolicyError`.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from hypothesis import example, given
from hypothesis import strategies as st

from appliance.access.credentials import card_from_bits, check_pin_hash, parse_card, verify_pin
from appliance.access.errors import PolicyError
from appliance.access.policy import IdentityPolicy
from appliance.osdp.card_reader import KEY_CLEAR, KEY_ENTER, KeypadEntry
from tests.fuzz.conftest import fuzz_settings


@fuzz_settings(1000)
@given(st.integers(-4, 140), st.binary(max_size=20))
@example(26, bytes.fromhex("83981cc0"))
@example(34, bytes.fromhex("0096181cc0"))
def test_a_card_read_is_a_canonical_card_or_a_clear_refusal(bits: int, data: bytes) -> None:
    try:
        card = card_from_bits(bits, data)
    except PolicyError:
        return
    assert parse_card(card) == card
    assert card.startswith(("w26:", "w34:") if bits in (26, 34) else "raw:")


_KEYS = st.one_of(st.sampled_from([KEY_ENTER, KEY_CLEAR, *range(0x30, 0x3A)]), st.integers(0, 255))


@fuzz_settings(400)
@given(st.lists(st.tuples(st.lists(_KEYS, max_size=12), st.floats(0.0, 12.0)), max_size=20))
def test_the_keypad_gives_only_typed_pins_of_four_to_eight_digits(
    presses: List[Tuple[List[int], float]],
) -> None:
    now = [0.0]
    entry = KeypadEntry(5.0, clock=lambda: now[0])
    typed = ""
    for keys, pause in presses:
        now[0] += pause
        typed += "".join(chr(k) if 0x30 <= k <= 0x39 else "|" for k in keys)
        for outcome in entry.press(bytes(keys)):
            if outcome.kind == "pin":
                assert 4 <= len(outcome.pin) <= 8 and outcome.pin.isdigit() and outcome.pin in typed
            else:
                assert outcome.pin == ""
    now[0] += 5.01
    entry.expire()
    assert not entry.active and entry.pending == 0


@fuzz_settings(1000)
@given(st.one_of(st.text(max_size=60), st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=3)))
@example("w26:7:12345")
@example("raw:128:" + "f" * 32)
def test_card_texts_and_pin_hashes_are_checked_never_trusted(text: Any) -> None:
    for check in (parse_card, check_pin_hash):
        try:
            check(text)
        except PolicyError:
            pass
    assert verify_pin("1234", text if isinstance(text, str) else None) is False


_DOCUMENT_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=80),
    st.lists(st.text(max_size=20), max_size=10),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@fuzz_settings(1000)
@given(
    st.dictionaries(
        st.sampled_from(
            ["valid_from", "valid_until", "suspended", "groups", "cards", "pin", "duress_pin", "x"]
        ),
        _DOCUMENT_VALUES,
        max_size=6,
    )
)
def test_a_records_policy_document_is_a_policy_or_a_clear_refusal(document: Any) -> None:
    try:
        policy = IdentityPolicy.from_document(document)
    except PolicyError:
        return
    assert IdentityPolicy.from_document(policy.document()) == policy
