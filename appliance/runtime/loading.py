"""How the appliance opens its models: the one place that knows the back-end rules.

* :func:`backend_options` — the engines-side options for the configured back-end (TensorRT profiles
  follow the detector settings).
* :func:`effective_backend` — the back-end that runs after the fallback rule (TensorRT unavailable
  with ``backend.fallback = "cpu"``: the CPU, degraded).
* :func:`model_targets` / :func:`target_for` — which file each model of the configured pipeline
  opens from: the registry's, or an installed package's (with the package's INT8 calibration cache).
  A damaged installed package falls back to the registry's model, degraded, so the door stays usable.
* :class:`ModelLoader` — opens one target on the configured back-end: TensorRT from the engine cache
  (through :class:`appliance.runtime.engines.EngineSupervisor` in the daemon: CPU while an engine
  builds), the CPU back-end from the gate-passed INT8 (QDQ) model when ``backend.int8`` is set, or
  the FP32 model.
* :func:`load_analyzer` — the configured models as a :class:`FaceAnalyzer`, for the command line
  (one thread: the caller's); a command that never embeds (``detect``) has its embedder opened on
  first use only (:class:`DeferredBackend`).

The vision code receives back-ends; it never decides a fallback or looks for INT8 files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from engines.backends import BackendOptions, InferenceBackend, backend_class, open_model
from engines.errors import BackendUnavailableError, EngineLoadError, ModelMissingError
from engines.int8 import find_int8
from engines.registry import KIND_EMBEDDER, ModelSpec, TensorSpec, get_model, required_models
from engines.store import ModelStore
from engines.tensorrt.service import EngineTarget, target_options

from ..config import ApplianceConfig
from ..updates.active import ActiveModels, InstalledModel
from ..vision.analyzer import RETRY_PAD_FRACTION, FaceAnalyzer

if TYPE_CHECKING:
    from .engines import EngineSupervisor

logger = logging.getLogger(__name__)


def backend_options(config: ApplianceConfig, build_missing: bool = True) -> BackendOptions:
    """The engines-side options for the configured back-end.

    The TensorRT profiles follow the detector settings: MTCNN sees images of at most
    ``detector.max_side`` on either side (a portrait camera is as possible as a landscape one), and
    up to ``RETRY_PAD_FRACTION`` more on each side when a still photo is retried with a border; P-Net
    is tuned for the camera's frame when its size is configured (the largest, with several cameras). ``build_missing`` is the TensorRT
    back-end's (the daemon turns it off and builds missing engines in the background). Prepared ONNX
    models (MobileFaceNet with a dynamic batch) are cached in ``{engine_dir}/prepared``, beside the
    engines: a later process then needs no ``onnx`` import to load them.
    """
    trt = config.backend.tensorrt
    side = config.detector.max_side
    padded = side + 2 * round(RETRY_PAD_FRACTION * side)
    opt_frame = (side, side)
    # With several cameras, P-Net is tuned for the largest configured frame.
    sized = [c for c in config.configured_cameras if c.width is not None and c.height is not None]
    if sized:
        camera = max(sized, key=lambda c: int(c.width or 0) * int(c.height or 0))
        width, height = int(camera.width or 0), int(camera.height or 0)
        shrink = min(1.0, side / max(width, height))
        opt_frame = (max(12, round(height * shrink)), max(12, round(width * shrink)))
    return BackendOptions(
        threads=config.backend.threads,
        device=trt.device,
        precision=trt.precision,
        engine_dir=os.fspath(config.engine_dir),
        max_batch=trt.max_batch,
        workspace_mb=trt.workspace_mb,
        dla_core=trt.dla_core,
        max_frame=(padded, padded),
        min_face=config.detector.min_face_px,
        yunet_max_side=config.detector.yunet.input_side,
        calibration_dir=os.fspath(config.calibration_dir),
        int8_dir=os.fspath(config.int8_dir),
        opt_frame=opt_frame,
        embedder_batch=config.embedder.batch_size,
        build_missing=build_missing,
        prepared_dir=os.fspath(config.engine_dir / "prepared"),
    )


def effective_backend(config: ApplianceConfig) -> Tuple[str, Optional[str]]:
    """``(key, degraded reason or None)``: the back-end that will run, after the fallback rule.

    Raises:
        BackendUnavailableError: the configured back-end is unavailable and there is no fallback.
    """
    key = config.backend.type
    try:
        backend_class(key)
    except BackendUnavailableError as err:
        if key == "cpu" or config.backend.fallback != "cpu":
            raise
        logger.warning("%s; continuing on the CPU back-end (degraded)", err)
        return "cpu", str(err)
    return key, None


def target_for(config: ApplianceConfig, name: str, entry: Optional[InstalledModel]) -> EngineTarget:
    """The target of model ``name``: an installed package's model (``entry``) or the registry's."""
    base = get_model(name)
    if entry is None:
        return EngineTarget(name, base, Path(config.models.dir))
    active = ActiveModels(config.storage.dir)
    folder = active.root / entry.directory
    cache = folder / entry.calibration_file if entry.calibration_file else None
    return EngineTarget(name, entry.spec(base), folder, cache)


def model_targets(
    config: ApplianceConfig, liveness: Optional[bool] = None, names: Optional[Sequence[str]] = None
) -> Tuple[List[EngineTarget], List[str]]:
    """The models the configured pipeline loads (or ``names``), resolved to their active files.

    Returns:
        ``(targets, notes)``: ``notes`` says which installed packages, or whether the active-model
        pointer, were found damaged; those models fall back to the registry's file so the door does
        not stay shut.

    Raises:
        ModelRegistryError: a name the registry does not know.
    """
    if names is None:
        use_liveness = config.liveness.enabled if liveness is None else liveness
        names = [
            spec.name for spec in required_models(config.detector.type, config.embedder.model, use_liveness)
        ]
    active = ActiveModels(config.storage.dir)
    targets: List[EngineTarget] = []
    notes: List[str] = [active.damaged] if active.damaged else []
    for name in dict.fromkeys(names):
        entry = active.entry(name)
        target = target_for(config, name, entry)
        if entry is not None:
            try:
                ModelStore(target.folder).require(target.spec)
            except ModelMissingError as err:
                logger.error("%s; using the registry's %s instead", err, name)
                notes.append(f"installed {name} package is damaged; running the registry model")
                target = target_for(config, name, None)
        targets.append(target)
    return targets, notes


def open_int8_or_fp32(
    target: EngineTarget, config: ApplianceConfig, options: BackendOptions
) -> InferenceBackend:
    """``target`` on the CPU back-end from its installed, gate-passed INT8 (QDQ) model (``backend.int8``,
    see ``face-appliance calibrate``), or from the FP32 model with a warning saying why not."""
    spec = target.spec
    path, detail = find_int8(config.int8_dir, spec)
    if path is None:
        logger.warning("%s: backend.int8 is set but %s; using the FP32 model", spec.name, detail)
        return open_model("cpu", spec, target.folder, options)
    try:
        backend = backend_class("cpu")(spec, path.read_bytes(), options)
    except (OSError, EngineLoadError) as err:
        logger.warning("%s: the INT8 model cannot be loaded (%s); using the FP32 model", spec.name, err)
        return open_model("cpu", spec, target.folder, options)
    logger.info("%s: running the INT8 model %s", spec.name, detail)
    return backend


class ModelLoader:
    """Opens models on the configured back-end, on the calling thread (which then owns them).

    Args:
        config: the configuration.
        engines: the daemon's engine supervisor (TensorRT in use): it opens each model from its cached
            engine, or on the CPU while the engine is built in the background. Without it (the
            command line), a missing engine is built when the model opens.
    """

    def __init__(self, config: ApplianceConfig, engines: Optional[EngineSupervisor] = None) -> None:
        self.config = config
        self.engines = engines
        self.key, degraded = effective_backend(config)
        self.options = backend_options(config)
        #: Why the models do not run as configured (the CPU for TensorRT, a damaged package), if they do not.
        self.degraded: Optional[str] = degraded

    def note(self, reason: str) -> None:
        """Record a degradation (the first one is kept as the headline)."""
        self.degraded = self.degraded or reason

    def open(self, target: EngineTarget) -> InferenceBackend:
        """Open ``target``; the calling thread owns the back-end from now on.

        Raises:
            EngineError: the model is missing, fails verification, or cannot be loaded (with
                ``backend.fallback = "none"``: also when its TensorRT engine cannot be built).
        """
        if self.key == "tensorrt":
            if self.engines is not None:
                return self.engines.open(target)
            try:
                return open_model(
                    "tensorrt", target.spec, target.folder, target_options(self.options, target)
                )
            except EngineLoadError as err:
                if self.config.backend.fallback != "cpu":
                    raise
                logger.warning("%s; loading %s on the CPU back-end (degraded)", err, target.name)
                self.note(f"{target.name} runs on the CPU: {err}")
                return self.open_cpu(target)
        return self.open_cpu(target)

    def open_cpu(self, target: EngineTarget) -> InferenceBackend:
        """``target`` on the CPU back-end (INT8 QDQ model when ``backend.int8`` is set and one passed)."""
        if self.config.backend.int8:
            return open_int8_or_fp32(target, self.config, self.options)
        return open_model("cpu", target.spec, target.folder, self.options)

    @property
    def max_batch(self) -> Optional[int]:
        """The largest batch the back-ends take in one call (TensorRT's profile), ``None`` for any."""
        return self.options.max_batch if self.key == "tensorrt" else None


def open_all(loader: ModelLoader, targets: Sequence[EngineTarget]) -> Dict[str, InferenceBackend]:
    """Open every target (registry name → back-end); on a failure the ones opened are closed again."""
    loaded: Dict[str, InferenceBackend] = {}
    try:
        for target in targets:
            loaded[target.name] = loader.open(target)
    except BaseException:
        for backend in loaded.values():
            backend.close()
        raise
    return loaded


class DeferredBackend(InferenceBackend):
    """A model opened the first time it runs, not before.

    ``detect`` never embeds, yet the analyzer has an embedder and reports its version: the embedder's
    spec is all it reads. Opening MobileFaceNet costs about 0.5 s on a 2-core machine (its batch
    dimension is made dynamic with the ``onnx`` package, whose import alone is 0.4 s), most of a
    one-photo ``detect``. The file is verified when the deferred back-end is made, so a missing or
    damaged model fails as early as before.

    Args:
        spec: the model's registry entry.
        opener: opens the real back-end; called once, on the first :meth:`run` (or :meth:`warmup`).
    """

    key = "deferred"

    def __init__(self, spec: ModelSpec, opener: Callable[[], InferenceBackend]) -> None:
        # InferenceBackend.__init__ opens the model; this one only keeps the way to open it.
        self.spec = spec
        self.options = BackendOptions()
        self._opener: Optional[Callable[[], InferenceBackend]] = opener
        self._backend: Optional[InferenceBackend] = None
        self._closed = False

    @property
    def opened(self) -> bool:
        """Whether the real back-end has been opened."""
        return self._backend is not None

    def _target(self) -> InferenceBackend:
        if self._backend is None:
            if self._opener is None:
                raise EngineLoadError(f"{self.spec.name}: the deferred back-end is closed")
            logger.debug("%s: opening the deferred model on first use", self.spec.name)
            self._backend, self._opener = self._opener(), None
        return self._backend

    def _open(self, model: bytes) -> None:
        raise EngineLoadError(f"{self.spec.name}: a deferred back-end opens through its opener")

    def _io(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        backend = self._target()
        return list(backend.inputs), list(backend.outputs)

    def _run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        outputs = self._target().run(feeds)
        return [outputs[tensor.name] for tensor in self.spec.outputs]

    def _release(self) -> None:
        backend, self._backend, self._opener = self._backend, None, None
        if backend is not None:
            backend.close()


def load_analyzer(
    config: ApplianceConfig, liveness: Optional[bool] = None, embedder: bool = True
) -> FaceAnalyzer:
    """Load the configured models on the configured back-end, for the command line.

    The analyzer owns the back-ends (close it); the calling thread is their owner.

    Args:
        liveness: override ``liveness.enabled``.
        embedder: open the embedder now; ``False`` opens it on its first use (:class:`DeferredBackend`),
            for a command that may never embed.

    Raises:
        EngineError: a model is missing, fails verification, or cannot be loaded.
    """
    loader = ModelLoader(config)
    targets, notes = model_targets(config, liveness)
    for note in notes:
        loader.note(note)
    deferred = [] if embedder else [target for target in targets if target.spec.kind == KIND_EMBEDDER]
    opened = open_all(loader, [target for target in targets if target not in deferred])
    loaded: Dict[str, InferenceBackend] = {}
    try:
        for target in targets:  # in the targets' order: model_versions lists them so
            if target in deferred:
                ModelStore(target.folder).require(target.spec)
                loaded[target.name] = DeferredBackend(target.spec, _opener(loader, target))
            else:
                loaded[target.name] = opened[target.name]
    except BaseException:
        for backend in opened.values():
            backend.close()
        raise
    return FaceAnalyzer.assemble(config, loaded, loader.max_batch, loader.degraded)


def _opener(loader: ModelLoader, target: EngineTarget) -> Callable[[], InferenceBackend]:
    return lambda: loader.open(target)


__all__ = [
    "DeferredBackend",
    "ModelLoader",
    "backend_options",
    "effective_backend",
    "load_analyzer",
    "model_targets",
    "open_all",
    "open_int8_or_fp32",
    "target_for",
]
