"""Installed INT8 (QDQ) models: where ``face-appliance calibrate`` puts the models that passed its gate,
and how the CPU back-end finds them (``backend.int8 = true``).

Layout of the INT8 folder (``calibration.int8_dir``, default ``{models.dir}/int8``)::

    int8.json                                 the index: one entry per installed model
    mtcnn_onnx/pnet.int8.onnx                 one QDQ model per registry file (its path + .int8.onnx)
    mobilefacenet_foamliu/MobileFaceNet.int8.onnx
    report.json, report.png                   the calibration report the installed models passed

An entry records the QDQ file's sha256, the FP32 registry file's sha256 it was made from, and the
gate's verdict. :func:`find_int8` hands out a model only when all three hold: installed, not
altered since, made from the registry file the appliance now uses, and passed. Writers (one
``calibrate`` at a time) replace files and the index atomically; readers never see a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from .files import PathLike, atomic_writer, sha256_file
from .registry import ModelSpec

logger = logging.getLogger(__name__)

INDEX_FILE = "int8.json"
INDEX_SCHEMA = 1


def int8_file(spec: ModelSpec) -> str:
    """The QDQ file's path relative to the INT8 folder: ``mtcnn_onnx/pnet.int8.onnx``."""
    stem = spec.file[: -len(".onnx")] if spec.file.endswith(".onnx") else spec.file
    return f"{stem}.int8.onnx"


def read_index(int8_dir: PathLike) -> Dict[str, Any]:
    """The index's ``models`` mapping (name → entry); empty when there is no index.

    Raises:
        ValueError: the index exists but is not readable JSON of this schema.
    """
    path = Path(int8_dir) / INDEX_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable INT8 index: {err}") from err
    if not isinstance(document, dict) or document.get("schema") != INDEX_SCHEMA:
        raise ValueError(f"{path}: not an INT8 index of schema {INDEX_SCHEMA}")
    models = document.get("models")
    return dict(models) if isinstance(models, dict) else {}


def find_int8(int8_dir: PathLike, spec: ModelSpec) -> Tuple[Optional[Path], str]:
    """The installed, gate-passed QDQ model for ``spec``, or why there is none.

    Returns:
        ``(path, description)`` when usable; ``(None, reason)`` otherwise — no index or no entry,
        a failed gate, an entry made from another FP32 file, or a file that is missing or altered.
    """
    folder = Path(int8_dir)
    try:
        entry = read_index(folder).get(spec.name)
    except ValueError as err:
        return None, str(err)
    if entry is None:
        return None, f"no INT8 model installed in {folder} (make one with: face-appliance calibrate)"
    if not entry.get("gate_passed"):
        return None, f"the INT8 model in {folder} did not pass the calibration gate"
    if entry.get("source_sha256") != spec.sha256:
        return None, (
            f"the INT8 model in {folder} was made from another {spec.file} (sha256 "
            f"{str(entry.get('source_sha256'))[:12]}…, the registry's is {spec.sha256[:12]}…); calibrate again"
        )
    path = folder / int8_file(spec)
    try:
        digest = sha256_file(path)
    except OSError as err:
        return None, f"{path}: {err.strerror or err}"
    if digest != entry.get("sha256"):
        return None, f"{path} has sha256 {digest[:12]}…, the index says {str(entry.get('sha256'))[:12]}…"
    return (
        path,
        f"{path} (INT8 QDQ, {entry.get('method', '?')} calibration, installed {entry.get('installed', '?')})",
    )


def install(int8_dir: PathLike, spec: ModelSpec, qdq: bytes, entry: Mapping[str, Any]) -> Path:
    """Install one QDQ model: the file, then its index entry, each written atomically.

    Args:
        int8_dir: the INT8 folder (created if absent).
        spec: the registry entry the model was made from.
        qdq: the QDQ model's bytes.
        entry: what the index records besides the file (``sha256``, ``source_sha256``,
            ``gate_passed``, ``method``, ``installed``, ``report`` …); ``sha256`` and ``file`` are set here.

    Returns:
        The installed file's path.

    Raises:
        OSError: the folder or a file cannot be written.
        ValueError: an existing index is unreadable (it is not overwritten blindly).
    """
    folder = Path(int8_dir)
    path = folder / int8_file(spec)
    with atomic_writer(path) as stream:
        stream.write(qdq)
    models = read_index(folder)
    models[spec.name] = {
        **dict(entry),
        "file": int8_file(spec),
        "sha256": hashlib.sha256(qdq).hexdigest(),
        "source_sha256": spec.sha256,
    }
    document = {"schema": INDEX_SCHEMA, "models": dict(sorted(models.items()))}
    with atomic_writer(folder / INDEX_FILE) as stream:
        stream.write(json.dumps(document, indent=2).encode("utf-8"))
    logger.info("installed the INT8 model of %s: %s", spec.name, path)
    return path
