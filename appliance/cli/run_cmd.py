"""``face-appliance run``: the daemon."""

from __future__ import annotations

import argparse
from typing import Any

from ..daemon import run_daemon
from .common import add_config_option, config_path, load_cli_config


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the appliance: camera → recognition → access events over MQTT",
        description="Run the daemon until SIGTERM (or until a video file ends with camera.at_end = "
        '"stop"). SIGHUP reloads the gallery and thresholds. Under systemd it reports READY, '
        "STATUS and WATCHDOG.",
    )
    parser.add_argument(
        "--print-events", action="store_true", help="also print every access event as a JSON line on stdout"
    )
    add_config_option(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = load_cli_config(args, required=True)
    return run_daemon(config, config_path(args), print_events=args.print_events)
