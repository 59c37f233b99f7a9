"""The appliance's side of INT8 calibration: its configuration and vision code, as calibration takes them.

:mod:`calibration` imports only :mod:`engines` (DESIGN §3: ``calibration → engines``). What it needs
from the vision side it states as small interfaces (:mod:`calibration.interfaces`); this module
implements them from the configuration and the vision code, for ``face-appliance calibrate``, the
tests and the benchmarks:

* :func:`vision_side` — everything calibration takes, in one value;
* :class:`FileDecoder` — images through :func:`read_image`, videos through the video-file camera
  source, their errors turned into :class:`calibration.errors.SourceError` with the same message;
* :func:`analyzer_from` and :class:`AnalyzerPipeline` — the configured MTCNN pipeline on the
  back-ends calibration loaded (recording ones for the sets, QDQ INT8 ones for the report);
* :class:`ApplianceMeasures` — the detectors' box IoU and ``evaluate``'s verification figures;
* :func:`labelled_items` — a labelled folder as ``evaluate`` reads it (CSV), or one sub-folder per
  identity.

Nothing here decides what a calibration set holds or how INT8 is judged against FP32: that is
calibration's. The calibration code is handed the appliance's very pipeline, so what it records and
compares is what the appliance runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Generator, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np

from calibration.errors import CalibrationDataError, SourceError
from calibration.interfaces import FoundFaces, PipelineBuilder, VisionSide
from calibration.report import Labelled
from calibration.sets import EMBEDDER_MODEL, IMAGE_SUFFIXES
from engines.backends import InferenceBackend
from engines.registry import LIVENESS_MODELS

from .camera import CameraError, FileSource
from .config import ApplianceConfig
from .evaluation import VerificationReport, pair_scores, verification_report
from .vision.align import align_faces
from .vision.analyzer import FaceAnalyzer
from .vision.boxes import iou_matrix
from .vision.embedder import Embedder
from .vision.image import ImageError, read_image
from .vision.liveness import LivenessChecker
from .vision.mtcnn import MtcnnDetector, MtcnnSettings


class FileDecoder:
    """Source images and video files as the appliance reads them (a calibration ``FrameDecoder``)."""

    def read_image(self, path: Path) -> np.ndarray:
        """``(H, W, 3)`` uint8 BGR; see :func:`read_image`.

        Raises:
            SourceError: the image cannot be read or decoded (the :class:`ImageError` message).
        """
        try:
            return read_image(path)
        except ImageError as err:
            raise SourceError(str(err)) from err

    def read_video(self, path: Path) -> Generator[np.ndarray, None, None]:
        """Every frame of the video file, ``(H, W, 3)`` uint8 BGR, through :class:`FileSource`.

        Raises:
            SourceError: while iterating: the file cannot be opened or decoding failed (the
                :class:`CameraError` message).
        """
        video = FileSource(path)
        try:
            video.open()
            while True:
                image = video.read()
                if image is None:
                    return
                yield image
        except CameraError as err:
            raise SourceError(str(err)) from err
        finally:
            video.close()


def mtcnn_settings(config: ApplianceConfig) -> MtcnnSettings:
    """The configured MTCNN cascade parameters."""
    return MtcnnSettings(
        min_face=config.detector.min_face_px,
        scale_factor=config.detector.mtcnn.scale_factor,
        thresholds=cast(Tuple[float, float, float], tuple(config.detector.mtcnn.thresholds)),
    )


def analyzer_from(
    config: ApplianceConfig, backends: Mapping[str, InferenceBackend], liveness: bool = True
) -> FaceAnalyzer:
    """The configured MTCNN pipeline on loaded back-ends keyed by registry name (the caller keeps
    ownership of them). Liveness is checked when ``liveness`` and both liveness models are there."""
    detector = MtcnnDetector(
        backends["mtcnn-pnet"], backends["mtcnn-rnet"], backends["mtcnn-onet"], mtcnn_settings(config)
    )
    checker = None
    if liveness and all(name in backends for name in LIVENESS_MODELS):
        checker = LivenessChecker([backends[name] for name in LIVENESS_MODELS], config.liveness.threshold)
    embedder = Embedder(backends[EMBEDDER_MODEL], config.embedder.batch_size)
    return FaceAnalyzer(detector, embedder, checker, config.detector.max_side)


class AnalyzerPipeline:
    """A :class:`FaceAnalyzer` as a calibration ``FacePipeline`` (it does not own the analyzer's back-ends).

    Args:
        analyzer: the pipeline, e.g. from :func:`analyzer_from`.
    """

    def __init__(self, analyzer: FaceAnalyzer) -> None:
        self.analyzer = analyzer

    @property
    def liveness_threshold(self) -> Optional[float]:
        """``liveness.threshold``, or ``None`` without the liveness models."""
        checker = self.analyzer.liveness
        return None if checker is None else checker.threshold

    def run(self, image: np.ndarray, still: bool, embed: bool) -> None:
        """:meth:`FaceAnalyzer.analyze` on a ``(H, W, 3)`` uint8 BGR frame (the result is not needed)."""
        self.analyzer.analyze(image, still=still, embed=embed)

    def find(self, image: np.ndarray) -> FoundFaces:
        """Detect as a still photo (as ``evaluate`` does) and align only the face with the largest box."""
        faces = self.analyzer.detect(image, still=True)
        index = faces.largest()
        crop = None if index is None else align_faces(image, faces.landmarks[index : index + 1])[0]
        return FoundFaces(faces.boxes, crop)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """``(N, 112, 112, 3)`` uint8 aligned crops → ``(N, D)`` float32 unit embeddings."""
        return self.analyzer.embedder.embed(crops)

    def live_scores(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 live scores of the faces at ``boxes`` ``(N, 4)``.

        Raises:
            ValueError: the analyzer has no liveness models.
        """
        checker = self.analyzer.liveness
        if checker is None:
            raise ValueError("this pipeline has no liveness models")
        return checker.check(image, boxes).scores


def pipeline_builder(config: ApplianceConfig) -> PipelineBuilder:
    """Builds :class:`AnalyzerPipeline` on given back-ends with the configured settings."""

    def build(backends: Mapping[str, InferenceBackend]) -> AnalyzerPipeline:
        return AnalyzerPipeline(analyzer_from(config, backends))

    return build


class ApplianceMeasures:
    """The detectors' box IoU and ``evaluate``'s verification figures (a calibration ``Measures``)."""

    def iou_matrix(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """``(N, M)`` float32 IoU of boxes ``(N, 4)`` and ``(M, 4)``; see :func:`iou_matrix`."""
        return iou_matrix(first, second)

    def pair_scores(self, embeddings: np.ndarray, labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """``(genuine, impostor)`` float64 cosines of ``(N, D)`` embeddings; see :func:`pair_scores`."""
        return pair_scores(embeddings, labels)

    def verification_report(self, genuine: np.ndarray, impostor: np.ndarray) -> VerificationReport:
        """ROC AUC, EER and TAR at FAR 1e-1, 1e-2, 1e-3; see :func:`verification_report`.

        Raises:
            ValueError: no genuine or no impostor pairs.
        """
        return verification_report(genuine, impostor)


def pipeline_settings(config: ApplianceConfig) -> Dict[str, Any]:
    """The settings a calibration set depends on, as ``sets.json`` records them."""
    return {
        "min_face_px": config.detector.min_face_px,
        "scale_factor": config.detector.mtcnn.scale_factor,
        "thresholds": list(config.detector.mtcnn.thresholds),
        "max_side": config.detector.max_side,
    }


def vision_side(config: ApplianceConfig) -> VisionSide:
    """Everything calibration takes from the appliance, for ``config``: the registry models folder,
    ``backend.threads`` on the CPU back-end, the MTCNN pipeline with the configured detector,
    embedder and liveness settings, the file decoder and the measures."""
    return VisionSide(
        models_dir=config.models.dir,
        threads=config.backend.threads,
        build=pipeline_builder(config),
        decoder=FileDecoder(),
        measures=ApplianceMeasures(),
        settings=pipeline_settings(config),
    )


def labelled_items(directory: Path, labels: Optional[Path] = None) -> List[Labelled]:
    """The labelled images of ``directory``, in a deterministic order.

    Args:
        directory: the folder.
        labels: a CSV with columns ``path`` and ``identity`` (paths relative to ``directory``), as
            ``evaluate`` reads; ``None``: one sub-folder per identity, its images labelled with its name.

    Raises:
        CalibrationDataError: no such folder, an unreadable CSV, or no labelled image.
    """
    if not directory.is_dir():
        raise CalibrationDataError(f"labelled folder {directory} does not exist or is not a folder")
    items: List[Labelled] = []
    if labels is not None:
        from .cli.vision_cmd import read_labels

        try:
            rows = read_labels(labels)
        except (OSError, ValueError) as err:
            raise CalibrationDataError(f"labels {labels}: {err}") from err
        items = [Labelled(directory / row["path"], row["identity"]) for row in rows]
    else:
        for folder in sorted(entry for entry in directory.iterdir() if entry.is_dir()):
            if folder.name.startswith("."):
                continue
            for image in sorted(folder.iterdir()):
                if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                    items.append(Labelled(image, folder.name))
    if not items:
        raise CalibrationDataError(
            f"no labelled image in {directory}: give a CSV (--labels) with columns path, identity, "
            "or one sub-folder of images per identity"
        )
    return items
