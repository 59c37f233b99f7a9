"""Explicit quantization: a QDQ INT8 ONNX model per network, made by ONNX Runtime's static quantizer.

The input is the model exactly as the back-ends load it — the registry file, verified, with its
preparation applied (``engines.prepare``: a dynamic batch for MobileFaceNet and MiniFASNet) — and
the model's calibration set (:mod:`calibration.sets`). The output keeps the inputs and outputs of the
FP32 model, with QuantizeLinear/DequantizeLinear pairs in front of the quantized operators. The same
file runs on the CPU back-end (ONNX Runtime) and is what TensorRT builds an INT8 engine from
(explicit quantization), so the choices follow TensorRT's rules:

* **symmetric int8** activations and weights (``ActivationSymmetric``/``WeightSymmetric``): TensorRT
  takes Q/DQ with zero points of 0 only;
* weights per output channel, activations per tensor;
* Q/DQ on the **inputs** of convolutions and matrix products only (:data:`QUANTIZED_OPS`), not on
  their outputs, nor around additions, activations or pooling: that is the placement TensorRT's
  documentation recommends (it fuses Conv+bias+activation and requantizes at the next Q), and it is
  also more accurate here. Measured on MobileFaceNet (213 aligned faces of shared/data, mean cosine
  INT8 vs FP32): Q/DQ around every supported operator 0.9796, inputs of Conv only 0.9801;
* a few layers stay in floating point (:data:`KEEP_FLOAT`) where one layer alone costs most of the
  accuracy (TensorRT runs them in FP16/FP32). Found by quantizing one layer at a time: in
  MobileFaceNet the 7×7 global depthwise convolution alone costs 0.0144 of mean cosine — two thirds
  of the whole loss — and the first depthwise-separable block 0.004; the other 48 together 0.005.
  Without them the mean cosine is 0.9973 (percentile) instead of 0.9818;
* activation ranges from the calibration set with the **percentile** method (99.999 % of |x|) by
  default. It gave the best parity on every model: MobileFaceNet mean cosine 0.9973 against 0.9965
  (min-max) — entropy was below both wherever tried (0.9806 vs 0.9818 before the layers above were
  kept in float); R-Net, O-Net and P-Net face-probability errors 10–30 % smaller than min-max.

Models older than opset 13 (the MTCNN files are opset 12) are converted to opset 13 first:
per-channel DequantizeLinear needs it, and TensorRT needs it for explicit quantization. The graph
then goes through ONNX Runtime's ``quant_pre_process`` (ONNX shape inference and graph
optimisation). Histogram calibration keeps every intermediate tensor of the batches it has been fed
until it merges them; the data reader hands them over one batch at a time (``CalibStridedMinMax``) so
memory stays bounded by one batch's tensors.

The result is checked before it is written: it must load on the CPU back-end with the registry's
inputs and outputs. It is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from engines.files import atomic_writer
from engines.prepare import load_model_bytes
from engines.registry import ModelSpec
from engines.store import ModelStore

from .errors import QuantizationError

logger = logging.getLogger(__name__)

#: Calibration methods offered (ONNX Runtime's ``CalibrationMethod`` names, lower case).
METHODS = ("percentile", "entropy", "minmax")
DEFAULT_METHOD = "percentile"
#: The share of each activation's |values| kept inside the range with the percentile method.
DEFAULT_PERCENTILE = 99.999
CALIBRATION_BATCH = 16
#: Operators whose inputs are quantized (outputs are not: see the module docstring).
QUANTIZED_OPS: Tuple[str, ...] = ("Conv", "MatMul", "Gemm")
#: Explicit quantization needs per-channel DequantizeLinear (opset 13).
MIN_OPSET = 13
#: Nodes left in floating point, per model (node names of the registry's file, which its sha256 pins).
KEEP_FLOAT: Dict[str, Tuple[str, ...]] = {
    "mtcnn-pnet": ("conv2d_3", "conv2d_4"),
    "mtcnn-rnet": ("dense_1", "dense_2"),
    "mtcnn-onet": ("dense_4", "dense_5", "dense_6"),
    "mobilefacenet": (
        "/gdconv/depthwise/Conv",  # 7×7 global depthwise: 0.0144 of mean cosine on its own
        "/dw_conv/depthwise/Conv",  # first depthwise-separable block: 0.0021 …
        "/dw_conv/pointwise/Conv",  # … and 0.0020
    ),
}

# The quantizer process's files, in its scratch folder.
_MODEL, _SET, _JOB, _OUTPUT, _NOTES = "fp32.onnx", "calibration.npy", "job.json", "qdq.onnx", "notes.txt"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class QuantizedModel:
    """One QDQ model written by :func:`quantize_model`.

    Attributes:
        name: the registry model name.
        path: the QDQ ONNX file.
        sha256: its sha256.
        source_sha256: the FP32 registry file's sha256 (``spec.sha256``).
        method: the calibration method.
        samples: calibration samples used.
        seconds: wall time of calibration and quantization.
    """

    name: str
    path: Path
    sha256: str
    source_sha256: str
    method: str
    samples: int
    seconds: float


def fp32_model_bytes(spec: ModelSpec, models_dir: Path) -> bytes:
    """The FP32 model as the back-ends load it: verified, then prepared (dynamic batch where needed).

    Raises:
        ModelMissingError: the file is absent or fails its sha256 check.
        ModelPreparationError: the preparation failed.
    """
    return load_model_bytes(spec, ModelStore(models_dir).require(spec))


class SetReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a calibration set, batch by batch.

    ``set_range`` narrows it to a span of batches (the quantizer's ``CalibStridedMinMax``).

    Args:
        input_name: the model's input.
        data: ``(N, *sample_shape)`` float32.
        batch: samples per batch.
    """

    def __init__(self, input_name: str, data: np.ndarray, batch: int) -> None:
        self.input_name = input_name
        self.batches = [data[start : start + batch] for start in range(0, len(data), batch)]
        self.start, self.end = 0, len(self.batches)
        self.position = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        while True:
            item = self.get_next()
            if item is None:
                return
            yield item

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.batches))
        self.position = self.start

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.position >= self.end:
            return None
        chunk = self.batches[self.position]
        self.position += 1
        return {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self) -> None:
        self.position = self.start


def quantize_model(
    spec: ModelSpec,
    model: bytes,
    calibration: np.ndarray,
    output: Path,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    preprocess: bool = True,
    batch: int = CALIBRATION_BATCH,
    threads: int = 0,
) -> QuantizedModel:
    """Quantize one model to QDQ INT8 and write it to ``output`` atomically.

    The quantizer runs in a child process: it opens ONNX Runtime sessions with their own thread
    pools, which ONNX Runtime refuses once the CPU back-end has created the process-wide pool, and
    the child's memory (every intermediate tensor of the calibration batches) goes when it ends.

    Args:
        spec: the registry entry (input name, expected I/O).
        model: the FP32 model bytes as the back-ends load them (:func:`fp32_model_bytes`).
        calibration: ``(N, *sample_shape)`` float32 in the model's input layout (a calibration set).
        output: the QDQ file to write.
        method: ``"percentile"``, ``"entropy"`` or ``"minmax"``.
        percentile: the percentile method's coverage (e.g. 99.999).
        preprocess: run ONNX Runtime's ``quant_pre_process`` on the FP32 graph first.
        batch: calibration batch size.
        threads: ONNX Runtime threads of the load check (0 = the shared pool's default).

    Raises:
        QuantizationError: a bad method or empty set, the quantizer failed, or the QDQ model does not
            load on the CPU back-end with the registry's inputs and outputs.
    """
    from engines.backends.base import BackendOptions
    from engines.backends.cpu import OnnxRuntimeBackend
    from engines.errors import EngineLoadError

    if method not in METHODS:
        raise QuantizationError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    if calibration.ndim < 2 or len(calibration) == 0:
        raise QuantizationError(f"{spec.name}: the calibration set is empty (shape {calibration.shape})")
    expected = spec.inputs[0].shape[1:]
    if len(expected) != calibration.ndim - 1 or any(
        want is not None and want != have for want, have in zip(expected, calibration.shape[1:])
    ):
        raise QuantizationError(
            f"{spec.name}: calibration samples of shape {calibration.shape[1:]} do not fit input "
            f"{spec.inputs[0].describe()}"
        )
    started = time.monotonic()
    job = {
        "name": spec.name,
        "input": spec.inputs[0].name,
        "method": method,
        "percentile": percentile,
        "preprocess": preprocess,
        "batch": max(1, batch),
    }
    with tempfile.TemporaryDirectory(prefix="int8-") as scratch:
        folder = Path(scratch)
        (folder / _MODEL).write_bytes(model)
        np.save(folder / _SET, np.ascontiguousarray(calibration, dtype=np.float32), allow_pickle=False)
        (folder / _JOB).write_text(json.dumps(job))
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(_PACKAGE_ROOT), *filter(None, [environment.get("PYTHONPATH")])]
        )
        try:
            completed = subprocess.run(
                [sys.executable, "-m", __name__, str(folder)],
                capture_output=True,
                env=environment,
                check=False,
            )
        except OSError as err:
            raise QuantizationError(f"{spec.name}: cannot start the quantizer process: {err}") from err
        if completed.returncode != 0 or not (folder / _OUTPUT).is_file():
            tail = completed.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
            raise QuantizationError(
                f"{spec.name}: the quantizer process failed (exit {completed.returncode}): "
                + (" | ".join(tail) or "no message")
            )
        qdq = (folder / _OUTPUT).read_bytes()
        notes = (
            (folder / _NOTES).read_text(encoding="utf-8").splitlines() if (folder / _NOTES).is_file() else []
        )
    for note in notes:
        logger.warning("%s: %s", spec.name, note)
    try:
        OnnxRuntimeBackend(spec, qdq, BackendOptions(threads=threads)).close()
    except EngineLoadError as err:
        raise QuantizationError(
            f"{spec.name}: the QDQ model does not load on the CPU back-end: {err}"
        ) from err
    with atomic_writer(output) as stream:
        stream.write(qdq)
    result = QuantizedModel(
        name=spec.name,
        path=output,
        sha256=hashlib.sha256(qdq).hexdigest(),
        source_sha256=spec.sha256,
        method=method,
        samples=len(calibration),
        seconds=time.monotonic() - started,
    )
    logger.info(
        "%s: QDQ INT8 model %s (%s, %d samples, %.1f s)",
        spec.name,
        output,
        method,
        result.samples,
        result.seconds,
    )
    return result


def _quantize_bytes(
    name: str,
    input_name: str,
    model: bytes,
    calibration: np.ndarray,
    method: str,
    percentile: float,
    preprocess: bool,
    batch: int,
    notes: List[str],
) -> bytes:
    """The quantizer itself (runs in the child process); returns the QDQ model's bytes and appends
    to ``notes`` what the parent should log as warnings.

    Raises:
        QuantizationError: the quantizer failed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The quantizer's own advice to pre-process is a root-logger WARNING on every call; it is done.
    logging.getLogger().setLevel(logging.ERROR)
    calibrate_method = {
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
    }[method]
    reader = SetReader(input_name, calibration, batch)
    extra_options: Dict[str, object] = {
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
        # TensorRT's explicit quantization takes symmetric (zero point 0) int8 only.
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": True,
        # Merge the collected tensors into the histograms batch by batch instead of holding every
        # intermediate tensor of the whole set (gigabytes for MobileFaceNet); one batch per merge also
        # lets the last batch be shorter (a merge stacks its batches' tensors).
        "CalibStridedMinMax": 1,
    }
    if method == "percentile":
        extra_options["CalibPercentile"] = percentile
    with tempfile.TemporaryDirectory(prefix="int8-") as scratch:
        fp32_path = Path(scratch) / "fp32.onnx"
        fp32_path.write_bytes(_at_least_opset(name, model, MIN_OPSET))
        source = fp32_path
        if preprocess:
            source = Path(scratch) / "fp32.pre.onnx"
            try:
                quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=True)
            except Exception as err:  # onnxruntime and onnx raise many types; none is ours
                notes.append(f"quant_pre_process failed ({err}); the graph was quantized as it is")
                source = fp32_path
        excluded = _nodes_kept_float(name, source, KEEP_FLOAT.get(name, ()))
        qdq_path = Path(scratch) / "qdq.onnx"
        try:
            quantize_static(
                str(source),
                str(qdq_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate_method,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=excluded,
                extra_options=extra_options,
            )
        except Exception as err:
            raise QuantizationError(f"{name}: ONNX Runtime's quantizer failed: {err}") from None
        return qdq_path.read_bytes()


def _nodes_kept_float(name: str, model_path: Path, keep: Sequence[str]) -> List[str]:
    """The graph's node names that ``keep`` names: equal, or ``<name>/…`` — the pre-processing
    renames a node it fuses (``dense_1`` + its bias ``Add`` become ``dense_1/MatMulAddFusion``).

    Raises:
        QuantizationError: a name in ``keep`` matches no node (the table is out of date).
    """
    if not keep:
        return []
    import onnx

    nodes = [node.name for node in onnx.load(str(model_path)).graph.node]
    excluded: List[str] = []
    for wanted in keep:
        found = [node for node in nodes if node == wanted or node.startswith(f"{wanted}/")]
        if not found:
            raise QuantizationError(
                f"{name}: KEEP_FLOAT names node {wanted!r}, which the graph does not have; update the table"
            )
        excluded.extend(found)
    return excluded


def _at_least_opset(name: str, model: bytes, opset: int) -> bytes:
    """``model`` converted to ``opset`` when its default-domain opset is lower (ONNX's version converter).

    Raises:
        QuantizationError: the converter cannot convert the graph.
    """
    import onnx
    from onnx import version_converter

    proto = onnx.load_from_string(model)
    current = max(
        (entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), default=0
    )
    if current >= opset:
        return model
    try:
        converted = version_converter.convert_version(proto, opset)
        onnx.checker.check_model(converted)
    except Exception as err:  # the converter raises plain RuntimeError/ValueError/checker errors
        raise QuantizationError(
            f"{name}: cannot convert the model from opset {current} to {opset}: {err}"
        ) from None
    logger.info("%s: converted from opset %d to %d for per-channel quantization", name, current, opset)
    return converted.SerializeToString()


def _worker(folder: Path) -> int:
    """The quantizer process: read the job from ``folder``, write the QDQ model there."""
    job = json.loads((folder / _JOB).read_text())
    calibration = np.load(folder / _SET, allow_pickle=False)
    notes: List[str] = []
    try:
        qdq = _quantize_bytes(
            job["name"],
            job["input"],
            (folder / _MODEL).read_bytes(),
            calibration,
            job["method"],
            float(job["percentile"]),
            bool(job["preprocess"]),
            int(job["batch"]),
            notes,
        )
    except QuantizationError as err:
        sys.stderr.write(f"{err}\n")
        return 1
    (folder / _OUTPUT).write_bytes(qdq)
    (folder / _NOTES).write_text("\n".join(notes), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_worker(Path(sys.argv[1])))
