"""Helpers shared by the sub-commands: the --config option and loading the configuration."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..config import DEFAULT_CONFIG_PATH, ApplianceConfig
from ..config_load import default_config, load_config
from ..logs import setup_logging
from . import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK

logger = logging.getLogger(__name__)

CONFIG_ENV = "FACE_APPLIANCE_CONFIG"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        default=None,
        help=f"configuration file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )


def config_path(args: argparse.Namespace) -> Path:
    """The configuration file named by --config, the environment, or the default path."""
    if getattr(args, "config", None) is not None:
        return Path(args.config)
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def config_named(args: argparse.Namespace) -> bool:
    """Whether the user named a configuration file (option or environment)."""
    return getattr(args, "config", None) is not None or bool(os.environ.get(CONFIG_ENV))


def load_cli_config(args: argparse.Namespace, required: bool = False) -> ApplianceConfig:
    """Load the configuration for a sub-command.

    Without --config, a missing default file means "use the defaults" unless ``required``.

    Raises:
        ConfigError: the file is missing (when named or required) or invalid.
    """
    path = config_path(args)
    if not required and not config_named(args) and not path.exists():
        logger.info("no configuration at %s; using the defaults", path)
        config = default_config()
    else:
        config = load_config(path)
    if getattr(args, "log_level", None) is None:
        setup_logging(config.logging.level)
    return config


__all__ = [
    "CONFIG_ENV",
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "add_config_option",
    "config_named",
    "config_path",
    "load_cli_config",
    "no_face_problem",
]


def usage_error(message: str) -> int:
    """Say what is wrong with the command line on standard error; the exit code of a usage error."""
    sys.stderr.write(f"error: {message}\n")
    return EXIT_CONFIG


def emit(args: argparse.Namespace, document: Any, lines: Sequence[str]) -> None:
    """``document`` as indented JSON with ``--json``, else ``lines`` (already escaped for a terminal)."""
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2))
    else:
        for line in lines:
            print(line)


def no_face_problem(args: argparse.Namespace) -> Optional[str]:
    """What a ``--no-face`` enrolment was given that takes a face (photos, ``--face``, …), or ``None``
    (``enroll`` and ``fleet enroll``)."""
    given = [
        label
        for label, value in (
            ("photos", getattr(args, "images", None)),
            ("--from-dir", getattr(args, "from_dir", None)),
            ("--roster", getattr(args, "roster", None)),
            ("--face", getattr(args, "face", None) is not None),
            ("--largest", getattr(args, "largest", False)),
            ("--keep", getattr(args, "keep", None) is not None),
        )
        if value
    ]
    if not given:
        return None
    return (
        f"--no-face enrols a person without a face (card and PIN only): it takes no {', '.join(given)}; "
        "give --name (and --id, --external-id, --card, --pin, …) only"
    )
