"""The ``face-appliance`` command line: one entry point, one sub-command per job.

Exit codes: 0 success, 1 failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from engines.errors import EngineError, ModelRegistryError

from .. import __version__
from ..access.errors import PolicyError
from ..errors import ApplianceError, ConfigError
from ..logs import setup_logging
from . import (
    access_cmd,
    calibrate_cmd,
    config_cmd,
    doctor_cmd,
    engines_cmd,
    fleet_cmd,
    gallery_cmd,
    keys_cmd,
    models_cmd,
    package_cmd,
    push_cmd,
    run_cmd,
    vision_cmd,
)
from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK

logger = logging.getLogger(__name__)

_COMMANDS = (
    run_cmd,
    config_cmd,
    models_cmd,
    vision_cmd,
    gallery_cmd,
    access_cmd,
    fleet_cmd,
    doctor_cmd,
    keys_cmd,
    package_cmd,
    engines_cmd,
    push_cmd,
    calibrate_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="face-appliance",
        description="Face-recognition access-control appliance (Jetson / CPU).",
    )
    parser.add_argument("--version", action="version", version=f"face-appliance {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: the configuration's logging.level, else INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "INFO")
    try:
        return int(args.handler(args))
    except (ConfigError, ModelRegistryError, PolicyError) as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_CONFIG
    except (ApplianceError, EngineError) as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "build_parser", "main"]
