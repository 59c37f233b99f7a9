"""The daemon's loaded models and how they are opened, switched and built (DESIGN §4, one owner).

* :mod:`.loading` — the back-end rules: which file a model opens from, on which back-end, with which
  fallback (:class:`ModelLoader`, :func:`load_analyzer` for the command line).
* :mod:`.runtime` — :class:`ModelRuntime`, the one owner of the loaded models, driven by the pipeline
  thread; other threads submit jobs and get futures.
* :mod:`.engines` — :class:`EngineSupervisor`: TensorRT engines from the cache, built in the
  background (files only) and switched in through the runtime.
"""

from .loading import ModelLoader, backend_options, effective_backend, load_analyzer, model_targets, target_for
from .runtime import ModelOwnershipError, ModelRuntime, RuntimeJobError, ValidationError

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
