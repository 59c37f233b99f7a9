"""Conformance of the project's TensorRT usage with the real TensorRT Python bindings, without a GPU.

The real bindings (``tensorrt-bindings``, ``tensorrt-cu12-bindings``, ``tensorrt-cu13-bindings`` on
PyPI) import against stand-in ``libnvinfer``/``libnvonnxparser``/``libnvinfer_plugin`` libraries built
by :mod:`.standins`; :mod:`.dump_surface` writes their public surface as JSON; :mod:`.trace` records the
project's calls into the fake TensorRT module during the unit tests; :mod:`.check` compares the fake
module and the trace with the real surface. ``scripts/trt-conformance.sh`` runs the whole chain.
"""
