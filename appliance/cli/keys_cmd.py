"""``face-appliance keys generate | id``: the Ed25519 keys that sign model packages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from engines.errors import FileReadError

from ..config_load import read_secret_file
from ..updates.errors import KeyFileError
from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("keys", help="create and inspect the keys that sign model packages")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    generate = actions.add_parser(
        "generate",
        help="create an Ed25519 key pair: NAME.key (private, mode 0600) and NAME.pub (to trust)",
        description="Create DIR/NAME.key, the private signing key (PEM PKCS#8, mode 0600; keep it on the "
        "build machine), and DIR/NAME.pub, the public key to copy into each appliance's trusted keys "
        "folder (updates.trusted_keys_dir). Existing files are never overwritten.",
    )
    generate.add_argument(
        "--dir", type=Path, required=True, help="folder for the two files (created if missing)"
    )
    generate.add_argument("--name", required=True, help="file name stem: letters, digits, '_', '.', '-'")
    generate.add_argument(
        "--passphrase-file",
        type=Path,
        default=None,
        help="encrypt the private key with the passphrase in this file (first line)",
    )
    generate.set_defaults(handler=_generate)

    identify = actions.add_parser(
        "id", help="print the key id of public (.pub) or private (.key) key files, as packages name them"
    )
    identify.add_argument("files", nargs="+", type=Path, metavar="KEYFILE")
    identify.add_argument(
        "--passphrase-file", type=Path, default=None, help="passphrase of an encrypted .key"
    )
    identify.set_defaults(handler=_identify)


def read_passphrase(path: Optional[Path]) -> Optional[bytes]:
    """The first line of ``path`` as bytes, or ``None`` without a file.

    Raises:
        KeyFileError: the file cannot be read or its first line is empty.
    """
    if path is None:
        return None
    try:
        return read_secret_file(path).encode("utf-8")
    except FileReadError as err:
        raise KeyFileError(f"the passphrase file (--passphrase-file) {err}") from None


def _generate(args: argparse.Namespace) -> int:
    from ..updates.keys import generate_keypair

    try:
        passphrase = read_passphrase(args.passphrase_file)
    except KeyFileError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_CONFIG
    pair = generate_keypair(args.dir, args.name, passphrase)
    print(
        f"signing key  {pair.private_path} (mode 0600{', encrypted' if passphrase else ''}; keep it secret)"
    )
    print(f"public key   {pair.public_path} (copy it into updates.trusted_keys_dir on each appliance)")
    print(f"key id       {pair.key_id}")
    return EXIT_OK


def _identify(args: argparse.Namespace) -> int:
    from ..updates.keys import key_id, load_private_key, load_public_key

    failed = False
    for path in args.files:
        try:
            if path.suffix == ".key":
                public = load_private_key(path, read_passphrase(args.passphrase_file)).public_key()
            else:
                public = load_public_key(path)
        except KeyFileError as err:
            sys.stderr.write(f"error: {err}\n")
            failed = True
            continue
        print(f"{key_id(public)}  {path}")
    return EXIT_FAILURE if failed else EXIT_OK


__all__ = ["add_parser", "read_passphrase"]
