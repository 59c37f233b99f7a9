"""Calibration sets: the tensors each network is fed in operation, recorded from our own pipeline.

A set is made by running the FP32 pipeline (CPU back-end) over source images and video frames and
keeping a copy of what reaches each network. The vision code runs as it is — MTCNN's pyramid and
crops, the 5-point alignment, the liveness context crops, every network's ``Preprocessing`` — with
each back-end wrapped in a :class:`RecordingBackend`, so a stored tensor is preprocessed by the very
code path inference uses; nothing is re-implemented here.

That pipeline and the image and video readers belong to the appliance, which this package never
reaches directly (DESIGN §3: ``calibration → engines``): :func:`build_sets` is handed them as a
:class:`calibration.interfaces.VisionSide`. This module loads the models, wraps them in recorders,
has the pipeline built on the recorders, decodes the sources through the given decoder, and owns
everything about the sets themselves — which samples are kept, their layout, and the files.

One file per model, ``<dir>/<model name>.npy``: float32, batch first, **in the network's own input
layout** (which is what a calibrator feeds and what ONNX Runtime's quantizer runs):

================  ====================================================  ======================
model             samples                                               per-sample shape
================  ====================================================  ======================
mtcnn-pnet        tiles of the pyramid levels P-Net is fed (below)      ``(64, 64, 3)``
mtcnn-rnet        the 24×24 crops of P-Net's candidates                 ``(24, 24, 3)``
mtcnn-onet        the 48×48 crops of R-Net's survivors                  ``(48, 48, 3)``
mobilefacenet     aligned 112×112 face crops (ArcFace template)         ``(3, 112, 112)``
minifasnet-*      80×80 context crops (×2.7 / ×4.0 the face box)        ``(3, 80, 80)``
================  ====================================================  ======================

The embedder and liveness sets are NCHW, ``(N, C, H, W)``. The MTCNN networks (Caffe weights through
Keras) take NHWC with height and width swapped, ``(N, W, H, 3)``, so their sets are stored that way;
``sets.json`` records each set's layout and ``transpose_hw``.

P-Net is fully convolutional and sees one pyramid level at a time, every level a different size. Its
set has one fixed calibration shape, :data:`PNET_TILE` square (64 × 64 in the arranged layout, a
27 × 27 output map): up to :data:`PNET_TILES_PER_LEVEL` tiles are cut from each level P-Net was
fed, on a non-overlapping grid; a level smaller than a tile is padded by repeating its edge pixels.
A TensorRT calibrator uses ``(batch, 64, 64, 3)`` as P-Net's calibration profile.

Each source frame contributes at most :data:`RNET_CROPS_PER_FRAME` R-Net and
:data:`ONET_CROPS_PER_FRAME` O-Net crops (evenly spaced in the order MTCNN produces them), so one
crowded photo cannot dominate; every detected face goes to the embedder and liveness sets. A set
larger than ``max_count`` keeps evenly spaced samples over all sources. Sources are taken in the
order given, folders sorted by relative path, so the same inputs give byte-identical sets.

``<dir>/sets.json`` records counts, each source's sha256 (and the skipped ones with the reason), the
preprocessing, the pipeline settings, each ``.npy`` file's sha256, warnings and the creation time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, cast

import numpy as np

from engines.backends import InferenceBackend, open_model
from engines.backends.base import BackendOptions, Feeds
from engines.files import atomic_writer, sha256_file
from engines.registry import LIVENESS_MODELS, ModelSpec, get_model

from .errors import CalibrationDataError, SourceError
from .interfaces import FrameDecoder, VisionSide

logger = logging.getLogger(__name__)

SETS_SCHEMA = 1
SETS_FILE = "sets.json"

MTCNN_MODELS: Tuple[str, ...] = ("mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet")
EMBEDDER_MODEL = "mobilefacenet"
#: Every model a calibration set (and an INT8 model) can be made for, in pipeline order.
CALIBRATED_MODELS: Tuple[str, ...] = (*MTCNN_MODELS, EMBEDDER_MODEL, *LIVENESS_MODELS)
#: Short names accepted on the command line.
MODEL_ALIASES: Dict[str, Tuple[str, ...]] = {
    "pnet": ("mtcnn-pnet",),
    "rnet": ("mtcnn-rnet",),
    "onet": ("mtcnn-onet",),
    "mtcnn": MTCNN_MODELS,
    "embedder": (EMBEDDER_MODEL,),
    "liveness": LIVENESS_MODELS,
    "minifasnet": LIVENESS_MODELS,
}

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})

DEFAULT_MAX_COUNT = 500
#: Every ``video_step``-th frame of a video is used (about two a second at 30 fps): neighbouring
#: frames are nearly identical and add nothing to the ranges.
DEFAULT_VIDEO_STEP = 15
DEFAULT_MAX_VIDEO_FRAMES = 40

PNET_TILE = 64
PNET_TILES_PER_LEVEL = 3
RNET_CROPS_PER_FRAME = 64
ONET_CROPS_PER_FRAME = 32

#: Below these counts a set is used but a warning is logged and reported. The quantizer fixes one
#: scale per activation tensor from the histogram of the calibration data; with too few samples the
#: histogram's tails — which the entropy and percentile methods cut — are set by a handful of inputs
#: instead of by the population, and scales fitted to them clip or waste range on other inputs.
#: * embedder, 100 faces: the 128-d embedding must stay close for every identity, pose and lighting;
#:   ~100 faces is the least that covers several identities under varied conditions (TensorRT's
#:   guidance is ~500 images for an ImageNet classifier, which has far more varied inputs).
#: * liveness, 100 faces: the same faces, seen with more context around them.
#: * R-Net, 500 crops: mostly background patches (P-Net's candidates), as many per frame; they are
#:   cheap and varied, so the bar is higher.
#: * O-Net, 100 crops: about one per face plus a few near-misses.
#: * P-Net, 200 tiles: roughly ten frames' worth of pyramid levels.
MIN_RECOMMENDED: Dict[str, int] = {
    "mtcnn-pnet": 200,
    "mtcnn-rnet": 500,
    "mtcnn-onet": 100,
    EMBEDDER_MODEL: 100,
    **{name: 100 for name in LIVENESS_MODELS},
}

#: What each set holds, for sets.json.
DESCRIPTIONS: Dict[str, str] = {
    "mtcnn-pnet": f"{PNET_TILE}x{PNET_TILE} tiles of the pyramid levels P-Net is fed (arranged layout)",
    "mtcnn-rnet": "24x24 crops of the P-Net candidates R-Net scores",
    "mtcnn-onet": "48x48 crops of the R-Net survivors O-Net scores",
    EMBEDDER_MODEL: "aligned 112x112 face crops (ArcFace 5-point template)",
    **{name: "80x80 liveness context crops of every detected face" for name in LIVENESS_MODELS},
}


def resolve_models(names: Sequence[str]) -> List[str]:
    """Registry names for command-line names (aliases such as ``pnet`` or ``liveness`` allowed).

    Returns the names in pipeline order, without duplicates.

    Raises:
        CalibrationDataError: a name that is not a calibrated model; the message lists the valid ones.
    """
    wanted = set()
    for name in names:
        key = name.strip()
        if not key:
            continue
        if key in MODEL_ALIASES:
            wanted.update(MODEL_ALIASES[key])
        elif key in CALIBRATED_MODELS:
            wanted.add(key)
        else:
            valid = ", ".join([*CALIBRATED_MODELS, *MODEL_ALIASES])
            raise CalibrationDataError(f"no INT8 calibration for model {key!r}; choose from: {valid}")
    if not wanted:
        raise CalibrationDataError("no model to calibrate was named")
    return [name for name in CALIBRATED_MODELS if name in wanted]


def sample_shape(spec: ModelSpec) -> Tuple[int, ...]:
    """The per-sample shape of ``spec``'s calibration set (the input shape without the batch)."""
    if spec.name == "mtcnn-pnet":
        return (PNET_TILE, PNET_TILE, 3) if spec.preprocessing.layout == "NHWC" else (3, PNET_TILE, PNET_TILE)
    dims = spec.inputs[0].shape[1:]
    if any(dim is None for dim in dims):
        raise CalibrationDataError(
            f"{spec.name}: input {spec.inputs[0].describe()} has no fixed sample shape"
        )
    return tuple(int(dim) for dim in dims if dim is not None)


# -- sources -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One source file: ``kind`` is ``"image"`` or ``"video"``."""

    path: Path
    kind: str


@dataclass(frozen=True)
class Skipped:
    """A source that contributed nothing, and why (unreadable, not decodable, no frames)."""

    path: str
    reason: str


def list_sources(paths: Sequence[Path]) -> List[Source]:
    """The image and video files named by ``paths``, in a deterministic order.

    A folder contributes its files (recursively, hidden ones left out) whose suffix is an image or
    video suffix, sorted by their path relative to the folder; a file named directly is taken as an
    image unless it has a video suffix. Paths are taken in the order given; a file reached twice is
    listed once.

    Raises:
        CalibrationDataError: a path that does not exist.
    """
    sources: List[Source] = []
    seen = set()

    def add(path: Path, kind: str) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            sources.append(Source(path, kind))

    for given in paths:
        root = Path(given)
        if root.is_dir():
            found: List[Tuple[str, Path]] = []
            for directory, subdirs, files in os.walk(root):
                subdirs[:] = [d for d in subdirs if not d.startswith(".")]
                for name in files:
                    if name.startswith("."):
                        continue
                    path = Path(directory) / name
                    found.append((path.relative_to(root).as_posix(), path))
            for _, path in sorted(found):
                suffix = path.suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    add(path, "image")
                elif suffix in VIDEO_SUFFIXES:
                    add(path, "video")
        elif root.is_file():
            add(root, "video" if root.suffix.lower() in VIDEO_SUFFIXES else "image")
        else:
            raise CalibrationDataError(f"calibration source {root} does not exist")
    return sources


@dataclass(frozen=True)
class Frame:
    """One image to run the pipeline on.

    Attributes:
        source: index into the source list.
        image: ``(H, W, 3)`` uint8 BGR.
        still: a photo (MTCNN retries with a border when it finds nothing) rather than a video frame.
    """

    source: int
    image: np.ndarray
    still: bool


def iter_frames(
    decoder: FrameDecoder,
    sources: Sequence[Source],
    skipped: List[Skipped],
    frame_counts: List[int],
    video_step: int = DEFAULT_VIDEO_STEP,
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
) -> Iterator[Frame]:
    """Decode the sources one after the other: each image once, every ``video_step``-th video frame
    (the first included) up to ``max_video_frames`` per video.

    A source that cannot be read, is not decodable (``decoder`` raises :class:`SourceError`), or (a
    video) yields no frame is appended to ``skipped`` with the reason, and the iteration goes on.
    ``frame_counts`` gets one entry per source (the frames it yielded, 0 for a skipped one), appended
    as each source is finished.
    """
    step = max(1, video_step)
    for index, source in enumerate(sources):
        if source.kind == "image":
            try:
                image = decoder.read_image(source.path)
            except SourceError as err:
                skipped.append(Skipped(str(source.path), str(err)))
                frame_counts.append(0)
                logger.warning("calibration source skipped: %s", err)
                continue
            frame_counts.append(1)
            yield Frame(index, image, True)
            continue
        video = decoder.read_video(source.path)
        yielded = 0
        reason = "no decodable frame"
        try:
            position = 0
            while yielded < max_video_frames:
                image = next(video, None)
                if image is None:
                    break
                if position % step == 0:
                    yielded += 1
                    yield Frame(index, image, False)
                position += 1
        except SourceError as err:
            reason = str(err)
            if yielded:
                logger.warning("calibration video cut short after %d frames: %s", yielded, err)
        finally:
            video.close()
        if not yielded:
            skipped.append(Skipped(str(source.path), reason))
            logger.warning("calibration source skipped: %s: %s", source.path, reason)
        frame_counts.append(yielded)


# -- recording what the networks see --------------------------------------------------------------------


class RecordingBackend:
    """Stands in for an :class:`InferenceBackend` in the vision pipeline: runs the wrapped back-end and
    keeps a float32 copy of every input batch it was given (single-input models)."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.max_rows_per_run = backend.max_rows_per_run  # batches as the wrapped back-end is fed
        self._name = backend.spec.inputs[0].name
        self._batches: List[np.ndarray] = []

    def run(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        """Record ``feeds`` and run the wrapped back-end on them."""
        array = feeds if isinstance(feeds, np.ndarray) else feeds[self._name]
        self._batches.append(np.array(array, dtype=np.float32, copy=True))
        return self.backend.run(feeds)

    def take(self) -> List[np.ndarray]:
        """The batches recorded since the last call, oldest first."""
        batches, self._batches = self._batches, []
        return batches


def evenly(count: int, limit: int) -> np.ndarray:
    """``min(count, limit)`` indices spread evenly over ``range(count)``, ascending, the first 0."""
    kept = max(0, min(count, limit))
    return (np.arange(kept, dtype=np.int64) * count) // max(kept, 1)


def pnet_tiles(
    level: np.ndarray, layout: str, tile: int = PNET_TILE, per_level: int = PNET_TILES_PER_LEVEL
) -> np.ndarray:
    """Tiles of one P-Net input (one pyramid level, already preprocessed).

    Args:
        level: ``(1, A, B, 3)`` (NHWC) or ``(1, 3, A, B)`` (NCHW) float32, as fed to P-Net.
        layout: ``"NHWC"`` or ``"NCHW"``.
        tile: tile side.
        per_level: the most tiles kept (evenly spaced over the grid, row-major).

    Returns:
        ``(K, tile, tile, 3)`` or ``(K, 3, tile, tile)`` float32, K ≤ ``per_level``. The grid is
        non-overlapping from the top-left corner; a level smaller than a tile on an axis is padded by
        repeating its edge pixels, so it gives one tile.
    """
    if level.ndim != 4 or level.shape[0] != 1:
        raise ValueError(f"expected one P-Net input (1, ., ., .), got shape {level.shape}")
    plane = level[0] if layout == "NHWC" else level[0].transpose(1, 2, 0)  # (A, B, 3)
    pad_a, pad_b = max(0, tile - plane.shape[0]), max(0, tile - plane.shape[1])
    if pad_a or pad_b:
        plane = np.pad(plane, ((0, pad_a), (0, pad_b), (0, 0)), mode="edge")
    rows, cols = plane.shape[0] // tile, plane.shape[1] // tile
    chosen = evenly(rows * cols, per_level)
    tiles = np.stack(
        [
            plane[(i // cols) * tile : (i // cols + 1) * tile, (i % cols) * tile : (i % cols + 1) * tile]
            for i in chosen
        ]
    ).astype(np.float32, copy=False)
    return tiles if layout == "NHWC" else np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))


def _concat(batches: Sequence[np.ndarray], shape: Tuple[int, ...]) -> np.ndarray:
    batches = [batch for batch in batches if len(batch)]
    if not batches:
        return np.zeros((0, *shape), np.float32)
    return np.concatenate(batches).astype(np.float32, copy=False)


# -- assembling sets -----------------------------------------------------------------------------------


@dataclass
class CalibrationSet:
    """One model's calibration set.

    Attributes:
        name: the registry model name.
        data: ``(N, *sample_shape)`` float32, C-contiguous, in the network's input layout.
        available: samples recorded before the ``max_count`` cap.
        sources: source files that contributed at least one sample.
        warning: why this set is weaker than it should be, or ``None``.
    """

    name: str
    data: np.ndarray
    available: int
    sources: int
    warning: Optional[str] = None

    @property
    def count(self) -> int:
        return int(self.data.shape[0])


class Collector:
    """Per-model samples, per source frame, in arrival order (pure bookkeeping, no models).

    Args:
        shapes: per model name, the per-sample shape every chunk must have.
    """

    def __init__(self, shapes: Mapping[str, Tuple[int, ...]]) -> None:
        self.shapes = dict(shapes)
        self._chunks: Dict[str, List[np.ndarray]] = {name: [] for name in shapes}
        self._sources: Dict[str, set] = {name: set() for name in shapes}

    def add(self, name: str, source: int, samples: np.ndarray) -> None:
        """Append ``samples`` ``(k, *shape)`` recorded for model ``name`` from source ``source``.

        Raises:
            ValueError: unknown model, or samples of another shape.
        """
        if name not in self.shapes:
            raise ValueError(f"no calibration set is being collected for {name!r}")
        if tuple(samples.shape[1:]) != self.shapes[name]:
            raise ValueError(
                f"{name}: samples of shape {tuple(samples.shape[1:])}, the set holds {self.shapes[name]}"
            )
        if len(samples):
            self._chunks[name].append(np.asarray(samples, np.float32))
            self._sources[name].add(source)

    def available(self, name: str) -> int:
        return sum(len(chunk) for chunk in self._chunks[name])

    def assemble(
        self, max_count: int, minimums: Optional[Mapping[str, int]] = None
    ) -> Dict[str, CalibrationSet]:
        """The sets: every sample in arrival order, thinned to ``max_count`` evenly spaced ones.

        A set below its minimum (``MIN_RECOMMENDED`` by default) gets a warning, which is also logged.
        """
        limits = MIN_RECOMMENDED if minimums is None else minimums
        sets: Dict[str, CalibrationSet] = {}
        for name, shape in self.shapes.items():
            everything = _concat(self._chunks[name], shape)
            data = np.ascontiguousarray(everything[evenly(len(everything), max_count)])
            warning = None
            minimum = limits.get(name, 0)
            if len(data) < minimum:
                remedy = (
                    f"raise the maximum count ({max_count})"
                    if len(everything) >= minimum
                    else "add face images or video"
                )
                warning = (
                    f"{name}: only {len(data)} calibration samples (at least {minimum} recommended); "
                    f"INT8 scales fitted to so few inputs may clip others — {remedy}"
                )
                logger.warning("%s", warning)
            sets[name] = CalibrationSet(name, data, len(everything), len(self._sources[name]), warning)
        return sets


# -- running the pipeline -------------------------------------------------------------------------------


@dataclass
class BuildSummary:
    """What :func:`build_sets` did (also what ``sets.json`` holds)."""

    directory: Path
    sets: Dict[str, CalibrationSet]
    sources: List[Source]
    frame_counts: List[int]
    skipped: List[Skipped]
    document: Dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> List[str]:
        return [s.warning for s in self.sets.values() if s.warning]


def collect(
    vision: VisionSide,
    models: Sequence[str],
    frames: Iterator[Frame],
    progress: Optional[Callable[[int], None]] = None,
) -> Collector:
    """Run the FP32 pipeline (CPU back-end) on ``frames`` and record what ``models`` are fed.

    The models are loaded from ``vision.models_dir``, wrapped in :class:`RecordingBackend` and the
    pipeline is built on the recorders with ``vision.build``. MTCNN always runs (it finds the faces
    the embedder and liveness crops come from); the liveness models are loaded, and run, only when
    one of them is asked for. ``progress`` is called with 1 after each frame.
    """
    options = BackendOptions(threads=vision.threads)
    needed = [*MTCNN_MODELS, EMBEDDER_MODEL]
    if any(name in LIVENESS_MODELS for name in models):
        needed.extend(LIVENESS_MODELS)
    loaded: Dict[str, InferenceBackend] = {}
    try:
        for name in needed:
            loaded[name] = open_model("cpu", get_model(name), vision.models_dir, options)
        recorders = {name: RecordingBackend(backend) for name, backend in loaded.items()}
        # The vision classes take back-ends; a recorder has the two members they use (spec, run).
        as_backend = {name: cast(InferenceBackend, recorder) for name, recorder in recorders.items()}
        pipeline = vision.build(as_backend)
        collector = Collector({name: sample_shape(get_model(name)) for name in models})
        embed = EMBEDDER_MODEL in models
        for frame in frames:
            pipeline.run(frame.image, still=frame.still, embed=embed)
            for name, recorder in recorders.items():
                batches = recorder.take()
                if name not in models:
                    continue
                collector.add(name, frame.source, _per_frame(recorder.spec, batches))
            if progress is not None:
                progress(1)
        return collector
    finally:
        for backend in loaded.values():
            backend.close()


def _per_frame(spec: ModelSpec, batches: Sequence[np.ndarray]) -> np.ndarray:
    """What one frame contributes to ``spec``'s set, from the batches it was fed for that frame."""
    shape = sample_shape(spec)
    if spec.name == "mtcnn-pnet":
        tiles = [pnet_tiles(level, spec.preprocessing.layout) for level in batches]
        return _concat(tiles, shape)
    samples = _concat(batches, shape)
    limit = {"mtcnn-rnet": RNET_CROPS_PER_FRAME, "mtcnn-onet": ONET_CROPS_PER_FRAME}.get(spec.name)
    if limit is not None:
        samples = samples[evenly(len(samples), limit)]
    return samples


def build_sets(
    vision: VisionSide,
    sources: Sequence[Path],
    models: Sequence[str],
    out_dir: Path,
    max_count: int = DEFAULT_MAX_COUNT,
    video_step: int = DEFAULT_VIDEO_STEP,
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    progress: Optional[Callable[[int], None]] = None,
) -> BuildSummary:
    """Build and write the calibration sets of ``models`` from the images and videos under ``sources``.

    Args:
        vision: the models folder, CPU threads, pipeline, decoder and pipeline settings.
        sources: image files, video files and folders of them.
        models: registry names (see :func:`resolve_models`).
        out_dir: where ``<model>.npy`` and ``sets.json`` are written (atomically, file by file).
        max_count: the most samples per set.
        video_step, max_video_frames: which video frames are used.
        progress: called with 1 after each frame.

    Raises:
        CalibrationDataError: no source path, a path that does not exist, no decodable source, or
            every set empty.
        EngineError: a model is missing or cannot be loaded.
    """
    if max_count < 1:
        raise CalibrationDataError(f"max_count must be at least 1, got {max_count}")
    listed = list_sources(sources)
    if not listed:
        raise CalibrationDataError(
            f"no image or video files under {', '.join(map(str, sources)) or '(nothing given)'}; "
            f"give folders of face images ({', '.join(sorted(IMAGE_SUFFIXES))}) or videos"
        )
    skipped: List[Skipped] = []
    frame_counts: List[int] = []
    frames = iter_frames(vision.decoder, listed, skipped, frame_counts, video_step, max_video_frames)
    collector = collect(vision, models, frames, progress)
    if not any(frame_counts):
        raise CalibrationDataError(
            f"none of the {len(listed)} calibration sources could be decoded (first: {skipped[0].reason})"
        )
    sets = collector.assemble(max_count)
    if not any(s.count for s in sets.values()):
        raise CalibrationDataError(
            f"no face found in {sum(frame_counts)} calibration frames: the sets are empty; "
            "give images with faces at least detector.min_face_px wide"
        )
    settings = {
        **vision.settings,
        "video_step": video_step,
        "max_video_frames": max_video_frames,
        "pnet_tile": PNET_TILE,
        "pnet_tiles_per_level": PNET_TILES_PER_LEVEL,
        "rnet_crops_per_frame": RNET_CROPS_PER_FRAME,
        "onet_crops_per_frame": ONET_CROPS_PER_FRAME,
    }
    document = write_sets(out_dir, sets, listed, frame_counts, skipped, max_count, settings)
    return BuildSummary(out_dir, sets, listed, frame_counts, skipped, document)


# -- files ---------------------------------------------------------------------------------------------


def utc_now() -> str:
    """RFC 3339 UTC, seconds: ``2024-05-01T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_sets(
    out_dir: Path,
    sets: Mapping[str, CalibrationSet],
    sources: Sequence[Source],
    frame_counts: Sequence[int],
    skipped: Sequence[Skipped],
    max_count: int,
    settings: Mapping[str, Any],
) -> Dict[str, Any]:
    """Write every non-empty set as ``<out_dir>/<name>.npy`` and then ``sets.json``; returns the latter's content."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: Dict[str, Any] = {}
    for name, calibration_set in sets.items():
        spec = get_model(name)
        entry: Dict[str, Any] = {
            "file": None,
            "sha256": None,
            "count": calibration_set.count,
            "available": calibration_set.available,
            "sources": calibration_set.sources,
            "shape": list(calibration_set.data.shape),
            "dtype": "float32",
            "input": spec.inputs[0].name,
            "layout": spec.preprocessing.layout,
            "transpose_hw": spec.preprocessing.transpose_hw,
            "what": DESCRIPTIONS[name],
            "model_sha256": spec.sha256,
            "preprocessing": dataclasses.asdict(spec.preprocessing),
            "warning": calibration_set.warning,
        }
        if calibration_set.count:
            path = out_dir / f"{name}.npy"
            with atomic_writer(path) as stream:
                np.save(stream, calibration_set.data, allow_pickle=False)
            entry["file"] = path.name
            entry["sha256"] = sha256_file(path)
        entries[name] = entry
    used = [
        {"path": str(source.path), "kind": source.kind, "sha256": sha256_file(source.path), "frames": frames}
        for source, frames in zip(sources, frame_counts)
        if frames
    ]
    document: Dict[str, Any] = {
        "schema": SETS_SCHEMA,
        "created": utc_now(),
        "max_count": max_count,
        "counts": {
            "sources": len(sources),
            "images": sum(1 for s, n in zip(sources, frame_counts) if n and s.kind == "image"),
            "videos": sum(1 for s, n in zip(sources, frame_counts) if n and s.kind == "video"),
            "frames": int(sum(frame_counts)),
            "skipped": len(skipped),
            **{name: s.count for name, s in sets.items()},
        },
        "settings": dict(settings),
        "sets": entries,
        "sources": used,
        "skipped": [dataclasses.asdict(item) for item in skipped],
        "warnings": [s.warning for s in sets.values() if s.warning],
    }
    text = json.dumps(document, indent=2)
    with atomic_writer(out_dir / SETS_FILE) as stream:
        stream.write(text.encode("utf-8"))
    logger.info(
        "calibration sets in %s: %s",
        out_dir,
        ", ".join(f"{name} {s.count}" for name, s in sets.items()),
    )
    result: Dict[str, Any] = json.loads(text)  # as read back: lists, not tuples
    return result


def read_sets(directory: Path) -> Dict[str, Any]:
    """The ``sets.json`` of a calibration-set folder.

    Raises:
        CalibrationDataError: absent, unreadable, not JSON, or of another schema.
    """
    path = Path(directory) / SETS_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationDataError(
            f"{path} does not exist: build the sets first (face-appliance calibrate --images DIR)"
        ) from None
    except (OSError, ValueError) as err:
        raise CalibrationDataError(f"{path}: not a readable calibration-set index: {err}") from err
    if not isinstance(document, dict) or document.get("schema") != SETS_SCHEMA:
        found = document.get("schema") if isinstance(document, dict) else None
        raise CalibrationDataError(f"{path}: schema {found!r}, this version reads schema {SETS_SCHEMA}")
    return document


def load_set(directory: Path, name: str, verify: bool = True, mmap: bool = False) -> np.ndarray:
    """One model's calibration set, checked against ``sets.json``.

    Args:
        directory: the calibration-set folder.
        name: the registry model name.
        verify: check the file's sha256 (reads it twice; off for a memory-mapped read of a trusted set).
        mmap: memory-map the array instead of reading it (large sets, a TensorRT calibrator).

    Returns:
        ``(N, *sample_shape)`` float32 in the network's input layout (see the module docstring).

    Raises:
        CalibrationDataError: the model has no set, the set is empty, or the file's sha256, shape or
            dtype differs from ``sets.json``.
    """
    document = read_sets(directory)
    entry = document["sets"].get(name)
    if entry is None:
        raise CalibrationDataError(
            f"{directory}: no calibration set for {name} (sets for: {', '.join(document['sets']) or 'none'})"
        )
    if not entry.get("file") or not entry.get("count"):
        raise CalibrationDataError(
            f"{directory}: the calibration set for {name} is empty ({entry.get('warning')})"
        )
    path = Path(directory) / entry["file"]
    try:
        if verify and sha256_file(path) != entry["sha256"]:
            raise CalibrationDataError(f"{path}: sha256 differs from {SETS_FILE}; rebuild the sets")
        data = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except OSError as err:
        raise CalibrationDataError(f"{path}: cannot read: {err}") from err
    except ValueError as err:
        raise CalibrationDataError(f"{path}: not a NumPy array file: {err}") from err
    if list(data.shape) != list(entry["shape"]) or data.dtype != np.float32:
        raise CalibrationDataError(
            f"{path}: shape {list(data.shape)} {data.dtype}, {SETS_FILE} says {entry['shape']} float32"
        )
    return data
