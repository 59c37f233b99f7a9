"""The CPU back-end's sessions: one process-wide thread pool where ONNX Runtime offers it, else one pool
per session whose workers stop spinning when a run returns (ONNX Runtime 1.19 on Python 3.8, JetPack 5).

The speed itself is measured, not tested: ``python -m bench.vision`` on Python 3.8
(``docs/performance-history.md``, eighth round).
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from engines.backends import cpu


def _doubling_model() -> bytes:
    """A one-node ONNX model: ``y = x + x``, ``(1, 4)`` float32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # readable by every ONNX Runtime the project supports (1.15 and later)
    return model.SerializeToString()


def test_per_session_pools_stop_spinning_when_a_run_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_HAS_GLOBAL_POOL", False)
    options = cpu.session_options(3)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_sessions_share_the_process_pool_where_there_is_one() -> None:
    if not cpu._HAS_GLOBAL_POOL:
        pytest.skip(f"ONNX Runtime {cpu.ort.__version__} has no process-wide pool in Python")
    options = cpu.session_options(2)
    assert options.use_per_session_threads is False
    with pytest.raises(RuntimeError):  # the shared pool's spinning is the pool's, not the session's
        options.get_session_config_entry("session.force_spinning_stop")


def test_a_session_runs_with_the_options_of_this_onnx_runtime() -> None:
    # On Python 3.8 this is ONNX Runtime 1.19's per-session path: the runtime accepts the options.
    session = cpu.new_session(_doubling_model())
    (doubled,) = session.run(None, {"x": np.arange(4, dtype=np.float32)[None]})
    np.testing.assert_array_equal(doubled, [[0, 2, 4, 6]])
