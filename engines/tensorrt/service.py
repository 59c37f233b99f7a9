"""Plan, build and open the TensorRT engines of registry models on one device.

:class:`EngineService` is the TensorRT edge that ``face-appliance engines build`` and the daemon's
model runtime use. For a model (:class:`EngineTarget`: registry name, spec, folder of its ONNX file)
it derives the engine request (:func:`engines.tensorrt.cache.engine_request`: the cache key's inputs —
ONNX, TensorRT, GPU, precision, profiles, INT8 data), checks the cache by the manifest, builds the
engine into the cache, and opens it from the cache. ``tensorrt`` and ``pycuda`` are imported only
when an engine is built or opened.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..backends import BackendOptions, InferenceBackend, open_model
from ..errors import EngineBuildError, EngineLoadError, FileReadError
from ..files import read_bounded
from ..prepare import load_model_bytes
from ..registry import ModelSpec
from ..store import ModelStore
from .cache import (
    EngineRequest,
    LookupResult,
    calibration_cache_path,
    calibration_set_path,
    engine_request,
    lookup,
)
from .platform import PlatformInfo

if TYPE_CHECKING:
    from .builder import BuiltEngine, ProgressCallback

logger = logging.getLogger(__name__)

#: A TensorRT INT8 calibration cache is a few kilobytes (one scale per tensor); refuse anything huge.
CALIBRATION_CACHE_MAX_BYTES = 16 * 2**20


def read_calibration_cache(model: str, path: Path) -> bytes:
    """The bytes of a calibration cache file, read with a size bound and only from a regular file
    (:func:`engines.files.read_bounded`).

    Raises:
        EngineBuildError: the file is missing, not a regular file, too large or unreadable.
    """
    try:
        return read_bounded(path, CALIBRATION_CACHE_MAX_BYTES)
    except FileReadError as err:
        raise EngineBuildError(
            f"{model}: the calibration cache {err}; a TensorRT calibration cache is a regular file of at most "
            f"{CALIBRATION_CACHE_MAX_BYTES} bytes"
        ) from err


def target_options(options: BackendOptions, target: EngineTarget) -> BackendOptions:
    """``options`` for ``target``: with the model's own calibration cache (a package's) when it has one."""
    if target.calibration_cache is None:
        return options
    return dataclasses.replace(options, calibration_cache=os.fspath(target.calibration_cache))


@dataclass(frozen=True)
class EngineTarget:
    """One model of the pipeline: its registry name, the spec to load, and the folder of its ONNX file
    (``models.dir``, or an installed package's folder after a model update).

    ``calibration_cache`` is the INT8 calibration cache that came with the model (a model package's
    ``calibration.cache``); when set, the INT8 engine is built from it rather than from the
    configured calibration set or cache.
    """

    name: str
    spec: ModelSpec
    folder: Path
    calibration_cache: Optional[Path] = None


class EngineService:
    """Plans, builds and opens the TensorRT engines of pipeline models on one device.

    Args:
        options: the TensorRT back-end options (``backend_options(config)``), which decide the
            engine requests; ``options.engine_dir`` is the cache.
        progress: ``progress(phase, done, total)`` during builds (TensorRT 10's build phases).
        cancel: set it to cancel a running build.
        platform: the device; probed (TensorRT version, GPU, L4T) on first use when ``None``.
    """

    def __init__(
        self,
        options: BackendOptions,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[threading.Event] = None,
        platform: Optional[PlatformInfo] = None,
    ) -> None:
        if options.engine_dir is None:
            raise EngineLoadError("the TensorRT engine service needs an engine directory")
        self.options = options
        self.engine_dir = Path(options.engine_dir)
        self.progress = progress
        self.cancel = cancel
        self._platform = platform

    @property
    def platform(self) -> PlatformInfo:
        """The running TensorRT and GPU (probed once).

        Raises:
            EngineBuildError: TensorRT or pycuda is missing, or the GPU cannot be queried.
        """
        if self._platform is None:
            from .platform import probe_platform

            self._platform = probe_platform(self.options.device)
        return self._platform

    def onnx(self, target: EngineTarget) -> bytes:
        """The prepared ONNX bytes of ``target`` (verified against the registry's sha256 first).

        Raises:
            ModelMissingError, ModelPreparationError: as :func:`engines.backends.open_model`.
        """
        path = ModelStore(target.folder).require(target.spec)
        return load_model_bytes(target.spec, path, self.options.prepared_dir)

    def request(self, target: EngineTarget) -> EngineRequest:
        """The engine request (cache key inputs) of ``target`` on this device.

        Raises:
            EngineLoadError: the options give no valid profile, or the calibration data is unreadable.
        """
        try:
            return engine_request(target.spec, self.onnx(target), self.platform, self.options_for(target))
        except (ValueError, OSError) as err:
            raise EngineLoadError(f"{target.name}: invalid TensorRT options: {err}") from err

    def options_for(self, target: EngineTarget) -> BackendOptions:
        """The back-end options of ``target``: the service's, with the model's own calibration cache."""
        return target_options(self.options, target)

    def lookup(self, target: EngineTarget) -> LookupResult:
        """What the cache holds for ``target``: a usable engine, or the reason there is none."""
        return lookup(self.engine_dir, self.request(target))

    def check(self, target: EngineTarget) -> Optional[str]:
        """``None`` when a cached engine's manifest fits ``target`` on this device, else why not."""
        return self.lookup(target).reason

    def build(self, target: EngineTarget, cancel: Optional[threading.Event] = None) -> BuiltEngine:
        """Build ``target``'s engine into the cache (INT8-calibrated from its set when it has one).

        Raises:
            EngineBuildError: the build failed or was cancelled.
            CalibrationDataError: the calibration set does not fit the model.
        """
        from .builder import EngineBuilder

        request = self.request(target)
        onnx = self.onnx(target)
        builder = EngineBuilder(
            device=self.options.device,
            workspace_mb=self.options.workspace_mb,
            platform=self.platform,
            progress=self.progress,
            cancel=cancel or self.cancel,
        )
        calibration_cache = self.options_for(target).calibration_cache
        if calibration_cache is not None:
            cache = read_calibration_cache(target.name, Path(calibration_cache))
            return builder.build(target.spec, onnx, request, self.engine_dir, calibration_cache=cache)
        set_path = calibration_set_path(self.options.calibration_dir, target.name)
        if set_path is None or request.calibration_sha256 is None:
            return builder.build(target.spec, onnx, request, self.engine_dir)
        from .calibrator import EntropyCalibrator

        with EntropyCalibrator.from_set(
            target.spec, set_path, calibration_cache_path(self.engine_dir, request)
        ) as calibrator:
            return builder.build(target.spec, onnx, request, self.engine_dir, calibrator=calibrator)

    def open(self, target: EngineTarget) -> InferenceBackend:
        """Open ``target`` on the TensorRT back-end from the cache; never builds.

        Raises:
            EngineMissingError: no cached engine fits (the message says what differs), or the cached
                one does not deserialize.
            EngineLoadError: TensorRT or CUDA failed otherwise.
        """
        options = dataclasses.replace(self.options_for(target), build_missing=False)
        return open_model("tensorrt", target.spec, target.folder, options)


__all__ = [
    "CALIBRATION_CACHE_MAX_BYTES",
    "EngineService",
    "EngineTarget",
    "read_calibration_cache",
    "target_options",
]
