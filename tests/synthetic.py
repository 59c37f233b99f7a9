"""Synthetic gallery inputs for tests that need embeddings and crops but no model."""

from __future__ import annotations

import numpy as np


def unit_vectors(count: int, seed: int = 0, dim: int = 128) -> np.ndarray:
    """``(count, dim)`` float32 random unit vectors, the same for the same seed."""
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_crops(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 112, 112, 3)`` uint8 noise in the shape of aligned face crops."""
    return np.random.default_rng(seed).integers(0, 256, (count, 112, 112, 3), dtype=np.uint8)
