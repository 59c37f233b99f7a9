"""``face-appliance doctor``: check the installation and say what to do about what is missing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Optional

from ..config_load import default_config
from ..doctor import FAIL, OK, WARN, Check, run_checks
from ..errors import ConfigError
from .common import EXIT_FAILURE, EXIT_OK, add_config_option, config_path, load_cli_config

_LABELS = {OK: "[ ok ]", WARN: "[warn]", FAIL: "[FAIL]"}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check config, models, back-ends and storage; run each model once",
        description="Check everything the appliance needs and print what is missing with what to do. "
        "Exit 0 when nothing failed, 1 otherwise.",
    )
    parser.add_argument("--no-smoke", action="store_true", help="skip loading and running the models")
    parser.add_argument(
        "--parity-images",
        type=Path,
        default=None,
        metavar="DIR",
        help="photos with faces for the TensorRT-vs-CPU parity check (where TensorRT runs); default: "
        "synthetic crops, embeddings only",
    )
    add_config_option(parser)
    parser.set_defaults(handler=_doctor)


def _print(check: Check) -> None:
    line = f"{_LABELS[check.status]} {check.subject}: {check.detail}"
    if check.hint and check.status != OK:
        line += f"\n       → {check.hint}"
    print(line)


def _parity_images(directory: Optional[Path]) -> List[Path]:
    """The photos in ``directory`` (sorted; at most 8, a few are enough), none without a folder."""
    if directory is None:
        return []
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    found = sorted(path for path in Path(directory).rglob("*") if path.suffix.lower() in suffixes)
    return found[:8]


def _doctor(args: argparse.Namespace) -> int:
    failed = False
    try:
        config = load_cli_config(args)
        _print(Check(OK, "config", f"{config_path(args)} valid"))
    except ConfigError as err:
        failed = True
        for issue in err.issues:
            _print(Check(FAIL, "config", str(issue), "fix it, then: face-appliance config check"))
        print("       (continuing with the default configuration)")
        config = default_config()
    for check in run_checks(
        config, smoke=not args.no_smoke, parity_images=_parity_images(args.parity_images)
    ):
        _print(check)
        failed = failed or check.status == FAIL
    sys.stdout.flush()
    print("doctor: problems found" if failed else "doctor: all checks passed")
    return EXIT_FAILURE if failed else EXIT_OK
