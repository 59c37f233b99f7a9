"""The CPU back-end: ONNX Runtime with the CPU execution provider."""

from __future__ import annotations

import logging
import os
import threading
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


#: ONNX Runtime 1.19 (the last release for Python 3.8, i.e. JetPack 5) has no process-wide pool in Python:
#: there each session gets its own pool of the same size instead, whose workers stop spinning when a
#: run returns (:func:`session_options`).
_HAS_GLOBAL_POOL = hasattr(ort, "set_global_thread_pool_sizes") and hasattr(
    ort.SessionOptions(), "use_per_session_threads"
)
_pool_lock = threading.Lock()
_pool: Dict[str, int] = {}  # "threads": the size of the process-wide pool, once created


def _global_pool(threads: int) -> int:
    """Create ONNX Runtime's process-wide thread pool once; returns its size.

    All CPU sessions share one pool: the pipeline runs up to seven small networks one after the
    other, and separate per-session pools whose workers keep spinning after each run fight over the
    cores (measured 1.4–2.7× slower end to end on a 2-core machine, and 2–4× with ONNX Runtime 1.19 on
    Python 3.8 before its pools stopped spinning after a run). The first back-end opened fixes the size.
    """
    with _pool_lock:
        if "threads" not in _pool:
            size = threads if threads > 0 else (os.cpu_count() or 1)
            if not _HAS_GLOBAL_POOL:
                _pool["threads"] = size
                return size
            ort.set_global_thread_pool_sizes(size, 1)
            _pool["threads"] = size
            logger.debug("ONNX Runtime global thread pool: %d threads", size)
        elif threads and threads != _pool["threads"]:
            logger.info(
                "ONNX Runtime's thread pool already has %d threads; %d requested", _pool["threads"], threads
            )
        return _pool["threads"]


def new_session(model: bytes, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on the shared thread pool (``threads`` sizes it if it is the first).

    Raises:
        Exception: ONNX Runtime's own error when the model cannot be loaded.
    """
    return ort.InferenceSession(
        model, session_options(_global_pool(threads)), providers=["CPUExecutionProvider"]
    )


def session_options(pool_size: int) -> ort.SessionOptions:
    """The options of every CPU session: the shared pool where ONNX Runtime has one, else a pool of
    ``pool_size`` threads per session whose workers stop spinning when a run returns."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if _HAS_GLOBAL_POOL:
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = pool_size
        options.inter_op_num_threads = 1
        # Workers still spin between the operators of a run (that is what makes a run fast), but
        # not after it: otherwise each of the pipeline's networks leaves its pool spinning on the
        # cores the next network's run needs (ONNX Runtime >= 1.12).
        options.add_session_config_entry("session.force_spinning_stop", "1")
    # ONNX Runtime's arena keeps the largest buffers ever used (e.g. a 270-crop R-Net batch); without
    # it the process stays ~80 MiB smaller at no measurable cost for these small models.
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3  # errors only; they become our exceptions anyway
    return options


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime on the CPU; all sessions share one thread pool of ``options.threads`` (0 = one per core)."""

    key = "cpu"
    # Between 256 and 281 rows one call of R-Net comes to take twice what the same rows take in chunks
    # (281 rows: 15.7 ms in one call, 7.4–7.8 ms in chunks of 64 to 128, bit for bit the same outputs;
    # 256 rows: 6.7–7.5 ms either way). A 1280×720 frame with five faces gives R-Net ~280 rows.
    max_rows_per_run = 128

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
