"""``face-appliance engines build | list``: TensorRT engines for the configured pipeline, on the device."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from engines.errors import EngineError
from engines.tensorrt.cache import BUILT_PRECISIONS, REQUESTED_PRECISIONS, read_manifest
from engines.tensorrt.platform import tensorrt_unavailable
from engines.tensorrt.service import EngineService, EngineTarget

from ..runtime.loading import backend_options, model_targets
from .common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, add_config_option, load_cli_config

_INSTALL_HINT = (
    "engines are built on the Jetson (or CUDA machine) that runs them: TensorRT comes with JetPack "
    "(sudo apt install nvidia-jetpack), pycuda with pip install 'face-appliance[jetson]'"
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("engines", help="build and list the TensorRT engines")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    build = actions.add_parser(
        "build",
        help="build the TensorRT engine of every model the configuration needs (on this device)",
        description="Build each engine the configured pipeline needs into the engine cache "
        "(backend.tensorrt.engine_dir), with the optimization profiles the detector settings call for, "
        "and print the precision chosen per model and why. Engines already cached for this TensorRT, "
        "GPU and settings are kept unless --force. Exit 1 when TensorRT is unavailable or a build failed.",
    )
    build.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        default=None,
        help="registry names of the models to build (default: those the configured pipeline loads)",
    )
    build.add_argument(
        "--precision",
        choices=REQUESTED_PRECISIONS,
        default=None,
        help="override backend.tensorrt.precision: auto = INT8 where the GPU has fast INT8 and the model "
        "has calibration data, else FP16",
    )
    build.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="DIR",
        help="INT8 calibration sets (<model>.npy, from `face-appliance calibrate`); default "
        "backend.tensorrt.calibration_dir",
    )
    build.add_argument("--force", action="store_true", help="rebuild engines that are already cached")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_option(build)
    build.set_defaults(handler=_build)

    listing = actions.add_parser("list", help="list the cached engines and their manifests")
    listing.add_argument("--dir", type=Path, default=None, help="engine cache (default: the configuration's)")
    add_config_option(listing)
    listing.set_defaults(handler=_list)


class _Progress:
    """A tqdm bar per model, moved by the builder's ``progress(phase, done, total)`` reports.

    TensorRT 10 reports its optimizer phases from its own worker threads, so updates hold a lock.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._bar: Optional[Any] = None
        self._phase = ""
        self._model = ""

    def start(self, model: str) -> None:
        self._model = model
        if not self.enabled:
            return
        from tqdm import tqdm

        with self._lock:
            self._bar = tqdm(total=1, desc=model, unit="step", leave=False, file=sys.stderr)

    def report(self, phase: str, done: int, total: int) -> None:
        with self._lock:
            bar = self._bar
            if bar is None:
                return
            if phase != self._phase:
                self._phase = phase
                bar.reset(total=max(1, total))
                bar.set_description(f"{self._model}: {phase}", refresh=False)
            bar.n = min(max(0, done), max(1, total))
            bar.refresh()

    def finish(self) -> None:
        with self._lock:
            bar, self._bar = self._bar, None
            self._phase = ""
        if bar is not None:
            bar.close()


def _build(args: argparse.Namespace) -> int:
    config = load_cli_config(args)
    reason = tensorrt_unavailable()
    if reason is not None:
        sys.stderr.write(f"TensorRT unavailable: {reason}\n  → {_INSTALL_HINT}\n")
        return EXIT_FAILURE
    calibration = args.calibration if args.calibration is not None else config.calibration_dir
    if args.calibration is not None and not calibration.is_dir():
        sys.stderr.write(f"error: the calibration folder {calibration} does not exist\n")
        return EXIT_CONFIG
    options = dataclasses.replace(
        backend_options(config),
        precision=args.precision or config.backend.tensorrt.precision,
        calibration_dir=str(calibration),
    )
    targets, notes = model_targets(config, names=args.models)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    progress = _Progress(enabled=not args.no_progress and sys.stderr.isatty())
    service = EngineService(options, progress=progress.report)
    print(f"engine cache: {service.engine_dir}")
    print(f"device: {service.platform.describe()}")
    failures: List[str] = []
    for target in targets:
        try:
            _build_one(service, target, args.force, progress)
        except EngineError as err:
            failures.append(target.name)
            sys.stderr.write(f"{target.name}: {err}\n")
        except KeyboardInterrupt:
            sys.stderr.write(f"{target.name}: interrupted\n")
            raise
        finally:
            progress.finish()
    if failures:
        sys.stderr.write(f"{len(failures)} of {len(targets)} engine(s) failed: {', '.join(failures)}\n")
        return EXIT_FAILURE
    return EXIT_OK


def _build_one(service: EngineService, target: EngineTarget, force: bool, progress: _Progress) -> None:
    found = service.lookup(target)
    if found.hit and not force and found.manifest is not None:
        manifest = found.manifest
        print(
            f"{target.name:16} {manifest.precision.upper():5} {manifest.target:6} cached  "
            f"{manifest.precision_reason}"
        )
        return
    if not found.hit:
        print(f"{target.name:16} building: {found.reason}", flush=True)
    progress.start(target.name)
    started = time.monotonic()
    built = service.build(target)
    progress.finish()
    manifest = built.manifest
    print(
        f"{target.name:16} {manifest.precision.upper():5} {manifest.target:6} built in "
        f"{time.monotonic() - started:.1f} s  {manifest.precision_reason}"
    )


def _list(args: argparse.Namespace) -> int:
    directory = args.dir if args.dir is not None else load_cli_config(args).engine_dir
    print(f"engine cache: {directory}")
    rows: List[Dict[str, str]] = []
    broken = 0
    for path in sorted(Path(directory).glob("*/*.json")):
        try:
            manifest = read_manifest(path)
        except (OSError, ValueError) as err:
            broken += 1
            sys.stderr.write(f"{path}: unusable manifest: {err}\n")
            continue
        engine = path.with_suffix(".engine")
        rows.append(
            {
                "model": manifest.model,
                "precision": manifest.precision.upper() if manifest.precision in BUILT_PRECISIONS else "?",
                "target": manifest.target,
                "platform": manifest.platform.describe(),
                "size": f"{manifest.engine_size / 2**20:.1f} MiB" if engine.exists() else "engine missing",
                "key": manifest.key,
            }
        )
    if not rows:
        print("no engines cached")
    for row in rows:
        print(
            f"{row['model']:16} {row['precision']:5} {row['target']:6} {row['size']:>14}  "
            f"{row['key']}  {row['platform']}"
        )
    return EXIT_FAILURE if broken else EXIT_OK
