"""``face-appliance access …``: the access groups, their schedules and holiday calendars, and what the
policy says about one identity at this door (see :mod:`appliance.access.policy`).

Also the policy options that ``enroll`` and ``gallery set`` share (:func:`add_policy_options`).
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Dict, Iterator, List, Optional

from ..access.errors import PolicyError
from ..access.judge import GONE, AccessJudge
from ..access.passback import presence_document
from ..access.policy import REASONS, AccessGroup, HolidayCalendar, parse_instant
from ..access.presence import PRESENCE_FILE, PresenceStore
from ..gallery.errors import IdentityError
from ..gallery.text import printable
from .common import EXIT_FAILURE, EXIT_OK, add_config_option, load_cli_config

CLEAR = "none"


def add_policy_options(parser: argparse.ArgumentParser, changing: bool) -> None:
    """``--valid-from``, ``--valid-until``, ``--groups``, ``--card``, ``--pin``, ``--duress-pin`` (and
    with ``changing``: add/remove, suspend/resume, clear the PINs)."""
    clear = f" ('{CLEAR}' removes it)" if changing else ""
    parser.add_argument("--valid-from", metavar="TIME", help=f"valid from, ISO 8601 with an offset{clear}")
    parser.add_argument(
        "--valid-until", metavar="TIME", help=f"valid until (exclusive), ISO 8601 with an offset{clear}"
    )
    parser.add_argument("--groups", metavar="A,B", help="access groups, comma-separated (replaces the list)")
    if changing:
        parser.add_argument("--add-group", action="append", default=[], metavar="GROUP")
        parser.add_argument("--remove-group", action="append", default=[], metavar="GROUP")
        suspend = parser.add_mutually_exclusive_group()
        suspend.add_argument("--suspend", action="store_true", help="deny at every door until resumed")
        suspend.add_argument("--resume", action="store_true", help="lift a suspension")
    parser.add_argument(
        "--card",
        action="append",
        default=[],
        metavar="CARD",
        help="a card for a door that asks for one: w26:FACILITY:CARD, w34:FACILITY:CARD or raw:BITS:HEX"
        + (" (added to the identity's)" if changing else ""),
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="set a PIN (4-8 digits), typed at the prompt or one line of standard input; never an argument",
    )
    parser.add_argument(
        "--duress-pin",
        action="store_true",
        help="set a duress PIN: it opens like the PIN and raises a silent alarm (read after --pin's)",
    )
    if changing:
        parser.add_argument("--remove-card", action="append", default=[], metavar="CARD")
        parser.add_argument("--clear-pin", action="store_true", help="remove the PIN")
        parser.add_argument("--clear-duress-pin", action="store_true", help="remove the duress PIN")


def policy_changes(args: argparse.Namespace) -> Dict[str, object]:
    """The policy options given on the command line, as :meth:`IdentityPolicy.changed` takes them."""
    changes: Dict[str, object] = {}
    for key in ("valid_from", "valid_until"):
        value = getattr(args, key, None)
        if value is not None:
            changes[key] = None if value.lower() == CLEAR else value
    if getattr(args, "groups", None) is not None:
        changes["groups"] = [name.strip() for name in args.groups.split(",") if name.strip()]
    if getattr(args, "add_group", None):
        changes["add_groups"] = list(args.add_group)
    if getattr(args, "remove_group", None):
        changes["remove_groups"] = list(args.remove_group)
    if getattr(args, "suspend", False):
        changes["suspended"] = True
    if getattr(args, "resume", False):
        changes["suspended"] = False
    if getattr(args, "card", None):
        changes["add_cards"] = list(args.card)
    if getattr(args, "remove_card", None):
        changes["remove_cards"] = list(args.remove_card)
    for key, label in (("pin", "PIN"), ("duress_pin", "duress PIN")):
        if getattr(args, f"clear_{key}", False):
            changes[key] = None
        elif getattr(args, key, False):
            changes[key] = read_pin(label)
    return changes


def policy_options_given(args: argparse.Namespace) -> bool:
    """Whether any policy option was given (without reading a PIN, as :func:`policy_changes` would)."""
    named = ("valid_from", "valid_until", "groups")
    flags = ("add_group", "remove_group", "suspend", "resume", "card", "remove_card", "pin", "duress_pin")
    flags += ("clear_pin", "clear_duress_pin")
    return any(getattr(args, key, None) is not None for key in named) or any(
        getattr(args, key, None) for key in flags
    )


def read_pin(label: str) -> str:
    """A PIN typed at the terminal (not echoed), or one line of standard input (a script's pipe)."""
    import getpass
    import sys

    if sys.stdin.isatty():
        return getpass.getpass(f"{label}: ")
    return sys.stdin.readline(64).rstrip("\r\n")


def add_parser(subparsers: Any) -> None:
    access = subparsers.add_parser(
        "access",
        help="access groups, weekly schedules, holiday calendars; check an identity against the policy",
        description="Groups and holiday calendars are stored in the gallery (carried in bundles, changed by "
        "MQTT commands too); which groups this door admits and its time zone are in the configuration "
        "([access]). Schedule windows: 'DAYS HH:MM-HH:MM' in local time, e.g. 'mon-fri 08:00-18:00', "
        "'sat 22:00-06:00' (crosses midnight), 'daily 00:00-24:00'.",
    )
    actions = access.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    show = actions.add_parser("show", help="this door's groups, every group and calendar")
    show.add_argument("--json", action="store_true")
    add_config_option(show)
    show.set_defaults(handler=_show)

    group = actions.add_parser("group", help="define or remove an access group")
    group_actions = group.add_subparsers(dest="group_action", metavar="ACTION")
    group_actions.required = True
    group_set = group_actions.add_parser("set", help="define (or replace) a group")
    group_set.add_argument("name", metavar="NAME")
    group_set.add_argument(
        "--schedule", action="append", default=[], metavar="WINDOW", help="a window; repeat for more"
    )
    group_set.add_argument(
        "--holidays", default="", metavar="CAL,CAL", help="holiday calendars it is closed on"
    )
    add_config_option(group_set)
    group_set.set_defaults(handler=_group_set)
    group_remove = group_actions.add_parser("remove", help="delete a group's definition")
    group_remove.add_argument("name", metavar="NAME")
    add_config_option(group_remove)
    group_remove.set_defaults(handler=_group_remove)

    calendar = actions.add_parser("calendar", help="define or remove a holiday calendar")
    calendar_actions = calendar.add_subparsers(dest="calendar_action", metavar="ACTION")
    calendar_actions.required = True
    calendar_set = calendar_actions.add_parser("set", help="define (or replace) a calendar: its days")
    calendar_set.add_argument("name", metavar="NAME")
    calendar_set.add_argument("days", nargs="*", metavar="YYYY-MM-DD")
    add_config_option(calendar_set)
    calendar_set.set_defaults(handler=_calendar_set)
    calendar_remove = calendar_actions.add_parser("remove", help="delete a calendar")
    calendar_remove.add_argument("name", metavar="NAME")
    add_config_option(calendar_remove)
    calendar_remove.set_defaults(handler=_calendar_remove)

    check = actions.add_parser("check", help="would this identity pass this door now (or at --at)?")
    check.add_argument("identity_id", metavar="ID")
    check.add_argument("--at", metavar="TIME", help="ISO 8601 time with an offset (default: now)")
    check.add_argument(
        "--camera", metavar="CAMERA", help="also anti-passback at this camera (asked, not recorded)"
    )
    check.add_argument("--json", action="store_true")
    add_config_option(check)
    check.set_defaults(handler=_check)

    presence = actions.add_parser(
        "presence",
        help="anti-passback: who passed in or out last; forget someone's last passage",
        description="The state [access.anti_passback] follows: each identity's last granted passage at "
        "a camera with a direction, since the last daily reset. Works beside the running daemon.",
    )
    presence_actions = presence.add_subparsers(dest="presence_action", metavar="ACTION")
    presence_actions.required = True
    listing = presence_actions.add_parser("list", help="the last passages, newest first (a muster list)")
    listing.add_argument("--direction", choices=("in", "out"), help="only those who passed this way last")
    listing.add_argument("--limit", type=int, default=1000, metavar="N", help="list at most N (default 1000)")
    listing.add_argument("--json", action="store_true")
    add_config_option(listing)
    listing.set_defaults(handler=_presence_list)
    reset = presence_actions.add_parser(
        "reset", help="forget last passages: their next passage passes either way"
    )
    whom = reset.add_mutually_exclusive_group(required=True)
    whom.add_argument("ids", nargs="*", default=[], metavar="ID")
    whom.add_argument("--all", action="store_true", help="everyone's")
    add_config_option(reset)
    reset.set_defaults(handler=_presence_reset)


def _gallery(args: argparse.Namespace) -> Any:
    from .gallery_cmd import open_gallery

    config = load_cli_config(args)
    return config, open_gallery(config)


def _show(args: argparse.Namespace) -> int:
    config, gallery = _gallery(args)
    with gallery:
        tables = gallery.store.policy_tables()
    document = {
        "door": config.access.door_document(),
        "groups": [group.document() for group in sorted(tables.groups.values(), key=lambda g: g.name)],
        "calendars": [c.document() for c in sorted(tables.calendars.values(), key=lambda c: c.name)],
    }
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    door_groups = ", ".join(config.access.groups) or "(not checked: every valid identity)"
    print(f"this door admits: {door_groups}; time zone {config.access.time_zone}")
    factor = document["door"].get("second_factor")
    if factor:
        whose = ", ".join(factor["groups"]) or "everyone"
        print(f"  then a {factor['require'].replace('_', ' ')} at the reader, for {whose}")
    without_face = document["door"].get("without_face")
    if without_face:
        print(f"  people without a face: {without_face['require'].replace('_', ' ')} at the reader")
        if without_face["face_optional_groups"]:
            groups = ", ".join(without_face["face_optional_groups"])
            print(f"  the same for people with a face in: {groups} (their card and PIN replace their face)")
    for group in document["groups"]:
        holidays = f"; closed on {', '.join(group['holidays'])}" if group["holidays"] else ""
        print(
            f"  group {group['name']}: {'; '.join(group['schedule']) or 'no window (admits nobody)'}{holidays}"
        )
    for calendar in document["calendars"]:
        print(
            f"  calendar {calendar['name']}: {len(calendar['days'])} day(s) {' '.join(calendar['days'][:6])}"
        )
    return EXIT_OK


def _split(text: str) -> List[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _group_set(args: argparse.Namespace) -> int:
    group = AccessGroup.from_parts(args.name, args.schedule, _split(args.holidays))
    _config, gallery = _gallery(args)
    with gallery:
        gallery.store.put_group(group)
    windows = "; ".join(group.schedule.texts()) or "no window: admits nobody"
    print(f"group {group.name}: {windows}")
    return EXIT_OK


def _group_remove(args: argparse.Namespace) -> int:
    return _remove(args, "group", lambda store: store.remove_group(args.name))


def _remove(args: argparse.Namespace, what: str, remove: Any) -> int:
    """Delete a group's or a calendar's definition; exit 1 when there was none."""
    _config, gallery = _gallery(args)
    with gallery:
        removed = remove(gallery.store)
    print(f"{what} {printable(args.name)} {'removed' if removed else 'was not defined'}")
    return EXIT_OK if removed else EXIT_FAILURE


def _calendar_set(args: argparse.Namespace) -> int:
    calendar = HolidayCalendar.from_parts(args.name, args.days)
    _config, gallery = _gallery(args)
    with gallery:
        gallery.store.put_calendar(calendar)
    print(f"calendar {calendar.name}: {len(calendar.days)} day(s)")
    return EXIT_OK


def _calendar_remove(args: argparse.Namespace) -> int:
    return _remove(args, "calendar", lambda store: store.remove_calendar(args.name))


def _check(args: argparse.Namespace) -> int:
    at = parse_instant(args.at, "--at") if args.at else datetime.now(timezone.utc)
    config, gallery = _gallery(args)
    with gallery, _presence(config, args.camera is not None) as presence:
        judge = AccessJudge.for_door(config.access, gallery.store, presence, config.camera_directions)
        if args.camera is None:
            reason = judge.judge(args.identity_id, at)
        else:
            if args.camera not in config.camera_directions:
                raise PolicyError(
                    f"camera {args.camera!r} has no direction in {args.config}; see [[cameras]]"
                )
            reason = judge.judge_passage(args.identity_id, args.camera, at, record=False).reason
    if reason == GONE:
        raise IdentityError(f"no identity {args.identity_id!r} in the gallery")
    document = {
        "id": args.identity_id,
        "at": at.isoformat(),
        "decision": "denied" if reason else "granted",
        "reason": reason,
    }
    if args.json:
        print(json.dumps(document))
    else:
        print(
            f"{printable(args.identity_id)} at {at.isoformat()}: {document['decision']}{f' ({reason})' if reason else ''}"
        )
    return EXIT_OK if reason is None else EXIT_FAILURE


@contextmanager
def _presence(config: Any, wanted: bool = True) -> Iterator[Optional[PresenceStore]]:
    """The presence store, when ``wanted``; anti-passback must be on.

    Raises:
        PolicyError: anti-passback is off (the daemon keeps nothing then).
    """
    if not wanted:
        yield None
        return
    if config.access.anti_passback.mode == "off" or not config.camera_directions:
        raise PolicyError(
            "anti-passback is off in this configuration ([access.anti_passback] mode, and a camera "
            "with direction 'in' and one with 'out'); nothing is kept about who is in"
        )
    with PresenceStore.open(config.storage.dir / PRESENCE_FILE) as store:
        yield store


def _presence_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise PolicyError(f"--limit must be at least 1, not {args.limit}")
    config, gallery = _gallery(args)
    with gallery, _presence(config) as presence:
        judge = AccessJudge.for_door(config.access, gallery.store, presence, config.camera_directions)
        assert judge.passback is not None  # on, as _presence checked
        document = presence_document(judge.passback, gallery.store, args.direction, args.limit)
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    reset = f", forgotten daily at {document['reset_at']}" if document["reset_at"] else ""
    print(f"anti-passback {document['mode']}{reset}: {document['in']} in, {document['out']} out")
    for entry in document["passages"]:
        print(
            f"  {entry['direction']:<3} {entry['since']}  {printable(entry['id'])}  "
            f"{printable(entry['name'])} ({printable(entry['camera_id'])})"
        )
    if document["truncated"]:
        print(f"  … the {args.limit} newest listed (--limit)")
    return EXIT_OK


def _presence_reset(args: argparse.Namespace) -> int:
    config = load_cli_config(args)
    with _presence(config) as presence:
        assert presence is not None
        forgotten = presence.reset(None if args.all else args.ids, forgotten_at=time.time())
    print(f"forgot the last passage of {forgotten} identit{'y' if forgotten == 1 else 'ies'}")
    return EXIT_OK


__all__ = ["REASONS", "add_parser", "add_policy_options", "policy_changes", "policy_options_given"]
