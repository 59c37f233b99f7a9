"""The CPU back-end: ONNX Runtime with the CPU execution provider."""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnxruntime as ort

from ..errors import EngineLoadError, InferenceError
from ..registry import TensorSpec
from .base import InferenceBackend

logger = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


def new_session(model: bytes, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session whose ``threads`` intra-op threads (0 = one per core) never spin.

    ONNX Runtime's worker threads spin after every run by default, waiting for the next one. The
    pipeline runs up to seven small networks one after the other with its own work in between, on
    the same cores as the camera's decoder and the MQTT threads: a spinning worker takes a core
    from all of them. Measured on the 2-core development machine with one other busy process,
    frames took about twice as long end to end with spinning workers (one process-wide pool, as
    before) as with sleeping ones; on an idle machine sleeping workers cost nothing measurable
    (README, Benchmarks). Per-session pools also work the same on ONNX Runtime 1.19 (JetPack 5's
    Python 3.8), which has no process-wide pool in Python.

    Raises:
        Exception: ONNX Runtime's own error when the model cannot be loaded.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads if threads > 0 else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ONNX Runtime's arena keeps the largest buffers ever used (e.g. a 270-crop R-Net batch); without
    # it the process stays ~80 MiB smaller at no measurable cost for these small models.
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3  # errors only; they become our exceptions anyway
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime on the CPU, ``options.threads`` intra-op threads per session (0 = one per core)."""

    key = "cpu"

    def _open(self, model: bytes) -> None:
        try:
            self._session: Optional[ort.InferenceSession] = new_session(model, self.options.threads)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... classes
            raise EngineLoadError(f"{self.spec.name}: ONNX Runtime cannot load the model: {err}") from err
        self._output_names = [tensor.name for tensor in self.spec.outputs]

    def _io(self) -> Tuple[List[TensorSpec], List[TensorSpec]]:
        session = self._session
        if session is None:
            raise EngineLoadError(f"{self.spec.name}: the cpu back-end is closed")
        return [_tensor(arg) for arg in session.get_inputs()], [_tensor(arg) for arg in session.get_outputs()]

    def _run(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        if self._session is None:
            raise InferenceError(f"{self.spec.name}: the cpu back-end is closed")
        try:
            outputs = self._session.run(self._output_names, feeds)
        except Exception as err:
            raise InferenceError(f"{self.spec.name}: ONNX Runtime failed: {err}") from err
        return [np.asarray(output, dtype=np.float32) for output in outputs]

    def _release(self) -> None:
        self._session = None


def _tensor(arg: ort.NodeArg) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_DTYPES.get(arg.type, arg.type))
