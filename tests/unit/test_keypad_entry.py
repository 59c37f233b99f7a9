"""The keypad's PIN buffering (:class:`appliance.osdp.card_reader.KeypadEntry`) with a fixed clock:
digits, ``#`` (0x0D), ``*`` (0x7F), the pause that discards a partial entry, too long, too short."""

from __future__ import annotations

from typing import List, Tuple

import pytest

from appliance.osdp.card_reader import KEY_CLEAR, KEY_ENTER, KeypadEntry, KeypadOutcome

TIMEOUT_S = 5.0


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keys(text: str) -> bytes:
    """``"12*3#"`` as OSDP's ``osdp_KEYPAD`` reports it: ASCII digits, ``*`` = 0x7F, ``#`` = 0x0D."""
    return bytes(KEY_CLEAR if c == "*" else KEY_ENTER if c == "#" else ord(c) for c in text)


def summary(outcomes: List[KeypadOutcome]) -> List[Tuple[str, str, str]]:
    return [(o.kind, o.reason, o.pin) for o in outcomes]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def entry(clock: Clock) -> KeypadEntry:
    return KeypadEntry(TIMEOUT_S, clock=clock)


def test_osdp_key_codes() -> None:
    assert (KEY_ENTER, KEY_CLEAR) == (0x0D, 0x7F)


def test_digits_then_enter_make_a_pin(entry: KeypadEntry) -> None:
    assert summary(entry.press(keys("1234#"))) == [("pin", "", "1234")]
    assert entry.pending == 0 and not entry.active
    assert summary(entry.press(keys("87654321#"))) == [("pin", "", "87654321")]


def test_one_key_per_report(entry: KeypadEntry) -> None:
    outcomes: List[KeypadOutcome] = []
    for key in "0042#":
        outcomes += entry.press(keys(key))
    assert summary(outcomes) == [("pin", "", "0042")]


def test_star_clears_the_entry(entry: KeypadEntry) -> None:
    assert summary(entry.press(keys("12*5678#"))) == [("cleared", "", ""), ("pin", "", "5678")]
    assert entry.press(keys("*")) == []  # nothing to clear


def test_too_short_is_a_bad_pin_and_a_lone_enter_is_nothing(entry: KeypadEntry) -> None:
    assert summary(entry.press(keys("123#"))) == [("bad_pin", "too_short", "")]
    assert entry.press(keys("#")) == []
    assert summary(entry.press(keys("4321#"))) == [("pin", "", "4321")]


def test_too_long_discards_the_entry_and_its_tail(entry: KeypadEntry) -> None:
    # The ninth digit ends the entry; the digits after it never become a PIN of their own.
    assert summary(entry.press(keys("123456789"))) == [("bad_pin", "too_long", "")]
    assert entry.pending == 0 and entry.active
    assert entry.press(keys("1234#")) == []
    assert not entry.active
    assert summary(entry.press(keys("1234#"))) == [("pin", "", "1234")]
    # '*' also ends the ignored tail.
    entry.press(keys("123456789999"))
    assert summary(entry.press(keys("*5555#"))) == [("cleared", "", ""), ("pin", "", "5555")]


def test_a_pause_longer_than_the_timeout_discards_the_partial_entry(entry: KeypadEntry, clock: Clock) -> None:
    entry.press(keys("12"))
    clock.now += TIMEOUT_S  # exactly the timeout: still the same entry
    entry.press(keys("34"))
    clock.now += TIMEOUT_S + 0.1
    assert summary(entry.press(keys("5678#"))) == [("abandoned", "timeout", ""), ("pin", "", "5678")]


def test_expire_discards_on_the_owners_tick(entry: KeypadEntry, clock: Clock) -> None:
    assert entry.expire() is None
    entry.press(keys("98"))
    clock.now += TIMEOUT_S
    assert entry.expire() is None and entry.pending == 2
    clock.now += 0.1
    assert summary([entry.expire()]) == [("abandoned", "timeout", "")]  # type: ignore[list-item]
    assert entry.pending == 0 and entry.expire() is None
    assert summary(entry.press(keys("#"))) == []


def test_a_too_long_entry_times_out_silently(entry: KeypadEntry, clock: Clock) -> None:
    entry.press(keys("123456789"))  # already counted as a bad PIN
    clock.now += TIMEOUT_S + 1
    assert entry.expire() is None and not entry.active
    assert summary(entry.press(keys("2468#"))) == [("pin", "", "2468")]


def test_a_function_key_abandons_the_entry(entry: KeypadEntry) -> None:
    assert summary(entry.press(b"12A")) == [("abandoned", "unexpected_key", "")]
    assert entry.press(b"B") == []  # nothing held: ignored
    assert summary(entry.press(keys("1357#"))) == [("pin", "", "1357")]


def test_clear_forgets_the_entry(entry: KeypadEntry) -> None:
    entry.press(keys("1234"))
    entry.clear()
    assert summary(entry.press(keys("#"))) == []


def test_the_pin_is_never_in_a_repr(entry: KeypadEntry) -> None:
    (outcome,) = entry.press(keys("24680#"))
    assert outcome.pin == "24680" and "24680" not in repr(outcome)
