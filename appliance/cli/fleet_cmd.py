"""``face-appliance fleet init | enroll | enroll-batch | set | remove | list | status | prune | republish``: the site's
enrolment authority (see :mod:`appliance.fleet.authority`), configured by its own file (``AUTH.toml``,
:mod:`appliance.fleet.settings`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

from ..fleet.authority import Authority, AuthorityState, Published, StatusReport, load_signing_key
from ..fleet.errors import FleetError
from ..fleet.records import MAX_CROPS, create_fleet_key, read_fleet_key
from ..fleet.settings import AuthorityFile, load_authority_config, signing_key_name
from ..gallery.text import printable
from ..logs import setup_logging
from .access_cmd import add_policy_options, policy_changes
from .common import EXIT_FAILURE, EXIT_OK, emit, usage_error
from .fleet_enroll import PEOPLE_PER_CHANGE, enroll_batch, enroll_one

CONFIG_ENV = "FACE_APPLIANCE_FLEET_CONFIG"

_EXAMPLE = """\
The authority's file (AUTH.toml), relative paths from its folder:

  [authority]
  site = "hq"                          # the doors' fleet.site
  signing_key = "keys/authority.key"   # keys/authority.pub goes to every door's fleet.trusted_keys_dir
  fleet_key_file = "keys/fleet.key"    # copied to every door of the site (fleet.fleet_key_file)
  state_dir = "state"                  # revision counter, index, sealed records: back it up
  # prefix = "face-appliance-fleet"; tombstone_days = 30; keep_names = true

  [mqtt]                               # the broker, as in the appliance's [mqtt]
  host = "broker.example"

  [models]                             # the models enroll uses ([detector], [gallery] limits too)
  dir = "/var/lib/face-appliance/models"
"""


_ROSTER_EXAMPLE = """\
A roster (UTF-8; comma, semicolon or tab; relative photo paths from the roster's folder):

  photos,name,external_id,id,groups,valid_until,cards,no_face
  people/ada,Ada Lovelace,B-1815,,staff lab,2027-06-30T18:00:00+02:00,w26:7:1815,
  people/alan.jpg,Alan Turing,B-1912,,staff,,,
  ,Grace Hopper,B-1906,,staff,,w26:7:1906,yes

Other columns: valid_from, consent_at. cards: separated by spaces or commas. no_face = yes: a
person enrolled without a face (no photos; cards and PIN only). No PIN column: `fleet set --pin`.
"""


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, default=None, help=f"the authority's file (default: ${CONFIG_ENV})"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_parser(subparsers: Any) -> None:
    fleet = subparsers.add_parser(
        "fleet",
        help="the site's enrolment authority: enrol once, every door of the site applies it",
        description="Publishes one retained record per identity through the MQTT broker, encrypted with "
        "the site's fleet key and signed with the authority's key; doors with [fleet] verify, decrypt "
        "and apply them with their own embedder, and publish a digest `fleet status` compares.",
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = fleet.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    init = actions.add_parser(
        "init", help="create the fleet key, the signing key pair and the state folder (what is missing)"
    )
    _config_option(init)
    init.set_defaults(handler=_init)

    enroll = actions.add_parser(
        "enroll",
        help="publish a person (photos checked as `enroll` checks them) to every door of the site",
        description="Each photo is checked as `enroll` checks it (one face, size, sharpness, pose); the "
        f"aligned crops of the accepted ones (at most {MAX_CROPS}) are published, encrypted. Enrolling "
        "asserts that the person consented (GDPR art. 9). With --no-face and no photo, a person who "
        "declined face enrolment is published without a face: they pass with the cards and PIN given "
        "(--card, --pin); no model is loaded.",
    )
    enroll.add_argument("images", nargs="*", type=Path, metavar="PHOTO")
    enroll.add_argument(
        "--no-face",
        action="store_true",
        help="publish the person without a face (no photo): card and PIN only",
    )
    enroll.add_argument("--name", required=True, help="the person's name (encrypted; never in a topic)")
    enroll.add_argument(
        "--id", dest="identity_id", help="identity id (default: random, p- and 12 hex digits)"
    )
    enroll.add_argument("--external-id", help="an id in another system, e.g. a badge number")
    enroll.add_argument("--consent-at", help="when consent was given, RFC 3339 (default: now)")
    enroll.add_argument(
        "--replace", action="store_true", help="replace the photos and details of an enrolled id"
    )
    choose = enroll.add_mutually_exclusive_group()
    choose.add_argument("--face", type=int, help="use face N (1-based) of each photo")
    choose.add_argument("--largest", action="store_true", help="use the largest face of each photo")
    add_policy_options(enroll, changing=False)
    _config_option(enroll)
    enroll.set_defaults(handler=_enroll)

    batch = actions.add_parser(
        "enroll-batch",
        help="publish a site's people from a roster (CSV: photos, name, external_id, id, groups, …)",
        description="Reads the roster (one person per row: a photo or a folder of photos, the name, an\n"
        "id or an external id, optionally groups, valid_from, valid_until, consent_at, cards, no_face)\n"
        "and refuses it whole, every problem with its line (a card another identity holds too), before\n"
        "any model loads. Each person's photos are checked\n"
        f"as `enroll` checks them; the {MAX_CROPS} best accepted ones are published, {PEOPLE_PER_CHANGE} "
        "people per\nchange. Who is enrolled already (by id, or by external id) is skipped before their\n"
        "photos are read: a roster that stopped is run again as it is. Exit 0 when everyone is published\n"
        "or enrolled already, 1 when someone had no photo accepted. Enrolling asserts that each person\n"
        "consented (GDPR art. 9).",
        epilog=_ROSTER_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    batch.add_argument("roster", type=Path, metavar="ROSTER.csv")
    again = batch.add_mutually_exclusive_group()
    again.add_argument(
        "--replace", action="store_true", help="replace the photos and details of people enrolled already"
    )
    again.add_argument(
        "--update",
        action="store_true",
        help="give people enrolled already the roster's groups, validity and cards (the columns it has; "
        "an empty cell clears), keeping their face and PINs",
    )
    batch.add_argument("--largest", action="store_true", help="use the largest face of each photo")
    batch.add_argument(
        "--check",
        action="store_true",
        help="check the roster and every photo, publish nothing (no keys or broker needed)",
    )
    _config_option(batch)
    batch.set_defaults(handler=_enroll_batch)

    change = actions.add_parser(
        "set",
        help="change an identity's policy (validity, groups, suspension, cards, PINs) at every door",
        description="Republishes the identity's record with its policy changed; with --forget-face without "
        "its crops (consent withdrawn): every door deletes the identity's templates for real and keeps it "
        "with its cards and PIN.",
    )
    change.add_argument("identity_id", metavar="ID")
    change.add_argument(
        "--forget-face",
        action="store_true",
        help="republish without the face: every door deletes its templates; cards and PIN stay",
    )
    add_policy_options(change, changing=True)
    _config_option(change)
    change.set_defaults(handler=_set)

    for what, summary in (
        ("card", "the next card shown at a door's reader becomes one of the identity's cards"),
        ("pin", "a PIN typed twice at a door's reader becomes the identity's PIN (its digits reach nobody)"),
    ):
        learn = actions.add_parser(
            f"learn-{what}",
            help=summary,
            description=f"Asks DOOR (its device id) to learn {'a card' if what == 'card' else 'a PIN'} for "
            "the identity at its reader — MQTT learn_"
            f"{what} with for_fleet, on {{door_prefix}}/DOOR/cmd/ — waits for the person there, then "
            "publishes the identity's record with it: every door applies it. The door stores nothing "
            "itself. "
            + (
                "The card must be nobody else's at the site."
                if what == "card"
                else "Someone who holds cards shows one of them first; then the new PIN, #, and the same "
                "PIN again, #. Only its hash travels, sealed with the fleet key."
            ),
        )
        learn.add_argument("identity_id", metavar="ID")
        learn.add_argument("--door", required=True, metavar="DEVICE", help="the door whose reader is used")
        learn.add_argument("--reader", metavar="NAME", help="one of the door's readers (default: any)")
        learn.add_argument(
            "--within",
            type=float,
            default=30.0 if what == "card" else 60.0,
            metavar="S",
            help=f"seconds the door waits for the person (5–300, default {30 if what == 'card' else 60})",
        )
        if what == "pin":
            learn.add_argument("--duress", action="store_true", help="learn the duress PIN instead")
        _config_option(learn)
        learn.set_defaults(handler=_learn, learns=what)

    remove = actions.add_parser(
        "remove",
        help="publish signed tombstones: every door deletes the identities for real",
        description="Removes the identities named, by id or by external id (a leaver's badge), as one "
        "change: every one is live, or nothing is removed. With one ID, --json prints its tombstone's "
        'document; with more, {"removed": [...]}.',
    )
    remove.add_argument("identity_ids", nargs="*", metavar="ID")
    remove.add_argument(
        "--external-id",
        dest="external_ids",
        action="append",
        default=[],
        metavar="BADGE",
        help="also remove the live identity holding this external id (repeatable)",
    )
    _config_option(remove)
    remove.set_defaults(handler=_remove)

    distinct = actions.add_parser(
        "distinct",
        help="mark two identities the doors list as look-alikes as different people (twins)",
        description="fleet status no longer lists the pair as look-alikes (the doors still find it; "
        "nothing is published). The mark goes with either identity; --undo takes it back.",
    )
    distinct.add_argument("identity_ids", nargs=2, metavar="ID")
    distinct.add_argument("--undo", action="store_true", help="list the pair again")
    _config_option(distinct)
    distinct.set_defaults(handler=_distinct)

    listing = actions.add_parser("list", help="the identities and tombstones published (from the state)")
    _config_option(listing)
    listing.set_defaults(handler=_list)

    status = actions.add_parser(
        "status",
        help="per door: online, in step, records applied, what differs (exit 0 when all are in step)",
    )
    status.add_argument(
        "--wait",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds to collect the doors' documents (default 2)",
    )
    _config_option(status)
    status.set_defaults(handler=_status)

    prune = actions.add_parser("prune", help="clear tombstones older than authority.tombstone_days")
    _config_option(prune)
    prune.set_defaults(handler=_prune)

    forget = actions.add_parser(
        "forget-door",
        help="clear the digest of doors taken out of the site: fleet status no longer lists them",
        description="Clears each door's retained digest document, so that `fleet status` no longer lists "
        "it (and can exit 0 again). A door that still runs publishes it again at its next change: revoke "
        "its broker credentials first; rotate the fleet key (`fleet rotate-key`) when the door is lost.",
    )
    forget.add_argument("device_ids", nargs="+", metavar="DEVICE")
    _config_option(forget)
    forget.set_defaults(handler=_forget_door)

    rotate = actions.add_parser(
        "rotate-key",
        help="a new fleet key: every record resealed under it; doors left without it open nothing new",
        description="Makes a new fleet key (authority.fleet_key_file; the old one beside it as .previous), "
        "reseals every live record and retained tombstone under it at the same revision (no door applies "
        "anything again) and publishes them. Give every door that stays in the site the new key "
        "(fleet.fleet_key_file) and the old one (fleet.previous_fleet_key_file) and restart it; a door "
        "left out — lost, stolen, out of service — opens nothing published from then on. An interrupted "
        "rotation is finished by running the command again.",
    )
    _config_option(rotate)
    rotate.set_defaults(handler=_rotate_key)

    republish = actions.add_parser(
        "republish",
        help="publish every record of the state again, and the manifest (after a broker lost them)",
    )
    _config_option(republish)
    republish.set_defaults(handler=_republish)


# -- helpers -------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> AuthorityFile:
    path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None:
        raise FleetError(f"give the authority's file with --config AUTH.toml (or ${CONFIG_ENV})")
    config = load_authority_config(path)
    if getattr(args, "log_level", None) is None:
        setup_logging(config.logging.level)
    return config


def _published(args: argparse.Namespace, published: Published) -> int:
    document = published.document()
    what = "tombstone" if published.kind == "tombstone" else "record"
    emit(
        args,
        document,
        [f"{published.identity_id}: {what} r{published.revision} published on {published.topic}"],
    )
    return EXIT_OK


# -- commands ------------------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from ..updates.keys import generate_keypair, key_id

    config = _load(args)
    settings = config.authority
    done: List[str] = []
    with AuthorityState(settings.state_dir, settings.site).locked():
        done.append(f"state folder {settings.state_dir}")
    if os.path.lexists(settings.fleet_key_file):
        read_fleet_key(settings.fleet_key_file)
        done.append(f"fleet key {settings.fleet_key_file} (kept)")
    else:
        create_fleet_key(settings.fleet_key_file)
        done.append(f"fleet key {settings.fleet_key_file} (created)")
    if os.path.lexists(settings.signing_key):
        identifier = key_id(load_signing_key(settings).public_key())
        done.append(f"signing key {settings.signing_key} (kept, key id {identifier})")
        public = settings.signing_key.with_suffix(".pub")
    else:
        name = signing_key_name(settings)
        if name is None:
            return usage_error(
                f"authority.signing_key {settings.signing_key} must end in .key for init to create it"
            )
        pair = generate_keypair(settings.signing_key.parent, name)
        identifier, public = pair.key_id, pair.public_path
        done.append(f"signing key {pair.private_path} (created, key id {identifier})")
    lines = [*done, ""]
    lines.append("Every door of the site needs, in its [fleet] section:")
    lines.append(f'  site = "{settings.site}", prefix = "{settings.prefix}"')
    lines.append(f"  fleet_key_file: a copy of {settings.fleet_key_file} (a systemd credential, mode 0600)")
    lines.append(f"  trusted_keys_dir: a folder holding {public}")
    emit(
        args,
        {
            "state_dir": str(settings.state_dir),
            "fleet_key_file": str(settings.fleet_key_file),
            "signing_key": str(settings.signing_key),
            "public_key": str(public),
            "key_id": identifier,
        },
        lines,
    )
    return EXIT_OK


def _enroll(args: argparse.Namespace) -> int:
    return enroll_one(args, _load(args))


def _enroll_batch(args: argparse.Namespace) -> int:
    return enroll_batch(args, _load(args))


def _set(args: argparse.Namespace) -> int:
    changes = policy_changes(args)
    if not changes and not args.forget_face:
        return usage_error(
            "nothing to change: give --valid-from, --valid-until, --groups, --add-group, --suspend, …, "
            "or --forget-face"
        )
    authority = Authority.open(_load(args))
    published = authority.set_policy(args.identity_id, changes, forget_face=args.forget_face)
    if not args.forget_face:
        return _published(args, published)
    emit(
        args,
        {**published.document(), "crops": 0},
        [
            f"{published.identity_id}: record r{published.revision} published on {published.topic} "
            "without a face: every door deletes its templates, and keeps its cards and PIN"
        ],
    )
    return EXIT_OK


def _learn(args: argparse.Namespace) -> int:
    """``fleet learn-card`` and ``fleet learn-pin`` (:mod:`appliance.fleet.door_learning`)."""
    from ..fleet.door_learning import learn_at_door

    if not 5 <= args.within <= 300:
        return usage_error(f"--within is 5–300 seconds, got {args.within:g}")
    what = "duress_pin" if getattr(args, "duress", False) else args.learns
    authority = Authority.open(_load(args))
    person = (
        "show the card"
        if what == "card"
        else "show one of their cards, if they hold any, then type the new PIN, #, and again, #"
    )
    sys.stderr.write(f"waiting up to {args.within:g} s at door {args.door}: the person should {person}\n")
    learned = learn_at_door(authority, args.identity_id, args.door, what, args.within, args.reader)
    published = learned.published
    label = f"card {learned.card}" if learned.card is not None else what.replace("_", " ")
    document = {"learned": what, "card": learned.card, "door": args.door}
    if published is None:  # a card they held already
        emit(args, {"id": args.identity_id, **document}, [f"{args.identity_id}: {label} is theirs already"])
        return EXIT_OK
    emit(
        args,
        {**published.document(), **document},
        [
            f"{published.identity_id}: {label} learned at {args.door}; record r{published.revision} "
            f"published on {published.topic}"
        ],
    )
    return EXIT_OK


def _forget_door(args: argparse.Namespace) -> int:
    Authority.open(_load(args)).forget_doors(args.device_ids)
    emit(
        args,
        {"forgotten": sorted(set(args.device_ids))},
        [
            f"{device}: its digest was cleared; fleet status no longer lists it"
            for device in sorted(set(args.device_ids))
        ],
    )
    return EXIT_OK


def _rotate_key(args: argparse.Namespace) -> int:
    config = _load(args)
    authority = Authority.open(config)
    resealed, published = authority.rotate_fleet_key()
    current = Path(config.authority.fleet_key_file)
    previous = current.with_name(current.name + ".previous")
    emit(
        args,
        {
            "resealed": resealed,
            "published": published,
            "fleet_key_file": str(current),
            "previous": str(previous),
        },
        [
            f"site {config.authority.site}: the fleet key is new; {published} record(s) published under it "
            f"({resealed} resealed now)",
            f"give every door that stays in the site {current} as fleet_key and {previous} as "
            "fleet_key_previous (fleet.fleet_key_file, fleet.previous_fleet_key_file), and restart it",
        ],
    )
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    if not args.identity_ids and not args.external_ids:
        return usage_error("name the identities to remove: IDs, or --external-id BADGE")
    authority = Authority.open(_load(args))
    if len(args.identity_ids) == 1 and not args.external_ids:
        return _published(args, authority.remove(args.identity_ids[0]))
    removed = authority.remove_many(args.identity_ids, args.external_ids)
    emit(
        args,
        {"removed": [p.document() for p in removed]},
        [f"{p.identity_id}: tombstone r{p.revision} published on {p.topic}" for p in removed],
    )
    return EXIT_OK


def _distinct(args: argparse.Namespace) -> int:
    first, second = args.identity_ids
    changed = Authority.open(_load(args)).mark_distinct(first, second, distinct=not args.undo)
    state = "listed as look-alikes again" if args.undo else "marked distinct people"
    emit(
        args,
        {"pair": sorted([first, second]), "distinct": not args.undo, "changed": changed},
        [f"{first} and {second}: {state}" if changed else f"{first} and {second}: {state} already"],
    )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    config = _load(args)
    state = AuthorityState(config.authority.state_dir, config.authority.site)
    index = state.index
    document = {
        "site": index.site,
        "revision": state.revision,
        "identities": [{"id": i, **e.document()} for i, e in sorted(index.identities.items())],
        "tombstones": [{"id": i, **t.document()} for i, t in sorted(index.tombstones.items())],
    }
    lines = [
        f"site {index.site}: {len(index.identities)} identities, {len(index.tombstones)} tombstone(s), "
        f"revision {state.revision}"
    ]
    for identity_id, entry in sorted(index.identities.items()):
        who = printable(entry.name) if entry.name else "-"
        external = f"  external id {printable(entry.external_id)}" if entry.external_id else ""
        lines.append(f"  {identity_id:24} r{entry.revision:<6} {who:28} {entry.published_at}{external}")
    for identity_id, removal in sorted(index.tombstones.items()):
        lines.append(f"  {identity_id:24} r{removal.revision:<6} removed {removal.removed_at}")
    emit(args, document, lines)
    return EXIT_OK


def _status_lines(report: StatusReport, site: str) -> List[str]:
    manifest = report.manifest
    lines = [
        f"site {site}: manifest r{manifest.revision} ({len(manifest.entries)} identities, "
        f"{len(manifest.tombstones)} tombstone(s); from the {report.source})"
    ]
    for door in report.doors:
        online = {True: "online", False: "OFFLINE", None: "?"}[door.reachable]
        step = "in step" if door.in_step else "NOT in step"
        applied = "-" if door.digest is None else str(door.digest.applied)
        notes = door.differences(manifest)
        seen = None if door.digest is None else door.digest.manifest_revision
        if door.in_step and seen is not None and seen < manifest.revision:
            # Its identities are the site's, but the manifest that removes what a pruned tombstone
            # no longer can has not reached it (yet: a door gets each one live).
            notes.append(f"follows manifest r{seen}, the site's is r{manifest.revision}")
        differences = "; ".join(printable(note) for note in notes)
        lines.append(
            f"  {door.device_id:24} {step:12} {online:8} {applied} applied"
            + (f": {differences}" if differences else "")
        )
    lines.extend(_look_alike_lines(report))
    lines.extend(f"note: {printable(note)}" for note in report.notes)
    bad = [door.device_id for door in report.doors if not door.ok]
    if not report.doors:
        lines.append("no door of this site has published a digest")
    elif bad:
        lines.append(f"{len(bad)} of {len(report.doors)} door(s) not in step: {', '.join(bad)}")
    else:
        lines.append(f"all {len(report.doors)} door(s) in step")
    return lines


def _look_alike_lines(report: StatusReport) -> List[str]:
    """The look-alikes the doors found, each pair once, with the names the index holds."""
    pairs = report.look_alikes()
    hidden = (
        [f"look-alikes: {len(report.distinct)} pair(s) marked distinct people (`fleet distinct`) not listed"]
        if report.distinct
        else []
    )
    if not pairs:
        return hidden

    def who(identity_id: Optional[str]) -> str:
        if identity_id is None:
            return "an identity enrolled at the door"
        name = report.names.get(identity_id)
        return f"{identity_id} ({printable(name)})" if name else identity_id

    lines = [
        f"look-alikes: {len(pairs)} pair(s) of identities whose faces match at a door's duplicate "
        "threshold — one person under two ids is still let in as the other when one is removed "
        "(`fleet remove` the one that should go; `fleet distinct` two people who look alike, or "
        "`gallery distinct` at the door for an identity enrolled there):"
    ]
    lines.extend(
        f"  {who(pair.id)} ~ {who(pair.like)} {pair.score:.2f} at {', '.join(pair.doors)}" for pair in pairs
    )
    for door in report.doors:
        digest = door.digest
        if digest is not None and digest.look_alike_count > len(digest.look_alikes):
            lines.append(
                f"  {door.device_id} holds {digest.look_alike_count} look-alike pair(s) and lists the "
                f"{len(digest.look_alikes)} best"
            )
    return lines + hidden


def _status(args: argparse.Namespace) -> int:
    if not 0 < args.wait <= 600:
        return usage_error("--wait takes 0 to 600 seconds")
    config = _load(args)
    authority = Authority.open(config)
    from ..fleet.records import fleet_key_id

    report = authority.status(args.wait)
    key_id = fleet_key_id(authority.fleet_key)
    lines = _status_lines(report, authority.site)
    lines[0] += f"; fleet key id {key_id}"
    emit(args, {"site": authority.site, "fleet_key_id": key_id, **report.document()}, lines)
    return EXIT_OK if report.all_in_step else EXIT_FAILURE


def _prune(args: argparse.Namespace) -> int:
    config = _load(args)
    cleared = Authority.open(config).prune()
    days = config.authority.tombstone_days
    emit(
        args,
        {"cleared": cleared},
        [f"cleared {len(cleared)} tombstone(s) older than {days} days", *(f"  {i}" for i in cleared)],
    )
    return EXIT_OK


def _republish(args: argparse.Namespace) -> int:
    count, manifest = Authority.open(_load(args)).republish()
    emit(
        args,
        {"records": count, "manifest_revision": manifest.revision},
        [f"published {count} record(s) again and manifest r{manifest.revision}"],
    )
    return EXIT_OK


__all__ = ["CONFIG_ENV", "add_parser"]
