"""Signed model packages: build one on the build machine, verify it on the appliance.

A package is ONE uncompressed POSIX (ustar) tar file with exactly these members, in this order::

    manifest.json            what the package is (schema 1, below); at most 64 KiB
    manifest.sig             {"key_id": 16 hex, "alg": "ed25519", "signature": base64 of 64 bytes}
    payload/model.onnx       the ONNX model
    payload/calibration.cache            optional: TensorRT INT8 calibration cache
    payload/reference_inputs.npz         optional: inputs for validation (one array per input name)
    payload/reference_outputs.npz        optional: the outputs the CPU back-end gave for them

The Ed25519 signature covers the exact bytes of ``manifest.json``; the manifest binds every payload file
by size and sha256, so one signature check and one hash per file authenticate everything. The manifest
is described in :mod:`appliance.updates.manifest`.

Reading is defensive: :func:`verify_package` never extracts with ``tarfile``; it walks the headers,
accepts only regular files with the expected names (no absolute paths, ``..``, links, devices, pax
or duplicate members), checks each member's size against limits and the signed manifest *before*
reading it, bounds the whole file, and reads payload bytes at their offsets while hashing them.
Every refusal is a :class:`~appliance.updates.errors.PackageError` with a ``reason`` code.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from engines.errors import EngineError, FileReadError
from engines.files import CHUNK_BYTES, atomic_writer, commit_file, fsync_dir, open_regular, read_bounded
from engines.registry import KIND_EMBEDDER, ModelSpec, TensorSpec

from .. import __version__
from . import errors as codes
from .errors import PackageError, UpdateError
from .keys import key_id as public_key_id
from .keys import load_private_key
from .manifest import (
    CALIBRATION_FILE,
    DEFAULT_ATOL,
    DEFAULT_MAX_PACKAGE_BYTES,
    DEFAULT_MIN_COSINE,
    DEFAULT_REFERENCE_BATCH,
    KINDS,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_MEMBERS,
    MAX_REFERENCE_FACES,
    MAX_REFERENCE_INPUT_BYTES,
    MAX_SIGNATURE_BYTES,
    MODEL_FILE,
    PAYLOAD_PREFIX,
    REFERENCE_IMAGE_SIDE,
    REFERENCE_INPUTS_FILE,
    REFERENCE_MIN_SIDE,
    REFERENCE_OUTPUTS_FILE,
    ROLLBACK_SCHEMA,
    SCHEMA,
    SIGNATURE_ALG,
    SIGNATURE_NAME,
    FileEntry,
    Manifest,
    PreprocessingEntry,
    ReferenceEntry,
    SignatureEntry,
    TensorEntry,
    compatibility_problems,
    iso_time,
    parse_manifest,
    parse_version,
    read_onnx_io,
    release_problem,
    strict_json,
    utc_now,
    validation_summary,
    version_at_least,
)

if TYPE_CHECKING:
    from engines.backends import InferenceBackend

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


# -- reference data ------------------------------------------------------------------------------------


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.ascontiguousarray(array) for name, array in arrays.items()})
    return buffer.getvalue()


def _npz_arrays(data: bytes, what: str) -> Dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: np.asarray(archive[name]) for name in archive.files}
    except Exception as err:  # zipfile.BadZipFile, ValueError (pickled objects refused), …
        raise PackageError(f"{what} is not a readable .npz file: {err}", reason=codes.MALFORMED) from err


@dataclass(frozen=True)
class ReferenceCheck:
    """How a back-end's outputs compare with a package's reference outputs.

    Attributes:
        ok: within every tolerance.
        max_abs: per output, the largest absolute difference.
        min_cosine: per output, the smallest cosine between a sample's output and its reference.
        problems: one line per tolerance exceeded or shape that differs.
    """

    ok: bool
    max_abs: Dict[str, float]
    min_cosine: Dict[str, float]
    problems: List[str]


def compare_reference(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    atol: Optional[float],
    min_cosine: Optional[float],
) -> ReferenceCheck:
    """Compare outputs with reference outputs.

    Args:
        expected, actual: per output name, ``(N, …)`` arrays (float32), sample ``i`` in row ``i``.
        atol: the largest absolute difference allowed, or ``None`` not to check it.
        min_cosine: the smallest per-sample cosine allowed (outputs flattened per sample), or ``None``.
    """
    max_abs: Dict[str, float] = {}
    cosines: Dict[str, float] = {}
    problems: List[str] = []
    for name, reference in expected.items():
        got = actual.get(name)
        if got is None:
            problems.append(f"output {name!r} is missing")
            continue
        want = np.asarray(reference, np.float64)
        have = np.asarray(got, np.float64)
        if want.shape != have.shape:
            problems.append(f"output {name!r} has shape {have.shape}, the reference {want.shape}")
            continue
        if not np.all(np.isfinite(have)):
            problems.append(f"output {name!r} holds NaN or infinite values")
            continue
        max_abs[name] = float(np.max(np.abs(want - have))) if want.size else 0.0
        rows_want, rows_have = want.reshape(len(want), -1), have.reshape(len(have), -1)
        norms = np.linalg.norm(rows_want, axis=1) * np.linalg.norm(rows_have, axis=1)
        cosine = np.sum(rows_want * rows_have, axis=1) / np.maximum(norms, 1e-30)
        cosines[name] = float(np.min(cosine)) if cosine.size else 1.0
        if atol is not None and max_abs[name] > atol:
            problems.append(f"output {name!r} differs by up to {max_abs[name]:.3g} (allowed {atol:g})")
        if min_cosine is not None and cosines[name] < min_cosine:
            problems.append(
                f"output {name!r} has a cosine of {cosines[name]:.4f} (at least {min_cosine:g} needed)"
            )
    return ReferenceCheck(not problems, max_abs, cosines, problems)


# -- the verified package ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    offset: int  # of the data in the tar file
    size: int


class VerifiedPackage:
    """A package whose signature, manifest, compatibility and payload hashes have been checked.

    Obtained from :func:`verify_package` (or :func:`build_package`). The file stays where it is;
    every read re-checks the file's sha256, so a package altered after verification is refused then.

    Attributes:
        path: the package file.
        manifest: the signed manifest.
        key_id: the id of the trusted key that signed it.
        size: the package file's length in bytes.
    """

    def __init__(
        self, path: Path, manifest: Manifest, key_id: str, members: Mapping[str, _Member], size: int
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.key_id = key_id
        self.size = size
        self._members = dict(members)

    def __repr__(self) -> str:
        return (
            f"VerifiedPackage({str(self.path)!r}, {self.manifest.qualified_version}, "
            f"release={self.manifest.release}, key_id={self.key_id!r})"
        )

    def _member(self, name: str) -> Tuple[_Member, FileEntry]:
        entry = self.manifest.files.get(name)
        member = self._members.get(name)
        if entry is None or member is None:
            raise UpdateError(
                f"the package has no file {name!r}; its files: {', '.join(sorted(self.manifest.files))}"
            )
        return member, entry

    def _stream(self, name: str, sink: BinaryIO) -> None:
        """Copy file ``name`` into ``sink`` in chunks, then check its sha256 (raises before returning).

        Errors writing to ``sink`` propagate as :class:`OSError`.
        """
        member, entry = self._member(name)
        digest = hashlib.sha256()
        remaining = member.size
        try:
            stream = open_regular(self.path)
        except FileReadError as err:
            raise PackageError(f"the package {err}", reason=codes.UNREADABLE) from None
        with stream:
            while remaining:
                try:
                    if remaining == member.size:
                        stream.seek(member.offset)
                    chunk = stream.read(min(CHUNK_BYTES, remaining))
                except OSError as err:
                    raise PackageError(
                        f"cannot read {self.path}: {err.strerror or err}", reason=codes.UNREADABLE
                    ) from err
                if not chunk:
                    break
                digest.update(chunk)
                sink.write(chunk)
                remaining -= len(chunk)
        if remaining:
            raise PackageError(
                f"{self.path} is shorter than at verification: {name} ends {remaining} bytes early",
                reason=codes.TRUNCATED,
            )
        if digest.hexdigest() != entry.sha256:
            raise PackageError(
                f"{name} in {self.path} no longer matches the signed sha256: the file changed after verification",
                reason=codes.TAMPERED,
            )

    def read(self, name: str) -> bytes:
        """The bytes of payload file ``name`` (a manifest ``files`` key), re-checked against its sha256.

        Raises:
            PackageError: ``tampered``/``truncated``/``unreadable`` when the file changed since verification.
            UpdateError: no such file in the package.
        """
        buffer = io.BytesIO()
        self._stream(name, buffer)
        return buffer.getvalue()

    def model_bytes(self) -> bytes:
        """The ONNX model's bytes (as in the package: not yet prepared, see :func:`engines.prepare.prepare_bytes`)."""
        return self.read(self.manifest.model_file)

    def calibration_bytes(self) -> Optional[bytes]:
        """The INT8 calibration cache's bytes, or ``None`` when the package has none."""
        return self.read(self.manifest.calibration_file) if self.manifest.calibration_file else None

    def extract_to(self, directory: PathLike) -> Path:
        """Write every payload file into ``directory`` (created if missing) under its manifest name.

        Each file is written to a temporary name while its sha256 is computed, checked, fsync'd and
        renamed; the folder is fsync'd at the end. Only names listed in the manifest are written (plain
        file names, so nothing lands outside ``directory``); existing files of those names are replaced.

        Returns:
            The path of the extracted ONNX model (``directory / manifest.model_file``); the other
            files lie beside it under their ``files`` names.

        Raises:
            PackageError: the package changed since verification (that file is not left behind).
            UpdateError: the folder cannot be written.
        """
        target = Path(directory)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UpdateError(f"cannot create {target}: {err.strerror or err}") from err
        for name in sorted(self.manifest.files):
            temporary: Optional[str] = None
            try:
                fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target)
                with os.fdopen(fd, "wb") as sink:
                    self._stream(name, sink)
                commit_file(temporary, target / name)
            except OSError as err:
                raise UpdateError(f"cannot write {target / name}: {err.strerror or err}") from err
            finally:
                if temporary is not None and os.path.exists(temporary):
                    os.unlink(temporary)
        fsync_dir(target)
        logger.info(
            "extracted %s (%d files) into %s",
            self.manifest.qualified_version,
            len(self.manifest.files),
            target,
        )
        return target / self.manifest.model_file

    def reference(self) -> Optional[Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]]:
        """``(inputs, outputs)`` of the reference run, each ``{tensor name: (N, …) float32}``, or ``None``.

        Raises:
            PackageError: ``malformed`` when the files do not hold one float32 array per input and
                output name with the same batch ``N``.
        """
        reference = self.manifest.reference
        if reference is None:
            return None
        inputs = _npz_arrays(self.read(reference.inputs), reference.inputs)
        outputs = _npz_arrays(self.read(reference.outputs), reference.outputs)
        for what, arrays, tensors in (
            ("inputs", inputs, self.manifest.inputs),
            ("outputs", outputs, self.manifest.outputs),
        ):
            names = {t.name for t in tensors}
            if set(arrays) != names:
                raise PackageError(
                    f"reference {what} name {sorted(arrays)}, the model's are {sorted(names)}",
                    reason=codes.MALFORMED,
                )
            for tensor in tensors:
                array = arrays[tensor.name]
                fits = len(array.shape) == len(tensor.shape) and all(
                    d is None or d == a or (axis == 0 and d == 1)
                    for axis, (d, a) in enumerate(zip(tensor.shape, array.shape))
                )
                if array.dtype != np.float32 or not fits or array.shape[0] < 1:
                    raise PackageError(
                        f"reference {what} {tensor.name!r} is {array.dtype} {array.shape}, expected float32 "
                        f"{tensor.describe()}",
                        reason=codes.MALFORMED,
                    )
        batches = {array.shape[0] for array in (*inputs.values(), *outputs.values())}
        if len(batches) != 1:
            raise PackageError(
                f"reference arrays have different batch sizes {sorted(batches)}", reason=codes.MALFORMED
            )
        return inputs, outputs

    def check_outputs(self, outputs: Mapping[str, np.ndarray]) -> ReferenceCheck:
        """Compare a back-end's outputs for the reference inputs with the reference outputs.

        Raises:
            UpdateError: the package has no reference.
        """
        reference = self.reference()
        if reference is None or self.manifest.reference is None:
            raise UpdateError(f"{self.manifest.qualified_version} has no reference outputs to compare with")
        tolerances = self.manifest.reference
        return compare_reference(reference[1], outputs, tolerances.atol, tolerances.min_cosine)

    def check_backend(self, backend: InferenceBackend) -> ReferenceCheck:
        """Run the reference inputs on a loaded back-end and compare (the swap's validation step).

        Raises:
            UpdateError: the package has no reference.
            EngineError: the back-end fails to run.
        """
        reference = self.reference()
        if reference is None:
            raise UpdateError(f"{self.manifest.qualified_version} has no reference outputs to compare with")
        return self.check_outputs(backend.run(reference[0]))

    def model_spec(self) -> ModelSpec:
        """The registry spec of ``manifest.kind`` with this package's version, file, size, sha256 and
        pre-processing: what a back-end loads in its place (``file`` is relative to the folder that
        :meth:`extract_to` filled)."""
        base = KINDS[self.manifest.kind]
        entry = self.manifest.files[self.manifest.model_file]
        return dataclasses.replace(
            base,
            version=self.manifest.version,
            file=self.manifest.model_file,
            size=entry.size,
            sha256=entry.sha256,
            url="",
            source=f"package {self.manifest.name}@{self.manifest.version} release {self.manifest.release} "
            f"(key {self.key_id})",
            preprocessing=self.manifest.preprocessing.to_registry(),
        )


# -- verification --------------------------------------------------------------------------------------


def _refuse(message: str, reason: str) -> PackageError:
    return PackageError(message, reason=reason)


_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.DIRTYPE: "a directory",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


def _check_member(member: tarfile.TarInfo, file_size: int) -> None:
    """Refuse anything but a plain regular file with a safe relative name that lies inside the file."""
    name = member.name
    if member.pax_headers:
        raise _refuse(
            f"member {name!r} carries pax extended headers; packages are plain ustar", codes.MALFORMED
        )
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
        kind = _TYPE_NAMES.get(member.type, f"of tar type {member.type!r}")
        target = f" to {member.linkname!r}" if member.issym() or member.islnk() else ""
        raise _refuse(
            f"member {name!r} is {kind}{target}; a package holds regular files only", codes.MALFORMED
        )
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in parts)
        or len(name) > 255
    ):
        raise _refuse(
            f"member name {name!r} is not a safe relative path (absolute, '..', '.', empty part)",
            codes.MALFORMED,
        )
    if member.offset_data + member.size > file_size:
        raise _refuse(
            f"member {name!r} needs {member.size} bytes from offset {member.offset_data} but the file has "
            f"{file_size}: the package is cut short; transfer it again",
            codes.TRUNCATED,
        )


def _next_member(tar: tarfile.TarFile) -> Optional[tarfile.TarInfo]:
    try:
        return tar.next()
    except tarfile.ReadError as err:
        if "unexpected end of data" in str(err):
            raise _refuse("the package ends inside a tar member: transfer it again", codes.TRUNCATED) from err
        raise _refuse(f"unreadable tar header: {err}", codes.MALFORMED) from err
    except (tarfile.TarError, EOFError, ValueError, OverflowError) as err:
        raise _refuse(f"unreadable tar header: {err}", codes.MALFORMED) from err


def _read_exact(stream: BinaryIO, member: tarfile.TarInfo) -> bytes:
    stream.seek(member.offset_data)
    data = stream.read(member.size)
    if len(data) != member.size:
        raise _refuse(f"{member.name} ends {member.size - len(data)} bytes early", codes.TRUNCATED)
    return data


def _check_signature(
    manifest_bytes: bytes, signature_bytes: bytes, trusted_keys: Mapping[str, Ed25519PublicKey]
) -> str:
    strict_json(signature_bytes, SIGNATURE_NAME)
    try:
        entry = SignatureEntry.model_validate_json(signature_bytes)
    except ValidationError as err:
        raise _refuse(f"{SIGNATURE_NAME} is invalid: {validation_summary(err)}", codes.MALFORMED) from err
    if entry.alg != SIGNATURE_ALG:
        raise _refuse(
            f"{SIGNATURE_NAME} uses {entry.alg!r}; only {SIGNATURE_ALG!r} is accepted", codes.BAD_SIGNATURE
        )
    public_key = trusted_keys.get(entry.key_id)
    if public_key is None:
        known = ", ".join(sorted(trusted_keys)) or "none"
        raise _refuse(
            f"signed with key {entry.key_id}, which is not trusted here (trusted: {known}); install its .pub "
            "file in the trusted keys folder, or sign with a trusted key",
            codes.UNKNOWN_KEY,
        )
    try:
        signature = base64.b64decode(entry.signature.encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as err:
        raise _refuse(f"{SIGNATURE_NAME}: the signature is not base64: {err}", codes.BAD_SIGNATURE) from err
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise _refuse(
            f"the signature of {MANIFEST_NAME} does not verify with key {entry.key_id}: the manifest was altered "
            "or the signature forged",
            codes.BAD_SIGNATURE,
        ) from None
    return entry.key_id


def _rest_of_file(stream: BinaryIO, start: int, file_size: int) -> Tuple[int, Optional[int]]:
    """Length after ``start`` and the offset of its first non-zero byte (``None``: all zeros)."""
    stream.seek(start)
    position = start
    while position < file_size:
        chunk = stream.read(min(CHUNK_BYTES, file_size - position))
        if not chunk:
            break
        stripped = chunk.lstrip(b"\x00")
        if stripped:
            return file_size - start, position + len(chunk) - len(stripped)
        position += len(chunk)
    return file_size - start, None


def verify_package(
    path: PathLike,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    *,
    active_release: Optional[int],
    firmware_version: str,
    max_size: Optional[int] = None,
) -> VerifiedPackage:
    """Verify a package file completely without extracting it.

    Args:
        path: the package file.
        trusted_keys: key id → public key (:func:`appliance.updates.keys.load_trusted_keys`).
        active_release: the release installed now for the package's kind (``None``: none yet, any
            release is accepted). Callers pass the highest release ever activated, so an old package
            cannot come back unless it is a rollback package bounded to that release
            (:func:`~appliance.updates.manifest.release_problem`).
        firmware_version: this firmware's version (``appliance.__version__``).
        max_size: the largest package accepted in bytes (default 64 MiB).

    Returns:
        The :class:`VerifiedPackage`.

    Raises:
        PackageError: refused; ``reason`` is one of ``unreadable``, ``too_large``, ``truncated``,
            ``malformed``, ``no_signature``, ``unknown_key``, ``bad_signature``, ``incompatible``,
            ``firmware_too_old``, ``not_newer``, ``tampered``.
    """
    package = Path(path)
    limit = DEFAULT_MAX_PACKAGE_BYTES if max_size is None else int(max_size)
    try:
        verified = _verify(package, trusted_keys, active_release, firmware_version, limit)
    except PackageError as err:
        logger.warning("package %s refused (%s): %s", package, err.reason, err)
        raise
    manifest = verified.manifest
    logger.info(
        "package %s verified: %s release %d%s, signed by key %s",
        package,
        manifest.qualified_version,
        manifest.release,
        " (rollback allowed)" if manifest.rollback else "",
        verified.key_id,
    )
    return verified


def _verify(
    package: Path,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    active_release: Optional[int],
    firmware_version: str,
    limit: int,
) -> VerifiedPackage:
    try:
        raw = open_regular(package)  # O_NONBLOCK: a FIFO is refused, not waited on
    except FileReadError as err:
        raise _refuse(f"the package {err}", codes.UNREADABLE) from None
    try:
        info = os.fstat(raw.fileno())
        file_size = info.st_size
        if file_size > limit:
            raise _refuse(
                f"{package} is {file_size} bytes; at most {limit} are accepted (updates.max_package_mb)",
                codes.TOO_LARGE,
            )
        if file_size < tarfile.BLOCKSIZE:
            raise _refuse(
                f"{package} is {file_size} bytes, shorter than one tar header: transfer it again",
                codes.TRUNCATED,
            )
        with open_regular(package) as data:
            return _verify_open(
                package, raw, data, file_size, trusted_keys, active_release, firmware_version, limit
            )
    except OSError as err:
        raise _refuse(f"cannot read {package}: {err.strerror or err}", codes.UNREADABLE) from err
    finally:
        raw.close()


def _verify_open(
    package: Path,
    raw: BinaryIO,
    data: BinaryIO,
    file_size: int,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    active_release: Optional[int],
    firmware_version: str,
    limit: int,
) -> VerifiedPackage:
    try:
        tar = tarfile.open(fileobj=raw, mode="r:")  # "r:" = no decompression (no decompression bombs)
    except tarfile.ReadError as err:
        raise _refuse(
            f"{package} is not a tar archive ({err}); is it a model package?", codes.MALFORMED
        ) from err
    except (tarfile.TarError, EOFError, ValueError, OverflowError) as err:
        raise _refuse(f"{package}: unreadable tar header: {err}", codes.MALFORMED) from err
    with tar:
        return _verify_tar(
            package, tar, data, file_size, trusted_keys, active_release, firmware_version, limit
        )


def _verify_tar(
    package: Path,
    tar: tarfile.TarFile,
    data: BinaryIO,
    file_size: int,
    trusted_keys: Mapping[str, Ed25519PublicKey],
    active_release: Optional[int],
    firmware_version: str,
    limit: int,
) -> VerifiedPackage:
    """Steps 1-6 of the verification on an opened archive (headers via ``tar``, bytes via ``data``)."""
    # 1. manifest.json, size-checked before it is read
    first = _next_member(tar)
    if first is None:
        raise _refuse(f"{package} is an empty tar archive", codes.MALFORMED)
    _check_member(first, file_size)
    if first.name != MANIFEST_NAME:
        raise _refuse(
            f"the first member is {first.name!r}, not {MANIFEST_NAME}: not a model package", codes.MALFORMED
        )
    if first.size > MAX_MANIFEST_BYTES:
        raise _refuse(
            f"{MANIFEST_NAME} is {first.size} bytes; at most {MAX_MANIFEST_BYTES} are accepted",
            codes.TOO_LARGE,
        )
    manifest_bytes = _read_exact(data, first)

    # 2. manifest.sig, then the signature over the exact manifest bytes
    second = _next_member(tar)
    if second is None or second.name.startswith(PAYLOAD_PREFIX):
        if second is None:
            rest, nonzero = _rest_of_file(data, tar.offset, file_size)
            if nonzero is not None or rest < 2 * tarfile.BLOCKSIZE:
                raise _refuse(f"{package} ends after {MANIFEST_NAME}: transfer it again", codes.TRUNCATED)
        raise _refuse(f"{package} has no {SIGNATURE_NAME}: unsigned packages are refused", codes.NO_SIGNATURE)
    _check_member(second, file_size)
    if second.name != SIGNATURE_NAME:
        raise _refuse(f"the second member is {second.name!r}, not {SIGNATURE_NAME}", codes.MALFORMED)
    if second.size > MAX_SIGNATURE_BYTES:
        raise _refuse(
            f"{SIGNATURE_NAME} is {second.size} bytes; at most {MAX_SIGNATURE_BYTES} are accepted",
            codes.MALFORMED,
        )
    signer = _check_signature(manifest_bytes, _read_exact(data, second), trusted_keys)

    # 3. what the (authentic) manifest says
    manifest = parse_manifest(manifest_bytes)
    problems = compatibility_problems(manifest)
    if problems:
        raise _refuse(
            f"{manifest.qualified_version} cannot replace {manifest.kind}: {'; '.join(problems)}",
            codes.INCOMPATIBLE,
        )
    try:
        new_enough = version_at_least(firmware_version, manifest.min_firmware)
    except ValueError as err:
        raise UpdateError(f"this firmware's version {firmware_version!r} is not numeric: {err}") from err
    if not new_enough:
        raise _refuse(
            f"{manifest.qualified_version} needs firmware {manifest.min_firmware} or newer; this is "
            f"{firmware_version}: update the firmware first",
            codes.FIRMWARE_TOO_OLD,
        )
    too_old = release_problem(manifest, active_release)
    if too_old is not None:
        raise _refuse(too_old, codes.NOT_NEWER)
    if manifest.payload_bytes > limit:
        raise _refuse(
            f"the payload is {manifest.payload_bytes} bytes; at most {limit} are accepted", codes.TOO_LARGE
        )

    # 4. the payload: each member listed once, its size as signed, hashed while read
    members: Dict[str, _Member] = {}
    model_bytes = b""
    seen = {MANIFEST_NAME, SIGNATURE_NAME}
    while True:
        member = _next_member(tar)
        if member is None:
            break
        if len(seen) >= MAX_MEMBERS:
            raise _refuse(f"{package} has more than {MAX_MEMBERS} members", codes.MALFORMED)
        _check_member(member, file_size)
        if member.name in seen:
            raise _refuse(f"member {member.name!r} appears twice", codes.MALFORMED)
        seen.add(member.name)
        name = member.name[len(PAYLOAD_PREFIX) :] if member.name.startswith(PAYLOAD_PREFIX) else None
        entry = manifest.files.get(name) if name else None
        if name is None or entry is None:
            raise _refuse(
                f"member {member.name!r} is not a payload file listed in the manifest", codes.MALFORMED
            )
        if member.size != entry.size:
            raise _refuse(
                f"{member.name} is {member.size} bytes; the signed manifest says {entry.size}", codes.TAMPERED
            )
        digest = hashlib.sha256()
        keep = io.BytesIO() if name == manifest.model_file else None
        data.seek(member.offset_data)
        remaining = member.size
        while remaining:
            chunk = data.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                raise _refuse(f"{member.name} ends {remaining} bytes early", codes.TRUNCATED)
            digest.update(chunk)
            if keep is not None:
                keep.write(chunk)
            remaining -= len(chunk)
        if digest.hexdigest() != entry.sha256:
            raise _refuse(
                f"{member.name} does not match its signed sha256: the payload was altered or corrupted in transit",
                codes.TAMPERED,
            )
        if keep is not None:
            model_bytes = keep.getvalue()
        members[name] = _Member(member.offset_data, member.size)

    # 5. the end: every listed file present, then the end-of-archive blocks and nothing else
    rest, nonzero = _rest_of_file(data, tar.offset, file_size)
    missing = sorted(set(manifest.files) - set(members))
    if nonzero is not None and rest < tarfile.BLOCKSIZE:
        raise _refuse(f"{package} ends inside a tar header: transfer it again", codes.TRUNCATED)
    if nonzero is not None:
        raise _refuse(
            f"unreadable data at offset {nonzero} of {package}: a damaged tar header, or bytes appended after "
            "the archive",
            codes.MALFORMED,
        )
    if rest < 2 * tarfile.BLOCKSIZE:
        raise _refuse(
            f"{package} lacks the end-of-archive blocks: it was cut short; transfer it again", codes.TRUNCATED
        )
    if missing:
        raise _refuse(
            f"payload files {missing} listed in the signed manifest are not in {package}", codes.TAMPERED
        )

    # 6. the model itself has the I/O the signed manifest states
    inputs, outputs = read_onnx_io(model_bytes, check=False)
    if (inputs, outputs) != (manifest.inputs, manifest.outputs):
        raise _refuse(
            f"the model's graph I/O ({', '.join(t.describe() for t in (*inputs, *outputs))}) differs from the "
            "manifest's",
            codes.INCOMPATIBLE,
        )
    return VerifiedPackage(package, manifest, signer, members, file_size)


# -- building ------------------------------------------------------------------------------------------


def _reference_inputs(
    spec: ModelSpec,
    inputs: Sequence[TensorEntry],
    given: Optional[Mapping[str, np.ndarray]],
    faces: Optional[np.ndarray],
    seed: int,
) -> Dict[str, np.ndarray]:
    """Reference inputs: given arrays, pre-processed face crops, or seeded noise of the inputs' shapes."""
    if given is not None:
        arrays = {name: np.ascontiguousarray(array, np.float32) for name, array in given.items()}
        names = {t.name for t in inputs}
        if set(arrays) != names:
            raise UpdateError(
                f"reference inputs name {sorted(arrays)}; the model's inputs are {sorted(names)}"
            )
        return arrays
    if faces is not None:
        if len(inputs) != 1:
            raise UpdateError(
                f"{spec.name} has {len(inputs)} inputs; face crops feed single-input models only"
            )
        crops = np.asarray(faces)[:MAX_REFERENCE_FACES]
        size = spec.preprocessing.input_size
        if (
            crops.ndim != 4
            or crops.dtype != np.uint8
            or size is None
            or crops.shape[1:3] != tuple(size)
            or not len(crops)
        ):
            raise UpdateError(
                f"reference faces must be (N, {size[0] if size else 'H'}, {size[1] if size else 'W'}, 3) uint8 "
                f"BGR crops for {spec.name}; got {crops.dtype} {crops.shape}"
            )
        return {inputs[0].name: spec.preprocessing.to_blob(crops)}
    rng = np.random.default_rng(seed)
    arrays = {}
    wanted = {t.name: t for t in spec.inputs}
    # Images of any size (P-Net, YuNet): one small image, since their engines' profiles take batch 1.
    batch = 1 if any(d is None for t in spec.inputs for d in t.shape[1:]) else DEFAULT_REFERENCE_BATCH
    for tensor in inputs:
        shape = _reference_shape(wanted[tensor.name], spec.preprocessing.size_multiple)
        per_sample = int(np.prod(shape)) * 4
        batch = max(1, min(batch, MAX_REFERENCE_INPUT_BYTES // max(per_sample, 1)))
        arrays[tensor.name] = rng.uniform(-1.0, 1.0, (DEFAULT_REFERENCE_BATCH, *shape)).astype(np.float32)
    return {name: array[:batch] for name, array in arrays.items()}


def _reference_shape(tensor: TensorSpec, multiple: int) -> Tuple[int, ...]:
    """One sample's shape for noise inputs: fixed dimensions as they are; dynamic image dimensions
    from the example shape, scaled so the longest is about :data:`REFERENCE_IMAGE_SIDE` and rounded
    to ``multiple``."""
    example = list(tensor.concrete_shape(1))
    dynamic = [axis for axis, dim in enumerate(tensor.shape) if dim is None and axis > 0]
    if dynamic:
        scale = min(1.0, REFERENCE_IMAGE_SIDE / max(example[axis] for axis in dynamic))
        step = max(1, multiple)
        for axis in dynamic:
            example[axis] = max(step, REFERENCE_MIN_SIDE, round(example[axis] * scale / step) * step)
    return tuple(example[1:])


def _run_on_cpu(
    spec: ModelSpec, model_bytes: bytes, feeds: Mapping[str, np.ndarray]
) -> Dict[str, np.ndarray]:
    """Run ``spec``'s model (prepared as the appliance prepares it) on the ONNX Runtime back-end."""
    from engines.backends import backend_class
    from engines.prepare import prepare_bytes

    backend = backend_class("cpu")(spec, prepare_bytes(spec, model_bytes))
    try:
        return {
            name: np.ascontiguousarray(value, np.float32) for name, value in backend.run(dict(feeds)).items()
        }
    finally:
        backend.close()


def aligned_faces(
    images: Sequence[PathLike], models_dir: PathLike, limit: int = MAX_REFERENCE_FACES
) -> np.ndarray:
    """The largest face of each image, detected with MTCNN and aligned as the pipeline aligns it.

    Args:
        images: image files; unreadable ones and ones without a face are skipped (logged).
        models_dir: where the registry's MTCNN models are (``models.dir``).
        limit: stop after this many faces.

    Returns:
        ``(N, 112, 112, 3)`` uint8 BGR crops, ``N <= limit``.

    Raises:
        UpdateError: no face in any image.
        EngineError: the MTCNN models are missing or cannot be loaded.
    """
    import cv2

    from engines.backends import open_model
    from engines.registry import DETECTOR_MODELS

    from ..vision.align import align_faces
    from ..vision.analyzer import RETRY_PAD_FRACTION
    from ..vision.image import ImageError, read_image
    from ..vision.mtcnn import MtcnnDetector

    nets: List[InferenceBackend] = []
    crops: List[np.ndarray] = []
    try:
        for name in DETECTOR_MODELS["mtcnn"]:
            nets.append(open_model("cpu", KINDS[name], Path(models_dir)))
        detector = MtcnnDetector(nets[0], nets[1], nets[2])
        for path in images:
            if len(crops) >= limit:
                break
            try:
                image = read_image(path)
            except ImageError as err:
                logger.warning("reference image skipped: %s", err)
                continue
            faces = detector.detect(image)
            if not len(faces):  # a tight crop: MTCNN needs some context around the face
                pad = round(RETRY_PAD_FRACTION * max(image.shape[:2]))
                image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
                faces = detector.detect(image)
            largest = faces.largest()
            if largest is None:
                logger.info("reference image %s: no face found; skipped", path)
                continue
            crops.append(align_faces(image, faces.landmarks[largest : largest + 1]))
    finally:
        for net in nets:
            net.close()
    if not crops:
        raise UpdateError(f"no face found in the {len(images)} reference image(s); give other photos or none")
    return np.concatenate(crops)


def _signature_bytes(private_key: Ed25519PrivateKey, manifest_bytes: bytes) -> Tuple[str, bytes]:
    identifier = public_key_id(private_key.public_key())
    signature = base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii")
    document = {"alg": SIGNATURE_ALG, "key_id": identifier, "signature": signature}
    return identifier, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("ascii")


def _tar_member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_package(
    model_path: PathLike,
    kind: str,
    name: str,
    version: str,
    release: int,
    private_key: Union[Ed25519PrivateKey, PathLike],
    out_path: PathLike,
    *,
    calibration: Optional[PathLike] = None,
    reference_inputs: Optional[Mapping[str, np.ndarray]] = None,
    reference_faces: Optional[np.ndarray] = None,
    reference: bool = True,
    atol: Optional[float] = None,
    min_cosine: Optional[float] = None,
    min_firmware: str = __version__,
    rollback: bool = False,
    rollback_from: Optional[int] = None,
    created: Optional[str] = None,
    max_size: Optional[int] = None,
    seed: int = 0,
) -> VerifiedPackage:
    """Build, sign and write a package, then verify what was written.

    Args:
        model_path: the ONNX model. Its graph inputs and outputs are recorded in the manifest and must
            fit the registry model ``kind`` (else ``incompatible``).
        kind: the registry model it replaces (a key of :data:`KINDS`, e.g. ``"mobilefacenet"``).
        name, version: the package's model name and version (letters, digits, ``_ . + -``).
        release: the monotonic release counter (≥ 1) for this kind.
        private_key: an Ed25519 private key, or the path of an unencrypted ``.key`` file.
        out_path: the package file to write (atomically: temporary file, fsync, rename).
        calibration: an optional INT8 calibration cache to ship with the model.
        reference_inputs: ``{input name: (N, …) float32}`` to record with the outputs the CPU
            back-end gives for them.
        reference_faces: instead, ``(N, H, W, 3)`` uint8 BGR crops of the model's input size (e.g.
            :func:`aligned_faces` for an embedder), pre-processed as the pipeline does.
        reference: ``False`` to ship no reference at all. Without inputs or faces the reference
            inputs are seeded noise of the inputs' shapes.
        atol, min_cosine: tolerances recorded for the reference (defaults: ``min_cosine`` 0.98 for
            an embedder, ``atol`` 0.05 for the other kinds).
        min_firmware: the oldest firmware that may install the package (default: this one).
        rollback: sign a permission to install this release even when it is not above the active one
            (without ``rollback_from``: one release back at most, schema 1).
        rollback_from: the release this rollback replaces (implies ``rollback``; schema 2): the
            package is accepted only where that release is the highest ever activated.
        created: the RFC 3339 build time (default: now).
        max_size: refuse to write a package larger than this (default 64 MiB, what appliances accept).
        seed: the seed of the noise inputs.

    Returns:
        The written package, verified with the signing key's own public key.

    Raises:
        PackageError: ``incompatible`` (not ONNX, I/O or pre-processing the pipeline cannot use),
            ``malformed`` (a bad name, version or release), ``too_large``.
        KeyFileError: the key file cannot be used.
        UpdateError: unusable reference inputs or files that cannot be read.
        EngineError: the reference run on the CPU back-end failed.
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise PackageError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}", reason=codes.INCOMPATIBLE)
    key = private_key if isinstance(private_key, Ed25519PrivateKey) else load_private_key(private_key)
    limit = DEFAULT_MAX_PACKAGE_BYTES if max_size is None else int(max_size)
    model_file = Path(model_path)
    try:
        if model_file.stat().st_size > limit:
            raise PackageError(
                f"{model_file} is larger than the {limit} bytes a package may hold", reason=codes.TOO_LARGE
            )
        model_bytes = read_bounded(model_file, limit)
        calibration_bytes = read_bounded(calibration, limit) if calibration is not None else None
    except FileReadError as err:
        raise UpdateError(f"the model or calibration file {err}") from None
    except OSError as err:
        raise UpdateError(f"cannot read {err.filename}: {err.strerror}") from err

    inputs, outputs = read_onnx_io(model_bytes, check=True)
    embedder = spec.kind == KIND_EMBEDDER
    embedding_size: Optional[int] = None
    if embedder:
        first = next((t for t in outputs if t.name == spec.outputs[0].name), None)
        embedding_size = first.shape[-1] if first is not None else None

    payload: Dict[str, bytes] = {MODEL_FILE: model_bytes}
    if calibration_bytes is not None:
        payload[CALIBRATION_FILE] = calibration_bytes
    fields: Dict[str, Any] = {
        "schema": SCHEMA if rollback_from is None else ROLLBACK_SCHEMA,
        "kind": kind,
        "name": name,
        "version": version,
        "release": release,
        "rollback": rollback or rollback_from is not None,
        "rollback_from": rollback_from,
        "created": created or utc_now(),
        "min_firmware": min_firmware,
        "model_file": MODEL_FILE,
        "calibration_file": CALIBRATION_FILE if calibration_bytes is not None else None,
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": PreprocessingEntry.of(spec.preprocessing),
        "embedding_size": embedding_size,
    }

    def manifest_for(files: Mapping[str, bytes], reference_entry: Optional[ReferenceEntry]) -> Manifest:
        listed = {n: FileEntry(size=len(b), sha256=hashlib.sha256(b).hexdigest()) for n, b in files.items()}
        try:
            return Manifest(**fields, files=listed, reference=reference_entry)
        except ValidationError as err:
            raise PackageError(
                f"cannot build the manifest: {validation_summary(err)}", reason=codes.MALFORMED
            ) from err

    # Compatibility first: no reference run for a model the appliance would refuse.
    draft = manifest_for(payload, None)
    problems = compatibility_problems(draft)
    if problems:
        raise PackageError(
            f"{model_file} cannot replace {kind}: {'; '.join(problems)}", reason=codes.INCOMPATIBLE
        )

    reference_entry: Optional[ReferenceEntry] = None
    if reference:
        run_spec = dataclasses.replace(spec, version=version, preprocessing=draft.preprocessing.to_registry())
        feeds = _reference_inputs(run_spec, inputs, reference_inputs, reference_faces, seed)
        try:
            expected = _run_on_cpu(run_spec, model_bytes, feeds)
        except EngineError as err:
            raise UpdateError(f"the reference run of {model_file} on the CPU back-end failed: {err}") from err
        payload[REFERENCE_INPUTS_FILE] = _npz_bytes(feeds)
        payload[REFERENCE_OUTPUTS_FILE] = _npz_bytes(expected)
        if atol is None and min_cosine is None:
            atol, min_cosine = (None, DEFAULT_MIN_COSINE) if embedder else (DEFAULT_ATOL, None)
        reference_entry = ReferenceEntry(
            inputs=REFERENCE_INPUTS_FILE, outputs=REFERENCE_OUTPUTS_FILE, atol=atol, min_cosine=min_cosine
        )
    manifest = manifest_for(payload, reference_entry)
    manifest_bytes = manifest.to_bytes()
    identifier, signature_bytes = _signature_bytes(key, manifest_bytes)

    estimate = sum(
        len(b) + 2 * tarfile.BLOCKSIZE for b in (manifest_bytes, signature_bytes, *payload.values())
    )
    if estimate > limit:
        raise PackageError(
            f"the package would be about {estimate} bytes; at most {limit} are accepted",
            reason=codes.TOO_LARGE,
        )
    mtime = max(0, int(datetime.fromisoformat(iso_time(manifest.created)).timestamp()))
    out = Path(out_path)
    try:
        with atomic_writer(out) as stream:
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                members = [(MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature_bytes)]
                members += [(PAYLOAD_PREFIX + n, payload[n]) for n in payload]
                for member_name, content in members:
                    tar.addfile(_tar_member(member_name, len(content), mtime), io.BytesIO(content))
    except OSError as err:
        raise UpdateError(f"cannot write {out}: {err.strerror or err}") from err
    logger.info(
        "package %s written: %s release %d, %d payload bytes, signed by key %s",
        out,
        manifest.qualified_version,
        release,
        manifest.payload_bytes,
        identifier,
    )
    return verify_package(
        out,
        {identifier: key.public_key()},
        active_release=None,
        firmware_version=min_firmware,
        max_size=limit,
    )


__all__ = [
    "DEFAULT_MAX_PACKAGE_BYTES",
    "KINDS",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "FileEntry",
    "Manifest",
    "PreprocessingEntry",
    "ReferenceCheck",
    "ReferenceEntry",
    "SignatureEntry",
    "TensorEntry",
    "VerifiedPackage",
    "aligned_faces",
    "build_package",
    "compare_reference",
    "compatibility_problems",
    "parse_manifest",
    "parse_version",
    "read_onnx_io",
    "verify_package",
    "version_at_least",
]
