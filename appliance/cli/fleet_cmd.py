"""``face-appliance fleet init | enroll | set | remove | list | status | prune | republish``: the site's
enrolment authority (see :mod:`appliance.fleet.authority`), configured by its own file (``AUTH.toml``,
:mod:`appliance.fleet.settings`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..access.policy import IdentityPolicy, parse_instant
from ..fleet.authority import Authority, AuthorityState, Published, StatusReport, load_signing_key
from ..fleet.errors import FleetError
from ..fleet.records import MAX_CROPS, create_fleet_key, read_fleet_key
from ..fleet.settings import AuthorityFile, load_authority_config, signing_key_name
from ..gallery.errors import IdentityError
from ..gallery.store import check_identity_id, utc_now
from ..gallery.text import check_external_id, check_name, printable
from ..logs import setup_logging
from .access_cmd import add_policy_options, policy_changes
from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK

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
        "asserts that the person consented (GDPR art. 9).",
    )
    enroll.add_argument("images", nargs="+", type=Path, metavar="PHOTO")
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

    change = actions.add_parser(
        "set", help="change an identity's policy (validity, groups, suspension) at every door"
    )
    change.add_argument("identity_id", metavar="ID")
    add_policy_options(change, changing=True)
    _config_option(change)
    change.set_defaults(handler=_set)

    remove = actions.add_parser(
        "remove", help="publish a signed tombstone: every door deletes the identity for real"
    )
    remove.add_argument("identity_id", metavar="ID")
    _config_option(remove)
    remove.set_defaults(handler=_remove)

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


def _emit(args: argparse.Namespace, document: Any, lines: List[str]) -> None:
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        for line in lines:
            print(line)


def _published(args: argparse.Namespace, published: Published, extra: Optional[Dict[str, Any]] = None) -> int:
    document = {
        "id": published.identity_id,
        "revision": published.revision,
        "kind": published.kind,
        "topic": published.topic,
        **(extra or {}),
    }
    what = "tombstone" if published.kind == "tombstone" else "record"
    _emit(
        args,
        document,
        [f"{published.identity_id}: {what} r{published.revision} published on {published.topic}"],
    )
    return EXIT_OK


def _usage(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return EXIT_CONFIG


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
            return _usage(
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
    _emit(
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
    from ..enrollment import Enroller
    from ..runtime.loading import load_analyzer
    from ..vision.image import ImageError, read_image

    config = _load(args)
    try:
        name = check_name(args.name)
        external_id = check_external_id(args.external_id)
        if args.identity_id is not None:
            check_identity_id(args.identity_id)
    except IdentityError as err:
        return _usage(str(err))
    consent_at = args.consent_at or utc_now()
    parse_instant(consent_at, "--consent-at")
    policy = IdentityPolicy().changed(policy_changes(args), "")
    if len(args.images) > MAX_CROPS:
        return _usage(f"{len(args.images)} photos: a record carries at most {MAX_CROPS}")
    authority = Authority.open(config)  # the keys before the models: fail fast
    known = authority.state.index.identities.get(args.identity_id or "")
    if known is not None and not args.replace:
        return _usage(
            f"identity {args.identity_id!r} is enrolled already (r{known.revision}); pass --replace to replace "
            "its photos and details, or use `fleet set` for its policy"
        )
    verdicts: List[Dict[str, Any]] = []
    crops, qualities = [], []
    with load_analyzer(config.appliance_config(), liveness=False) as analyzer:
        # check_photo needs no gallery: the authority has none, and stores nothing locally.
        enroller = Enroller(analyzer, None, config.gallery)  # type: ignore[arg-type]
        for path in args.images:
            try:
                image = read_image(path)
            except ImageError as err:
                verdicts.append({"source": str(path), "accepted": False, "reason": str(err)})
                continue
            verdict, accepted = enroller.check_photo(image, str(path), args.face, args.largest)
            verdicts.append({"source": str(path), "accepted": verdict.accepted, "reason": verdict.reason})
            if accepted is not None:
                crops.append(accepted.crop)
                qualities.append(float(accepted.quality.score))
    lines = [
        f"  {'ok ' if v['accepted'] else 'NO '} {printable(v['source'])}: {printable(v['reason'])}"
        for v in verdicts
    ]
    if not crops:
        _emit(
            args, {"published": False, "photos": verdicts}, ["no photo accepted; nothing published", *lines]
        )
        return EXIT_FAILURE
    published = authority.enroll(
        args.identity_id, name, external_id, consent_at, policy, crops, qualities, args.replace
    )
    if args.json:
        return _published(args, published, {"photos": verdicts, "crops": len(crops)})
    _published(args, published)
    for line in lines:
        print(line)
    return EXIT_OK


def _set(args: argparse.Namespace) -> int:
    changes = policy_changes(args)
    if not changes:
        return _usage(
            "nothing to change: give --valid-from, --valid-until, --groups, --add-group, --suspend, …"
        )
    authority = Authority.open(_load(args))
    return _published(args, authority.set_policy(args.identity_id, changes))


def _remove(args: argparse.Namespace) -> int:
    authority = Authority.open(_load(args))
    return _published(args, authority.remove(args.identity_id))


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
    _emit(args, document, lines)
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
        differences = "; ".join(printable(note) for note in door.differences(manifest))
        lines.append(
            f"  {door.device_id:24} {step:12} {online:8} {applied} applied"
            + (f": {differences}" if differences else "")
        )
    lines.extend(f"note: {printable(note)}" for note in report.notes)
    bad = [door.device_id for door in report.doors if not door.ok]
    if not report.doors:
        lines.append("no door of this site has published a digest")
    elif bad:
        lines.append(f"{len(bad)} of {len(report.doors)} door(s) not in step: {', '.join(bad)}")
    else:
        lines.append(f"all {len(report.doors)} door(s) in step")
    return lines


def _status(args: argparse.Namespace) -> int:
    if not 0 < args.wait <= 600:
        return _usage("--wait takes 0 to 600 seconds")
    config = _load(args)
    authority = Authority.open(config)
    report = authority.status(args.wait)
    _emit(args, {"site": authority.site, **report.document()}, _status_lines(report, authority.site))
    return EXIT_OK if report.all_in_step else EXIT_FAILURE


def _prune(args: argparse.Namespace) -> int:
    config = _load(args)
    cleared = Authority.open(config).prune()
    days = config.authority.tombstone_days
    _emit(
        args,
        {"cleared": cleared},
        [f"cleared {len(cleared)} tombstone(s) older than {days} days", *(f"  {i}" for i in cleared)],
    )
    return EXIT_OK


def _republish(args: argparse.Namespace) -> int:
    count, manifest = Authority.open(_load(args)).republish()
    _emit(
        args,
        {"records": count, "manifest_revision": manifest.revision},
        [f"published {count} record(s) again and manifest r{manifest.revision}"],
    )
    return EXIT_OK


__all__ = ["CONFIG_ENV", "add_parser"]
