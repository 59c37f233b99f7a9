"""``face-appliance gallery not-this | impostors``: the faces seen at the door (:mod:`appliance.sightings`)."""

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
            code = getattr(err, "code", "refused")
            if args.json:
                print(json.dumps({"ok": False, "error": {"code": code, "message": str(err)}}))
            sys.stderr.write(f"error ({code}): {err}\n")
            return EXIT_FAILURE
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


__all__ = ["add_actions", "open_sightings"]
