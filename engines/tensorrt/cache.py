"""The TensorRT engine cache: engines built on the device, keyed by what makes them valid, with manifests.

A serialized TensorRT engine only loads on the TensorRT version and the GPU it was built on, so the
appliance ships ONNX and builds engines on the device (DESIGN §2). Each engine is cached under a key
derived from everything that changes the engine:

* the sha256 of the (prepared) ONNX bytes,
* the TensorRT version,
* the GPU name and compute capability,
* the requested precision (``auto``, ``int8``, ``fp16``, ``fp32``) and DLA core,
* the optimization-profile ranges,
* the INT8 data the engine is built from, when it is: the sha256 of the calibration set or cache
  (implicit quantization), or of the Q/DQ INT8 ONNX model (explicit quantization),
* the FP16 converter's release, when the engine is built from an FP16 ONNX made on the device.

The requested precision is part of the key rather than the precision actually built: the choice is a
pure function of the platform and of the inputs above (:func:`plan_precision`), so the key can be
computed before anything is built. Which ONNX an engine came from (the registry's, an FP16 one made
on the device, or the Q/DQ one from ``face-appliance calibrate``) is decided by that plan, and the
manifest records it with the sha256 of the bytes TensorRT parsed.

Precision per TensorRT version and GPU (DESIGN §2): TensorRT 8.x and 10.x build weakly typed networks
from the FP32 ONNX with the FP16/INT8 builder flags and, for INT8, an implicit calibrator (or its
cache) or Q/DQ layers; TensorRT 11 builds strongly typed networks only — FP16 from an FP16 ONNX
(:mod:`engines.tensorrt.fp16`), INT8 from a Q/DQ ONNX — and has no implicit calibration. INT8 only
where the GPU has fast INT8 (not the Jetson Nano, SM 5.3). :func:`plan_precision` has the table.

Layout::

    <engine_dir>/<model name>/<key>.engine   the serialized engine
    <engine_dir>/<model name>/<key>.json     its manifest (EngineManifest), written after the engine
    <engine_dir>/timing-<platform>.cache     the builder's timing cache for one TensorRT + GPU

Both files are written atomically (:func:`engines.files.atomic_writer`); the manifest is written last,
so a manifest never names a missing or half-written engine. :func:`lookup` returns an engine path only
when its manifest matches the running platform, and otherwise a sentence saying why, so the daemon can
log it and rebuild in the background.

This module is pure Python: it never imports ``tensorrt`` or ``pycuda``, so it is unit-tested
anywhere. :mod:`engines.tensorrt.builder` and :mod:`engines.tensorrt.backend` fill in the platform.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..files import PathLike, atomic_writer, sha256_file
from ..int8 import find_int8
from ..registry import ModelSpec
from .platform import SAFE_NAME as _SAFE_NAME
from .platform import PlatformInfo

if TYPE_CHECKING:  # the options type only; this module stays free of imports beyond the registry
    from ..backends.base import BackendOptions

logger = logging.getLogger(__name__)

#: Version of the manifest format; a manifest of another version is never trusted. Schema 1 (before the
#: network fields) is still read: its engines were all built from the registry's ONNX.
MANIFEST_SCHEMA = 2
READABLE_SCHEMAS = (1, 2)

#: Precisions a caller may ask for, and the ones an engine can actually have.
REQUESTED_PRECISIONS: Tuple[str, ...] = ("auto", "int8", "fp16", "fp32")
BUILT_PRECISIONS: Tuple[str, ...] = ("int8", "fp16", "fp32")

ENGINE_SUFFIX = ".engine"
MANIFEST_SUFFIX = ".json"
KEY_LENGTH = 24  # hex characters of the sha256 used as the file name

#: A model's INT8 calibration set in a calibration folder: ``<dir>/<model name>.npy``.
CALIBRATION_SET_SUFFIX = ".npy"

#: Smallest P-Net input side: one 12×12 cell.
PNET_MIN_SIDE = 12
#: YuNet's strides go up to 32, so its input sides are multiples of 32.
YUNET_MULTIPLE = 32


Shape = Tuple[int, ...]


# -- value types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileRange:
    """The optimization-profile range of one engine input: min, opt and max shape.

    Shapes are complete and concrete (every dimension a positive int), in the input's own layout,
    e.g. ``(1, 648, 1152, 3)`` for the transposed NHWC P-Net input.
    """

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        shapes = (self.min, self.opt, self.max)
        if len({len(shape) for shape in shapes}) != 1:
            raise ValueError(f"profile for {self.name!r}: min, opt and max have different ranks")
        for lo, mid, hi in zip(*shapes):
            if not 1 <= lo <= mid <= hi:
                raise ValueError(
                    f"profile for {self.name!r}: need 1 <= min <= opt <= max on every axis, got "
                    f"min {self.min}, opt {self.opt}, max {self.max}"
                )

    def contains(self, shape: Sequence[int]) -> bool:
        """Whether a concrete input shape lies within ``[min, max]`` on every axis."""
        return len(shape) == len(self.min) and all(
            lo <= dim <= hi for lo, dim, hi in zip(self.min, shape, self.max)
        )

    def describe(self) -> str:
        """``input_1 min 1x12x12x3 opt ... max ...``."""

        def fmt(shape: Shape) -> str:
            return "x".join(str(d) for d in shape)

        return f"{self.name} min {fmt(self.min)} opt {fmt(self.opt)} max {fmt(self.max)}"

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfileRange:
        return cls(
            str(data["name"]),
            _int_tuple(data["min"]),
            _int_tuple(data["opt"]),
            _int_tuple(data["max"]),
        )


@dataclass(frozen=True)
class EngineTensor:
    """One input or output of a built engine.

    ``shape`` is the engine's declared shape with ``-1`` for a dynamic dimension; ``dtype`` a numpy
    dtype name (``"float32"``); ``mode`` is ``"input"`` or ``"output"``.
    """

    name: str
    mode: str
    shape: Shape
    dtype: str

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineTensor:
        return cls(str(data["name"]), str(data["mode"]), _int_tuple(data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class EngineRequest:
    """Everything that decides which engine a model needs on this device (the cache key's inputs).

    Attributes:
        model: registry name of the model (the cache sub-directory).
        onnx_sha256: hex sha256 of the ONNX bytes the engine is built from (after preparation).
        platform: the running TensorRT and GPU.
        precision: the requested precision, one of :data:`REQUESTED_PRECISIONS`.
        dla_core: the DLA core asked for, ``None`` for the GPU.
        profiles: one range per dynamic input (see :func:`optimization_profile`).
        calibration_sha256: hex sha256 of the INT8 calibration set or cache the engine is calibrated
            from (implicit quantization), ``None`` when it is not.
        int8_onnx_sha256: hex sha256 of the Q/DQ INT8 ONNX model the engine is built from (explicit
            quantization), ``None`` when it is not.
        fp16_converter: the converter release (:func:`engines.tensorrt.fp16.converter_version`) when the
            engine is built from an FP16 ONNX made on the device, ``None`` otherwise.
        int8_onnx_path: where that Q/DQ model is (not part of the key: its sha256 is).
        ignored_int8: a sentence naming INT8 data that was offered but cannot be used on this
            platform (e.g. a calibration cache on TensorRT 11); it goes into the precision reason.
        onnx_is_qdq: the ONNX itself is explicitly quantized (a Q/DQ model shipped as the model, e.g.
            in a model package); derived from the bytes whose sha256 is in the key.

    :func:`engine_request` fills the INT8 and FP16 fields only with what :func:`plan_precision` uses, so
    data the engine is not built from never changes its key.
    """

    model: str
    onnx_sha256: str
    platform: PlatformInfo
    precision: str = "auto"
    dla_core: Optional[int] = None
    profiles: Tuple[ProfileRange, ...] = ()
    calibration_sha256: Optional[str] = None
    int8_onnx_sha256: Optional[str] = None
    fp16_converter: Optional[str] = None
    int8_onnx_path: Optional[str] = field(default=None, compare=False)
    ignored_int8: Optional[str] = field(default=None, compare=False)
    onnx_is_qdq: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.precision not in REQUESTED_PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(REQUESTED_PRECISIONS)}")
        if self.dla_core is not None and self.dla_core < 0:
            raise ValueError(f"dla_core must be >= 0 or None, got {self.dla_core}")
        if not self.model or _SAFE_NAME.search(self.model):
            raise ValueError(f"model name {self.model!r} cannot be used as a directory name")
        if self.calibration_sha256 is not None and self.int8_onnx_sha256 is not None:
            raise ValueError(
                f"{self.model}: an engine is built from calibration data or a Q/DQ model, not both"
            )

    @property
    def key(self) -> str:
        """The cache key: the first :data:`KEY_LENGTH` hex digits of a sha256 over the inputs."""
        return cache_key(
            onnx_sha256=self.onnx_sha256,
            tensorrt_version=self.platform.tensorrt_version,
            gpu_name=self.platform.gpu_name,
            compute_capability=self.platform.compute_capability,
            precision=self.precision,
            dla_core=self.dla_core,
            profiles=self.profiles,
            calibration_sha256=self.calibration_sha256,
            int8_onnx_sha256=self.int8_onnx_sha256,
            fp16_converter=self.fp16_converter,
        )

    @property
    def plan(self) -> PrecisionPlan:
        """The precision this request builds, from which ONNX, and why (:func:`plan_precision`)."""
        return plan_precision(
            self.precision,
            self.platform,
            qdq=self.int8_onnx_sha256 is not None,
            calibration=self.calibration_sha256 is not None,
            fp16_converter=self.fp16_converter,
            ignored_int8=self.ignored_int8,
            onnx_is_qdq=self.onnx_is_qdq,
        )


@dataclass(frozen=True)
class EngineManifest:
    """The record written next to each engine (``<key>.json``).

    Attributes:
        model: registry name of the model.
        key: the cache key the engine is stored under.
        tensorrt_version, gpu_name, compute_capability, l4t_version: the platform it was built on.
        requested_precision: what was asked for (part of the key).
        precision: what was built (``int8``, ``fp16`` or ``fp32``).
        precision_reason: why that precision (e.g. the INT8 → FP16 fallback and its cause).
        dla_core: DLA core asked for (part of the key), ``None`` for the GPU.
        target: where the engine runs: ``"gpu"``, or ``"dla:<core>"`` (with GPU fallback for the
            layers the DLA cannot run); ``"gpu"`` when the DLA was asked for but could not be used.
        tensors: the engine's inputs and outputs.
        profiles: the optimization-profile ranges it was built with.
        onnx_sha256: sha256 of the registry's (prepared) ONNX bytes the request names.
        calibration_sha256: sha256 of the calibration set or cache used, ``None`` without one.
        engine_sha256, engine_size: the engine file's digest and length, checked by :func:`lookup`.
        created: RFC 3339 UTC timestamp of the build.
        build_seconds: wall time of the build.
        network: which ONNX TensorRT parsed: :data:`NETWORK_ONNX` (the registry's FP32 model),
            :data:`NETWORK_FP16` (an FP16 model made on the device) or :data:`NETWORK_QDQ` (the Q/DQ
            INT8 model of ``face-appliance calibrate``).
        network_sha256: sha256 of the ONNX bytes TensorRT parsed.
        int8_onnx_sha256: sha256 of the Q/DQ model (part of the key), ``None`` when not built from one.
        fp16_converter: the FP16 converter release (part of the key), ``None`` when not used.
        schema: manifest format version (:data:`MANIFEST_SCHEMA`).
    """

    model: str
    key: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: Tuple[int, int]
    l4t_version: Optional[str]
    requested_precision: str
    precision: str
    precision_reason: str
    dla_core: Optional[int]
    target: str
    tensors: Tuple[EngineTensor, ...]
    profiles: Tuple[ProfileRange, ...]
    onnx_sha256: str
    calibration_sha256: Optional[str]
    engine_sha256: str
    engine_size: int
    created: str
    build_seconds: float = 0.0
    network: str = "onnx"
    network_sha256: str = ""
    int8_onnx_sha256: Optional[str] = None
    fp16_converter: Optional[str] = None
    schema: int = MANIFEST_SCHEMA

    @property
    def platform(self) -> PlatformInfo:
        """The platform the engine was built on."""
        return PlatformInfo(self.tensorrt_version, self.gpu_name, self.compute_capability, self.l4t_version)

    def to_json(self) -> Dict[str, Any]:
        data = asdict(self)
        data["compute_capability"] = list(self.compute_capability)
        data["tensors"] = [tensor.to_json() for tensor in self.tensors]
        data["profiles"] = [profile.to_json() for profile in self.profiles]
        return data

    def dumps(self) -> str:
        """The manifest as indented, key-sorted JSON text."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineManifest:
        """Parse a manifest.

        Raises:
            ValueError: a field is missing or has the wrong type, or the schema is unknown.
        """
        try:
            schema = int(data.get("schema", 0))
            if schema not in READABLE_SCHEMAS:
                raise ValueError(f"manifest schema {schema}, this code reads schemas {READABLE_SCHEMAS}")
            capability = _int_tuple(data["compute_capability"])
            if len(capability) != 2:
                raise ValueError(f"compute_capability {capability} is not (major, minor)")
            dla = data["dla_core"]
            calibration = data["calibration_sha256"]
            l4t = data["l4t_version"]
            return cls(
                model=str(data["model"]),
                key=str(data["key"]),
                tensorrt_version=str(data["tensorrt_version"]),
                gpu_name=str(data["gpu_name"]),
                compute_capability=(capability[0], capability[1]),
                l4t_version=None if l4t is None else str(l4t),
                requested_precision=str(data["requested_precision"]),
                precision=str(data["precision"]),
                precision_reason=str(data["precision_reason"]),
                dla_core=None if dla is None else int(dla),
                target=str(data["target"]),
                tensors=tuple(EngineTensor.from_json(item) for item in data["tensors"]),
                profiles=tuple(ProfileRange.from_json(item) for item in data["profiles"]),
                onnx_sha256=str(data["onnx_sha256"]),
                calibration_sha256=None if calibration is None else str(calibration),
                engine_sha256=str(data["engine_sha256"]),
                engine_size=int(data["engine_size"]),
                created=str(data["created"]),
                build_seconds=float(data.get("build_seconds", 0.0)),
                network=str(data.get("network", NETWORK_ONNX)),
                network_sha256=str(data.get("network_sha256") or data["onnx_sha256"]),
                int8_onnx_sha256=_optional_str(data.get("int8_onnx_sha256")),
                fp16_converter=_optional_str(data.get("fp16_converter")),
                schema=schema,
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed manifest: {type(err).__name__}: {err}") from err

    @classmethod
    def loads(cls, text: str) -> EngineManifest:
        """Parse manifest JSON text (raises ``ValueError`` when it is not a valid manifest)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls.from_json(data)


@dataclass(frozen=True)
class LookupResult:
    """What :func:`lookup` found.

    Exactly one of ``path`` (a usable engine) and ``reason`` (why there is none) is set; ``manifest``
    is the usable engine's manifest, or the closest stale one when there was one to compare with.
    """

    path: Optional[Path]
    reason: Optional[str]
    manifest: Optional[EngineManifest] = None
    stale: Tuple[Path, ...] = field(default=())

    @property
    def hit(self) -> bool:
        return self.path is not None


# -- the cache key and layout --------------------------------------------------------------------


def cache_key(
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: Tuple[int, int],
    precision: str,
    dla_core: Optional[int],
    profiles: Sequence[ProfileRange],
    calibration_sha256: Optional[str],
    int8_onnx_sha256: Optional[str] = None,
    fp16_converter: Optional[str] = None,
) -> str:
    """The cache key for one engine: hex sha256 (first :data:`KEY_LENGTH` digits) of canonical JSON.

    The profiles are sorted by input name, so their order does not matter. The Q/DQ model's digest
    and the FP16 converter enter the JSON only when set, so the keys of engines built from the
    registry's ONNX are those of earlier releases.
    """
    payload = {
        "onnx_sha256": onnx_sha256.lower(),
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": [int(compute_capability[0]), int(compute_capability[1])],
        "precision": precision,
        "dla_core": dla_core,
        "profiles": [profile.to_json() for profile in sorted(profiles, key=lambda p: p.name)],
        "calibration_sha256": None if calibration_sha256 is None else calibration_sha256.lower(),
    }
    if int8_onnx_sha256 is not None:
        payload["int8_onnx_sha256"] = int8_onnx_sha256.lower()
    if fp16_converter is not None:
        payload["fp16_converter"] = fp16_converter
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def model_dir(engine_dir: PathLike, model: str) -> Path:
    """``<engine_dir>/<model>``."""
    return Path(engine_dir) / model


def engine_path(engine_dir: PathLike, model: str, key: str) -> Path:
    """``<engine_dir>/<model>/<key>.engine``."""
    return model_dir(engine_dir, model) / f"{key}{ENGINE_SUFFIX}"


def manifest_path(engine_dir: PathLike, model: str, key: str) -> Path:
    """``<engine_dir>/<model>/<key>.json``."""
    return model_dir(engine_dir, model) / f"{key}{MANIFEST_SUFFIX}"


def timing_cache_path(engine_dir: PathLike, platform: PlatformInfo) -> Path:
    """``<engine_dir>/timing-<platform slug>.cache``: one builder timing cache per TensorRT and GPU."""
    return Path(engine_dir) / f"timing-{platform.slug()}.cache"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data`` (the ONNX bytes, a calibration cache)."""
    return hashlib.sha256(data).hexdigest()


def utc_timestamp(moment: Optional[datetime] = None) -> str:
    """RFC 3339 UTC with milliseconds: ``2024-05-01T12:00:00.000Z``."""
    moment = moment or datetime.now(timezone.utc)
    return (
        moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


# -- precision ------------------------------------------------------------------------------------

#: Where INT8 data can come from: a calibrator (or its cache), or Q/DQ layers in the ONNX graph.
INT8_FROM_CALIBRATION = "calibration"
INT8_FROM_QDQ = "qdq"

#: Which ONNX TensorRT parses: the registry's FP32 model (prepared), an FP16 model made from it on the
#: device (:mod:`engines.tensorrt.fp16`), or the Q/DQ INT8 model of ``face-appliance calibrate``.
NETWORK_ONNX = "onnx"
NETWORK_FP16 = "fp16-onnx"
NETWORK_QDQ = "qdq-onnx"
NETWORKS: Tuple[str, ...] = (NETWORK_ONNX, NETWORK_FP16, NETWORK_QDQ)

#: The first TensorRT that builds strongly typed networks only (no FP16/INT8 builder flags, no
#: ``IBuilderConfig.int8_calibrator``, no ``IInt8EntropyCalibrator2``: NVIDIA's 10.x → 11.x migration
#: guide, and the 11.4 bindings).
STRONGLY_TYPED_MAJOR = 11


@dataclass(frozen=True)
class TensorRTFeatures:
    """What a TensorRT version offers for choosing a precision (from its version number).

    Attributes:
        strongly_typed: every network is strongly typed; precision comes from the ONNX's types
            (TensorRT 11+).
        precision_flags: ``BuilderFlag.FP16``/``INT8`` exist (before 11).
        implicit_int8: INT8 calibration with ``IInt8EntropyCalibrator2`` and
            ``IBuilderConfig.int8_calibrator`` (before 11; deprecated from 10.1).
        reports_fast_precisions: ``Builder.platform_has_fast_fp16/int8`` are there and not deprecated
            (before 10; deprecated in 10.5, removed in 11), so the builder asks them.
    """

    strongly_typed: bool
    precision_flags: bool
    implicit_int8: bool
    reports_fast_precisions: bool


def tensorrt_features(tensorrt_version: str) -> TensorRTFeatures:
    """The :class:`TensorRTFeatures` of ``tensorrt_version`` (``"8.5.2.2"``, ``"11.4.0.106"``).

    An unparsable version is taken as the newest kind (strongly typed), which never sets a flag that
    may not exist.
    """
    head = tensorrt_version.split(".", 1)[0]
    major = int(head) if head.isdigit() else STRONGLY_TYPED_MAJOR
    strongly_typed = major >= STRONGLY_TYPED_MAJOR
    return TensorRTFeatures(
        strongly_typed=strongly_typed,
        precision_flags=not strongly_typed,
        implicit_int8=not strongly_typed,
        reports_fast_precisions=major < 10,
    )


def fast_precisions(compute_capability: Tuple[int, int]) -> Tuple[bool, bool]:
    """``(fast_fp16, fast_int8)`` for a GPU, decided from its compute capability.

    Used from TensorRT 10 on, where ``Builder.platform_has_fast_fp16/int8`` are deprecated (10.5) and
    then removed (11.0: "query data type support from CUDA directly"). Fast INT8 (DP4A / tensor
    cores): SM 6.1 and SM 7.0 and later — Xavier (7.2), Orin (8.7), Thor (11.0) — not the Jetson Nano
    (SM 5.3) nor the Jetson TX2 (SM 6.2), neither of which TensorRT runs in INT8. Fast FP16: SM 5.3
    (Nano), 6.0, 6.2 (TX2) and SM 7.0 and later; consumer Pascal (SM 6.1) has slow FP16.
    """
    major, minor = int(compute_capability[0]), int(compute_capability[1])
    fast_int8 = (major, minor) == (6, 1) or major >= 7
    fast_fp16 = (major, minor) in ((5, 3), (6, 0), (6, 2)) or major >= 7
    return fast_fp16, fast_int8


@dataclass(frozen=True)
class PrecisionPlan:
    """What an engine request builds (:func:`plan_precision`).

    Attributes:
        precision: ``"int8"``, ``"fp16"`` or ``"fp32"``; ``None`` when the request cannot be met.
        network: which ONNX TensorRT parses (:data:`NETWORKS`).
        int8_source: :data:`INT8_FROM_CALIBRATION`, :data:`INT8_FROM_QDQ` or ``None``.
        reason: why, for the log and the manifest (names every fallback and its cause).
        error: when ``precision`` is ``None``: what cannot be had and what to do (the build raises
            :class:`engines.errors.EngineBuildError` with it).
        strongly_typed: the TensorRT builds strongly typed networks (no precision flags are set).
    """

    precision: Optional[str]
    network: str
    int8_source: Optional[str]
    reason: str
    error: Optional[str] = None
    strongly_typed: bool = False


def plan_precision(
    requested: str,
    platform: PlatformInfo,
    qdq: bool = False,
    calibration: bool = False,
    fp16_converter: Optional[str] = None,
    ignored_int8: Optional[str] = None,
    onnx_is_qdq: bool = False,
) -> PrecisionPlan:
    """Decide the precision to build, from which ONNX, and say why.

    Args:
        requested: one of :data:`REQUESTED_PRECISIONS`.
        platform: the TensorRT version (:func:`tensorrt_features`) and the GPU (:func:`fast_precisions`).
        qdq: a Q/DQ INT8 model of this network is installed (gate passed; :func:`engines.int8.find_int8`).
        calibration: an INT8 calibration set or cache of this network is there.
        fp16_converter: the FP16 ONNX converter's release, ``None`` when it is not installed.
        ignored_int8: INT8 data offered but not usable here (a sentence for the reason).
        onnx_is_qdq: the model's own ONNX is a Q/DQ model (it is then the INT8 network itself).

    The table (``auto`` builds the best the device can have; an explicit request is built as asked
    or not at all):

    =========================  ==================================  =================================
    request                    TensorRT 8.x / 10.x (weakly typed)  TensorRT 11+ (strongly typed)
    =========================  ==================================  =================================
    ``fp32``                   FP32 ONNX, no flag (TF32 off)       FP32 ONNX (TF32 off)
    ``fp16``                   FP32 ONNX + ``BuilderFlag.FP16``    FP16 ONNX made on the device
    ``auto``/``int8``, Q/DQ    Q/DQ ONNX + ``INT8`` (+ ``FP16``)   Q/DQ ONNX
    ``auto``/``int8``, calib.  FP32 ONNX + ``INT8`` + calibrator   not available: ``auto`` → FP16,
                                                                   ``int8`` → error
    ``auto``, no INT8          as ``fp16``                         as ``fp16``
    =========================  ==================================  =================================

    INT8 needs a GPU with fast INT8 (not the Nano: ``auto`` → FP16 there, ``int8`` → error); a
    Q/DQ model is preferred to calibration data (it passed the calibration gate against FP32). FP16
    needs fast FP16 (every Jetson); on TensorRT 11 without the converter ``auto`` builds FP32 and
    ``fp16`` is an error.
    """
    if requested not in REQUESTED_PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(REQUESTED_PRECISIONS)}")
    features = tensorrt_features(platform.tensorrt_version)
    typed = features.strongly_typed
    has_fp16, has_int8 = fast_precisions(platform.compute_capability)
    sm = platform.sm
    trt = f"TensorRT {platform.tensorrt_version}"

    def plan(precision: str, network: str, source: Optional[str], reason: str) -> PrecisionPlan:
        return PrecisionPlan(precision, network, source, reason, None, typed)

    def refuse(error: str) -> PrecisionPlan:
        return PrecisionPlan(None, NETWORK_ONNX, None, error, error, typed)

    def fp16_or_fallback(lead: str, explicit: bool) -> PrecisionPlan:
        if not has_fp16:
            if explicit:
                return refuse(f'FP16 requested, but {sm} has no fast FP16; use precision "auto" or "fp32"')
            return plan("fp32", NETWORK_ONNX, None, f"{lead}; {sm} has no fast FP16 either: building FP32")
        if not typed:
            return plan("fp16", NETWORK_ONNX, None, f"{lead}: building FP16 (builder flag FP16)")
        if fp16_converter is None:
            if explicit:
                return refuse(f"FP16 requested, but {fp16_missing(trt)}")
            return plan("fp32", NETWORK_ONNX, None, f"{lead}; {fp16_missing(trt)}: building FP32")
        return plan(
            "fp16",
            NETWORK_FP16,
            None,
            f"{lead}: building FP16 from an FP16 ONNX made on the device with {fp16_converter} "
            f"({trt} builds strongly typed networks only)",
        )

    if onnx_is_qdq:
        # An explicitly quantized model runs INT8 where it is quantized, or not at all.
        if not has_int8:
            return refuse(
                f"the model is a Q/DQ INT8 model, and {sm} has no fast INT8"
                + (" (Jetson Nano)" if tuple(platform.compute_capability) == (5, 3) else "")
                + "; install the model's FP32 ONNX on this device"
            )
        if requested in ("fp16", "fp32"):
            return refuse(
                f'{requested.upper()} requested, but the model is a Q/DQ INT8 model; use precision "auto" '
                'or "int8", or install its FP32 ONNX'
            )
        return plan(
            "int8",
            NETWORK_ONNX,
            INT8_FROM_QDQ,
            f"INT8 ({requested}): {sm} has fast INT8, scales from the model's own Q/DQ layers (explicit quantization)",
        )
    if requested == "fp32":
        return plan("fp32", NETWORK_ONNX, None, "FP32 as requested")
    if requested == "fp16":
        return fp16_or_fallback("FP16 as requested", explicit=True)
    if has_int8 and qdq:
        rest = (
            "layers without Q/DQ stay in the model's FP32 (strongly typed)"
            if typed
            else "FP16 allowed for the layers without INT8"
            if has_fp16
            else "FP32 for the layers without INT8"
        )
        return plan(
            "int8",
            NETWORK_QDQ,
            INT8_FROM_QDQ,
            f"INT8 ({requested}): {sm} has fast INT8, scales from the Q/DQ INT8 model of "
            f"`face-appliance calibrate` (explicit quantization); {rest}",
        )
    if has_int8 and calibration and features.implicit_int8:
        return plan(
            "int8",
            NETWORK_ONNX,
            INT8_FROM_CALIBRATION,
            f"INT8 ({requested}): {sm} has fast INT8, scales from the calibration data (implicit quantization)",
        )
    if not has_int8:
        why = f"{sm} has no fast INT8" + (
            " (Jetson Nano)" if tuple(platform.compute_capability) == (5, 3) else ""
        )
    elif calibration:
        why = no_implicit_int8(trt)
    elif ignored_int8:
        why = ignored_int8
    else:
        why = (
            "there is no INT8 calibration cache or calibrator (calibration set) and no Q/DQ INT8 model "
            "for this network (`face-appliance calibrate` makes them)"
        )
    if requested == "int8":
        return refuse(
            f'INT8 requested, but {why}; use precision "auto" to build the best this device can have'
        )
    return fp16_or_fallback(f"auto: {why}", explicit=False)


def no_implicit_int8(trt: str) -> str:
    """Why calibration data is not used on a strongly typed TensorRT (``trt``: ``"TensorRT 11.4.0"``)."""
    return (
        f"{trt} has no implicit INT8 calibration (removed in TensorRT 11: no IInt8EntropyCalibrator2, "
        "no int8_calibrator), so the calibration set or cache is not used; INT8 engines come from the "
        "Q/DQ model that `face-appliance calibrate` installs"
    )


def fp16_missing(trt: str) -> str:
    """Why FP16 cannot be built on a strongly typed TensorRT without the FP16 converter."""
    return (
        f"{trt} builds strongly typed networks only, and an FP16 ONNX model is made on the device by "
        "onnxconverter-common, which is not installed (pip install 'face-appliance[jetson]')"
    )


# -- lookup and store ----------------------------------------------------------------------------


def read_manifest(path: PathLike) -> EngineManifest:
    """Read and parse one manifest file.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a valid manifest.
    """
    return EngineManifest.loads(Path(path).read_text(encoding="utf-8"))


def lookup(engine_dir: PathLike, request: EngineRequest, verify_digest: bool = False) -> LookupResult:
    """Find the cached engine for ``request``, if there is one that this platform can load.

    The engine path is returned only when its manifest exists, parses, names this request's key,
    ONNX, precision, profiles and calibration, was built on the running TensorRT version, GPU and L4T
    release, and the engine file has the recorded size (and sha256 with ``verify_digest``).

    Otherwise ``reason`` says what is missing or different, naming both sides, e.g.
    ``"mobilefacenet: the cached engine was built with TensorRT 8.5.2.2, this device runs 8.6.1"``.
    When nothing is stored under the key, other manifests of the same model are compared with the
    request so the reason names what changed (a new ONNX, a TensorRT upgrade, …); their paths are
    returned in ``stale``.
    """
    key = request.key
    directory = model_dir(engine_dir, request.model)
    json_path = manifest_path(engine_dir, request.model, key)
    prefix = f"{request.model}:"
    if not json_path.exists():
        stale = _other_manifests(directory, key)
        closest = _closest(stale, request)
        if closest is not None:
            manifest, _ = closest
            reason = f"{prefix} no engine cached for key {key}; " + "; ".join(_differences(manifest, request))
            return LookupResult(None, reason, manifest, tuple(path for _, path in stale))
        where = f"in {directory}" if directory.exists() else f"({directory} does not exist)"
        return LookupResult(None, f"{prefix} no engine cached for key {key} {where}", None, ())
    try:
        manifest = read_manifest(json_path)
    except (OSError, ValueError) as err:
        return LookupResult(None, f"{prefix} the manifest {json_path} is unusable: {err}")
    differences = _differences(manifest, request)
    if manifest.key != key:
        differences.insert(0, f"the manifest names key {manifest.key}, its file name says {key}")
    if differences:
        return LookupResult(None, f"{prefix} " + "; ".join(differences), manifest)
    path = engine_path(engine_dir, request.model, key)
    try:
        size = path.stat().st_size
    except OSError as err:
        return LookupResult(None, f"{prefix} the engine file {path} is unreadable: {err.strerror}", manifest)
    if size != manifest.engine_size:
        return LookupResult(
            None,
            f"{prefix} the engine file {path} has {size} bytes, its manifest says {manifest.engine_size}",
            manifest,
        )
    if verify_digest:
        try:
            digest = sha256_file(path)
        except OSError as err:
            return LookupResult(
                None, f"{prefix} the engine file {path} is unreadable: {err.strerror}", manifest
            )
        if digest != manifest.engine_sha256:
            return LookupResult(
                None, f"{prefix} the engine file {path} does not match its manifest's sha256", manifest
            )
    return LookupResult(path, None, manifest)


def make_manifest(
    request: EngineRequest,
    engine: bytes,
    tensors: Sequence[EngineTensor],
    precision: str,
    precision_reason: str,
    target: str = "gpu",
    build_seconds: float = 0.0,
    created: Optional[str] = None,
    network: str = NETWORK_ONNX,
    network_sha256: Optional[str] = None,
) -> EngineManifest:
    """The manifest for ``engine``, built for ``request`` at ``precision`` (one of :data:`BUILT_PRECISIONS`)
    from the ONNX ``network`` (one of :data:`NETWORKS`) whose bytes have ``network_sha256`` (default: the
    request's ONNX)."""
    if precision not in BUILT_PRECISIONS:
        raise ValueError(f"built precision {precision!r} is not one of {', '.join(BUILT_PRECISIONS)}")
    if network not in NETWORKS:
        raise ValueError(f"network {network!r} is not one of {', '.join(NETWORKS)}")
    platform = request.platform
    return EngineManifest(
        model=request.model,
        key=request.key,
        tensorrt_version=platform.tensorrt_version,
        gpu_name=platform.gpu_name,
        compute_capability=platform.compute_capability,
        l4t_version=platform.l4t_version,
        requested_precision=request.precision,
        precision=precision,
        precision_reason=precision_reason,
        dla_core=request.dla_core,
        target=target,
        tensors=tuple(tensors),
        profiles=tuple(request.profiles),
        onnx_sha256=request.onnx_sha256,
        calibration_sha256=request.calibration_sha256,
        engine_sha256=sha256_bytes(engine),
        engine_size=len(engine),
        created=created or utc_timestamp(),
        build_seconds=round(float(build_seconds), 3),
        network=network,
        network_sha256=network_sha256 or request.onnx_sha256,
        int8_onnx_sha256=request.int8_onnx_sha256,
        fp16_converter=request.fp16_converter,
    )


def store(engine_dir: PathLike, manifest: EngineManifest, engine: bytes) -> Path:
    """Write ``engine`` and then its manifest into the cache, each atomically; return the engine path.

    Raises:
        ValueError: the manifest does not describe these bytes.
        OSError: the directory cannot be created or written (a full disk, a read-only mount).
    """
    if len(engine) != manifest.engine_size or sha256_bytes(engine) != manifest.engine_sha256:
        raise ValueError(f"{manifest.model}: the manifest does not describe these engine bytes")
    path = engine_path(engine_dir, manifest.model, manifest.key)
    with atomic_writer(path) as stream:
        stream.write(engine)
    with atomic_writer(manifest_path(engine_dir, manifest.model, manifest.key)) as stream:
        stream.write(manifest.dumps().encode("utf-8"))
    logger.info(
        "cached %s %s engine %s (%d bytes, %s)",
        manifest.model,
        manifest.precision,
        path,
        manifest.engine_size,
        manifest.platform.describe(),
    )
    return path


def prune(engine_dir: PathLike, model: str, keep: Sequence[str]) -> List[Path]:
    """Delete the cached engines of ``model`` whose key is not in ``keep``; return what was removed.

    Manifests go first, so an interrupted prune leaves at worst an engine without a manifest, which
    :func:`lookup` never returns. Files that cannot be removed are logged and left.
    """
    directory = model_dir(engine_dir, model)
    if not directory.is_dir():
        return []
    keep_set = set(keep)
    removed: List[Path] = []
    for suffix in (MANIFEST_SUFFIX, ENGINE_SUFFIX):
        for path in sorted(directory.glob(f"*{suffix}")):
            if path.name[: -len(suffix)] in keep_set:
                continue
            try:
                path.unlink()
            except OSError as err:
                logger.warning("cannot remove stale engine file %s: %s", path, err.strerror)
                continue
            removed.append(path)
    return removed


def _other_manifests(directory: Path, key: str) -> List[Tuple[EngineManifest, Path]]:
    found: List[Tuple[EngineManifest, Path]] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob(f"*{MANIFEST_SUFFIX}")):
        if path.name == f"{key}{MANIFEST_SUFFIX}":
            continue
        try:
            found.append((read_manifest(path), path))
        except (OSError, ValueError) as err:
            logger.debug("ignoring unreadable manifest %s: %s", path, err)
    return found


def _closest(
    candidates: Sequence[Tuple[EngineManifest, Path]], request: EngineRequest
) -> Optional[Tuple[EngineManifest, Path]]:
    """The candidate with the fewest differences from ``request``, the newest among equals."""
    if not candidates:
        return None
    newest_first = sorted(candidates, key=lambda item: item[0].created, reverse=True)
    return min(newest_first, key=lambda item: len(_differences(item[0], request)))


def _differences(manifest: EngineManifest, request: EngineRequest) -> List[str]:
    """Sentences naming each way ``manifest`` does not fit ``request`` (empty when it fits)."""
    platform = request.platform
    found: List[str] = []
    if manifest.model != request.model:
        found.append(f"the manifest is for model {manifest.model!r}")
    if manifest.tensorrt_version != platform.tensorrt_version:
        found.append(
            f"the cached engine was built with TensorRT {manifest.tensorrt_version}, "
            f"this device runs {platform.tensorrt_version}"
        )
    if manifest.gpu_name != platform.gpu_name or manifest.compute_capability != platform.compute_capability:
        found.append(
            f"the cached engine was built for {manifest.gpu_name} ({manifest.platform.sm}), "
            f"this device has {platform.gpu_name} ({platform.sm})"
        )
    if manifest.l4t_version != platform.l4t_version:
        found.append(
            f"the cached engine was built on L4T {manifest.l4t_version or 'none'}, "
            f"this device runs L4T {platform.l4t_version or 'none'}"
        )
    if manifest.onnx_sha256 != request.onnx_sha256:
        found.append(
            f"the ONNX model changed (cached {manifest.onnx_sha256[:12]}…, now {request.onnx_sha256[:12]}…)"
        )
    if manifest.requested_precision != request.precision:
        found.append(
            f"precision {request.precision!r} is asked for, the cached engine was built for "
            f"{manifest.requested_precision!r}"
        )
    if manifest.dla_core != request.dla_core:
        found.append(
            f"DLA core {_dla(request.dla_core)} is asked for, the cached engine targets {_dla(manifest.dla_core)}"
        )
    if _profiles_key(manifest.profiles) != _profiles_key(request.profiles):
        found.append(
            "the optimization profiles differ (cached: "
            + ", ".join(p.describe() for p in manifest.profiles)
            + "; wanted: "
            + ", ".join(p.describe() for p in request.profiles)
            + ")"
        )
    if manifest.calibration_sha256 != request.calibration_sha256:
        found.append(
            f"the INT8 calibration data differs (cached {_short(manifest.calibration_sha256)}, "
            f"now {_short(request.calibration_sha256)})"
        )
    if manifest.int8_onnx_sha256 != request.int8_onnx_sha256:
        found.append(
            f"the Q/DQ INT8 model differs (cached {_short(manifest.int8_onnx_sha256)}, "
            f"now {_short(request.int8_onnx_sha256)})"
        )
    if manifest.fp16_converter != request.fp16_converter:
        found.append(
            f"the FP16 ONNX converter differs (cached {manifest.fp16_converter or 'none'}, "
            f"now {request.fp16_converter or 'none'})"
        )
    return found


def _profiles_key(profiles: Sequence[ProfileRange]) -> List[Dict[str, Any]]:
    return [profile.to_json() for profile in sorted(profiles, key=lambda p: p.name)]


def _dla(core: Optional[int]) -> str:
    return "none (GPU)" if core is None else str(core)


def _short(digest: Optional[str]) -> str:
    return "none" if digest is None else f"{digest[:12]}…"


def _optional_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _int_tuple(values: Any) -> Shape:
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"expected a list of integers, got {type(values).__name__}")
    return tuple(int(value) for value in values)


# -- optimization profiles -----------------------------------------------------------------------


def optimization_profile(
    spec: ModelSpec,
    max_batch: int = 16,
    max_frame: Tuple[int, int] = (1080, 1920),
    min_face: int = 20,
    yunet_max_side: int = 640,
    opt_frame: Optional[Tuple[int, int]] = None,
    embedder_batch: Optional[int] = None,
) -> Tuple[ProfileRange, ...]:
    """The optimization-profile ranges (one per input) for ``spec``'s engine.

    Args:
        spec: the registry entry.
        max_batch: the largest batch R-Net, O-Net, the embedder and the liveness models take in one
            inference; the TensorRT back-end splits larger batches.
        max_frame: the largest image ``(height, width)`` in pixels MTCNN is run on.
        min_face: the MTCNN minimum face size in pixels. The largest P-Net pyramid level is the
            image scaled by ``12 / min_face`` (:func:`pyramid_sizes`, as the detector computes it;
            above 1 — an upsampled image — when ``min_face`` < 12).
        yunet_max_side: the longest side YuNet is fed (frames are resized and padded to multiples of 32).
        opt_frame: the image ``(height, width)`` to tune P-Net for (the camera frame); ``None`` tunes
            for ``max_frame``. Its largest pyramid level is the profile's opt (it dominates the
            pyramid's cost); clipped to the maximum.
        embedder_batch: the embedder's opt batch (``embedder.batch_size``); ``None`` for 4.

    Returns:
        One :class:`ProfileRange` per input, in ``spec.inputs`` order:

        * P-Net: batch 1, height and width from 12 up to the largest pyramid level of ``max_frame``,
          in the input's own layout (NHWC with height and width swapped: ``(1, W, H, 3)``); opt the
          largest level of ``opt_frame``.
        * R-Net, O-Net, embedder, liveness: batch ``1 .. max_batch``; opt ``max_batch`` for R-Net
          (hundreds of P-Net candidates per frame), ``max_batch // 2`` for O-Net, ``embedder_batch``
          (default 4) for the embedder and 4 for liveness (a door sees a few faces at a time), all
          capped at ``max_batch``.
        * YuNet: batch 1, height and width from 32 to ``yunet_max_side`` rounded up to a multiple of 32;
          opt the registry's example shape (640×480) when it fits, else the maximum.
        * Any other model with only a dynamic batch: ``1 .. max_batch``, opt ``max_batch``.

    Raises:
        ValueError: an argument is out of range, or the model has dynamic dimensions other than the
            batch and no rule here covers it.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    frame_h, frame_w = max_frame
    if frame_h < PNET_MIN_SIDE or frame_w < PNET_MIN_SIDE:
        raise ValueError(f"max_frame must be at least {PNET_MIN_SIDE}x{PNET_MIN_SIDE}, got {max_frame}")
    if opt_frame is not None and (opt_frame[0] < PNET_MIN_SIDE or opt_frame[1] < PNET_MIN_SIDE):
        raise ValueError(f"opt_frame must be at least {PNET_MIN_SIDE}x{PNET_MIN_SIDE}, got {opt_frame}")
    if min_face < 1:
        raise ValueError(f"min_face must be >= 1 pixel, got {min_face}")
    if yunet_max_side < YUNET_MULTIPLE:
        raise ValueError(f"yunet_max_side must be >= {YUNET_MULTIPLE}, got {yunet_max_side}")
    if embedder_batch is not None and embedder_batch < 1:
        raise ValueError(f"embedder_batch must be >= 1, got {embedder_batch}")

    if spec.family == "mtcnn" and spec.stage == "pnet":
        top_h, top_w = pnet_top_level(frame_h, frame_w, min_face)
        tune_h, tune_w = pnet_top_level(*(opt_frame or max_frame), min_face)
        low = _image_shape(spec, 1, PNET_MIN_SIDE, PNET_MIN_SIDE)
        high = _image_shape(spec, 1, top_h, top_w)
        opt = _image_shape(spec, 1, min(tune_h, top_h), min(tune_w, top_w))
        return (ProfileRange(spec.inputs[0].name, low, opt, high),)
    if spec.family == "yunet":
        side = -(-yunet_max_side // YUNET_MULTIPLE) * YUNET_MULTIPLE
        low = _image_shape(spec, 1, YUNET_MULTIPLE, YUNET_MULTIPLE)
        high = _image_shape(spec, 1, side, side)
        example = spec.inputs[0].example_shape
        ranged = ProfileRange(spec.inputs[0].name, low, high, high)
        opt = high if example is None or not ranged.contains(example) else tuple(example)
        return (ProfileRange(spec.inputs[0].name, low, opt, high),)

    opt_batch = {
        "rnet": max_batch,
        "onet": max(1, max_batch // 2),
        "embed": embedder_batch or 4,
        "liveness": 4,
    }.get(spec.stage, max_batch)
    opt_batch = min(opt_batch, max_batch)
    ranges: List[ProfileRange] = []
    for tensor in spec.inputs:
        rest = tensor.shape[1:]
        if any(dim is None for dim in rest):
            raise ValueError(
                f"{spec.name}: input {tensor.describe()} has dynamic dimensions other than the batch "
                "and no optimization-profile rule covers this model"
            )
        fixed = tuple(int(dim) for dim in rest if dim is not None)
        if tensor.shape[0] is None:
            ranges.append(ProfileRange(tensor.name, (1, *fixed), (opt_batch, *fixed), (max_batch, *fixed)))
        else:
            static = (int(tensor.shape[0]), *fixed)
            ranges.append(ProfileRange(tensor.name, static, static, static))
    return tuple(ranges)


def pyramid_sizes(height: int, width: int, min_face: int, scale_factor: float) -> List[Tuple[int, int]]:
    """The ``(height, width)`` of every MTCNN pyramid level P-Net sees for an image of that size.

    Mirrors :meth:`appliance.vision.mtcnn.MtcnnDetector.scales` and
    :func:`appliance.vision.boxes.pyramid`: the first level maps ``min_face`` onto P-Net's
    12-pixel cell (scale ``12 / min_face``), each next one is ``scale_factor`` times smaller while
    its shorter side stays at least 12 pixels; sizes are rounded up.
    """
    if min_face < 1 or not 0.0 < scale_factor < 1.0:
        raise ValueError(f"need min_face >= 1 and 0 < scale_factor < 1, got {min_face}, {scale_factor}")
    first = PNET_MIN_SIDE / min_face
    sizes: List[Tuple[int, int]] = []
    side = min(height, width) * first
    while side >= PNET_MIN_SIDE:
        scale = first * scale_factor ** len(sizes)
        sizes.append((math.ceil(height * scale), math.ceil(width * scale)))
        side *= scale_factor
    return sizes


def pnet_top_level(height: int, width: int, min_face: int) -> Tuple[int, int]:
    """The largest P-Net pyramid level ``(height, width)`` for an image of that size (at least 12×12)."""
    scale = PNET_MIN_SIDE / float(min_face)
    return (
        max(PNET_MIN_SIDE, math.ceil(height * scale)),
        max(PNET_MIN_SIDE, math.ceil(width * scale)),
    )


def _image_shape(spec: ModelSpec, batch: int, height: int, width: int) -> Shape:
    """A full input shape for an image of ``height`` × ``width`` in ``spec``'s layout."""
    pre = spec.preprocessing
    first, second = (width, height) if pre.transpose_hw else (height, width)
    if pre.layout == "NHWC":
        return (batch, first, second, 3)
    return (batch, 3, first, second)


def file_sha256_or_none(path: Optional[PathLike]) -> Optional[str]:
    """sha256 of the file at ``path``, or ``None`` for no path (the calibration cache helper).

    Raises:
        OSError: the path is given but cannot be read.
    """
    if path is None:
        return None
    return sha256_file(os.fspath(path))


# -- requests from back-end options ----------------------------------------------------------------


def calibration_set_path(calibration_dir: Optional[PathLike], model: str) -> Optional[Path]:
    """``<calibration_dir>/<model>.npy`` when that file exists, else ``None`` (also for no folder)."""
    if calibration_dir is None:
        return None
    path = Path(calibration_dir) / f"{model}{CALIBRATION_SET_SUFFIX}"
    return path if path.is_file() else None


def calibration_source(spec: ModelSpec, options: BackendOptions) -> Optional[Path]:
    """The INT8 calibration data of ``spec``'s engine: ``options.calibration_cache``, else the model's
    set in ``options.calibration_dir``, else ``None``."""
    if options.calibration_cache is not None:
        return Path(options.calibration_cache)
    return calibration_set_path(options.calibration_dir, spec.name)


def engine_request(
    spec: ModelSpec,
    onnx: bytes,
    platform: PlatformInfo,
    options: BackendOptions,
    calibration_sha256: Optional[str] = None,
    int8_onnx: Optional[PathLike] = None,
) -> EngineRequest:
    """The :class:`EngineRequest` for ``spec``'s ONNX bytes on ``platform`` with back-end ``options``.

    This is the one place the request (hence the cache key) is derived from the configuration, used
    alike by the TensorRT back-end at open, by ``face-appliance engines build`` and by the daemon, so
    an engine built by one is found by the others.

    The INT8 and FP16 inputs on offer — the calibration data (:func:`calibration_source`), the
    installed Q/DQ model (``int8_onnx``, else the gate-passed one in ``options.int8_dir`` found by
    :func:`engines.int8.find_int8`), the FP16 converter on a strongly typed TensorRT — go through
    :func:`plan_precision`, and only those the plan builds from are kept in the request; data offered
    but unusable on this TensorRT is named in ``ignored_int8`` (and so in the precision reason).

    Args:
        calibration_sha256: the digest of the calibration data; ``None`` reads the file named by
            :func:`calibration_source` (no file: no calibration).
        int8_onnx: the Q/DQ INT8 model of this network; ``None`` looks it up in ``options.int8_dir``
            (when the options have that folder).

    Raises:
        ValueError: the options give an invalid profile or request.
        OSError: the calibration file or the Q/DQ model cannot be read.
    """
    profiles = optimization_profile(
        spec,
        max_batch=options.max_batch,
        max_frame=options.max_frame,
        min_face=options.min_face,
        yunet_max_side=options.yunet_max_side,
        opt_frame=options.opt_frame,
        embedder_batch=options.embedder_batch,
    )
    if calibration_sha256 is None:
        calibration_sha256 = file_sha256_or_none(calibration_source(spec, options))
    onnx_is_qdq = is_qdq_model(onnx)
    qdq_path: Optional[Path] = None
    if not onnx_is_qdq:
        qdq_path = Path(int8_onnx) if int8_onnx is not None else installed_qdq_model(spec, options)
    qdq_sha256 = sha256_file(os.fspath(qdq_path)) if qdq_path is not None else None
    converter: Optional[str] = None
    if tensorrt_features(platform.tensorrt_version).strongly_typed:
        from .fp16 import converter_version

        converter = converter_version()
    plan = plan_precision(
        options.precision,
        platform,
        qdq=qdq_sha256 is not None,
        calibration=calibration_sha256 is not None,
        fp16_converter=converter,
        onnx_is_qdq=onnx_is_qdq,
    )
    uses_calibration = plan.int8_source == INT8_FROM_CALIBRATION
    uses_qdq = plan.network == NETWORK_QDQ
    return EngineRequest(
        model=spec.name,
        onnx_sha256=sha256_bytes(onnx),
        platform=platform,
        precision=options.precision,
        dla_core=options.dla_core,
        profiles=profiles,
        calibration_sha256=calibration_sha256 if uses_calibration else None,
        int8_onnx_sha256=qdq_sha256 if uses_qdq else None,
        fp16_converter=converter if plan.network == NETWORK_FP16 else None,
        int8_onnx_path=os.fspath(qdq_path) if uses_qdq and qdq_path is not None else None,
        ignored_int8=_ignored_sentence(calibration_sha256, plan, platform),
        onnx_is_qdq=onnx_is_qdq,
    )


#: ONNX operators of explicit quantization.
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def is_qdq_model(onnx_bytes: bytes) -> bool:
    """Whether the ONNX model is explicitly quantized (has QuantizeLinear/DequantizeLinear nodes).

    Unreadable bytes are not a Q/DQ model (TensorRT's parser reports them at the build).
    """
    import onnx

    try:
        graph = onnx.load_from_string(onnx_bytes).graph
    except Exception:  # protobuf's DecodeError and friends
        return False
    return any(node.op_type in QDQ_OPS for node in graph.node)


def _ignored_sentence(
    calibration_sha256: Optional[str], plan: PrecisionPlan, platform: PlatformInfo
) -> Optional[str]:
    """The sentence naming calibration data that a strongly typed TensorRT cannot use, else ``None``."""
    if calibration_sha256 is None or plan.int8_source is not None:
        return None
    if not tensorrt_features(platform.tensorrt_version).strongly_typed:
        return None  # 8.x/10.x use it wherever INT8 can be had; elsewhere the GPU is the reason
    _, has_int8 = fast_precisions(platform.compute_capability)
    return no_implicit_int8(f"TensorRT {platform.tensorrt_version}") if has_int8 else None


def installed_qdq_model(spec: ModelSpec, options: BackendOptions) -> Optional[Path]:
    """The gate-passed Q/DQ INT8 model of ``spec`` in ``options.int8_dir``, or ``None``.

    ``int8_dir`` is the folder ``face-appliance calibrate`` installs Q/DQ models into
    (``calibration.int8_dir``); options without it (or with ``None``) offer no Q/DQ model. Why a model
    there is not usable (another FP32 file, a failed gate, an altered file) is logged.
    """
    folder = options.int8_dir
    if folder is None:
        return None
    path, detail = find_int8(folder, spec)
    if path is None:
        logger.debug("%s: no Q/DQ INT8 model for TensorRT: %s", spec.name, detail)
    return path


def calibration_cache_path(engine_dir: PathLike, request: EngineRequest) -> Path:
    """Where the TensorRT calibrator keeps the INT8 scales it computed for ``request``.

    ``<engine_dir>/<model>/calibration-<onnx>-<data>-trt<version>.cache``: the scales depend on the
    network (its ONNX), the calibration data and the TensorRT version that wrote the cache, and are
    reused by every later build with the same three (a different precision, profile or DLA core).

    Raises:
        ValueError: the request has no calibration data.
    """
    if request.calibration_sha256 is None:
        raise ValueError(f"{request.model}: the request has no calibration data")
    version = _SAFE_NAME.sub("-", request.platform.tensorrt_version)
    name = f"calibration-{request.onnx_sha256[:12]}-{request.calibration_sha256[:12]}-trt{version}.cache"
    return model_dir(engine_dir, request.model) / name
