"""A person's external_id as OSDP card data: Wiegand 26 / 34 with their parity bits, raw bits, and refusals.

The expected bit strings are written out by hand from the published layouts (HID H10301 for 26 bits:
``E FFFFFFFF CCCCCCCCCCCCCCCC O``, even parity over bits 2-13, odd over bits 14-25), not computed by
the code under test.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.osdp.credential import CardData, UnfitCredentialError, encode, pack_bits, parse_number
from appliance.osdp.settings import OsdpCredentialConfig


def settings(**values: Any) -> OsdpCredentialConfig:
    return OsdpCredentialConfig.model_validate(values)


W26_VECTORS = [
    # (facility, card, the 26 bits, the bytes OSDP carries)
    (7, 12345, "1" + "00000111" + "0011000000111001" + "1", "83981cc0"),
    (0, 0, "0" + "00000000" + "0000000000000000" + "1", "00000040"),
    (255, 65535, "0" + "11111111" + "1111111111111111" + "1", "7fffffc0"),
    (1, 1, "1" + "00000001" + "0000000000000001" + "0", "80800080"),
    (128, 32768, "0" + "10000000" + "1000000000000000" + "1", "40400040"),
]


@pytest.mark.parametrize(("facility", "card", "bits", "data"), W26_VECTORS)
def test_wiegand26_known_vectors(facility: int, card: int, bits: str, data: str) -> None:
    encoded = encode(str(card), settings(facility_code=facility))
    assert encoded == CardData(wiegand=True, bits=26, data=bytes.fromhex(data))
    assert encoded.bit_string() == bits


def test_wiegand34_layouts() -> None:
    # HID H10306: 16-bit facility, 16-bit card; E over data bits 1-16, O over 17-32.
    h10306 = encode("1", settings(format="wiegand34", facility_code=1))
    assert h10306.bit_string() == "1" + "0000000000000001" + "0000000000000001" + "0"
    assert h10306.bits == 34 and h10306.data == bytes.fromhex("8000800080")
    # facility_bits = 0: a 32-bit card number (many readers' "Wiegand 34").
    whole = encode("4294967295", settings(format="wiegand34", facility_bits=0))
    assert whole.bit_string() == "0" + "1" * 32 + "1"
    # facility_bits = 8: 8-bit site, 24-bit card.
    site = encode("16777215", settings(format="wiegand34", facility_bits=8, facility_code=3))
    assert site.bit_string() == "0" + "00000011" + "11111111" + "1" * 16 + "1"


def test_raw_numbers_and_hex_card_serials() -> None:
    assert encode("2748", settings(format="raw", bits=12)) == CardData(False, 12, bytes.fromhex("abc0"))
    uid = encode("04A2B3C4D5E680", settings(format="raw", bits=56, number_base=16))
    assert uid == CardData(False, 56, bytes.fromhex("04a2b3c4d5e680"))
    assert encode(" 7 ", settings(format="raw", bits=3)).bit_string() == "111"


@pytest.mark.parametrize(
    ("external_id", "values", "reason"),
    [
        ("65536", {}, "too_large"),  # one above wiegand26's 16-bit card number: never truncated
        ("99999999999", {}, "too_large"),
        ("65536", {"format": "wiegand34"}, "too_large"),
        ("4294967296", {"format": "wiegand34", "facility_bits": 0}, "too_large"),
        ("4096", {"format": "raw", "bits": 12}, "too_large"),
        ("12a45", {}, "not_a_number"),
        ("-1", {}, "not_a_number"),
        ("+1", {}, "not_a_number"),
        ("0x10", {}, "not_a_number"),
        ("1 2", {}, "not_a_number"),
        ("", {}, "not_a_number"),
        ("١٢", {}, "not_a_number"),  # Arabic-Indic digits: int() would take them
        ("1" * 41, {"format": "raw", "bits": 128}, "not_a_number"),
        ("xyz", {"format": "raw", "bits": 8, "number_base": 16}, "not_a_number"),
    ],
)
def test_credentials_that_do_not_fit_are_refused(external_id: str, values: dict, reason: str) -> None:
    with pytest.raises(UnfitCredentialError) as refused:
        encode(external_id, settings(**values))
    assert refused.value.reason == reason
    assert external_id.strip() == "" or external_id not in str(refused.value)  # the number is not repeated


@given(st.integers(0, 255), st.integers(0, 65535))
def test_wiegand26_parity_and_fields_round_trip(facility: int, card: int) -> None:
    bits = encode(str(card), settings(facility_code=facility)).bit_string()
    assert len(bits) == 26
    assert bits[:13].count("1") % 2 == 0  # E + bits 2-13: even
    assert bits[13:].count("1") % 2 == 1  # bits 14-25 + O: odd
    assert int(bits[1:9], 2) == facility and int(bits[9:25], 2) == card


@given(st.integers(0, 2**32 - 1))
def test_wiegand34_parity_round_trip(number: int) -> None:
    bits = encode(str(number), settings(format="wiegand34", facility_bits=0)).bit_string()
    assert bits[:17].count("1") % 2 == 0 and bits[17:].count("1") % 2 == 1
    assert int(bits[1:33], 2) == number


def test_helpers() -> None:
    assert pack_bits(0b101, 3) == bytes([0b10100000])
    assert pack_bits(0x1FF, 9) == bytes([0xFF, 0x80])
    assert parse_number("00042", 10) == 42 and parse_number("fF", 16) == 255
