"""Ed25519 keys that sign model packages, and the trusted keys that verify them.

A key pair is two PEM files: ``NAME.key`` (the private key, PKCS#8, mode 0600, optionally encrypted
with a passphrase) stays on the build machine; ``NAME.pub`` (SubjectPublicKeyInfo) goes into the
appliance's trusted-keys folder. A key is named in signatures by its *key id*: the first 16 hex digits
of the sha256 of the raw 32-byte public key, so renaming a ``.pub`` file changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from engines.errors import FileReadError
from engines.files import fsync_dir, read_bounded, write_new_file

from .errors import KeyFileError

logger = logging.getLogger(__name__)

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
KEY_ID_HEX = 16
#: a key file is a few hundred bytes; anything much larger is not one
MAX_KEY_FILE_BYTES = 16 * 1024
KEY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class KeyPair:
    """Where :func:`generate_keypair` wrote a key pair, and its key id."""

    private_path: Path
    public_path: Path
    key_id: str


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key id: the first 16 hex digits of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def generate_keypair(
    directory: Union[str, os.PathLike], name: str, passphrase: Optional[bytes] = None
) -> KeyPair:
    """Create ``DIR/NAME.key`` (private, mode 0600) and ``DIR/NAME.pub`` (public).

    Args:
        directory: created if missing.
        name: letters, digits, ``_ . -``; at most 64 characters.
        passphrase: encrypt the private key with it (PKCS#8 with the best available cipher);
            ``None`` leaves it unencrypted (protect it with the file mode and where it is kept).

    Raises:
        KeyFileError: a bad name, either file already exists (nothing is overwritten), or the folder
            cannot be written.
    """
    if not KEY_NAME_PATTERN.match(name):
        raise KeyFileError(
            f"key name {name!r} is not allowed: use letters, digits, '_', '.', '-' (at most 64, not starting "
            "with a punctuation mark)"
        )
    folder = Path(directory)
    private_path = folder / f"{name}{PRIVATE_SUFFIX}"
    public_path = folder / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise KeyFileError(
                f"refusing to overwrite {path}; choose another --name or move the old key away"
            )
    private_key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_new_file(private_path, private_pem, 0o600)
        try:
            write_new_file(public_path, public_pem, 0o644)
        except BaseException:
            private_path.unlink()
            raise
    except FileExistsError as err:
        raise KeyFileError(
            f"refusing to overwrite {err.filename or public_path}; it appeared meanwhile"
        ) from err
    except OSError as err:
        raise KeyFileError(f"cannot write a key pair into {folder}: {err.strerror or err}") from err
    fsync_dir(folder)
    identifier = key_id(private_key.public_key())
    logger.info(
        "created signing key %s (key id %s) and its public key %s", private_path, identifier, public_path
    )
    return KeyPair(private_path, public_path, identifier)


def _read_key_file(path: Path, what: str) -> bytes:
    """A key file's bytes, through the bounded regular-file reader (a FIFO or a device is refused)."""
    try:
        return read_bounded(path, MAX_KEY_FILE_BYTES)
    except FileReadError as err:
        raise KeyFileError(f"the {what} {err}") from None


def load_private_key(path: Union[str, os.PathLike], passphrase: Optional[bytes] = None) -> Ed25519PrivateKey:
    """Read a signing key written by :func:`generate_keypair` (PEM PKCS#8, or raw-PEM OpenSSL output).

    Raises:
        KeyFileError: unreadable, readable by group or others, encrypted without (or with the wrong)
            passphrase, or not an Ed25519 private key (the message says what it is instead).
    """
    key_path = Path(path)
    data = _read_key_file(key_path, "signing key")
    mode = key_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"the signing key {key_path} is readable by other users (mode {stat.filemode(mode)}); "
            f"chmod 600 {key_path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as err:  # encrypted without a passphrase, or a passphrase for a plain key
        hint = "give its passphrase" if not passphrase else "it is not encrypted: give no passphrase"
        raise KeyFileError(f"cannot open the signing key {key_path}: {err}; {hint}") from err
    except ValueError as err:
        raise KeyFileError(
            f"{key_path} is not a PEM private key or the passphrase is wrong ({err}); create one with "
            "`face-appliance keys generate`"
        ) from err
    except Exception as err:  # cryptography raises UnsupportedAlgorithm for exotic key types
        raise KeyFileError(f"{key_path}: unsupported private key ({err})") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{key_path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 private key; packages are "
            "signed with Ed25519 (`face-appliance keys generate`)"
        )
    return key


def load_public_key(path: Union[str, os.PathLike]) -> Ed25519PublicKey:
    """Read one trusted key (PEM SubjectPublicKeyInfo, as in ``NAME.pub``).

    Raises:
        KeyFileError: unreadable, not PEM, or not an Ed25519 public key.
    """
    key_path = Path(path)
    data = _read_key_file(key_path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as err:
        hint = " (this is a private key: trust its .pub file)" if b"PRIVATE KEY" in data else ""
        raise KeyFileError(f"{key_path} is not a PEM public key{hint}: {err}") from err
    except Exception as err:
        raise KeyFileError(f"{key_path}: unsupported public key ({err})") from err
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            f"{key_path} holds a {type(key).__name__.lstrip('_')}, not an Ed25519 public key; only Ed25519 "
            "keys can be trusted"
        )
    return key


def load_trusted_keys(
    source: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]],
) -> Dict[str, Ed25519PublicKey]:
    """The trusted keys by key id.

    Args:
        source: a folder (every ``*.pub`` file in it; other files are ignored) or a list of ``.pub``
            files.

    Raises:
        KeyFileError: the folder cannot be listed, a ``.pub`` file is unreadable or not an Ed25519
            public key. An empty folder gives an empty mapping (every package is then refused with
            ``unknown_key``); a bad file is an error rather than skipped, so a typo is noticed.
    """
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if folder.is_dir():
            try:
                paths = sorted(p for p in folder.iterdir() if p.suffix == PUBLIC_SUFFIX)
            except OSError as err:
                raise KeyFileError(f"cannot list the trusted keys folder {folder}: {err.strerror}") from err
        elif folder.exists():
            paths = [folder]
        else:
            raise KeyFileError(f"the trusted keys folder {folder} does not exist")
    else:
        paths = [Path(p) for p in source]
    keys: Dict[str, Ed25519PublicKey] = {}
    for path in paths:
        key = load_public_key(path)
        keys[key_id(key)] = key
    if not keys:
        logger.warning("no trusted keys in %s: every package will be refused", source)
    return keys


__all__ = [
    "KeyPair",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
]
