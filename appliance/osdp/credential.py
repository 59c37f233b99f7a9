"""A person's ``external_id`` as OSDP card data: Wiegand 26 / 34 bits with parity, or raw bits.

Pure functions, no I/O. The number is never truncated: a credential that does not fit its format is
refused with :class:`UnfitCredentialError`, and the caller refuses that card read.

Bit layouts (bit 1 is sent first)::

    wiegand26  E FFFFFFFF CCCCCCCCCCCCCCCC O           HID H10301
               E: even parity over bits 2-13; F: facility code (8 bits);
               C: card number (16 bits); O: odd parity over bits 14-25
    wiegand34  E DDDDDDDDDDDDDDDD DDDDDDDDDDDDDDDD O   D = facility (facility_bits) then card number
               E: even parity over data bits 1-16; O: odd parity over data bits 17-32
               (facility_bits 16: HID H10306; 0: a 32-bit card number; 8: 8-bit site + 24-bit card)
    raw        the number in `bits` bits, no parity

OSDP carries the bits most significant first, packed from the top bit of the first byte, the last
byte padded with zeros (``osdp_RAW``: format 1 "Wiegand" for the Wiegand layouts, 0 "not specified"
for raw); the card read's length is the bit count.

Example: facility 7, card 12345 in wiegand26 → ``1 00000111 0011000000111001 1`` →
``83 98 1C C0`` (26 bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .settings import DEFAULT_FACILITY_BITS, WIEGAND_DATA_BITS, OsdpCredentialConfig

#: Longest external_id taken as a number (a 128-bit number has 39 decimal digits).
MAX_DIGITS = 40


class UnfitCredentialError(ValueError):
    """An ``external_id`` that this format cannot carry as it is (never sent truncated).

    Attributes:
        reason: a short code: ``not_a_number``, ``too_large``.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class CardData:
    """The card data of one card read.

    Attributes:
        wiegand: the Wiegand layout (OSDP format 1) rather than unspecified raw bits (format 0).
        bits: how many bits are meaningful.
        data: ``ceil(bits / 8)`` bytes, most significant bit first, zero-padded at the end.
    """

    wiegand: bool
    bits: int
    data: bytes

    def bit_string(self) -> str:
        """The bits as ``0``/``1`` characters, first bit first (for tests and DEBUG logs)."""
        return "".join(format(byte, "08b") for byte in self.data)[: self.bits]


def parse_number(external_id: str, base: int) -> int:
    """``external_id`` as a non-negative integer in ``base`` (10 or 16; surrounding blanks ignored).

    Raises:
        UnfitCredentialError: not digits of that base (signs, separators, ``0x`` and empty text included).
    """
    text = external_id.strip()
    digits = "0123456789" if base == 10 else "0123456789abcdefABCDEF"
    if not text or len(text) > MAX_DIGITS or any(char not in digits for char in text):
        kind = "decimal" if base == 10 else "hexadecimal"
        raise UnfitCredentialError(
            "not_a_number", f"the external id is not a {kind} number of at most {MAX_DIGITS} digits"
        )
    return int(text, base)


def parity(value: int) -> int:
    """1 when ``value`` has an odd number of one bits, else 0."""
    return bin(value).count("1") & 1


def pack_bits(value: int, bits: int) -> bytes:
    """``value`` as ``bits`` bits, most significant first, left-justified in ``ceil(bits/8)`` bytes."""
    size = (bits + 7) // 8
    return (value << (size * 8 - bits)).to_bytes(size, "big")


def wiegand_frame(data: int, data_bits: int) -> Tuple[int, int]:
    """``(frame, length)``: ``data`` between a leading even and a trailing odd parity bit.

    The even parity bit covers the first half of the data bits, the odd one the second half (the
    26-bit halves are 12 bits each, the 34-bit ones 16).
    """
    half = data_bits // 2
    first, second = data >> (data_bits - half), data & ((1 << (data_bits - half)) - 1)
    even = parity(first)  # makes the count of ones in (E + first half) even
    odd = 1 - parity(second)  # makes the count of ones in (second half + O) odd
    return (even << (data_bits + 1)) | (data << 1) | odd, data_bits + 2


def encode(external_id: str, settings: OsdpCredentialConfig) -> CardData:
    """The card data for ``external_id`` under ``settings``.

    Raises:
        UnfitCredentialError: not a number in ``settings.number_base``, or too large for the card-number
            field (``2**16 - 1`` in wiegand26).
    """
    number = parse_number(external_id, settings.number_base)
    if settings.format == "raw":
        bits = settings.bits or 0
        if number >= 1 << bits:
            raise UnfitCredentialError(
                "too_large", f"the external id needs more than the {bits} raw bits configured"
            )
        return CardData(False, bits, pack_bits(number, bits))
    data_bits = WIEGAND_DATA_BITS[settings.format]
    facility_bits = (
        settings.facility_bits
        if settings.facility_bits is not None
        else DEFAULT_FACILITY_BITS[settings.format]
    )
    card_bits = data_bits - facility_bits
    if number >= 1 << card_bits:
        raise UnfitCredentialError(
            "too_large",
            f"the external id is larger than the {card_bits}-bit card number of {settings.format} "
            f"(at most {(1 << card_bits) - 1})",
        )
    frame, length = wiegand_frame(settings.facility_code << card_bits | number, data_bits)
    return CardData(True, length, pack_bits(frame, length))


__all__ = [
    "CardData",
    "UnfitCredentialError",
    "encode",
    "pack_bits",
    "parity",
    "parse_number",
    "wiegand_frame",
]
