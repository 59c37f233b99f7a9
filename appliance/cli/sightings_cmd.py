"""``face-appliance gallery not-this | impostors | unknowns | enroll-unknown``: the faces seen at the door
(:mod:`appliance.sightings`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from ..config import ApplianceConfig
from ..gallery.errors import IdentityError
from ..sightings.errors import NotKeptError, SightingError
from ..sightings.store import STORE_FILE, SightingStore
from .common import EXIT_FAILURE, EXIT_OK, add_config_option, load_cli_config


def add_actions(actions: Any) -> None:
    """The ``gallery`` actions of this module."""
    not_this = actions.add_parser(
        "not-this",
        help='"this is not X": an access event\'s kept face becomes an impostor example of the identity granted',
        description="Mark an access event as a wrong grant by its event_id: the face kept for it "
        "(events.keep_crops_h) becomes an impostor example of the identity it was granted to; a face closer "
        "to an identity's impostor example than to its templates is not granted to it. Removed with the "
        "identity; list or remove examples with `gallery impostors`. A running daemon uses it after "
        "`reload` (or use the MQTT command not_this).",
    )
    not_this.add_argument("event_id", metavar="EVENT_ID")
    not_this.add_argument("--id", dest="identity_id", help="the identity it is not (must be the event's)")
    not_this.add_argument("--json", action="store_true")
    add_config_option(not_this)
    not_this.set_defaults(handler=_not_this)

    impostors = actions.add_parser(
        "impostors",
        help="impostor examples (from `not-this`): list them, or --remove one",
    )
    impostors.add_argument("identity_id", nargs="?", metavar="ID")
    impostors.add_argument(
        "--remove", type=int, metavar="IMPOSTOR_ID", help="delete one (a mark made in error)"
    )
    impostors.add_argument("--json", action="store_true")
    add_config_option(impostors)
    impostors.set_defaults(handler=_impostors)

    unknowns = actions.add_parser(
        "unknowns",
        help="unknown visitors ([unknowns]): clusters, times seen, first/last seen; export a crop or purge",
        description="List the clusters of faces decided unknown (kept encrypted for unknowns.retention_h): "
        "cluster id, times seen, first and last seen. --export-crop CLUSTER DIR writes its best crop (PNG); "
        "--purge CLUSTER deletes it and its faces for real. Everything also expires at the retention.",
    )
    unknowns.add_argument("--export-crop", nargs=2, metavar=("CLUSTER", "DIR"))
    unknowns.add_argument("--purge", metavar="CLUSTER")
    unknowns.add_argument("--json", action="store_true")
    add_config_option(unknowns)
    unknowns.set_defaults(handler=_unknowns)

    enrol = actions.add_parser(
        "enroll-unknown",
        help="enrol a frequent unknown visitor from the crops of their cluster (with their consent)",
        description="Enrol the person of a cluster of unknown visitors from its kept crops (and the other "
        "views kept with them, events.walk_up_views), through the enrolment checks of `enroll` (one face, "
        "size, sharpness, pose); the best are enrolled. --consent asserts that the person "
        "consented (GDPR art. 9). The cluster is purged once enrolled.",
    )
    enrol.add_argument("cluster", metavar="CLUSTER")
    enrol.add_argument("--id", dest="identity_id", required=True)
    enrol.add_argument("--name", required=True)
    enrol.add_argument("--consent", action="store_true", help="the person consented to enrolment")
    enrol.add_argument("--json", action="store_true")
    add_config_option(enrol)
    enrol.set_defaults(handler=_enroll_unknown)
    _add_enroll_event(actions)


def _add_enroll_event(actions: Any) -> None:
    from .access_cmd import add_policy_options

    walk_up = actions.add_parser(
        "enroll-event",
        help="walk-up enrolment: enrol the face kept for an access event decided unknown (with consent)",
        description="Enrol the visitor of an access event the door decided unknown, from the face kept for "
        "it (events.keep_crops_h, or [unknowns]), through the enrolment checks of `enroll`. --consent "
        "asserts that the person consented (GDPR art. 9). The face leaves the sightings store once "
        "enrolled. A running daemon uses the new identity after `reload` (or use the MQTT command enroll "
        "with event_id).",
    )
    walk_up.add_argument("event_id", metavar="EVENT_ID")
    walk_up.add_argument("--name", required=True)
    walk_up.add_argument("--id", dest="identity_id", help="identity id (default: from the name)")
    walk_up.add_argument("--external-id", help="an id in another system, e.g. a badge number")
    walk_up.add_argument("--consent", action="store_true", help="the person consented to enrolment")
    add_policy_options(walk_up, changing=False)
    walk_up.add_argument("--json", action="store_true")
    add_config_option(walk_up)
    walk_up.set_defaults(handler=_enroll_event)


def open_sightings(config: ApplianceConfig, required: bool = True) -> Optional[SightingStore]:
    """The sightings store of ``config.storage.dir``; ``None`` when there is none and not ``required``.

    Raises:
        NotKeptError: there is none and it is ``required``.
    """
    path = config.storage.dir / STORE_FILE
    if not path.exists():
        if required:
            raise NotKeptError(
                f"no faces are kept in {config.storage.dir} (no {STORE_FILE}): set events.keep_crops_h or "
                "[unknowns] enabled, and run the daemon"
            )
        return None
    return SightingStore.open(path, config.gallery_key_file, config.events.keep_crops_max)


def _refused(args: argparse.Namespace, err: Exception) -> int:
    """A refusal on standard error with its code (``not_kept``, ``not_a_grant``, …), and with ``--json``
    as ``{"ok": false, "error": {"code", "message"}}`` as the MQTT command answers it."""
    code = getattr(err, "code", "refused")
    if args.json:
        print(json.dumps({"ok": False, "error": {"code": code, "message": str(err)}}))
    sys.stderr.write(f"error ({code}): {err}\n")
    return EXIT_FAILURE


def _no_consent() -> int:
    sys.stderr.write(
        "error: enrolling a person needs their consent: pass --consent once they have given it\n"
    )
    return EXIT_FAILURE


def _not_this(args: argparse.Namespace) -> int:
    from ..sightings.impostors import mark_not
    from .gallery_cmd import open_gallery

    config = load_cli_config(args)
    gallery = open_gallery(config)
    with gallery:
        # As the daemon: with events.keep_crops_h 0 no kept face is used (those kept before only expire).
        sightings = open_sightings(config, required=False) if config.events.keep_crops_h > 0 else None
        try:
            analyzer = None

            def embed(crops: Any) -> Any:  # only for a face of another model version
                nonlocal analyzer
                if analyzer is None:
                    from ..runtime.loading import load_analyzer

                    analyzer = load_analyzer(config, liveness=False)
                return analyzer.embedder.embed(crops)

            try:
                outcome = mark_not(
                    gallery, sightings, args.event_id, args.identity_id, embed, config.events.keep_crops_h
                )
            finally:
                if analyzer is not None:
                    analyzer.close()
        except (SightingError, IdentityError) as err:
            return _refused(args, err)
        finally:
            if sightings is not None:
                sightings.close()
    if args.json:
        print(json.dumps({"ok": True, "result": outcome}))
    else:
        done = "was already" if outcome["already"] else "is now"
        print(
            f"event {outcome['event_id']}: the face {done} impostor example {outcome['impostor_id']} of "
            f"{outcome['identity_id']} ({outcome['impostors']} in all); a running daemon uses it after `reload`"
        )
    return EXIT_OK


def _impostors(args: argparse.Namespace) -> int:
    from .gallery_cmd import open_gallery

    gallery = open_gallery(load_cli_config(args))
    with gallery:
        if args.remove is not None:
            info = gallery.store.remove_impostor(args.remove)
            if info is None:
                sys.stderr.write(f"error: no impostor example {args.remove}\n")
                return EXIT_FAILURE
            print(
                f"removed impostor example {info.id} of {info.identity_id}; a running daemon forgets it after `reload`"
            )
            return EXIT_OK
        rows = gallery.store.impostors(args.identity_id)
    if args.json:
        print(json.dumps({"impostors": [row.document() for row in rows]}, indent=2))
        return EXIT_OK
    print(f"{len(rows)} impostor example(s)")
    for row in rows:
        score = "-" if row.score is None else f"{row.score:.3f}"
        print(f"  {row.id:5} {row.identity_id:24} event {row.source_event}  score {score}  {row.created_at}")
    return EXIT_OK


def _unknowns(args: argparse.Namespace) -> int:
    config = load_cli_config(args)
    store = open_sightings(config, required=False)
    if store is None:
        clusters: list = []
    else:
        with store:
            if args.purge is not None:
                faces = store.purge_cluster(args.purge)
                print(f"purged cluster {args.purge}: {faces} face(s) deleted")
                return EXIT_OK
            if args.export_crop is not None:
                return _export_crop(store, *args.export_crop)
            clusters = store.clusters()
    if args.json:
        print(json.dumps({"clusters": [cluster.document() for cluster in clusters]}, indent=2))
        return EXIT_OK
    print(f"{len(clusters)} cluster(s) of unknown visitors")
    if not config.unknowns.enabled:
        print("  (unknowns.enabled is false: no unknown faces are kept; set it to keep and group them)")
    for cluster in clusters:
        document = cluster.document()
        print(
            f"  {cluster.id}  seen {cluster.seen:4}  first {document['first_seen']}  last {document['last_seen']}"
            f"  crops {cluster.crops}  expires {document['expires_at']}"
        )
    return EXIT_OK


def _export_crop(store: SightingStore, cluster_id: str, folder: str) -> int:
    from pathlib import Path

    import cv2

    faces = store.cluster_faces(cluster_id)
    if not faces or faces[0].crop is None:
        raise NotKeptError(f"cluster {cluster_id!r} has no crop kept")
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"unknown-{cluster_id}.png"
    ok, png = cv2.imencode(".png", faces[0].crop)
    if not ok:
        raise SightingError("cannot encode the crop")
    from engines.files import atomic_writer

    with atomic_writer(path, mode=0o600) as stream:
        stream.write(png.tobytes())
    print(f"wrote {path} (the best of {len(faces)} crop(s) kept; it is personal data: delete it when done)")
    return EXIT_OK


def _enroll_unknown(args: argparse.Namespace) -> int:
    from ..enrollment import Enroller, crop_as_photo
    from ..gallery.store import check_identity_id, utc_now
    from ..gallery.text import check_name
    from .gallery_cmd import _open_with_analyzer

    if not args.consent:
        return _no_consent()
    check_identity_id(args.identity_id)
    check_name(args.name)
    config = load_cli_config(args)
    store = open_sightings(config)
    assert store is not None
    with store:
        photos = []
        for n, face in enumerate(store.cluster_faces(args.cluster), 1):
            photos.append((f"cluster {args.cluster} face {n}", crop_as_photo(face.crop)))
            photos.extend(
                (f"cluster {args.cluster} face {n}, view {rank}", crop_as_photo(view))
                for rank, view in enumerate(store.views(face.event_id), 2)
            )
        if not photos:
            raise NotKeptError(f"cluster {args.cluster!r} has no crop kept")
        analyzer, gallery = _open_with_analyzer(config)
        with analyzer, gallery:
            if gallery.store.identity(args.identity_id) is not None:
                sys.stderr.write(f"error: identity {args.identity_id!r} exists; choose another --id\n")
                return EXIT_FAILURE
            result = Enroller(analyzer, gallery, config.gallery).enroll(
                args.identity_id, args.name, photos, consent_at=utc_now(), largest=True
            )
        if result.template_ids:
            store.purge_cluster(args.cluster)
    if args.json:
        print(
            json.dumps(
                {
                    "id": result.identity_id,
                    "templates": len(result.template_ids),
                    "photos": [
                        {"source": p.source, "accepted": p.accepted, "reason": p.reason}
                        for p in result.photos
                    ],
                }
            )
        )
    else:
        print(f"{result.identity_id}: {len(result.template_ids)} template(s) from cluster {args.cluster}")
        for photo in result.photos:
            print(f"  {'ok ' if photo.accepted else 'NO '} {photo.source}: {photo.reason}")
    return EXIT_OK if result.template_ids else EXIT_FAILURE


def _enroll_event(args: argparse.Namespace) -> int:
    from ..access.policy import IdentityPolicy
    from ..enrollment import Enroller
    from ..gallery.store import check_identity_id, slugify, utc_now
    from ..gallery.text import check_external_id, check_name
    from ..sightings.walk_up import enroll_from_event
    from .access_cmd import policy_changes
    from .gallery_cmd import _open_with_analyzer, _report, _result_json

    if not args.consent:
        return _no_consent()
    identity_id = args.identity_id or slugify(args.name)
    check_identity_id(identity_id)
    check_name(args.name)
    check_external_id(args.external_id)
    policy = IdentityPolicy().changed(policy_changes(args), "")
    config = load_cli_config(args)
    store = open_sightings(config)
    assert store is not None
    with store:
        analyzer, gallery = _open_with_analyzer(config)
        with analyzer, gallery:
            try:
                result = enroll_from_event(
                    Enroller(analyzer, gallery, config.gallery),
                    store,
                    args.event_id,
                    identity_id,
                    args.name,
                    args.external_id,
                    utc_now(),
                    policy,
                )
            except (SightingError, IdentityError) as err:
                return _refused(args, err)
    if args.json:
        print(json.dumps(_result_json(result), indent=2))
    else:
        _report(result)
        if result.template_ids:
            print("a running daemon uses it after `reload`")
    return EXIT_OK if result.template_ids else EXIT_FAILURE


__all__ = ["add_actions", "open_sightings"]
