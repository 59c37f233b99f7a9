"""``face-appliance package build | verify``: signed model packages (see :mod:`appliance.updates.package`).

Exit codes: 0 built / verified, 1 refused (the reason code and why on stderr), 2 usage error (a bad
option value, an unusable key or trusted-keys folder).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from engines.registry import KIND_EMBEDDER, MODELS

from .. import __version__
from ..photo_files import PhotoFolderError, photos_in
from ..updates.errors import KeyFileError, PackageError
from .common import EXIT_FAILURE, EXIT_OK, add_config_option, load_cli_config, usage_error
from .keys_cmd import read_passphrase

if TYPE_CHECKING:
    from ..updates.package import VerifiedPackage

_KINDS = [spec.name for spec in MODELS]
_EMBEDDERS = [spec.name for spec in MODELS if spec.kind == KIND_EMBEDDER]


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("package", help="build or verify a signed model package")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    build = actions.add_parser(
        "build",
        help="sign an ONNX model into a package for the appliances",
        description="Check the model (ONNX checker; inputs and outputs must fit the model it replaces), "
        "record reference outputs of the CPU back-end for validation on the appliance, sign the manifest "
        "with an Ed25519 key and write the package atomically. The written package is verified before "
        "the command succeeds.",
    )
    build.add_argument("model", type=Path, metavar="MODEL", help="the ONNX model file")
    build.add_argument("--kind", required=True, choices=_KINDS, help="the registry model it replaces")
    build.add_argument("--name", required=True, help="the model's name, e.g. mobilefacenet")
    build.add_argument("--version", required=True, help="the model's version, e.g. 2 or 2024.05-ft")
    build.add_argument(
        "--release", required=True, type=int, help="release counter (>= 1), above the active one"
    )
    build.add_argument(
        "--key", required=True, type=Path, metavar="KEYFILE", help="the signing key (NAME.key)"
    )
    build.add_argument(
        "--key-passphrase-file", type=Path, default=None, help="passphrase of an encrypted key"
    )
    build.add_argument(
        "-o", "--output", required=True, type=Path, metavar="OUT", help="package file to write"
    )
    build.add_argument("--calibration", type=Path, default=None, help="INT8 calibration cache to include")
    build.add_argument(
        "--reference-images",
        type=Path,
        default=None,
        metavar="DIR",
        help="embedders: photos whose aligned faces become the reference inputs (MTCNN from models.dir)",
    )
    build.add_argument("--no-reference", action="store_true", help="ship no reference inputs and outputs")
    build.add_argument(
        "--atol", type=float, default=None, help="reference tolerance: largest absolute difference"
    )
    build.add_argument("--min-cosine", type=float, default=None, help="reference tolerance: smallest cosine")
    build.add_argument(
        "--min-firmware",
        default=__version__,
        help=f"oldest firmware that may install it (default {__version__})",
    )
    build.add_argument(
        "--rollback",
        action="store_true",
        help="allow installing this release where a higher one was activated (a signed downgrade); "
        "without --rollback-from it goes back one release at most",
    )
    build.add_argument(
        "--rollback-from",
        type=int,
        default=None,
        metavar="RELEASE",
        help="a rollback that replaces exactly this release (the highest activated on the appliances); "
        "implies --rollback, and the package is void once a higher release is activated",
    )
    build.add_argument("--json", action="store_true", help="machine-readable summary")
    add_config_option(build)
    build.set_defaults(handler=_build)

    verify = actions.add_parser(
        "verify",
        help="check a package as an appliance would: signature, hashes, compatibility, release",
        description="Verify PKG without installing it. Exit 0 when it would be accepted, 1 when refused "
        "(the reason code, e.g. bad_signature or not_newer, and why).",
    )
    verify.add_argument("package", type=Path, metavar="PKG")
    verify.add_argument(
        "--trusted",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder of trusted *.pub keys (or one .pub)",
    )
    verify.add_argument(
        "--active-release",
        type=int,
        default=None,
        help="the highest release ever activated on the appliance (anti-rollback; a rollback package "
        "must name it with --rollback-from)",
    )
    verify.add_argument(
        "--firmware-version", default=__version__, help=f"the appliance's firmware (default {__version__})"
    )
    verify.add_argument(
        "--max-size-mb", type=float, default=None, help="largest package accepted in MiB (default 64)"
    )
    verify.add_argument("--json", action="store_true", help="machine-readable result")
    verify.set_defaults(handler=_verify)


# -- output --------------------------------------------------------------------------------------------


def summary_json(package: VerifiedPackage) -> Dict[str, Any]:
    """What ``--json`` prints for an accepted package."""
    return {
        "ok": True,
        "path": str(package.path),
        "size": package.size,
        "key_id": package.key_id,
        "manifest": package.manifest.summary(),
    }


def summary_lines(package: VerifiedPackage) -> List[str]:
    """A human-readable summary of an accepted package."""
    manifest = package.manifest
    lines = [
        f"package {package.path}: ok ({package.size} bytes)",
        f"  model      {manifest.qualified_version} ({manifest.name}), release {manifest.release}"
        + (", rollback allowed" if manifest.rollback else "")
        + (f" from release {manifest.rollback_from}" if manifest.rollback_from is not None else ""),
        f"  signed by  key {package.key_id}",
        f"  firmware   {manifest.min_firmware} or newer",
        f"  created    {manifest.created}",
        f"  inputs     {', '.join(t.describe() for t in manifest.inputs)}",
        f"  outputs    {', '.join(t.describe() for t in manifest.outputs)}",
    ]
    if manifest.embedding_size is not None:
        lines.append(f"  embedding  {manifest.embedding_size} values")
    if manifest.reference is not None:
        tolerances = []
        if manifest.reference.atol is not None:
            tolerances.append(f"atol {manifest.reference.atol:g}")
        if manifest.reference.min_cosine is not None:
            tolerances.append(f"min cosine {manifest.reference.min_cosine:g}")
        lines.append(f"  reference  {', '.join(tolerances)}")
    else:
        lines.append("  reference  none")
    for name, entry in sorted(manifest.files.items()):
        lines.append(f"  file       {name:24} {entry.size:>10} bytes  sha256 {entry.sha256[:16]}…")
    return lines


def _refused(err: PackageError, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": False, "reason": err.reason, "error": str(err)}, indent=2))
    sys.stderr.write(f"refused ({err.reason}): {err}\n")
    return EXIT_FAILURE


# -- commands ------------------------------------------------------------------------------------------


def _build_problems(args: argparse.Namespace) -> Optional[str]:
    from ..updates.manifest import FIRMWARE_PATTERN, LABEL_PATTERN

    for option, value in (("--name", args.name), ("--version", args.version)):
        if not re.match(LABEL_PATTERN, value):
            return f"{option} {value!r}: use letters, digits, '_', '.', '+', '-' (at most 64)"
    if not re.match(FIRMWARE_PATTERN, args.min_firmware):
        return f"--min-firmware {args.min_firmware!r}: use a numeric version such as 0.2.0"
    if args.release < 1:
        return f"--release {args.release}: releases start at 1"
    if args.rollback_from is not None and args.rollback_from <= args.release:
        return f"--rollback-from {args.rollback_from}: a rollback replaces a release above --release {args.release}"
    if not args.model.is_file():
        return f"{args.model} is not a file"
    if args.calibration is not None and not args.calibration.is_file():
        return f"--calibration {args.calibration} is not a file"
    if args.reference_images is not None:
        if args.no_reference:
            return "--reference-images and --no-reference exclude each other"
        if args.kind not in _EMBEDDERS:
            return f"--reference-images is for embedders ({', '.join(_EMBEDDERS)}); {args.kind} uses seeded inputs"
        if not args.reference_images.is_dir():
            return f"--reference-images {args.reference_images} is not a folder"
    if args.min_cosine is not None and not -1.0 <= args.min_cosine <= 1.0:
        return f"--min-cosine {args.min_cosine}: a cosine lies in [-1, 1]"
    if args.atol is not None and args.atol < 0:
        return f"--atol {args.atol}: a tolerance is >= 0"
    return None


def _build(args: argparse.Namespace) -> int:
    problem = _build_problems(args)
    if problem:
        return usage_error(problem)
    from ..updates.keys import load_private_key
    from ..updates.package import aligned_faces, build_package

    try:
        key = load_private_key(args.key, read_passphrase(args.key_passphrase_file))
    except KeyFileError as err:
        return usage_error(str(err))
    faces = None
    if args.reference_images is not None:
        try:
            images = photos_in(args.reference_images)
        except PhotoFolderError as err:
            return usage_error(f"--reference-images: {err}")
        faces = aligned_faces(images, load_cli_config(args).models.dir)
    try:
        package = build_package(
            args.model,
            args.kind,
            args.name,
            args.version,
            args.release,
            key,
            args.output,
            calibration=args.calibration,
            reference_faces=faces,
            reference=not args.no_reference,
            atol=args.atol,
            min_cosine=args.min_cosine,
            min_firmware=args.min_firmware,
            rollback=args.rollback,
            rollback_from=args.rollback_from,
        )
    except PackageError as err:
        return _refused(err, args.json)
    if args.json:
        print(json.dumps(summary_json(package), indent=2))
    else:
        print("\n".join(summary_lines(package)))
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from ..updates.keys import load_trusted_keys
    from ..updates.package import verify_package

    try:
        trusted = load_trusted_keys(args.trusted)
    except KeyFileError as err:
        return usage_error(str(err))
    max_size = None if args.max_size_mb is None else int(args.max_size_mb * 1024 * 1024)
    try:
        package = verify_package(
            args.package,
            trusted,
            active_release=args.active_release,
            firmware_version=args.firmware_version,
            max_size=max_size,
        )
    except PackageError as err:
        return _refused(err, args.json)
    if args.json:
        print(json.dumps(summary_json(package), indent=2))
    else:
        print("\n".join(summary_lines(package)))
    return EXIT_OK


__all__ = ["add_parser", "summary_json", "summary_lines"]
