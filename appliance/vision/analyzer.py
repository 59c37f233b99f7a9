"""The face analyzer: detection, alignment, liveness and embedding, built from the configuration.

:class:`FaceAnalyzer` is what the commands (``detect``, ``evaluate``, ``enroll``, ``identify``) and the
daemon's pipeline use. It owns the back-ends it loads and closes them in :meth:`FaceAnalyzer.close`.

Back-end choice: ``backend.type``; when that is TensorRT and TensorRT cannot start, ``backend.fallback
= "cpu"`` continues on ONNX Runtime with a logged warning and :attr:`FaceAnalyzer.degraded` set (the
daemon publishes it); ``fallback = "none"`` raises.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol

import cv2
import numpy as np

from engines.backends import BackendOptions, InferenceBackend, backend_class, open_model
from engines.errors import BackendUnavailableError, EngineLoadError, ModelMissingError
from engines.int8 import find_int8
from engines.registry import DETECTOR_MODELS, EMBEDDER_MODELS, LIVENESS_MODELS, ModelSpec, get_model
from engines.store import ModelStore

from ..config import ApplianceConfig
from ..updates.active import ActiveModels
from .align import align_faces
from .embedder import Embedder
from .faces import Faces
from .liveness import LivenessChecker, LivenessResult
from .mtcnn import MtcnnDetector, MtcnnSettings
from .yunet import YunetDetector, YunetSettings

logger = logging.getLogger(__name__)

#: Opens one model, ``opener(name, spec, folder)``, in place of :func:`engines.backends.open_model`.
ModelOpener = Callable[[str, ModelSpec, Path], InferenceBackend]

#: Border added around a still image in which no face was found (tight crops: MTCNN needs context).
RETRY_PAD_FRACTION = 0.3


class Detector(Protocol):
    """What :class:`MtcnnDetector` and :class:`YunetDetector` have in common."""

    def detect(self, image: np.ndarray) -> Faces: ...


@dataclass(frozen=True)
class Analysis:
    """Everything found in one image.

    Attributes:
        faces: detections in image pixels.
        crops: ``(N, 112, 112, 3)`` uint8 aligned crops, or ``None`` when not asked for.
        embeddings: ``(N, D)`` float32 unit vectors, or ``None``.
        liveness: per-face live scores, or ``None`` when liveness is off or not asked for.
    """

    faces: Faces
    crops: Optional[np.ndarray] = None
    embeddings: Optional[np.ndarray] = None
    liveness: Optional[LivenessResult] = None


def backend_options(config: ApplianceConfig, build_missing: bool = True) -> BackendOptions:
    """The engines-side options for the configured back-end.

    The TensorRT profiles follow the detector settings: MTCNN sees images of at most
    ``detector.max_side`` on either side (a portrait camera is as possible as a landscape one), and
    up to ``RETRY_PAD_FRACTION`` more on each side when a still photo is retried with a border; P-Net
    is tuned for the camera's frame when its size is configured. ``build_missing`` is the TensorRT
    back-end's (the daemon turns it off and builds missing engines in the background).
    """
    trt = config.backend.tensorrt
    side = config.detector.max_side
    padded = side + 2 * round(RETRY_PAD_FRACTION * side)
    camera = config.camera
    opt_frame = (side, side)
    if camera.width is not None and camera.height is not None:
        shrink = min(1.0, side / max(camera.width, camera.height))
        opt_frame = (max(12, round(camera.height * shrink)), max(12, round(camera.width * shrink)))
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
        opt_frame=opt_frame,
        embedder_batch=config.embedder.batch_size,
        build_missing=build_missing,
    )


def effective_backend(config: ApplianceConfig) -> tuple:
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


def open_int8_or_fp32(
    spec: ModelSpec, folder: Path, config: ApplianceConfig, options: BackendOptions
) -> InferenceBackend:
    """``spec`` on the CPU back-end from its installed, gate-passed INT8 (QDQ) model (``backend.int8``,
    see ``face-appliance calibrate``), or from the FP32 model in ``folder`` with a warning saying why not."""
    path, detail = find_int8(config.int8_dir, spec)
    if path is None:
        logger.warning("%s: backend.int8 is set but %s; using the FP32 model", spec.name, detail)
        return open_model("cpu", spec, folder, options)
    try:
        backend = backend_class("cpu")(spec, path.read_bytes(), options)
    except (OSError, EngineLoadError) as err:
        logger.warning("%s: the INT8 model cannot be loaded (%s); using the FP32 model", spec.name, err)
        return open_model("cpu", spec, folder, options)
    logger.info("%s: running the INT8 model %s", spec.name, detail)
    return backend


class FaceAnalyzer:
    """Detector + aligner + embedder (+ liveness) on loaded back-ends.

    Use :meth:`from_config`; pass the parts directly in tests.
    """

    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        liveness: Optional[LivenessChecker] = None,
        max_side: int = 1920,
        backends: Optional[List[InferenceBackend]] = None,
        degraded: Optional[str] = None,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.liveness = liveness
        self.max_side = max_side
        self.degraded = degraded
        self._backends = list(backends or [])
        #: registry model name → back-end, for analyzers built by :meth:`assemble`
        self.loaded: Dict[str, InferenceBackend] = {}
        self._config: Optional[ApplianceConfig] = None
        self._max_batch: Optional[int] = None

    @classmethod
    def from_config(
        cls, config: ApplianceConfig, liveness: Optional[bool] = None, opener: Optional[ModelOpener] = None
    ) -> FaceAnalyzer:
        """Load the configured models on the configured back-end.

        Args:
            liveness: override ``liveness.enabled``.
            opener: when the TensorRT back-end is in use, opens each model ``(name, spec, folder)``
                in its place — the daemon's engine supervisor (:mod:`appliance.trt_engines`), which
                applies its own fallback rules.

        Raises:
            EngineError: a model is missing, fails verification, or cannot be loaded.
        """
        key, degraded = effective_backend(config)
        options = backend_options(config)
        use_liveness = config.liveness.enabled if liveness is None else liveness
        names = [*DETECTOR_MODELS[config.detector.type], *EMBEDDER_MODELS[config.embedder.model]]
        if use_liveness:
            names.extend(LIVENESS_MODELS)
        active = ActiveModels(config.storage.dir)
        loaded: Dict[str, InferenceBackend] = {}
        try:
            for name in names:
                spec, folder = active.resolve(name, config.models.dir)
                if active.entry(name) is not None:
                    try:
                        ModelStore(folder).require(spec)
                    except ModelMissingError as err:
                        # A damaged installed package must not keep the door shut: use the registry's model.
                        logger.error("%s; using the registry's %s instead", err, name)
                        spec, folder = get_model(name), config.models.dir
                        degraded = (
                            degraded or f"installed {name} package is damaged; running the registry model"
                        )
                try:
                    if opener is not None and key == "tensorrt":
                        loaded[name] = opener(name, spec, folder)
                    elif key == "cpu" and config.backend.int8:
                        loaded[name] = open_int8_or_fp32(spec, folder, config, options)
                    else:
                        loaded[name] = open_model(key, spec, folder, options)
                except EngineLoadError as err:
                    if key == "cpu" or config.backend.fallback != "cpu":
                        raise
                    logger.warning("%s; loading %s on the CPU back-end (degraded)", err, name)
                    loaded[name] = open_model("cpu", spec, folder, options)
                    degraded = degraded or f"{name} runs on the CPU: {err}"
        except BaseException:
            for backend in loaded.values():
                backend.close()
            raise
        max_batch = options.max_batch if key == "tensorrt" else None
        return cls.assemble(config, loaded, max_batch, degraded)

    @classmethod
    def assemble(
        cls,
        config: ApplianceConfig,
        loaded: Dict[str, InferenceBackend],
        max_batch: Optional[int] = None,
        degraded: Optional[str] = None,
    ) -> FaceAnalyzer:
        """Build the analyzer from loaded back-ends keyed by registry model name; it owns them from now on.

        Liveness is on when the liveness models are among ``loaded``.
        """
        if config.detector.type == "mtcnn":
            settings = MtcnnSettings(
                min_face=config.detector.min_face_px,
                scale_factor=config.detector.mtcnn.scale_factor,
                thresholds=tuple(config.detector.mtcnn.thresholds),  # type: ignore[arg-type]
            )
            detector: Detector = MtcnnDetector(
                loaded["mtcnn-pnet"], loaded["mtcnn-rnet"], loaded["mtcnn-onet"], settings, max_batch
            )
        else:
            yunet = config.detector.yunet
            detector = YunetDetector(
                loaded["yunet"],
                YunetSettings(
                    yunet.score_threshold, yunet.nms_threshold, yunet.input_side, config.detector.min_face_px
                ),
            )
        embedder = Embedder(loaded[EMBEDDER_MODELS[config.embedder.model][0]], config.embedder.batch_size)
        checker = None
        if all(name in loaded for name in LIVENESS_MODELS):
            checker = LivenessChecker([loaded[name] for name in LIVENESS_MODELS], config.liveness.threshold)
        analyzer = cls(detector, embedder, checker, config.detector.max_side, list(loaded.values()), degraded)
        analyzer.loaded = dict(loaded)
        analyzer._config = config
        analyzer._max_batch = max_batch
        return analyzer

    def replaced(self, name: str, backend: InferenceBackend) -> FaceAnalyzer:
        """A new analyzer with ``backend`` in place of model ``name``; the rest is handed over to it.

        Afterwards this analyzer owns only the back-end that was replaced (closing it releases just
        that one), so a switch can be undone by swapping back before closing.

        Raises:
            KeyError: this analyzer was not built by :meth:`assemble` or has no model ``name``.
        """
        if self._config is None or name not in self.loaded:
            raise KeyError(f"no model {name!r} in this analyzer")
        loaded = dict(self.loaded)
        old = loaded[name]
        loaded[name] = backend
        fresh = FaceAnalyzer.assemble(self._config, loaded, self._max_batch, self.degraded)
        self.loaded = {name: old}
        self._backends = [old]
        return fresh

    @property
    def model_versions(self) -> Dict[str, str]:
        """``{"detector": …, "embedder": …, "liveness": …}`` as ``name@version`` strings."""
        return {
            backend.spec.kind: f"{backend.spec.family}@{backend.spec.version}" for backend in self._backends
        }

    def detect(self, image: np.ndarray, still: bool = False) -> Faces:
        """Detect faces in a ``(H, W, 3)`` uint8 BGR image.

        Images larger than ``max_side`` are scaled down first. ``still`` (an uploaded photo rather than
        a camera frame): when nothing is found, try again with a black border around the image, which
        lets MTCNN find faces in tight crops.
        """
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        work = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        faces = self.detector.detect(work)
        if not len(faces) and still:
            pad = round(RETRY_PAD_FRACTION * max(work.shape[:2]))
            padded = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            faces = self.detector.detect(padded).transformed(1.0, -pad, -pad)
        return faces.transformed(1.0 / scale) if scale < 1.0 else faces

    def analyze(
        self, image: np.ndarray, still: bool = False, embed: bool = True, faces: Optional[Faces] = None
    ) -> Analysis:
        """Detect (unless ``faces`` is given), align, check liveness (when enabled) and embed."""
        if faces is None:
            faces = self.detect(image, still=still)
        if not len(faces):
            return Analysis(faces)
        crops = align_faces(image, faces.landmarks)
        liveness = self.liveness.check(image, faces.boxes) if self.liveness is not None else None
        embeddings = self.embedder.embed(crops) if embed else None
        return Analysis(faces, crops, embeddings, liveness)

    def close(self) -> None:
        """Release every back-end. Safe to call more than once."""
        backends, self._backends = self._backends, []
        for backend in backends:
            backend.close()

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
