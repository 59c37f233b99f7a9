"""What calibration takes from the appliance's vision code, as small typed interfaces.

DESIGN §3: imports go one way, ``calibration → engines``. Yet a calibration set must hold what the
networks are fed *by the appliance's own pipeline* (MTCNN's pyramid and crops, the 5-point
alignment, the liveness context crops), and the INT8-vs-FP32 report must run that same pipeline,
read images as the appliance reads them and compute the figures ``evaluate`` reports. So the
calibration code states here what it needs, and the appliance implements it
(``appliance.calibration_inputs``, built from the configuration):

* :class:`FrameDecoder` — source files to ``(H, W, 3)`` uint8 BGR frames;
* :class:`FacePipeline` — the vision pipeline on back-ends calibration loaded, made by a
  :data:`PipelineBuilder`: for the sets, on back-ends wrapped to record what each network is fed;
  for the report, on the FP32 models and on the QDQ INT8 ones;
* :class:`Measures` — box overlaps and the verification figures (TAR at FAR …);
* :class:`GateLimits` — the ``[calibration]`` limits of the configuration;
* :class:`VisionSide` — the decoder, the builder and the measures together with the models folder,
  the CPU threads and the pipeline settings that ``sets.json`` records.

Why interfaces rather than moving the orchestration into the appliance: what is recorded and how it
is sampled, which faces are matched and how the two precisions are measured, and the gate, are
calibration's logic (DESIGN §3 lists the sets and the report under ``calibration/``); what the
appliance owns — configuration, decoding, the vision classes, the verification maths shared with
``evaluate`` — is reached only through these few members. Calibration never builds a vision object
itself, so what it records and compares is the appliance's very pipeline, not a re-implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Generator, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from engines.backends import InferenceBackend


class FrameDecoder(Protocol):
    """Reads source images and video files into frames."""

    def read_image(self, path: Path) -> np.ndarray:
        """The image file as ``(H, W, 3)`` uint8 BGR.

        Raises:
            SourceError: the file cannot be read, is not decodable, or is not a usable image.
        """
        ...

    def read_video(self, path: Path) -> Generator[np.ndarray, None, None]:
        """The frames of a video file in order, each ``(H, W, 3)`` uint8 BGR.

        The file is opened when the first frame is asked for and released when the generator ends
        or is closed (a caller that stops early closes it).

        Raises:
            SourceError: while iterating: the file cannot be opened, or decoding failed.
        """
        ...


@dataclass(frozen=True)
class FoundFaces:
    """The faces a pipeline found in a still photo.

    Attributes:
        boxes: ``(N, 4)`` float32 ``[x1, y1, x2, y2]`` in image pixels.
        largest: ``(112, 112, 3)`` uint8 BGR aligned crop (ArcFace template) of the face with the
            largest box; ``None`` when no face was found.
    """

    boxes: np.ndarray
    largest: Optional[np.ndarray]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


class FacePipeline(Protocol):
    """The face pipeline (detection, alignment, liveness, embedding) on a fixed set of back-ends."""

    @property
    def liveness_threshold(self) -> Optional[float]:
        """The live score at which a face passes; ``None`` when the pipeline has no liveness models."""
        ...

    def run(self, image: np.ndarray, still: bool, embed: bool) -> None:
        """Analyze one ``(H, W, 3)`` uint8 BGR frame as the appliance does: detect (a ``still`` photo
        is retried with a border when nothing is found), align, check liveness when the pipeline has
        the models, and embed when ``embed``. Only what the networks are fed matters here."""
        ...

    def find(self, image: np.ndarray) -> FoundFaces:
        """Detect the faces of a ``(H, W, 3)`` uint8 BGR still photo and align the largest one."""
        ...

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """``(N, 112, 112, 3)`` uint8 aligned crops → ``(N, D)`` float32 unit embeddings."""
        ...

    def live_scores(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 live scores in ``[0, 1]`` of the faces at ``boxes`` ``(N, 4)`` of ``image``.

        Raises:
            ValueError: the pipeline has no liveness models (:attr:`liveness_threshold` is ``None``).
        """
        ...


#: Builds the pipeline on back-ends keyed by registry model name (the three MTCNN stages, the
#: embedder, and optionally both liveness models: liveness is checked when they are there). The
#: caller keeps ownership of the back-ends and closes them.
PipelineBuilder = Callable[[Mapping[str, InferenceBackend]], FacePipeline]


class Verification(Protocol):
    """Verification figures of labelled embeddings over all genuine and impostor pairs."""

    @property
    def tar_at_far(self) -> Mapping[str, Optional[float]]:
        """TAR per FAR target keyed as the report writes it (``"0.01"``); ``None`` when not measurable."""
        ...

    def to_json(self) -> Dict[str, Any]:
        """The figures as the report stores them (ROC AUC, EER, TAR at FAR, thresholds, pairs, notes)."""
        ...


class Measures(Protocol):
    """The measures the report shares with the detectors and with ``evaluate``."""

    def iou_matrix(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Intersection over union of boxes ``(N, 4)`` and ``(M, 4)`` ``[x1, y1, x2, y2]`` → ``(N, M)`` float32."""
        ...

    def pair_scores(self, embeddings: np.ndarray, labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Cosine of every unordered pair of ``(N, D)`` unit embeddings → ``(genuine, impostor)`` float64."""
        ...

    def verification_report(self, genuine: np.ndarray, impostor: np.ndarray) -> Verification:
        """ROC AUC, EER and TAR at FAR 1e-1, 1e-2 and 1e-3 of the pair scores.

        Raises:
            ValueError: no genuine or no impostor pairs.
        """
        ...


class GateLimits(Protocol):
    """The limits an INT8 model must meet to be installed (the configuration's ``[calibration]``)."""

    @property
    def min_cosine_mean(self) -> float: ...

    @property
    def max_tar_drop(self) -> float: ...

    @property
    def min_detection_agreement(self) -> float: ...

    @property
    def min_liveness_agreement(self) -> float: ...


@dataclass(frozen=True)
class VisionSide:
    """Everything calibration takes from the appliance, in one value.

    Attributes:
        models_dir: the registry's FP32 model files (verified when opened).
        threads: ONNX Runtime threads for the CPU back-end (0: one per core).
        build: the pipeline on given back-ends.
        decoder: source images and video files to frames.
        measures: box overlaps and verification figures.
        settings: the pipeline settings a calibration set depends on (minimum face size, MTCNN
            scale factor and thresholds, largest image side), recorded in ``sets.json``.
    """

    models_dir: Path
    threads: int
    build: PipelineBuilder
    decoder: FrameDecoder
    measures: Measures
    settings: Mapping[str, Any] = field(default_factory=dict)
