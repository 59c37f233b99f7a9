"""The manifest of a model package (schema 1 or 2), and whether a package's model fits the pipeline.

``manifest.json`` is a strict JSON object (unknown keys, duplicate keys, NaN are refused)::

    schema          1, or 2 for a rollback package that names the release it rolls back from
    kind            the registry model the package replaces: "mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet",
                    "yunet", "mobilefacenet", "minifasnet-v2" or "minifasnet-v1se"
    name, version   the package's model name and version (events and the gallery record kind@version)
    release         a monotonic counter per kind: a package must carry a higher release than the active
                    one (anti-rollback) ...
    rollback        ... unless this signed flag allows installing a release that is not higher
    rollback_from   (schema 2 only, with rollback) the release this rollback replaces: it is accepted
                    only where that release is the highest ever activated (see :func:`release_problem`)
    files           {file name: {"size", "sha256"}} for every payload file (flat names, no folders)
    model_file      the file name of the ONNX model (a ``files`` key)
    calibration_file  the INT8 calibration cache's file name, or null
    inputs, outputs [{"name", "shape" (null = dynamic), "dtype"}] as read from the ONNX graph
    preprocessing   as in the registry (colour, layout, scale, mean, std, sizes, alignment, crop scale)
    embedding_size  the embedding length for an embedder, else null
    min_firmware    the oldest firmware (appliance version, numeric dotted) that may install it
    reference       {"inputs", "outputs", "atol", "min_cosine"} or null: validation data and tolerances
    created         RFC 3339 time of the build

Schema 2 differs from schema 1 by ``rollback_from`` only, and only rollback packages use it:
other packages stay schema 1, readable by older firmware, and an older firmware refuses a schema-2
rollback (as ``malformed``) instead of installing it without the bound it cannot check.

A package fits when :func:`compatibility_problems` finds nothing: its inputs and outputs have the
names, dtypes and shapes the pipeline feeds and reads (the registry's spec of ``kind``), and its
pre-processing keeps the pixel arrangement the pipeline's code depends on.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Literal

from engines.registry import (
    KIND_EMBEDDER,
    MODELS,
    PREPARE_DYNAMIC_BATCH,
    ModelSpec,
    Preprocessing,
    TensorSpec,
)

from ..config import StrictModel
from . import errors as codes
from .errors import PackageError

SCHEMA = 1
#: the schema of a rollback package that names the release it rolls back from
ROLLBACK_SCHEMA = 2
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PAYLOAD_PREFIX = "payload/"
SIGNATURE_ALG = "ed25519"

MODEL_FILE = "model.onnx"
CALIBRATION_FILE = "calibration.cache"
REFERENCE_INPUTS_FILE = "reference_inputs.npz"
REFERENCE_OUTPUTS_FILE = "reference_outputs.npz"

MAX_MANIFEST_BYTES = 64 * 1024
MAX_SIGNATURE_BYTES = 4 * 1024
#: the default bound on a whole package (``updates.max_package_mb`` on the appliance)
DEFAULT_MAX_PACKAGE_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_FILES = 8
MAX_MEMBERS = 2 + MAX_PAYLOAD_FILES
#: reference inputs are kept below this size (the batch shrinks for large inputs such as P-Net's)
MAX_REFERENCE_INPUT_BYTES = 2 * 1024 * 1024
DEFAULT_REFERENCE_BATCH = 4
#: noise inputs of models that take images of any size (P-Net, YuNet) are about this large
REFERENCE_IMAGE_SIDE = 128
REFERENCE_MIN_SIDE = 32
MAX_REFERENCE_FACES = 8
#: tolerances recorded when the builder gives none: outputs within ``atol`` (detectors, liveness), or
#: embeddings with a cosine of at least ``min_cosine`` to the reference (FP16/INT8 engines included)
DEFAULT_ATOL = 0.05
DEFAULT_MIN_COSINE = 0.98

#: registry model name → spec; a package's ``kind`` is one of these keys
KINDS: Dict[str, ModelSpec] = {spec.name: spec for spec in MODELS}

_FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
FIRMWARE_PATTERN = r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$"
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
}
MAX_DIM = 2**31 - 1
MAX_RELEASE = 2**31 - 1


# -- the manifest ----------------------------------------------------------------------------------------


class _Frozen(StrictModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, frozen=True)


class FileEntry(_Frozen):
    """One payload file: its length and sha256."""

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class TensorEntry(_Frozen):
    """One graph input or output: name, shape (``None`` = dynamic) and element type."""

    name: str = Field(min_length=1, max_length=256)
    shape: Tuple[Optional[int], ...] = Field(min_length=1, max_length=8)
    dtype: Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: Tuple[Optional[int], ...]) -> Tuple[Optional[int], ...]:
        for dim in value:
            if dim is not None and not 1 <= dim <= MAX_DIM:
                raise ValueError(f"dimension {dim} is out of range (1 … {MAX_DIM}, or null for dynamic)")
        return value

    @classmethod
    def of(cls, tensor: TensorSpec) -> TensorEntry:
        return cls(name=tensor.name, shape=tuple(tensor.shape), dtype=tensor.dtype)  # type: ignore[arg-type]

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, tuple(self.shape), self.dtype)

    def describe(self) -> str:
        return self.spec().describe()


class PreprocessingEntry(_Frozen):
    """:class:`engines.registry.Preprocessing` as JSON."""

    color: Literal["RGB", "BGR"]
    layout: Literal["NCHW", "NHWC"]
    input_scale: float = Field(gt=0)
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    transpose_hw: bool
    input_size: Optional[Tuple[int, int]]
    size_multiple: int = Field(ge=1, le=4096)
    alignment: Optional[Literal["arcface-112"]]
    crop_scale: Optional[float] = Field(gt=0)

    @field_validator("std")
    @classmethod
    def _std(cls, value: Tuple[float, float, float]) -> Tuple[float, float, float]:
        if any(v <= 0 for v in value):
            raise ValueError("every std must be > 0")
        return value

    @classmethod
    def of(cls, pre: Preprocessing) -> PreprocessingEntry:
        return cls(
            color=pre.color,  # type: ignore[arg-type]
            layout=pre.layout,  # type: ignore[arg-type]
            input_scale=float(pre.input_scale),
            mean=tuple(float(v) for v in pre.mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in pre.std),  # type: ignore[arg-type]
            transpose_hw=pre.transpose_hw,
            input_size=pre.input_size,
            size_multiple=pre.size_multiple,
            alignment=pre.alignment,  # type: ignore[arg-type]
            crop_scale=pre.crop_scale,
        )

    def to_registry(self) -> Preprocessing:
        return Preprocessing(
            color=self.color,
            layout=self.layout,
            input_scale=self.input_scale,
            mean=self.mean,
            std=self.std,
            transpose_hw=self.transpose_hw,
            input_size=self.input_size,
            size_multiple=self.size_multiple,
            alignment=self.alignment,
            crop_scale=self.crop_scale,
        )


class ReferenceEntry(_Frozen):
    """Validation data: reference inputs, the outputs expected for them, and the tolerances."""

    inputs: str = Field(pattern=_FILE_NAME)
    outputs: str = Field(pattern=_FILE_NAME)
    atol: Optional[float] = Field(default=None, ge=0)
    min_cosine: Optional[float] = Field(default=None, ge=-1, le=1)

    @model_validator(mode="after")
    def _some_tolerance(self) -> ReferenceEntry:
        if self.atol is None and self.min_cosine is None:
            raise ValueError("a reference needs atol, min_cosine or both")
        if self.inputs == self.outputs:
            raise ValueError("reference inputs and outputs must be different files")
        return self


class Manifest(_Frozen):
    """``manifest.json``, schema 1 or 2 (see the module documentation)."""

    schema_version: Literal[1, 2] = Field(alias="schema")
    kind: str = Field(min_length=1, max_length=64)
    name: str = Field(pattern=LABEL_PATTERN)
    version: str = Field(pattern=LABEL_PATTERN)
    release: int = Field(ge=1, le=MAX_RELEASE)
    rollback: bool = False
    rollback_from: Optional[int] = Field(default=None, ge=2, le=MAX_RELEASE)
    created: str = Field(max_length=40)
    min_firmware: str = Field(pattern=FIRMWARE_PATTERN)
    model_file: str = Field(pattern=_FILE_NAME)
    calibration_file: Optional[str] = Field(default=None, pattern=_FILE_NAME)
    files: Dict[str, FileEntry] = Field(min_length=1, max_length=MAX_PAYLOAD_FILES)
    inputs: Tuple[TensorEntry, ...] = Field(min_length=1, max_length=64)
    outputs: Tuple[TensorEntry, ...] = Field(min_length=1, max_length=64)
    preprocessing: PreprocessingEntry
    embedding_size: Optional[int] = Field(default=None, ge=1, le=65536)
    reference: Optional[ReferenceEntry] = None

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        validate_default=True,
        frozen=True,
        populate_by_name=True,
        protected_namespaces=(),  # the field model_file; pydantic < 2.10 reserves "model_"
    )

    @field_validator("created")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        if not _RFC3339.match(value):
            raise ValueError(f"{value!r} is not an RFC 3339 time such as 2024-05-01T12:00:00Z")
        try:
            datetime.fromisoformat(iso_time(value))
        except ValueError as err:
            raise ValueError(f"{value!r} is not a valid time: {err}") from None
        return value

    @field_validator("files")
    @classmethod
    def _file_names(cls, value: Dict[str, FileEntry]) -> Dict[str, FileEntry]:
        for name in value:
            if not re.match(_FILE_NAME, name):
                raise ValueError(
                    f"file name {name!r} is not allowed (letters, digits, '_', '.', '-'; no folders)"
                )
        return value

    @model_validator(mode="after")
    def _rollback_bound(self) -> Manifest:
        if self.schema_version == SCHEMA:
            if self.rollback_from is not None:
                raise ValueError(f"rollback_from needs schema {ROLLBACK_SCHEMA}")
            return self
        if not self.rollback or self.rollback_from is None:
            raise ValueError(
                f"schema {ROLLBACK_SCHEMA} is for rollback packages: set rollback and rollback_from"
            )
        if self.rollback_from <= self.release:
            raise ValueError(
                f"rollback_from {self.rollback_from} must be above the package's release {self.release}"
            )
        return self

    @model_validator(mode="after")
    def _files_referenced(self) -> Manifest:
        used = {self.model_file: "model_file"}
        if self.calibration_file is not None:
            used[self.calibration_file] = "calibration_file"
        if self.reference is not None:
            used[self.reference.inputs] = "reference.inputs"
            used[self.reference.outputs] = "reference.outputs"
        if len(used) != 1 + (self.calibration_file is not None) + 2 * (self.reference is not None):
            raise ValueError("model, calibration and reference files must be different files")
        missing = sorted(f"{role} {name!r}" for name, role in used.items() if name not in self.files)
        if missing:
            raise ValueError(f"not listed in files: {', '.join(missing)}")
        unused = sorted(set(self.files) - set(used))
        if unused:
            raise ValueError(f"files {unused} are not the model, calibration or reference")
        for what, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in tensors]
            if len(set(names)) != len(names):
                raise ValueError(f"{what} repeat a name: {names}")
        return self

    @property
    def payload_bytes(self) -> int:
        """The sum of the payload files' sizes."""
        return sum(entry.size for entry in self.files.values())

    @property
    def qualified_version(self) -> str:
        """``kind@version``: what events and the gallery record for this model."""
        return f"{self.kind}@{self.version}"

    def to_bytes(self) -> bytes:
        """The canonical JSON (sorted keys, two-space indent, ASCII, final newline) that is signed."""
        document = self.summary()
        return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")

    def summary(self) -> Dict[str, Any]:
        """The manifest as a JSON-able dict (the ``schema`` key spelled as in the file).

        Schema 1 has no ``rollback_from`` key (older firmware refuses unknown keys).
        """
        document = self.model_dump(mode="json", by_alias=True)
        if self.schema_version == SCHEMA:
            document.pop("rollback_from", None)
        return document


class SignatureEntry(_Frozen):
    """``manifest.sig``."""

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    alg: str = Field(max_length=32)
    signature: str = Field(max_length=200)


def iso_time(value: str) -> str:
    """RFC 3339 → what ``datetime.fromisoformat`` of Python 3.8 reads (``Z`` → ``+00:00``, µs)."""
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    match = re.match(r"^(.*T\d{2}:\d{2}:\d{2})\.(\d+)(.*)$", text)
    if match:
        text = f"{match.group(1)}.{match.group(2)[:6].ljust(6, '0')}{match.group(3)}"
    return text


def utc_now() -> str:
    """The current time as RFC 3339 UTC with seconds, e.g. ``2024-05-01T12:00:00Z``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- versions and compatibility -----------------------------------------------------------------------


def release_problem(manifest: Manifest, highest_release: Optional[int]) -> Optional[str]:
    """Why the anti-rollback rule refuses ``manifest`` (``None``: it may be installed).

    Args:
        manifest: the package's (authentic) manifest.
        highest_release: the highest release of the kind ever activated on the appliance (``None``:
            only the registry's model so far).

    A release above the highest is accepted. A lower or equal one needs a rollback package, and a
    rollback is bounded so that a captured one cannot downgrade a device later: a schema-2 rollback
    replaces exactly its ``rollback_from`` release (once a higher release is activated it is void);
    a schema-1 rollback (built before the bound existed) goes back at most one release.
    """
    if highest_release is None or manifest.release > highest_release:
        return None
    what = (
        f"{manifest.qualified_version} has release {manifest.release}, not above release {highest_release}, "
        f"the highest activated for {manifest.kind}"
    )
    if not manifest.rollback:
        return f"{what}; an older model needs a rollback package (package build --rollback-from {highest_release})"
    if manifest.rollback_from is not None:
        if manifest.rollback_from == highest_release:
            return None
        return (
            f"{what}; it is a rollback from release {manifest.rollback_from} only: build a rollback "
            f"package with --rollback-from {highest_release}"
        )
    if manifest.release >= highest_release - 1:
        return None
    return (
        f"{what}; a rollback package without rollback_from goes back one release at most: build one "
        f"with --rollback-from {highest_release}"
    )


def parse_version(text: str) -> Tuple[int, ...]:
    """The leading numeric part of a version: ``"0.1.0"`` → ``(0, 1, 0)``, ``"1.2.3rc1"`` → ``(1, 2, 3)``.

    Raises:
        ValueError: the text does not start with a number.
    """
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", text)
    if not match:
        raise ValueError(f"{text!r} is not a numeric version such as 1.2.3")
    return tuple(int(part) for part in match.group(1).split("."))


def version_at_least(have: str, need: str) -> bool:
    """Whether version ``have`` ≥ ``need``, comparing numeric components (missing ones are 0)."""
    left, right = parse_version(have), parse_version(need)
    width = max(len(left), len(right))
    return left + (0,) * (width - len(left)) >= right + (0,) * (width - len(right))


def _io_problems(spec: ModelSpec, inputs: Sequence[TensorEntry], outputs: Sequence[TensorEntry]) -> List[str]:
    """What makes these graph inputs/outputs unusable in ``spec``'s place (empty when compatible).

    A dimension the registry fixes must be equal (or dynamic in the graph); a dimension the registry
    leaves dynamic must be dynamic, except a batch of 1 that the registry's preparation makes dynamic.
    """
    problems: List[str] = []
    for what, wanted, found in (("input", spec.inputs, inputs), ("output", spec.outputs, outputs)):
        by_name = {tensor.name: tensor for tensor in found}
        for tensor in wanted:
            got = by_name.pop(tensor.name, None)
            if got is None:
                problems.append(
                    f"{what} {tensor.name!r} is absent (the model has {sorted(t.name for t in found)})"
                )
                continue
            if got.dtype != tensor.dtype:
                problems.append(f"{what} {tensor.name!r} is {got.dtype}, the pipeline feeds {tensor.dtype}")
            if len(got.shape) != len(tensor.shape):
                problems.append(
                    f"{what} {got.describe()} has rank {len(got.shape)}, needs {tensor.describe()}"
                )
                continue
            for axis, (want, have) in enumerate(zip(tensor.shape, got.shape)):
                if want is None and have is not None:
                    if axis == 0 and have == 1 and PREPARE_DYNAMIC_BATCH in spec.prepare:
                        continue
                    problems.append(
                        f"{what} {got.describe()} fixes axis {axis} to {have}; it must be dynamic"
                    )
                elif want is not None and have is not None and want != have:
                    problems.append(
                        f"{what} {got.describe()} differs from {tensor.describe()} on axis {axis}"
                    )
        problems.extend(f"unexpected {what} {name!r}" for name in by_name)
    return problems


def compatibility_problems(manifest: Manifest) -> List[str]:
    """Why the package's model cannot replace the registry model ``manifest.kind`` (empty: it can).

    Checked: the kind is known; input and output names, dtypes and shapes fit what the pipeline
    feeds and reads (:func:`_io_problems`); the pre-processing is the registry's for that kind, field
    by field (the installed model is run with the registry's pre-processing, and the reference
    inputs are already pre-processed, so a different normalisation would go unnoticed); an
    embedder states its embedding size and it matches its output.
    """
    spec = KINDS.get(manifest.kind)
    if spec is None:
        return [f"unknown kind {manifest.kind!r}; this firmware knows {', '.join(KINDS)}"]
    problems = _io_problems(spec, manifest.inputs, manifest.outputs)
    pre, want = manifest.preprocessing, PreprocessingEntry.of(spec.preprocessing)
    for field in PreprocessingEntry.model_fields:
        if getattr(pre, field) != getattr(want, field):
            problems.append(
                f"preprocessing.{field} is {getattr(pre, field)!r}; the pipeline uses {getattr(want, field)!r}"
            )
    if spec.kind == KIND_EMBEDDER:
        first = next((t for t in manifest.outputs if t.name == spec.outputs[0].name), None)
        dim = first.shape[-1] if first is not None else None
        if manifest.embedding_size is None:
            problems.append("embedding_size is missing (required for an embedder)")
        elif dim is not None and dim != manifest.embedding_size:
            problems.append(
                f"embedding_size {manifest.embedding_size} differs from the output's last axis {dim}"
            )
    elif manifest.embedding_size is not None:
        problems.append(f"embedding_size is given for a {spec.kind}, which produces no embedding")
    return problems


# -- ONNX ----------------------------------------------------------------------------------------------


def _onnx_tensors(values: Any, skip: Sequence[str]) -> List[Tuple[str, Tuple[Optional[int], ...], str]]:
    tensors = []
    for value in values:
        if value.name in skip:
            continue
        tensor_type = value.type.tensor_type
        shape = tuple(
            int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None
            for dim in tensor_type.shape.dim
        )
        tensors.append(
            (value.name, shape, _ONNX_DTYPES.get(tensor_type.elem_type, f"onnx-type-{tensor_type.elem_type}"))
        )
    return tensors


def read_onnx_io(
    model_bytes: bytes, check: bool = True
) -> Tuple[Tuple[TensorEntry, ...], Tuple[TensorEntry, ...]]:
    """The graph's inputs (initializers excluded) and outputs as :class:`TensorEntry` tuples.

    Args:
        model_bytes: a serialized ONNX model.
        check: also run ``onnx.checker`` (full check at build time).

    Raises:
        PackageError: ``incompatible`` — not ONNX, fails the checker, a tensor without a shape or
            with an element type the pipeline cannot feed, or weights in external files (a package
            is self-contained).
    """
    import onnx

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as err:  # protobuf's DecodeError and friends
        raise PackageError(
            f"the model is not a readable ONNX file: {err}", reason=codes.INCOMPATIBLE
        ) from err
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as err:
            raise PackageError(
                f"the ONNX model fails onnx.checker: {err}", reason=codes.INCOMPATIBLE
            ) from err
    for initializer in model.graph.initializer:
        if initializer.data_location == onnx.TensorProto.EXTERNAL:
            raise PackageError(
                f"the ONNX model keeps weight {initializer.name!r} in an external file; save it with the "
                "weights inside (onnx.save(model, path, save_as_external_data=False))",
                reason=codes.INCOMPATIBLE,
            )
    skip = {initializer.name for initializer in model.graph.initializer}
    found = (_onnx_tensors(model.graph.input, skip), _onnx_tensors(model.graph.output, ()))
    if not found[0] or not found[1]:
        raise PackageError("the ONNX graph has no inputs or no outputs", reason=codes.INCOMPATIBLE)
    unusable = [f"{name} ({dtype})" for name, _, dtype in (*found[0], *found[1]) if dtype not in _DTYPES]
    if unusable:
        raise PackageError(
            f"tensors {unusable} have element types the pipeline cannot use", reason=codes.INCOMPATIBLE
        )
    try:
        inputs, outputs = (
            tuple(TensorEntry(name=n, shape=s, dtype=d) for n, s, d in tensors) for tensors in found
        )  # type: ignore[arg-type]
    except ValidationError as err:
        raise PackageError(
            f"the graph's inputs or outputs cannot be described: {validation_summary(err)}",
            reason=codes.INCOMPATIBLE,
        ) from err
    return inputs, outputs


def strict_json(data: bytes, what: str) -> None:
    """Refuse what pydantic's parser would let through: duplicate keys, NaN/Infinity, non-UTF-8."""

    def pairs(items: List[Tuple[str, Any]]) -> Dict[str, Any]:
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
        return dict(items)

    def constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # RecursionError: [[[[…
        raise PackageError(f"{what} is not valid JSON: {err}", reason=codes.MALFORMED) from err


def validation_summary(err: ValidationError) -> str:
    issues = []
    for issue in err.errors()[:8]:
        where = ".".join(str(part) for part in issue["loc"]) or "(top level)"
        issues.append(f"{where}: {issue['msg']}")
    more = f" (+{err.error_count() - 8} more)" if err.error_count() > 8 else ""
    return "; ".join(issues) + more


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate ``manifest.json`` bytes (schema 1 or 2, unknown keys refused).

    Raises:
        PackageError: ``malformed``, with every problem's key path.
    """
    strict_json(data, MANIFEST_NAME)
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as err:
        raise PackageError(
            f"{MANIFEST_NAME} is invalid: {validation_summary(err)}", reason=codes.MALFORMED
        ) from err


__all__ = [
    "FIRMWARE_PATTERN",
    "KINDS",
    "LABEL_PATTERN",
    "MANIFEST_NAME",
    "ROLLBACK_SCHEMA",
    "SCHEMA",
    "SIGNATURE_NAME",
    "FileEntry",
    "Manifest",
    "PreprocessingEntry",
    "ReferenceEntry",
    "SignatureEntry",
    "TensorEntry",
    "compatibility_problems",
    "iso_time",
    "parse_manifest",
    "parse_version",
    "read_onnx_io",
    "release_problem",
    "strict_json",
    "utc_now",
    "validation_summary",
    "version_at_least",
]
