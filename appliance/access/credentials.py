"""A person's cards and PINs, and what a reader at the door presents: the second factor of a passage
(:mod:`appliance.access.second_factor`).

**Cards** are kept as canonical text, one form per card whatever the reader:

* ``w26:F:C`` — a 26-bit Wiegand card (HID H10301): facility code ``F`` (0–255), card number ``C``
  (0–65 535), the numbers printed on most proximity cards;
* ``w34:F:C`` — a 34-bit Wiegand card (HID H10306): facility ``F`` and card ``C``, 16 bits each;
* ``raw:N:HEX`` — any other read: ``N`` bits (1–128), ``HEX`` their value, most significant bit first
  (a smart card's serial number, a 37-bit format), lower-case, without leading zeros beyond one digit.

A 26- or 34-bit read whose parity bits are wrong is a misread and is refused, never stored as raw.

**PINs** (4–8 digits) are kept only as salted scrypt hashes (``scrypt$14$8$1$SALT$HASH``, base64).
A PIN's few digits cannot resist a search of every value once its hash is read, so the hash guards
against a glance at a row or a log, not against a stolen store: the store's own file permissions and
the fleet's encryption do that. A *duress PIN* opens the door like the PIN and raises a silent alarm.

Nothing here logs a card number or a PIN.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional

from typing_extensions import Literal

from .errors import PolicyError

#: Cards one identity may hold.
MAX_CARDS = 8
#: Shortest and longest PIN, in digits.
PIN_DIGITS = (4, 8)
#: Longest raw card read, in bits (a 128-bit serial number).
MAX_CARD_BITS = 128
#: scrypt's cost as ``log2(n)``, ``r``, ``p``: 4 MiB and about 13 ms on a 2-core x86 host, a few times
#: that on a Jetson's ARM core — paid once per PIN entered, on the pipeline thread.
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 12, 8, 1
#: Highest cost a stored hash may name (a hostile fleet record must not make one check take minutes).
MAX_SCRYPT_LOG2_N = 16

CredentialKind = Literal["card", "pin"]

_CARD = re.compile(r"^(?:(w26|w34):(\d{1,5}):(\d{1,5})|raw:(\d{1,3}):([0-9a-f]{1,32}))\Z")
_HASH = re.compile(
    r"^scrypt\$(\d{1,2})\$(\d{1,2})\$(\d{1,2})\$([A-Za-z0-9+/=]{4,64})\$([A-Za-z0-9+/=]{44})\Z"
)


@dataclass(frozen=True)
class PresentedCredential:
    """A card or a PIN presented at a reader at the door.

    Attributes:
        kind: ``card`` or ``pin``.
        value: a card's canonical text (:func:`card_from_bits`), or a PIN's digits — never logged.
        reader: the reader's id (``credential_reader.id``).
        at: when it was presented, Unix seconds.
    """

    kind: CredentialKind
    value: str
    reader: str
    at: float

    def __repr__(self) -> str:  # the value stays out of logs and tracebacks
        return f"PresentedCredential(kind={self.kind!r}, reader={self.reader!r}, at={self.at!r})"


def _parity(value: int) -> int:
    return bin(value).count("1") & 1


def card_from_bits(bits: int, data: bytes) -> str:
    """The canonical text of a card read: ``bits`` bits of ``data``, most significant bit first (as
    OSDP's ``osdp_RAW`` and a Wiegand line carry them).

    Raises:
        PolicyError: no bits, more than :data:`MAX_CARD_BITS`, ``data`` too short for ``bits``, or a 26-
            or 34-bit read whose parity bits are wrong (a misread).
    """
    if not 1 <= bits <= MAX_CARD_BITS:
        raise PolicyError(f"a card read of {bits} bits (expected 1–{MAX_CARD_BITS})")
    size = (bits + 7) // 8
    if len(data) < size:
        raise PolicyError(f"a card read of {bits} bits carries {len(data)} bytes (needs {size})")
    value = int.from_bytes(bytes(data[:size]), "big") >> (size * 8 - bits)
    if bits in (26, 34):
        payload_bits = bits - 2
        payload = (value >> 1) & ((1 << payload_bits) - 1)
        half = payload_bits // 2
        first, second = payload >> half, payload & ((1 << half) - 1)
        even, odd = value >> (bits - 1), value & 1
        if _parity(first) != even or _parity(second) == odd:
            raise PolicyError(f"a {bits}-bit card read with wrong parity (a misread): present the card again")
        card_bits = 16
        return f"w{bits}:{payload >> card_bits}:{payload & ((1 << card_bits) - 1)}"
    return f"raw:{bits}:{value:x}"


def parse_card(text: object) -> str:
    """A card as an operator or a record gives it, checked and in canonical form.

    Raises:
        PolicyError: not one of the forms of the module documentation, or a number out of range.
    """
    if not isinstance(text, str) or len(text) > 48:
        raise PolicyError(f"a card must be text such as w26:7:12345, got {text!r:.60}")
    match = _CARD.match(text.strip().lower())
    if match is None:
        raise PolicyError(
            f"card {text!r:.60} is not w26:FACILITY:CARD, w34:FACILITY:CARD or raw:BITS:HEX "
            "(e.g. w26:7:12345)"
        )
    wiegand, facility, card, bits, digits = match.groups()
    if wiegand:
        if int(facility) > (255 if wiegand == "w26" else 65535) or int(card) > 65535:
            limit = "0–255" if wiegand == "w26" else "0–65535"
            raise PolicyError(f"card {text!r:.60}: facility {limit} and card number 0–65535")
        return f"{wiegand}:{int(facility)}:{int(card)}"
    count, value = int(bits), int(digits, 16)
    if not 1 <= count <= MAX_CARD_BITS or value >> count:
        raise PolicyError(f"card {text!r:.60}: a value of {count} bits (1–{MAX_CARD_BITS})")
    return f"raw:{count}:{value:x}"


def check_pin(pin: object) -> str:
    """``pin`` when it is 4–8 ASCII digits.

    Raises:
        PolicyError: anything else (the message never repeats the PIN).
    """
    low, high = PIN_DIGITS
    if not isinstance(pin, str) or not low <= len(pin) <= high or not all("0" <= c <= "9" for c in pin):
        raise PolicyError(f"a PIN is {low}–{high} digits")
    return pin


def _scrypt(pin: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, n=1 << log2_n, r=r, p=p, dklen=32, maxmem=256 << 20)


def hash_pin(pin: str, salt: Optional[bytes] = None) -> str:
    """The stored form of ``pin``: ``scrypt$LOG2N$R$P$SALT$HASH`` with a fresh 16-byte salt.

    Raises:
        PolicyError: not a PIN (:func:`check_pin`).
    """
    salt = os.urandom(16) if salt is None else salt
    digest = _scrypt(check_pin(pin), salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_LOG2_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def check_pin_hash(text: object, what: str = "pin") -> str:
    """``text`` when it is a stored PIN hash of :func:`hash_pin`'s form with a bounded cost.

    Raises:
        PolicyError: anything else, named with ``what``.
    """
    match = _HASH.match(text) if isinstance(text, str) else None
    if match is None:
        raise PolicyError(f"{what} must be a PIN hash scrypt$LOG2N$R$P$SALT$HASH (set a PIN to make one)")
    log2_n, r, p = (int(part) for part in match.groups()[:3])
    if not (10 <= log2_n <= MAX_SCRYPT_LOG2_N and 1 <= r <= 16 and 1 <= p <= 4):
        raise PolicyError(f"{what}: scrypt cost {log2_n}/{r}/{p} is out of bounds")
    return text  # type: ignore[return-value]


def verify_pin(pin: str, stored: Optional[str]) -> bool:
    """Whether ``pin`` is the PIN ``stored`` was made from (``False`` for no hash or a malformed one)."""
    if stored is None:
        return False
    try:
        check_pin(pin)
        check_pin_hash(stored)
    except PolicyError:
        return False
    _, log2_n, r, p, salt, digest = stored.split("$")
    computed = _scrypt(pin, base64.b64decode(salt), int(log2_n), int(r), int(p))
    return hmac.compare_digest(computed, base64.b64decode(digest))


class CredentialInbox:
    """Cards and PINs on their way from a reader's thread to the pipeline thread: bounded, never
    blocking the reader; what finds no room is refused, and the reader counts it as dropped (the
    person presents it again).

    Args:
        capacity: credentials held at most between two turns of the pipeline.
        wake: called after each credential queued (the pipeline thread's wake-up, so a PIN does not
            wait for the next frame).
    """

    def __init__(self, capacity: int = 16, wake: Optional[Callable[[], None]] = None) -> None:
        self._queue: Deque[PresentedCredential] = deque()
        self._capacity = capacity
        self._wake = wake
        self._lock = threading.Lock()

    def offer(self, credential: PresentedCredential) -> bool:
        """Queue one credential (any thread); ``False`` when the inbox is full."""
        with self._lock:
            if len(self._queue) >= self._capacity:
                return False  # the reader counts it
            self._queue.append(credential)
        if self._wake is not None:
            self._wake()
        return True

    def drain(self) -> List[PresentedCredential]:
        """Every queued credential, oldest first (the pipeline thread)."""
        with self._lock:
            taken = list(self._queue)
            self._queue.clear()
        return taken


__all__ = [
    "MAX_CARDS",
    "PIN_DIGITS",
    "CredentialInbox",
    "PresentedCredential",
    "card_from_bits",
    "check_pin",
    "check_pin_hash",
    "hash_pin",
    "parse_card",
    "verify_pin",
]
