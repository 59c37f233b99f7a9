"""ONNX preparation: graph edits that make a registry model fit the appliance's back-ends.

The MobileFaceNet and MiniFASNet exports fix the batch dimension to 1, so faces could only be
embedded one at a time. :func:`make_batch_dynamic` turns that dimension into a symbolic ``batch``:
the graph inputs and outputs get a ``dim_param``, and every ``Reshape`` whose constant target shape
starts with the old batch of 1 gets a 0 there ("copy that dimension from the input"). The weights
are untouched. :func:`compare_batched` proves the edit by running the original image by image and
the prepared model on the whole batch.

The prepared model is produced in memory when a back-end loads the model, so a read-only models
directory such as a mirror works as it is. The edit itself takes milliseconds, but importing the
``onnx`` package for it takes about 0.3 s on a 2-core x86 machine (1.7 s with ``ml_dtypes`` 0.7.0,
which ``setup.py`` holds back), more than the rest of a one-photo command: with a ``cache_dir`` (the
appliance passes ``{engine_dir}/prepared``), :func:`load_model_bytes` keeps the prepared bytes there, named by the
source file's sha256, the steps and :data:`PREPARE_REVISION`, beside a checksum of their own, and later
processes load them without importing ``onnx``. A cache that cannot be written is skipped (the
model is prepared in memory every time); a cached file that fails its checksum is prepared again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .errors import FileReadError, ModelPreparationError
from .files import PathLike, atomic_writer, read_bounded
from .registry import PREPARE_DYNAMIC_BATCH, ModelSpec

logger = logging.getLogger(__name__)

BATCH_DIM_NAME = "batch"

#: Revision of the edits' output: bump it when :func:`make_batch_dynamic` changes what it writes, so
#: models prepared by the earlier code are not loaded from a cache.
PREPARE_REVISION = 1
#: A cached prepared model: ``<name>-<source sha256[:16]>-<steps>-r<revision>.onnx``, and beside it the
#: same name with ``.sha256`` added: ``<sha256 of the prepared bytes> <sha256 of the source>``.
PREPARED_SUFFIX = ".onnx"
CHECKSUM_SUFFIX = ".sha256"
#: A cached prepared model larger than this many times its source (plus 1 MiB) is not read.
_MAX_GROWTH = 4


def make_batch_dynamic(model_bytes: bytes, dim_name: str = BATCH_DIM_NAME) -> bytes:
    """Return the serialized model with a symbolic batch dimension.

    Raises:
        ModelPreparationError: the file is not ONNX, a ``Reshape`` target cannot be rewritten, or
            the edited graph fails the ONNX checker.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as err:  # onnx raises DecodeError and friends from protobuf
        raise ModelPreparationError(f"not a readable ONNX model: {err}") from err
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}

    for value in [*graph.input, *graph.output]:
        if value.name in initializer_names:
            continue
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise ModelPreparationError(f"graph tensor {value.name!r} has no shape to edit")
        first = dims[0]
        if first.HasField("dim_value") and first.dim_value != 1:
            raise ModelPreparationError(
                f"graph tensor {value.name!r} has batch {first.dim_value}; only a fixed batch of 1 is edited"
            )
        first.Clear()
        first.dim_param = dim_name

    # Reshape targets of the form [1, ...]: replace the 1 with 0 (copy the input's batch). A target
    # shared by several nodes is copied so that only Reshapes are affected.
    constants: Dict[str, onnx.TensorProto] = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        target_name = node.input[1]
        tensor = constants.get(target_name)
        if tensor is None:
            raise ModelPreparationError(
                f"Reshape {node.name!r} takes its shape from a computed tensor; cannot make the batch dynamic"
            )
        target = numpy_helper.to_array(tensor)
        if target.ndim != 1 or target.size == 0 or target[0] != 1:
            continue
        if any(attr.name == "allowzero" and attr.i == 1 for attr in node.attribute):
            raise ModelPreparationError(f"Reshape {node.name!r} has allowzero=1; 0 would not copy the batch")
        new_target = target.copy()
        new_target[0] = 0
        new_name = f"{target_name}__dynamic_batch"
        if new_name not in constants:
            new_tensor = numpy_helper.from_array(new_target.astype(target.dtype), name=new_name)
            graph.initializer.append(new_tensor)
            constants[new_name] = new_tensor
        node.input[1] = new_name

    # Intermediate shapes recorded by the exporter still say batch 1; let shape inference redo them.
    del graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception as err:
        raise ModelPreparationError(f"the edited graph does not check: {err}") from err
    return model.SerializeToString()


def prepare_bytes(spec: ModelSpec, model_bytes: bytes) -> bytes:
    """Apply ``spec.prepare``'s edits, in order, to the original file's bytes."""
    for step in spec.prepare:
        if step == PREPARE_DYNAMIC_BATCH:
            model_bytes = make_batch_dynamic(model_bytes)
        else:
            raise ModelPreparationError(f"{spec.name}: unknown preparation step {step!r}")
    return model_bytes


def prepared_path(cache_dir: PathLike, spec: ModelSpec, source_sha256: str) -> Path:
    """Where :func:`load_model_bytes` caches ``spec``'s model prepared from a source of that sha256."""
    steps = "+".join(spec.prepare)
    name = f"{spec.name}-{source_sha256[:16]}-{steps}-r{PREPARE_REVISION}{PREPARED_SUFFIX}"
    return Path(cache_dir) / name


def _read_prepared(file: Path, source: bytes, source_sha256: str) -> Optional[bytes]:
    """The cached prepared model at ``file`` when it is there and matches its checksum line."""
    checksum = file.with_name(file.name + CHECKSUM_SUFFIX)
    try:
        expected = read_bounded(checksum, 1024).decode("ascii", "replace").split()
        data = read_bounded(file, _MAX_GROWTH * len(source) + 2**20)
    except FileReadError as err:
        logger.debug("no usable prepared model in the cache (%s)", err)
        return None
    if expected != [hashlib.sha256(data).hexdigest(), source_sha256]:
        logger.warning("%s does not match its checksum in %s; preparing the model again", file, checksum.name)
        return None
    return data


def _write_prepared(file: Path, prepared: bytes, source_sha256: str) -> None:
    """Cache ``prepared`` at ``file``, then its checksum line (a reader needs both); failures are logged."""
    checksum = file.with_name(file.name + CHECKSUM_SUFFIX)
    try:
        with atomic_writer(file) as stream:
            stream.write(prepared)
        with atomic_writer(checksum) as stream:
            stream.write(f"{hashlib.sha256(prepared).hexdigest()} {source_sha256}\n".encode("ascii"))
    except OSError as err:
        logger.debug("cannot cache the prepared model in %s (%s); it is prepared again next time", file, err)


@lru_cache(maxsize=16)
def _prepared_cached(
    spec: ModelSpec, path: str, mtime_ns: int, size: int, cache_dir: Optional[str] = None
) -> bytes:
    del mtime_ns, size  # part of the cache key only
    data = Path(path).read_bytes()
    source_sha256 = hashlib.sha256(data).hexdigest()
    cached = None if cache_dir is None else prepared_path(cache_dir, spec, source_sha256)
    if cached is not None:
        prepared = _read_prepared(cached, data, source_sha256)
        if prepared is not None:
            logger.debug("%s: prepared model from the cache %s", spec.name, cached)
            return prepared
    try:
        prepared = prepare_bytes(spec, data)
    except ModelPreparationError as err:
        raise ModelPreparationError(f"{spec.name} ({path}): {err}") from err
    if cached is not None:
        _write_prepared(cached, prepared, source_sha256)
    return prepared


def load_model_bytes(spec: ModelSpec, path: Path, cache_dir: Optional[PathLike] = None) -> bytes:
    """The bytes a back-end should load for ``spec``: the file at ``path``, prepared if needed.

    Args:
        cache_dir: where prepared models are kept between processes (created when needed); ``None``
            prepares the model in memory (once per process and file version). Every reader of one
            machine's models (the back-ends, the TensorRT engine builder) passes the same folder, so
            they see the same bytes, and an engine's key (the ONNX bytes' sha256) stays the same
            when an ``onnx`` upgrade would write the edit differently.
    """
    if not spec.prepare:
        return path.read_bytes()
    stat = path.stat()
    folder = None if cache_dir is None else os.fspath(cache_dir)
    return _prepared_cached(spec, str(path), stat.st_mtime_ns, stat.st_size, folder)


def compare_batched(
    original: bytes,
    prepared: bytes,
    batch: int = 8,
    seed: int = 0,
    inputs: Optional[np.ndarray] = None,
) -> Tuple[float, Dict[str, np.ndarray]]:
    """Run ``original`` one sample at a time and ``prepared`` on the whole batch, on the CPU.

    Args:
        original: the model with a fixed batch of 1.
        prepared: the same model with a dynamic batch.
        batch: number of random samples when ``inputs`` is not given.
        inputs: ``(batch, …)`` float32 samples for the single input, or ``None`` for seeded
            uniform noise in [-1, 1).

    Returns:
        The largest absolute difference over all outputs, and the prepared model's outputs.
    """
    from .backends.cpu import new_session

    single = new_session(original)
    batched = new_session(prepared)
    input_meta = single.get_inputs()[0]
    if inputs is None:
        sample_shape = [int(d) for d in input_meta.shape[1:]]
        inputs = np.random.default_rng(seed).uniform(-1, 1, (batch, *sample_shape)).astype(np.float32)
    output_names = [out.name for out in single.get_outputs()]
    one_by_one = [single.run(output_names, {input_meta.name: inputs[i : i + 1]}) for i in range(len(inputs))]
    together = batched.run(output_names, {batched.get_inputs()[0].name: inputs})
    worst = 0.0
    for index, name in enumerate(output_names):
        reference = np.concatenate([outputs[index] for outputs in one_by_one], axis=0)
        if reference.shape != together[index].shape:
            raise ModelPreparationError(
                f"output {name!r}: batched shape {together[index].shape} != {reference.shape}"
            )
        worst = max(worst, float(np.max(np.abs(reference - together[index]))))
    return worst, dict(zip(output_names, together))
