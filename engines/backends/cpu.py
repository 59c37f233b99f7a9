"""The CPU back-end: ONNX Runtime with the CPU execution provider."""

from __future__ import annotations

import logging
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


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime on the CPU; ``options.threads`` sets the intra-op thread count (0 = default)."""

    key = "cpu"

    def _open(self, model: bytes) -> None:
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = max(0, self.options.threads)
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 3  # errors only; they become our exceptions anyway
        try:
            self._session: Optional[ort.InferenceSession] = ort.InferenceSession(
                model, session_options, providers=["CPUExecutionProvider"]
            )
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
