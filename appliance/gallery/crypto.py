"""Encryption of biometric data at rest: the gallery key and AES-256-GCM sealing.

Each sealed value is ``nonce (12 bytes) ‖ ciphertext ‖ tag``, with associated data naming what the
value is and whom it belongs to, so a blob copied into another row or column does not open.

The key is 32 random bytes in a file that only its owner may read (mode 0600), or a systemd
credential. A missing key is created only for a gallery that holds nothing yet; a gallery with data
and no key, or with another key, is an error — a silently new key would make every template
unreadable.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engines.errors import FileReadError
from engines.files import read_bounded, write_new_file

from .errors import GalleryKeyError, GalleryStoreError

logger = logging.getLogger(__name__)

KEY_BYTES = 32
#: Largest key file read (raw, hex or base64 key and a line end fit many times over).
MAX_KEY_FILE_BYTES = 4 * 1024
NONCE_BYTES = 12
TAG_BYTES = 16
#: A sealed value is this much longer than its plaintext (nonce and tag).
SEAL_OVERHEAD_BYTES = NONCE_BYTES + TAG_BYTES


def _under_credentials(path: Path) -> bool:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return bool(directory) and Path(directory) in path.resolve().parents


def read_key(path: Path) -> bytes:
    """Read a 32-byte key: raw bytes, or 64 hex digits, or base64, in the file.

    Raises:
        GalleryKeyError: unreadable, readable by group or others (outside systemd's credential
            directory), or not a 32-byte key.
    """
    try:
        data = read_bounded(path, MAX_KEY_FILE_BYTES)
        mode = path.stat().st_mode
    except FileReadError as err:
        raise GalleryKeyError(f"the gallery key {err}; check gallery.key_file") from None
    except OSError as err:
        raise GalleryKeyError(f"cannot read the gallery key {path}: {err.strerror}") from err
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and not _under_credentials(path):
        raise GalleryKeyError(
            f"the gallery key {path} is readable by other users (mode {stat.filemode(mode)}); chmod 600 {path}"
        )
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            key = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise GalleryKeyError(
        f"{path} does not hold a {KEY_BYTES}-byte key (found {len(data)} bytes; raw, hex or base64 accepted)"
    )


def create_key(path: Path) -> bytes:
    """Create a new random key file with mode 0600; refuses to overwrite an existing file.

    The file appears whole or not at all (:func:`engines.files.write_new_file`): a first start
    killed while it creates the key leaves no key, and the next start creates one, instead of an
    empty key file that every later start refuses.

    Raises:
        GalleryKeyError: the file exists or cannot be written.
    """
    key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_new_file(path, key, 0o600)
    except FileExistsError as err:
        raise GalleryKeyError(_existing_key_message(path)) from err
    except OSError as err:
        raise GalleryKeyError(f"cannot create the gallery key {path}: {err.strerror}") from err
    logger.info("created a new gallery key at %s; back it up: the gallery cannot be read without it", path)
    return key


def _existing_key_message(path: Path) -> str:
    """Why a key cannot be created where something already is: a key, or a link that leads nowhere."""
    if path.is_symlink() and not path.exists():
        return (
            f"the gallery key {path} is a symlink loop or a link to a missing file, not a regular file; "
            "point gallery.key_file at the key file (or remove the link to create a new key)"
        )
    return f"refusing to overwrite the existing key {path}"


class Sealer:
    """AES-256-GCM with the gallery key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise GalleryKeyError(f"the gallery key must be {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """Encrypt ``plaintext`` bound to ``context`` (associated data)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode("utf-8"))

    def open(self, sealed: bytes, context: str) -> bytes:
        """Decrypt a value sealed for ``context``.

        Raises:
            GalleryStoreError: the value was altered, belongs to another context, or another key.
        """
        if len(sealed) < SEAL_OVERHEAD_BYTES:
            raise GalleryStoreError(
                f"sealed value for {context.split(':', maxsplit=1)[0]} is truncated ({len(sealed)} bytes)"
            )
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context.encode("utf-8"))
        except InvalidTag:
            raise GalleryStoreError(
                f"a sealed {context.split(':', maxsplit=1)[0]} does not decrypt: altered, moved, or another key"
            ) from None
