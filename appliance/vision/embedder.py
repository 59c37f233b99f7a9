"""Face embeddings: MobileFaceNet on aligned crops, in batches, L2-normalised."""

from __future__ import annotations

import numpy as np

from engines.backends import InferenceBackend


class Embedder:
    """An embedding network on one back-end.

    Args:
        backend: a back-end loaded with an embedder model (registry kind ``embedder``).
        batch_size: crops per inference.
    """

    def __init__(self, backend: InferenceBackend, batch_size: int = 8) -> None:
        dim = backend.spec.embedding_dim
        if dim is None:
            raise ValueError(f"{backend.spec.name} is not an embedding model")
        self.backend = backend
        self.batch_size = max(1, batch_size)
        self.dim: int = dim
        self.version = backend.spec.qualified_version
        self._output = backend.spec.outputs[0].name

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed aligned crops.

        Args:
            crops: ``(N, 112, 112, 3)`` uint8 BGR crops aligned to the ArcFace template.

        Returns:
            ``(N, dim)`` float32, each row of unit L2 norm (cosine similarity = dot product).
        """
        out = np.zeros((len(crops), self.dim), np.float32)
        pre = self.backend.spec.preprocessing
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            out[start : start + len(chunk)] = self.backend.run(pre.to_blob(chunk))[self._output]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
