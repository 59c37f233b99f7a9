"""Inference back-ends, imported only when selected.

``BACKENDS`` maps a back-end key (the configuration's ``backend.type``) to the module and class
that implement it. A back-end's runtime (``onnxruntime``, ``tensorrt``/``pycuda``) is imported with
its module, so a device that ships one runtime never needs the other.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Dict, Optional, Type

from ..errors import BackendUnavailableError
from ..prepare import load_model_bytes
from ..registry import ModelSpec
from ..store import ModelStore
from .base import BackendOptions, InferenceBackend

__all__ = ["BACKENDS", "BackendOptions", "InferenceBackend", "backend_class", "backend_status", "open_model"]

#: key → (module, class name)
BACKENDS: Dict[str, tuple] = {
    "cpu": ("engines.backends.cpu", "OnnxRuntimeBackend"),
    "tensorrt": ("engines.tensorrt.backend", "TensorRTBackend"),
}

_HINTS = {
    "cpu": "install the CPU extra: pip install 'face-appliance[cpu]'",
    "tensorrt": (
        "on a Jetson, TensorRT comes with JetPack (sudo apt install nvidia-jetpack) and pycuda with "
        "pip install 'face-appliance[jetson]'; elsewhere set backend.type = \"cpu\""
    ),
}


def backend_class(key: str) -> Type[InferenceBackend]:
    """Import and return the back-end class for ``key``.

    Raises:
        BackendUnavailableError: unknown key, or the back-end's runtime cannot be imported; the
            message names the missing module and what to install.
    """
    try:
        module_name, class_name = BACKENDS[key]
    except KeyError:
        raise BackendUnavailableError(
            f"unknown back-end {key!r}; known back-ends: {', '.join(BACKENDS)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        label = "TensorRT" if key == "tensorrt" else "ONNX Runtime (CPU)"
        raise BackendUnavailableError(f"{label} back-end unavailable: {err}; {_HINTS[key]}") from err
    backend: Type[InferenceBackend] = getattr(module, class_name)
    return backend


def backend_status() -> Dict[str, Optional[str]]:
    """For each back-end: ``None`` when it can be imported, else the reason it cannot."""
    status: Dict[str, Optional[str]] = {}
    for key in BACKENDS:
        try:
            backend_class(key)
        except BackendUnavailableError as err:
            status[key] = str(err)
        else:
            status[key] = None
    return status


def open_model(
    key: str, spec: ModelSpec, models_dir: Path, options: Optional[BackendOptions] = None
) -> InferenceBackend:
    """Verify ``spec``'s file in ``models_dir``, prepare it and load it on back-end ``key``.

    Raises:
        BackendUnavailableError: the back-end cannot be imported.
        ModelMissingError: the file is absent or fails its sha256 check.
        ModelPreparationError: the ONNX edit failed.
        EngineLoadError: the runtime refused the model or its I/O differs from the registry.
    """
    backend = backend_class(key)
    path = ModelStore(models_dir).require(spec)
    cache_dir = options.prepared_dir if options is not None else None
    return backend(spec, load_model_bytes(spec, path, cache_dir), options)
