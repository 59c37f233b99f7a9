"""The Secure Channel Base Key (SCBK) file: read bounded, checked, and replaced when the panel sets a key.

The file holds the 16-byte key as 32 hex digits on its first line (``openssl rand -hex 16``). It is
read like every secret file (:func:`engines.files.read_bounded`: a regular file of a bounded size,
never a device or a FIFO) and written atomically with mode 0600. The key never appears in a log line,
an error message, an event or ``…/state``.
"""

from __future__ import annotations

import binascii
import logging
from pathlib import Path

from engines.errors import FileReadError
from engines.files import atomic_writer, read_bounded

from .errors import OsdpError

logger = logging.getLogger(__name__)

#: Largest key file read: the key, a line end and some comment room.
MAX_SCBK_FILE_BYTES = 4096
SCBK_BYTES = 16
#: The key file's content hint in error messages.
KEY_FORM = "the 16-byte key as 32 hex digits on its first line (e.g. `openssl rand -hex 16 > FILE`)"


def parse_scbk(text: str) -> bytes:
    """The key in the first line of ``text`` (blanks around it ignored).

    Raises:
        ValueError: the line is not 32 hex digits (the message never quotes the line).
    """
    first = text.splitlines()[0].strip() if text.strip() else ""
    if len(first) != 2 * SCBK_BYTES:
        raise ValueError(f"its first line has {len(first)} characters, not 32 hex digits")
    try:
        return binascii.unhexlify(first)
    except (binascii.Error, ValueError):
        raise ValueError("its first line is not hex digits (0-9, a-f)") from None


def load_scbk(path: Path, key: str = "osdp.scbk_file") -> bytes:
    """Read the key from ``path`` (the configuration's ``key``, which the messages name).

    Raises:
        OsdpError: the file is missing, unreadable, not a regular file, too large, or malformed.
    """
    try:
        data = read_bounded(path, MAX_SCBK_FILE_BYTES)
    except FileReadError as err:
        raise OsdpError(f"{key}: {err}; write {KEY_FORM}") from None
    try:
        return parse_scbk(data.decode("ascii"))
    except UnicodeDecodeError:
        raise OsdpError(f"{key}: {path} is not ASCII text; write {KEY_FORM}") from None
    except ValueError as err:
        raise OsdpError(f"{key}: {path}: {err}; write {KEY_FORM}") from None


def store_scbk(path: Path, key: bytes) -> None:
    """Replace ``osdp.scbk_file`` with ``key`` (atomically, mode 0600).

    Raises:
        OSError: the file or its folder cannot be written (a read-only systemd credential, say).
        ValueError: ``key`` is not 16 bytes.
    """
    if len(key) != SCBK_BYTES:
        raise ValueError(f"an SCBK is {SCBK_BYTES} bytes, not {len(key)}")
    with atomic_writer(path, mode=0o600) as stream:
        stream.write(key.hex().encode("ascii") + b"\n")
    logger.info("stored the panel's new Secure Channel key in osdp.scbk_file (%s)", path)


__all__ = ["KEY_FORM", "MAX_SCBK_FILE_BYTES", "SCBK_BYTES", "load_scbk", "parse_scbk", "store_scbk"]
