"""``face-appliance config check | show | schema | default``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..config import config_schema, render_default_toml
from ..config_load import load_config
from ..errors import ConfigError
from .common import EXIT_CONFIG, EXIT_OK, add_config_option, config_path, load_cli_config


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("config", help="check, show or document the configuration")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    check = actions.add_parser(
        "check", help="validate a configuration file (exit 0, or 2 with every problem)"
    )
    add_config_option(check)
    check.set_defaults(handler=_check)

    show = actions.add_parser("show", help="print the effective configuration as JSON (secrets masked)")
    add_config_option(show)
    show.set_defaults(handler=_show)

    schema = actions.add_parser("schema", help="print the configuration's JSON schema")
    schema.set_defaults(handler=_schema)

    default = actions.add_parser("default", help="print the documented default configuration file")
    default.set_defaults(handler=_default)


def _check(args: argparse.Namespace) -> int:
    path = config_path(args)
    try:
        config = load_config(path)
    except ConfigError as err:
        sys.stderr.write(f"{path}: invalid, {len(err.issues)} problem(s):\n")
        for issue in err.issues:
            sys.stderr.write(f"  {issue}\n")
        return EXIT_CONFIG
    print(
        f"{path}: ok (device {config.device.id}, back-end {config.backend.type}, detector "
        f"{config.detector.type}, models in {config.models.dir})"
    )
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    config = load_cli_config(args)
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2))
    return EXIT_OK


def _default(args: argparse.Namespace) -> int:
    sys.stdout.write(render_default_toml())
    return EXIT_OK
