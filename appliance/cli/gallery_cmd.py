"""``face-appliance enroll``, ``identify`` and ``gallery list | set | remove | templates | export | import | check``."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

from engines.errors import FileReadError
from engines.files import read_bounded

from ..access.judge import GONE, AccessJudge
from ..access.policy import IdentityPolicy, parse_instant
from ..config import ApplianceConfig
from ..config_load import read_secret_file
from ..enrollment import Enroller, EnrollmentResult
from ..gallery.bundle import MAX_BUNDLE_BYTES
from ..gallery.errors import BundleError, GalleryError, IdentityError
from ..gallery.gallery import Gallery
from ..gallery.store import TemplateStore, check_identity_id, slugify, utc_now
from ..gallery.text import check_external_id, check_name, printable
from ..photo_files import is_photo
from ..runtime.loading import load_analyzer
from ..vision.analyzer import FaceAnalyzer
from ..vision.image import ImageError, read_image
from .access_cmd import add_policy_options, policy_changes, policy_options_given
from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_config_option, load_cli_config, no_face_problem

PASSPHRASE_ENV = "FACE_APPLIANCE_BUNDLE_PASSPHRASE"


def add_parser(subparsers: Any) -> None:
    enroll = subparsers.add_parser(
        "enroll",
        help="add a person (or a folder of people) to the gallery from photos",
        description="Enrol photos of a person, or with --from-dir one sub-folder per person (the folder "
        "name is the id and the name), or with --roster the people of a CSV roster (`fleet enroll-batch "
        "--help` shows its columns; who is enrolled already is skipped). Each photo is checked (one face, size, sharpness, pose) and the "
        "reason is printed for each refused one. Enrolling asserts that the person consented (GDPR art. 9); "
        "the consent time is stored. With --no-face and no photo, a person who declines face enrolment is "
        "added without a face: they pass with the cards and PIN given (--card, --pin); no model is loaded.",
    )
    enroll.add_argument("images", nargs="*", type=Path, metavar="IMAGE")
    enroll.add_argument(
        "--no-face",
        action="store_true",
        help="add the person without a face (no photo, no template): card and PIN only",
    )
    enroll.add_argument("--name", help="the person's name (required for a new identity)")
    enroll.add_argument(
        "--id", dest="identity_id", help="identity id (default: from the name); an existing id adds photos"
    )
    enroll.add_argument("--external-id", help="an id in another system, e.g. a badge number")
    enroll.add_argument("--consent-at", help="when consent was given, RFC 3339 (default: now)")
    enroll.add_argument("--from-dir", type=Path, help="one sub-folder of photos per person")
    enroll.add_argument(
        "--roster",
        type=Path,
        metavar="ROSTER.csv",
        help="people from a CSV roster, as `fleet enroll-batch` takes it (photos, name, external_id, id, "
        "groups, valid_from, valid_until, consent_at, cards, no_face); who is enrolled already is skipped",
    )
    enroll.add_argument(
        "--update",
        action="store_true",
        help="with --roster: give people enrolled already the roster's groups, validity and cards (the "
        "columns it has; an empty cell clears), keeping their face and PINs",
    )
    choose = enroll.add_mutually_exclusive_group()
    choose.add_argument(
        "--face", type=int, help="use face N (1-based, as `detect` numbers them) of each photo"
    )
    choose.add_argument("--largest", action="store_true", help="use the largest face of each photo")
    enroll.add_argument(
        "--keep",
        type=_positive_int,
        default=None,
        metavar="N",
        help="keep at most N enrolled templates per identity, the best photos by quality "
        "(default gallery.max_enrolled_templates; templates it holds already count)",
    )
    add_policy_options(enroll, changing=False)
    enroll.add_argument("--json", action="store_true", help="machine-readable report")
    add_config_option(enroll)
    enroll.set_defaults(handler=_enroll)

    identify = subparsers.add_parser(
        "identify", help="who is in these photos: identity, score, threshold, decision per face"
    )
    identify.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    identify.add_argument("--json", action="store_true")
    add_config_option(identify)
    identify.set_defaults(handler=_identify)

    gallery = subparsers.add_parser(
        "gallery",
        help="identities, their templates, impostor examples and unknown visitors: list, remove, export, import, check",
    )
    actions = gallery.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="identities with their template counts (no biometric data)")
    listing.add_argument("--json", action="store_true")
    add_config_option(listing)
    listing.set_defaults(handler=_list)
    change = actions.add_parser(
        "set",
        help="change an identity's access policy: validity, groups, suspension, cards, PINs; --forget-face",
        description="Change an identity's access policy. --forget-face (consent withdrawn) deletes every "
        "template of the identity for real — every model version, enrolled and adaptive, crops and "
        "impostor examples included; secure delete, WAL checkpoint, a new index snapshot — and keeps the "
        "identity with its name, cards and PIN.",
    )
    change.add_argument("identity_id", metavar="ID")
    change.add_argument(
        "--forget-face",
        action="store_true",
        help="delete the identity's templates and crops for real; its cards and PIN stay",
    )
    add_policy_options(change, changing=True)
    change.add_argument("--json", action="store_true")
    add_config_option(change)
    change.set_defaults(handler=_set)
    look_alikes = actions.add_parser(
        "look-alikes",
        help="identities of the fleet whose faces matched another identity here (gallery.duplicate_threshold)",
        description="The look-alike pairs this door found when it applied the fleet's records, best score "
        "first, with the names it holds: one person under two ids, or twins. A pair with an identity "
        "enrolled here is settled here: remove that enrolment if the fleet now holds the person, or mark "
        "two people with `gallery distinct`; the fleet's own pairs are listed by `fleet status` and "
        "marked with `fleet distinct`.",
    )
    look_alikes.add_argument("--json", action="store_true")
    add_config_option(look_alikes)
    look_alikes.set_defaults(handler=_look_alikes)
    distinct = actions.add_parser(
        "distinct",
        help="mark a look-alike pair with an identity enrolled here as two people (twins), or --undo",
        description="Two identities, one of them enrolled at this door, are two different people: their "
        "look-alike pair is no longer listed here, in the door's digest or in the authority's `fleet "
        "status`. Written beside a running daemon, which publishes its digest again within a second. "
        "A pair of two fleet identities is marked at the authority (`fleet distinct`).",
    )
    distinct.add_argument("identity_ids", metavar="ID", nargs=2)
    distinct.add_argument("--undo", action="store_true", help="list the pair again")
    add_config_option(distinct)
    distinct.set_defaults(handler=_distinct)
    remove = actions.add_parser("remove", help="delete an identity, its templates, crops and index entries")
    remove.add_argument("identity_id", metavar="ID")
    add_config_option(remove)
    remove.set_defaults(handler=_remove)
    templates = actions.add_parser(
        "templates",
        help="an identity's templates: enrolled or adaptive, when, source event, quality; --remove one",
        description="List an identity's templates (no biometric data): kind (enrolled from a photo, or "
        "adaptive from a granted passage, see [adaptive]), model version, when, quality, and for an adaptive "
        "one the access event it came from with its score and margin. --remove deletes one for real "
        "(secure delete, WAL checkpoint, new index snapshot); the last enrolled template is refused.",
    )
    templates.add_argument("identity_id", metavar="ID")
    templates.add_argument("--remove", type=_positive_int, default=None, metavar="TEMPLATE_ID")
    templates.add_argument("--json", action="store_true")
    add_config_option(templates)
    templates.set_defaults(handler=_templates)
    for name, handler, text in (
        ("export", _export, "write every identity to an encrypted bundle"),
        ("import", _import, "read identities from an encrypted bundle"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("file", type=Path, metavar="FILE")
        action.add_argument(
            "--passphrase-file",
            type=Path,
            help=f"file holding the bundle passphrase (else ${PASSPHRASE_ENV}, else a prompt)",
        )
        if name == "import":
            action.add_argument(
                "--replace", action="store_true", help="replace identities that already exist"
            )
        add_config_option(action)
        action.set_defaults(handler=handler)
    check = actions.add_parser("check", help="integrity check: database, key, every sealed template")
    add_config_option(check)
    check.set_defaults(handler=_check)
    from .sightings_cmd import add_actions

    add_actions(actions)  # not-this, impostors, unknowns, enroll-unknown


# -- helpers -------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    """An argparse type: a whole number ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def open_gallery(config: ApplianceConfig) -> Gallery:
    """The gallery for the configured embedder, without loading any model; an identity removed or
    whose face is forgotten through it takes the faces kept of its passages along (``sightings.db``)."""
    from engines.registry import EMBEDDER_MODELS

    from ..updates.active import resolve_model

    spec, _folder = resolve_model(config, EMBEDDER_MODELS[config.embedder.model][0])
    gallery = Gallery.open(config, spec.qualified_version, int(spec.embedding_dim or 0))
    gallery.face_forgotten = lambda identity_id: _forget_kept_faces(config, identity_id)
    return gallery


def _forget_kept_faces(config: ApplianceConfig, identity_id: str) -> None:
    from .sightings_cmd import open_sightings

    store = open_sightings(config, required=False)
    if store is not None:
        with store:
            store.forget_identity(identity_id)


def _open_with_analyzer(config: ApplianceConfig) -> Tuple[FaceAnalyzer, Gallery]:
    analyzer = load_analyzer(config, liveness=False)
    try:
        return analyzer, Gallery.open(config, analyzer.embedder.version, analyzer.embedder.dim)
    except BaseException:
        analyzer.close()
        raise


def _images_of(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_photo(p))


def _load(paths: List[Path]) -> Iterator[Tuple[str, Any]]:
    for path in paths:
        try:
            yield str(path), read_image(path)
        except ImageError as err:
            yield str(path), err


def _passphrase(args: argparse.Namespace, confirm: bool) -> str:
    if args.passphrase_file is not None:
        try:
            return read_secret_file(args.passphrase_file)
        except FileReadError as err:
            raise BundleError(f"the passphrase file (--passphrase-file) {err}") from None
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if not sys.stdin.isatty():
        raise BundleError(f"no passphrase: give --passphrase-file or set {PASSPHRASE_ENV}")
    first = getpass.getpass("bundle passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise BundleError("the passphrases differ")
    return first


def _report(result: EnrollmentResult) -> None:
    """An enrolment on the terminal; names (in the duplicate warnings too) are escaped."""
    print(f"{result.identity_id} ({printable(result.name)}): {len(result.template_ids)} template(s) stored")
    for photo in result.photos:
        print(f"  {'ok ' if photo.accepted else 'NO '} {printable(photo.source)}: {printable(photo.reason)}")
    for warning in result.duplicates:
        print(f"  warning: {printable(warning)}")


def _result_json(result: EnrollmentResult) -> Dict[str, Any]:
    return {
        "id": result.identity_id,
        "name": result.name,
        "templates": len(result.template_ids),
        "photos": [
            {
                "source": p.source,
                "accepted": p.accepted,
                "reason": p.reason,
                "quality": None if p.quality is None else round(p.quality.score, 4),
                "rank": p.rank,
            }
            for p in result.photos
        ],
        "duplicates": result.duplicates,
    }


# -- commands ------------------------------------------------------------------------------------------


def _enroll(args: argparse.Namespace) -> int:
    if args.no_face:
        return _enroll_without_face(args)
    if args.roster is not None:
        return _enroll_roster(args)
    if args.update:
        sys.stderr.write("error: --update goes with --roster (one person's policy: gallery set ID …)\n")
        return EXIT_CONFIG
    if bool(args.from_dir) == bool(args.images):
        sys.stderr.write(
            "error: give photos, --from-dir DIR or --roster ROSTER.csv (one of them), or --no-face for a "
            "person without a face (card and PIN only)\n"
        )
        return EXIT_CONFIG
    config = load_cli_config(args)
    jobs: List[Tuple[str, str, List[Path]]] = []
    if args.from_dir:
        if not args.from_dir.is_dir():
            sys.stderr.write(f"error: {args.from_dir} is not a folder\n")
            return EXIT_CONFIG
        for folder in sorted(p for p in args.from_dir.iterdir() if p.is_dir()):
            jobs.append((slugify(folder.name), check_name(folder.name), _images_of(folder)))
        if not jobs:
            sys.stderr.write(f"error: {args.from_dir} has no sub-folders (one per person)\n")
            return EXIT_CONFIG
    else:
        identity_id = args.identity_id or (slugify(args.name) if args.name else None)
        if identity_id is None:
            sys.stderr.write("error: give --name (and optionally --id)\n")
            return EXIT_CONFIG
        check_identity_id(identity_id)
        if args.name is not None:
            check_name(args.name)
        jobs.append((identity_id, args.name or "", list(args.images)))
    check_external_id(args.external_id)
    policy = IdentityPolicy().changed(policy_changes(args), "")
    analyzer, gallery = _open_with_analyzer(config)
    results: List[EnrollmentResult] = []
    failed = False
    from tqdm import tqdm

    with analyzer, gallery:
        enroller = Enroller(analyzer, gallery, config.gallery)
        existing = {identity.id: identity for identity in gallery.identities()}
        total = sum(len(paths) for _, _, paths in jobs)
        with tqdm(total=total, unit="photo", desc="enrolling", disable=None) as progress:
            for identity_id, name, paths in jobs:
                known = existing.get(identity_id)
                if known is None and not name:
                    sys.stderr.write(f"error: {identity_id!r} is a new identity: give --name\n")
                    return EXIT_CONFIG
                if known is not None and not args.from_dir and args.identity_id is None:
                    sys.stderr.write(
                        f"error: identity {identity_id!r} ({printable(known.name)}) exists; pass --id "
                        f"{identity_id} to add photos to it, or another --id for a different person\n"
                    )
                    return EXIT_CONFIG
                photos = []
                for item in _load(paths):
                    photos.append(item)
                    progress.update(1)
                try:
                    result = enroller.enroll(
                        identity_id,
                        name or (known.name if known else ""),
                        photos,
                        args.external_id,
                        args.consent_at or utc_now(),
                        args.face,
                        args.largest,
                        policy,
                        keep=args.keep,
                    )
                except IdentityError as err:
                    sys.stderr.write(f"error: {err}\n")
                    failed = True
                    continue
                results.append(result)
                failed = failed or not result.template_ids
    if args.json:
        print(json.dumps([_result_json(r) for r in results], indent=2))
    else:
        for result in results:
            _report(result)
    return EXIT_FAILURE if failed else EXIT_OK


def _enroll_without_face(args: argparse.Namespace) -> int:
    """``enroll --no-face --name NAME``: an identity without a face (its policy only); no model loaded."""
    problem = no_face_problem(args)
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        return EXIT_CONFIG
    if args.name is None:
        sys.stderr.write("error: --no-face needs --name (and optionally --id)\n")
        return EXIT_CONFIG
    name = check_name(args.name)
    identity_id = check_identity_id(args.identity_id or slugify(name))
    external_id = check_external_id(args.external_id)
    consent_at = args.consent_at or utc_now()
    parse_instant(consent_at, "--consent-at")
    policy = IdentityPolicy().changed(policy_changes(args), "")
    gallery = open_gallery(load_cli_config(args))
    with gallery:
        gallery.add_identity(identity_id, name, external_id, consent_at, policy)
    if args.json:
        print(
            json.dumps({"id": identity_id, "name": name, "templates": 0, "policy": policy.public_document()})
        )
    else:
        print(f"{identity_id} ({printable(name)}): added without a face, 0 templates{_policy_text(policy)}")
    if not policy.cards:
        sys.stderr.write(
            f"warning: {identity_id} has no face and holds no card: they cannot pass until one is learned "
            f"(the MQTT learn_card command) or set (`face-appliance gallery set {identity_id} --card CARD`)\n"
        )
    return EXIT_OK


def _enroll_roster(args: argparse.Namespace) -> int:
    from .enroll_roster import enroll_roster

    given = [args.images, args.from_dir, args.name, args.identity_id, args.external_id, args.consent_at]
    if any(given) or args.face is not None or policy_options_given(args):
        sys.stderr.write(
            "error: --roster gives each person's photos, name, ids, consent and policy; give only "
            "--largest, --keep, --update, --json with it\n"
        )
        return EXIT_CONFIG
    return enroll_roster(args, load_cli_config(args))


def _identify(args: argparse.Namespace) -> int:
    config = load_cli_config(args)
    analyzer, gallery = _open_with_analyzer(config)
    threshold = config.match.threshold
    documents = []
    failed = False
    with analyzer, gallery:
        judge = AccessJudge.for_door(config.access, gallery.store)
        for source, image in _load(list(args.images)):
            if isinstance(image, Exception):
                failed = True
                documents.append({"image": source, "error": str(image), "faces": []})
                continue
            analysis = analyzer.analyze(image, still=True)
            faces = []
            if analysis.embeddings is not None:
                for index, candidates in enumerate(gallery.search(analysis.embeddings)):
                    # "this is not X": a candidate closer to one of its impostor examples is passed over
                    vetoed = next(
                        (c for c in candidates if c.impostor is not None and c.score >= threshold), None
                    )
                    allowed = [c for c in candidates if c.impostor is None]
                    best = allowed[0] if allowed else (candidates[0] if candidates else None)
                    recognised = best is not None and best.impostor is None and best.score >= threshold
                    reason = judge.judge(best.identity_id) if recognised and best else None
                    decision = (
                        "unknown" if not recognised or reason == GONE else "denied" if reason else "granted"
                    )
                    faces.append(
                        {
                            "box": [round(float(v), 1) for v in analysis.faces.xywh()[index]],
                            "identity": {"id": best.identity_id, "name": best.name}
                            if decision != "unknown" and best
                            else None,
                            "best_match": {"id": best.identity_id, "name": best.name} if best else None,
                            "score": round(best.score, 4) if best else None,
                            "threshold": threshold,
                            "decision": decision,
                            "reason": reason
                            if decision == "denied"
                            else (
                                "impostor_example" if vetoed is not None and decision == "unknown" else None
                            ),
                            "impostor": None
                            if vetoed is None or vetoed.impostor is None
                            else {
                                "identity": vetoed.identity_id,
                                "example": vetoed.impostor[0],
                                "score": round(vetoed.impostor[1], 4),
                                "identity_score": round(vetoed.score, 4),
                            },
                        }
                    )
            documents.append({"image": source, "faces": faces})
    if args.json:
        print(json.dumps({"gallery_templates": len(gallery), "images": documents}, indent=2))
    else:
        for document in documents:
            if "error" in document:
                sys.stderr.write(f"{document['error']}\n")
                continue
            print(f"{document['image']}: {len(document['faces'])} face(s)")
            for number, face in enumerate(document["faces"], 1):
                who = printable(face["identity"]["name"]) if face["identity"] else "unknown"
                score = "-" if face["score"] is None else f"{face['score']:.3f}"
                why = f" [{face['reason']}]" if face["reason"] else ""
                print(f"  {number}. {face['decision']:8} {who}{why}  score {score} (threshold {threshold:g})")
    return EXIT_FAILURE if failed else EXIT_OK


def _list(args: argparse.Namespace) -> int:
    gallery = open_gallery(load_cli_config(args))
    with gallery:
        identities = gallery.identities()
        versions = gallery.store.model_versions()
        if args.json:
            rows = [identity.document() for identity in identities]
            print(
                json.dumps(
                    {"identities": rows, "templates_by_model": versions, "searchable": len(gallery)}, indent=2
                )
            )
            return EXIT_OK
        print(f"{len(identities)} identities, {sum(versions.values())} templates ({len(gallery)} searchable)")
        for identity in identities:
            external = f"  external id {printable(identity.external_id)}" if identity.external_id else ""
            face = "" if identity.templates else ", no face"
            print(
                f"  {identity.id:24} {printable(identity.name):28} {identity.templates} template(s){face}{external}"
                f"{_policy_text(identity.policy)}"
            )
    return EXIT_OK


def _open_store(config: ApplianceConfig) -> TemplateStore:
    """The gallery's store alone (no index, no model), to read or mark beside a running daemon."""
    from ..gallery.gallery import STORE_FILE

    path = config.storage.dir / STORE_FILE
    if not path.is_file():
        raise GalleryError(f"no gallery at {path}")
    return TemplateStore.open(path, config.gallery_key_file, config.fleet.enabled)


def _look_alikes(args: argparse.Namespace) -> int:
    config = load_cli_config(args)
    with _open_store(config) as store:
        count, pairs = store.look_alikes()
        names, fleet = store.names(), store.fleet_identities()
        marked = store.distinct_pairs()
    rows = [
        {
            "id": pair.id,
            "name": names.get(pair.id),
            "like": pair.like_id,
            "like_name": names.get(pair.like_id),
            "like_enrolled_here": pair.like_id not in fleet,
            "score": round(pair.score, 4),
            "found_at": pair.found_at,
        }
        for pair in pairs
    ]
    distinct = [{"ids": [first, second], "marked_at": marked_at} for first, second, marked_at in marked]
    if args.json:
        print(json.dumps({"count": count, "look_alikes": rows, "distinct": distinct}, indent=2))
        return EXIT_OK
    print(
        f"{count} look-alike pair(s) found here at gallery.duplicate_threshold {config.gallery.duplicate_threshold:g}"
    )
    for row in rows:
        where = ", enrolled here" if row["like_enrolled_here"] else ""
        print(
            f"  {row['id']} ({printable(row['name'] or '-')}) ~ {row['like']} "
            f"({printable(row['like_name'] or '-')}{where}) {row['score']:.2f}  found {row['found_at']}"
        )
    if distinct:
        print(
            f"{len(distinct)} pair(s) marked distinct here (gallery distinct ID ID --undo lists one again):"
        )
        for first, second, marked_at in marked:
            print(f"  {first} ≠ {second}  marked {marked_at}")
    return EXIT_OK


def _distinct(args: argparse.Namespace) -> int:
    first, second = args.identity_ids
    with _open_store(load_cli_config(args)) as store:
        changed = store.mark_distinct(first, second, distinct=not args.undo)
    if args.undo:
        print(f"{first} and {second}: {'listed again' if changed else 'were not marked distinct'}")
    else:
        print(f"{first} ≠ {second}: {'marked distinct' if changed else 'marked distinct already'}")
    return EXIT_OK


def _policy_text(policy: IdentityPolicy) -> str:
    """`` · groups a, b · until 2026-12-31T17:00:00Z · SUSPENDED`` (empty for an unrestricted identity)."""
    parts = []
    if policy.groups:
        parts.append("groups " + ", ".join(policy.groups))
    document = policy.document()
    if document["valid_from"]:
        parts.append(f"from {document['valid_from']}")
    if document["valid_until"]:
        parts.append(f"until {document['valid_until']}")
    if policy.suspended:
        parts.append("SUSPENDED")
    if policy.cards:
        parts.append(f"{len(policy.cards)} card{'s' if len(policy.cards) > 1 else ''}")
    parts += [label for label, hashed in (("PIN", policy.pin), ("duress PIN", policy.duress_pin)) if hashed]
    return "".join(f" · {part}" for part in parts)


def _set(args: argparse.Namespace) -> int:
    changes = policy_changes(args)
    if not changes and not args.forget_face:
        sys.stderr.write(
            "error: nothing to change: give --valid-from, --valid-until, --groups, --add-group, "
            "--remove-group, --suspend, --resume, --card, --remove-card, --pin, --duress-pin, --clear-pin, "
            "--clear-duress-pin or --forget-face\n"
        )
        return EXIT_CONFIG
    forgotten = None
    gallery = open_gallery(load_cli_config(args))
    with gallery:
        identity = gallery.store.identity(args.identity_id)
        if identity is None:
            raise IdentityError(f"no identity {args.identity_id!r}")
        policy = identity.policy.changed(changes, "")
        if changes:  # first: a refused change (another's card) forgets nothing
            gallery.store.set_policy(identity.id, policy)
        if args.forget_face:
            forgotten = gallery.forget_face(identity.id)
    if args.json:
        document: Dict[str, Any] = {"id": identity.id, "policy": policy.public_document()}
        if forgotten is not None:
            document["templates_removed"] = forgotten
        print(json.dumps(document))
        return EXIT_OK
    if changes:
        print(f"{identity.id}:{_policy_text(policy) or ' no restriction'}")
    if forgotten is not None:
        print(
            f"{identity.id}: face forgotten, {forgotten} template(s) and crops deleted, index updated; "
            f"kept:{_policy_text(policy) or ' no restriction'}"
        )
        if not policy.cards:
            sys.stderr.write(
                f"warning: {identity.id} now has no face and holds no card: they cannot pass until one is "
                f"learned (the MQTT learn_card command) or set (`face-appliance gallery set {identity.id} "
                "--card CARD`)\n"
            )
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    gallery = open_gallery(load_cli_config(args))
    with gallery:
        count = gallery.remove(args.identity_id)
    print(f"removed {args.identity_id}: {count} template(s) and crops deleted, index updated")
    return EXIT_OK


def _templates(args: argparse.Namespace) -> int:
    gallery = open_gallery(load_cli_config(args))
    with gallery:
        if args.remove is not None:
            info = gallery.remove_template(args.identity_id, args.remove)
            if args.json:
                print(json.dumps({"id": args.identity_id, "removed": info.document()}))
            else:
                print(
                    f"removed template {info.id} ({info.origin.kind}) of {args.identity_id}: embedding and crop "
                    f"deleted, index updated"
                )
            return EXIT_OK
        infos = gallery.store.template_infos(args.identity_id)
    if args.json:
        print(
            json.dumps({"id": args.identity_id, "templates": [info.document() for info in infos]}, indent=2)
        )
        return EXIT_OK
    print(f"{args.identity_id}: {len(infos)} template(s)")
    for info in infos:
        quality = "-" if info.quality is None else f"{info.quality:.2f}"
        line = f"  {info.id:>6}  {info.origin.kind:8}  {info.created_at}  quality {quality}  {info.model_version}"
        if info.origin.source_event is not None:
            score = "-" if info.origin.score is None else f"{info.origin.score:.3f}"
            margin = "none" if info.origin.margin is None else f"{info.origin.margin:.3f}"
            line += f"  event {printable(info.origin.source_event)} score {score} margin {margin}"
        print(line)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    config = load_cli_config(args)
    passphrase = _passphrase(args, confirm=True)
    gallery = open_gallery(config)
    with gallery:
        data = gallery.export(passphrase)
        count = len(gallery.identities())
    from engines.files import atomic_writer

    with atomic_writer(args.file, mode=0o600) as stream:
        stream.write(data)
    print(f"exported {count} identities to {args.file} ({len(data)} bytes, encrypted)")
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    config = load_cli_config(args)
    try:
        data = read_bounded(args.file, MAX_BUNDLE_BYTES)
    except FileReadError as err:
        sys.stderr.write(f"error: the bundle file {err}\n")
        return EXIT_CONFIG
    passphrase = _passphrase(args, confirm=False)
    gallery = open_gallery(config)
    with gallery:
        report = gallery.import_bundle(data, passphrase, replace=args.replace)
    print(f"imported {len(report.imported)}, replaced {len(report.replaced)}, skipped {len(report.skipped)}")
    if report.tables_defined or report.tables_kept:
        kept = f"; kept as defined here: {', '.join(report.tables_kept)}" if report.tables_kept else ""
        print(f"access: defined {', '.join(report.tables_defined) or 'nothing'}{kept}")
    for identity_id, reason in report.skipped.items():
        print(f"  skipped {identity_id}: {printable(reason)}")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    gallery = open_gallery(load_cli_config(args))
    with gallery:
        problems = gallery.store.check()
    if problems:
        for problem in problems:
            print(f"problem: {problem}")
        return EXIT_FAILURE
    print(f"gallery ok: {gallery.store.path}")
    return EXIT_OK


__all__ = ["GalleryError", "add_parser"]
