"""Embedding arithmetic shared by every stage: L2 normalisation, Matryoshka truncation, cosine."""
from __future__ import annotations

import numpy as np

from wavlink_edge.runtime.errors import UsageError


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero instead of becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def truncate(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka: the first ``dim`` dimensions, re-normalised (a prefix of a unit vector is not one)."""
    return normalize(np.asarray(vectors)[..., :dim])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two equally shaped sets of vectors: [N]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.where(norms > 0, norms, 1.0)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity matrix [len(a), len(b)] of two embedding sets (1-D inputs count as one row)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[-1] != b.shape[-1]:
        raise UsageError(f"embedding widths differ: {a.shape[-1]} vs {b.shape[-1]} (embed both at the same dim)")
    return normalize(a) @ normalize(b).T
