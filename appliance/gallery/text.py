"""Names and external ids: what a person's text may hold, and how it is shown on a terminal.

A name reaches the operator's terminal (``gallery list``, ``identify``, ``enroll``): an ESC sequence
in it could recolour or rewrite the screen, a carriage return could print a fake row over it, and a
right-to-left override could show "ada" as another name. So every way in (the CLI, the MQTT
``enroll`` command, a bundle import, and the store itself) refuses such characters with
:func:`check_text`, and every way out escapes whatever older data may already hold with
:func:`printable`.

Refused: C0 and C1 controls and DEL (Unicode category ``Cc``: U+0000–U+001F, U+007F–U+009F), the
bidirectional formatting characters (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), the
line and paragraph separators (U+2028, U+2029) and lone surrogates. Every other character — letters
of any script, combining marks, zero-width joiners — is allowed.

This module imports nothing heavy: :mod:`appliance.commands` uses it to validate MQTT payloads.
"""

from __future__ import annotations

import unicodedata
from typing import Optional

from .errors import IdentityError

#: Bidirectional formatting characters: marks, embeddings, overrides and isolates.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Characters that break a line on some displays without being C0 controls.
LINE_SEPARATORS = frozenset("\u2028\u2029")
MAX_NAME = 200
MAX_EXTERNAL_ID = 200


def is_forbidden(char: str) -> bool:
    """Whether one character may not appear in a name or an external id (see the module docstring)."""
    if char in BIDI_CONTROLS or char in LINE_SEPARATORS:
        return True
    return unicodedata.category(char) in ("Cc", "Cs")


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def printable(text: Optional[str]) -> str:
    """``text`` with every forbidden character written as a ``\\xNN`` / ``\\uNNNN`` escape.

    For showing names on a terminal: data stored before :func:`check_text` existed may hold
    anything. ``None`` is shown as an empty string.
    """
    if not text:
        return ""
    return "".join(_escape(char) if is_forbidden(char) else char for char in text)


def _first_forbidden(text: str) -> Optional[int]:
    return next((position for position, char in enumerate(text) if is_forbidden(char)), None)


def _describe(char: str) -> str:
    label = unicodedata.name(char, "") or {
        "\x1b": "ESCAPE",
        "\r": "CARRIAGE RETURN",
        "\n": "LINE FEED",
        "\t": "TAB",
        "\x00": "NUL",
    }.get(char, "a control character")
    return f"U+{ord(char):04X} {label}"


def text_problem(value: str, what: str, limit: int) -> Optional[str]:
    """Why ``value`` cannot be a ``what`` (a name, an external id), or ``None`` when it can."""
    if not value.strip():
        return f"{what} is empty or only blanks"
    if len(value) > limit:
        return f"{what} has {len(value)} characters, more than the {limit} allowed"
    position = _first_forbidden(value)
    if position is not None:
        return (
            f"{what} '{printable(value)}' holds {_describe(value[position])} at position {position + 1}; "
            f"control characters and bidirectional overrides are not allowed (they would reach the "
            f"operator's terminal): retype it without them"
        )
    return None


def check_text(value: str, what: str = "name", limit: int = MAX_NAME) -> str:
    """Return ``value`` when it may be stored as a ``what``, else raise :class:`IdentityError`."""
    problem = text_problem(value, what, limit)
    if problem is not None:
        raise IdentityError(problem)
    return value


def check_name(name: str) -> str:
    """A person's name: 1–200 characters, not only blanks, nothing :func:`is_forbidden`."""
    return check_text(name, "name", MAX_NAME)


def check_external_id(external_id: Optional[str]) -> Optional[str]:
    """An external id (a badge number): like a name, or ``None``."""
    if external_id is None:
        return None
    return check_text(external_id, "external id", MAX_EXTERNAL_ID)


__all__ = [
    "BIDI_CONTROLS",
    "check_external_id",
    "check_name",
    "check_text",
    "is_forbidden",
    "printable",
    "text_problem",
]
