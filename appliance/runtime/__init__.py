"""The daemon's loaded models and how they are opened, switched and built (DESIGN §4, one owner).

* :mod:`.loading` — the back-end rules: which file a model opens from, on which back-end, with which
  fallback (:class:`ModelLoader`, :func:`load_analyzer` for the command line).
* :mod:`.runtime` — :class:`ModelRuntime`, the one owner of the loaded models, driven by the pipeline
  thread; other threads submit jobs and get futures.
* :mod:`.engines` — :class:`EngineSupervisor`: TensorRT engines from the cache, built in the
  background (files only) and switched in through the runtime.

The names below are imported from their module on first use, so that the command line's
``from appliance.runtime.loading import load_analyzer`` does not import :mod:`.runtime` and, through
the gallery, Faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    from .loading import (
        ModelLoader,
        backend_options,
        effective_backend,
        load_analyzer,
        model_targets,
        target_for,
    )
    from .runtime import ModelOwnershipError, ModelRuntime, RuntimeJobError, ValidationError

#: exported name → the submodule that defines it
_EXPORTS: Dict[str, str] = {
    "ModelLoader": "loading",
    "backend_options": "loading",
    "effective_backend": "loading",
    "load_analyzer": "loading",
    "model_targets": "loading",
    "target_for": "loading",
    "ModelOwnershipError": "runtime",
    "ModelRuntime": "runtime",
    "RuntimeJobError": "runtime",
    "ValidationError": "runtime",
}


def __getattr__(name: str) -> Any:
    """Import an exported name from its submodule on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "ModelLoader",
    "ModelOwnershipError",
    "ModelRuntime",
    "RuntimeJobError",
    "ValidationError",
    "backend_options",
    "effective_backend",
    "load_analyzer",
    "model_targets",
    "target_for",
]
