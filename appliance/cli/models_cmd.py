"""``face-appliance models fetch | list``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List

from engines.fetch import ModelFetcher, tqdm_progress
from engines.registry import MODELS, ModelSpec, select_models
from engines.store import ModelState, ModelStore

from .common import EXIT_FAILURE, EXIT_OK, add_config_option, load_cli_config


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="fetch and list the ONNX models")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    fetch = actions.add_parser(
        "fetch",
        help="download models from their upstream URLs or a mirror, verified by size and sha256",
        description="Download models (all by default) into the models directory. Each file is "
        "verified against the registry's size and sha256 before it takes its final name; an "
        "interrupted download resumes.",
    )
    fetch.add_argument("names", nargs="*", metavar="NAME", help="models to fetch (default: all)")
    fetch.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="DIR_OR_URL",
        help="a mirror folder or http(s):// URL laid out like shared/models (default: upstream URLs)",
    )
    fetch.add_argument("--dest", type=Path, default=None, help="models directory (default: models.dir)")
    fetch.add_argument(
        "--retries", type=int, default=4, help="retries per file for network errors (default 4)"
    )
    fetch.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_option(fetch)
    fetch.set_defaults(handler=_fetch)

    listing = actions.add_parser(
        "list", help="show which models are present and verified (exit 1 if a present file is wrong)"
    )
    listing.add_argument("--dir", type=Path, default=None, help="models directory (default: models.dir)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    add_config_option(listing)
    listing.set_defaults(handler=_list)


def _models_dir(args: argparse.Namespace, explicit: Any) -> Path:
    return Path(explicit) if explicit is not None else load_cli_config(args).models.dir


def _fetch(args: argparse.Namespace) -> int:
    specs: List[ModelSpec] = select_models(args.names) if args.names else list(MODELS)
    dest = _models_dir(args, args.dest)
    fetcher = ModelFetcher(
        dest,
        source=args.source,
        retries=args.retries,
        timeout_s=args.timeout,
        progress=None if args.no_progress else tqdm_progress,
    )
    results, errors = fetcher.fetch_all(specs)
    for result in results:
        print(f"{result.spec.name:16} {result.action:10} {result.path}")
    if errors:
        sys.stderr.write(f"{len(errors)} of {len(specs)} model(s) failed:\n")
        for error in errors:
            sys.stderr.write(f"  {error}\n")
        return EXIT_FAILURE
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    store = ModelStore(_models_dir(args, args.dir))
    statuses = store.check_all(MODELS)
    if args.json:
        rows = [
            {
                "name": s.spec.name,
                "kind": s.spec.kind,
                "version": s.spec.version,
                "file": s.spec.file,
                "size": s.spec.size,
                "sha256": s.spec.sha256,
                "state": s.state.value,
                "path": str(s.path),
            }
            for s in statuses
        ]
        print(json.dumps({"dir": str(store.root), "models": rows}, indent=2))
    else:
        print(f"models directory: {store.root}")
        print(f"{'NAME':16} {'KIND':9} {'VERSION':16} {'SIZE':>9}  STATE")
        for s in statuses:
            print(f"{s.spec.name:16} {s.spec.kind:9} {s.spec.version:16} {s.spec.size:>9}  {s.state.value}")
    # Missing files are normal (a pipeline needs only some models); a present but wrong file is not.
    broken = [s for s in statuses if not s.ok and s.state is not ModelState.MISSING]
    for s in broken:
        sys.stderr.write(f"{s.spec.name}: {s.detail}\n")
    return EXIT_FAILURE if broken else EXIT_OK
