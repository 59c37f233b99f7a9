"""``face-appliance events verify``: check the ``mac`` of access and door events against the site's key.

For whoever keeps the events (a SIEM, an archive, an auditor): events saved one JSON document per line
— as ``mosquitto_sub -t 'face-appliance/+/events' -t 'face-appliance/+/door'`` prints them — are each
checked against the site's fleet key (:mod:`appliance.event_mac`). Lines are read bounded; a line that
is too long, not JSON, unsigned, under another key or changed is named with its number and why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional, Tuple

from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_config_option, load_cli_config

#: The longest line taken: an event with its face crop is tens of KiB; far more is not an event.
MAX_LINE_BYTES = 1024 * 1024


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "events", help="verify the signatures (mac) of saved access and door events with the site's key"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    verify = actions.add_parser(
        "verify",
        help="check each event (one JSON document per line) against the site's fleet key",
        description="Read events one JSON document per line (files, or standard input with '-' or no "
        "file) and check each one's mac against the key derived from the site's fleet key: the file "
        "given with --fleet-key, else the configuration's fleet.fleet_key_file (and the key before the "
        "site's last rotation: --previous-fleet-key, else fleet.previous_fleet_key_file). Prints one line "
        "per event; exits 1 when any event fails.",
    )
    verify.add_argument("files", nargs="*", type=Path, metavar="FILE", help="event files; '-' or none: stdin")
    verify.add_argument(
        "--fleet-key", type=Path, default=None, help="the site's fleet key file (64 hex digits)"
    )
    verify.add_argument(
        "--previous-fleet-key",
        type=Path,
        default=None,
        help="the fleet key before the site's last rotation: events signed under it verify too",
    )
    verify.add_argument("--quiet", action="store_true", help="print only the events that fail")
    add_config_option(verify)
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from ..event_mac import EventKey
    from ..fleet.errors import FleetError
    from ..fleet.records import read_fleet_key, read_previous_fleet_key

    if args.fleet_key is not None:
        key_file, previous_file = args.fleet_key, args.previous_fleet_key
    else:
        fleet = load_cli_config(args).fleet
        key_file, previous_file = (
            fleet.fleet_key_file,
            args.previous_fleet_key or fleet.previous_fleet_key_file,
        )
    if key_file is None:
        print(
            "no fleet key: give --fleet-key FILE, or set fleet.fleet_key_file in the configuration",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        key = EventKey(read_fleet_key(key_file), read_previous_fleet_key(previous_file))
    except FleetError as err:
        print(str(err), file=sys.stderr)
        return EXIT_CONFIG
    try:
        good, bad = _check_all(key, args.files or [Path("-")], args.quiet)
    except OSError as err:
        print(f"cannot read {err.filename}: {err.strerror or err}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{good} verified, {bad} failed", file=sys.stderr)
    return EXIT_OK if bad == 0 else EXIT_FAILURE


def _check_all(key: Any, files: List[Path], quiet: bool) -> Tuple[int, int]:
    """Check every event of ``files``, printing one line each; ``(verified, failed)``."""
    from ..event_mac import EventMacError

    good = bad = 0
    for where, line in _lines(files):
        try:
            if line is None:
                raise ValueError(f"a line longer than {MAX_LINE_BYTES} bytes is not an event")
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            key.verify(event)
        except (ValueError, EventMacError) as err:  # a JSONDecodeError is a ValueError
            bad += 1
            print(f"FAILED {where}: {err}")
            continue
        good += 1
        if not quiet:
            print(f"ok     {where}: {_describe(event)}")
    return good, bad


def _describe(event: dict) -> str:
    what = event.get("kind") or event.get("decision")
    return " ".join(
        str(part)[:80] for part in (event.get("ts"), event.get("device_id"), what, event.get("event_id"))
    )


def _lines(files: List[Path]) -> Iterator[Tuple[str, Optional[bytes]]]:
    """``(file:line, the line)`` of each non-blank line; ``None`` for one over :data:`MAX_LINE_BYTES`."""
    for path in files:
        name = "stdin" if str(path) == "-" else str(path)
        stream: IO[bytes] = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
        try:
            yield from _numbered(name, stream)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


def _numbered(name: str, stream: IO[bytes]) -> Iterator[Tuple[str, Optional[bytes]]]:
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the long line, bounded per read
                line = stream.readline(MAX_LINE_BYTES + 1)
            yield f"{name}:{number}", None
            continue
        if line.strip():
            yield f"{name}:{number}", line


__all__ = ["MAX_LINE_BYTES", "add_parser"]
