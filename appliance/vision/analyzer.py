"""The face analyzer: detection, alignment, liveness and embedding on back-ends it is given.

:class:`FaceAnalyzer` is what the commands (``detect``, ``evaluate``, ``enroll``, ``identify``) and the
daemon's pipeline use. It receives loaded back-ends (:meth:`FaceAnalyzer.assemble`); which back-end a
model runs on, the fallback rules and INT8 files are decided by :mod:`appliance.runtime.loading`
(``load_analyzer`` for the command line, the model runtime in the daemon).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol

import cv2
import numpy as np

from engines.backends import InferenceBackend
from engines.registry import EMBEDDER_MODELS, LIVENESS_MODELS

from ..config import ApplianceConfig
from .align import align_faces
from .embedder import Embedder
from .faces import Faces
from .liveness import LivenessChecker, LivenessResult
from .mtcnn import MtcnnDetector, MtcnnSettings
from .yunet import YunetDetector, YunetSettings

logger = logging.getLogger(__name__)

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


class FaceAnalyzer:
    """Detector + aligner + embedder (+ liveness) on loaded back-ends.

    Use :meth:`assemble` (or :func:`appliance.runtime.loading.load_analyzer`); pass the parts directly
    in tests.
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

    @classmethod
    def assemble(
        cls,
        config: ApplianceConfig,
        loaded: Dict[str, InferenceBackend],
        max_batch: Optional[int] = None,
        degraded: Optional[str] = None,
    ) -> FaceAnalyzer:
        """Build the analyzer from loaded back-ends keyed by registry model name.

        The analyzer owns them (:meth:`close` releases them) unless its builder keeps that role — the
        daemon's :class:`appliance.runtime.ModelRuntime` assembles a fresh analyzer at every model
        switch and closes back-ends itself. Liveness is on when the liveness models are among ``loaded``.
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
        return cls(detector, embedder, checker, config.detector.max_side, list(loaded.values()), degraded)

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
