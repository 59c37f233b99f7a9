"""The ``face-appliance`` command line: one entry point, one sub-command per job.

Exit codes: 0 success, 1 failure, 2 usage or configuration error.

Sub-command modules are imported only when their sub-command runs: :data:`_COMMANDS` holds each
sub-command's name, module and one-line help, so ``face-appliance --help`` lists them all without
importing any, and ``face-appliance config check`` imports the configuration code only — not ONNX
Runtime, OpenCV, Faiss or onnx, which the model-running commands need (about 0.5 s of imports on a
2-core machine, more on a Jetson).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Collection, List, Optional, Sequence, Tuple

from engines.errors import EngineError, ModelRegistryError

from .. import __version__
from ..access.errors import PolicyError
from ..errors import ApplianceError, ConfigError
from ..logs import setup_logging

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

#: ``(sub-command, module in this package, one-line help)`` in the order ``--help`` lists them. A module
#: may define several sub-commands (``vision_cmd``: ``detect`` and ``evaluate``); the help must be the
#: one its ``add_parser`` gives (a test compares them).
_COMMANDS: Tuple[Tuple[str, str, str], ...] = (
    ("run", "run_cmd", "run the appliance: camera → recognition → access events over MQTT"),
    ("config", "config_cmd", "check, show or document the configuration"),
    ("models", "models_cmd", "fetch and list the ONNX models"),
    ("detect", "vision_cmd", "find faces in images: box, score, landmarks (and liveness when enabled)"),
    (
        "evaluate",
        "vision_cmd",
        "verification accuracy on a labelled folder: ROC AUC, EER, TAR at FAR; --liveness: APCER, BPCER",
    ),
    ("enroll", "gallery_cmd", "add a person (or a folder of people) to the gallery from photos"),
    ("identify", "gallery_cmd", "who is in these photos: identity, score, threshold, decision per face"),
    (
        "gallery",
        "gallery_cmd",
        "identities, their templates, impostor examples and unknown visitors: list, remove, export, import, check",
    ),
    (
        "access",
        "access_cmd",
        "access groups, weekly schedules, holiday calendars; check an identity against the policy",
    ),
    ("fleet", "fleet_cmd", "the site's enrolment authority: enrol once, every door of the site applies it"),
    (
        "events",
        "events_cmd",
        "verify the signatures (mac) of saved access and door events with the site's key",
    ),
    ("doctor", "doctor_cmd", "check config, models, back-ends and storage; run each model once"),
    ("keys", "keys_cmd", "create and inspect the keys that sign model packages"),
    ("package", "package_cmd", "build or verify a signed model package"),
    ("engines", "engines_cmd", "build and list the TensorRT engines"),
    (
        "push-model",
        "push_cmd",
        "send a model package to an appliance over CAN (UDS), verify it, optionally activate it",
    ),
    (
        "calibrate",
        "calibrate_cmd",
        "INT8: calibration sets, QDQ models, INT8-vs-FP32 report and gate, install",
    ),
)

#: The top-level option that takes a value (``--log-level X``); argparse also accepts a unique prefix.
_VALUE_OPTION = "--log-level"


def command_in(argv: Sequence[str]) -> Optional[str]:
    """The sub-command ``argv`` names: its first word that is neither an option nor an option's value.

    Follows argparse's reading of the top-level options: ``--log-level`` (or a prefix of it such as
    ``--log``) takes the next word unless written ``--log-level=X``; ``-h``, ``--help`` and ``--version``
    take none. Returns ``None`` when there is no such word.
    """
    takes_value = False
    for word in argv:
        if takes_value:
            takes_value = False
        elif word.startswith("-"):
            takes_value = len(word) > 2 and "=" not in word and _VALUE_OPTION.startswith(word)
        else:
            return word
    return None


def build_parser(commands: Optional[Collection[str]] = None) -> argparse.ArgumentParser:
    """The argument parser.

    Args:
        commands: the sub-commands whose parsers are built (their modules imported), e.g. the one
            about to run; every other sub-command is a stub with its one-line help, which is all that
            ``--help`` and a usage error show. ``None``: every sub-command (the complete parser).
    """
    parser = argparse.ArgumentParser(
        prog="face-appliance",
        description="Face-recognition access-control appliance (Jetson / CPU).",
    )
    parser.add_argument("--version", action="version", version=f"face-appliance {__version__}")
    parser.add_argument(
        _VALUE_OPTION,
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: the configuration's logging.level, else INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    modules = {module for name, module, _ in _COMMANDS if commands is None or name in commands}
    for name, module_name, text in _COMMANDS:
        if name in subparsers.choices:  # defined by its module together with an earlier one
            continue
        if module_name in modules:
            importlib.import_module(f"{__name__}.{module_name}").add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=text, add_help=False).set_defaults(handler=None)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    words = sys.argv[1:] if argv is None else argv
    command = command_in(words)
    parser = build_parser([command] if command else [])
    args, unknown = parser.parse_known_args(words)
    if args.handler is None:  # a stub was chosen (the line misread): read it again with every sub-command
        args = build_parser().parse_args(words)
    elif unknown:  # as parse_args does
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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


__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "build_parser", "command_in", "main"]
