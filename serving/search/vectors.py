"""Vector arithmetic of the index API: checking a client's vector, pooling several into one
(multimodal items, weighted multi-queries) and maximal-marginal-relevance re-ranking."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from clipserve.serving.errors import InvalidInput


def check_vector(vector: Sequence[float] | np.ndarray | None, dim: int, what: str) -> np.ndarray:
    """`vector` as a unit float32 [dim]; InvalidInput naming `what` if it has another length,
    NaN/inf values or no direction."""
    vec = np.asarray(vector if vector is not None else [], dtype=np.float32).reshape(-1)
    if vec.shape[0] != dim:
        raise InvalidInput(
            f"{what} vector has {vec.shape[0]} values; this model's dimension is {dim}"
        )
    if not np.all(np.isfinite(vec)):
        raise InvalidInput(f"{what} vector contains NaN or infinite values")
    norm = float(np.linalg.norm(vec))
    if norm == 0.0 or not math.isfinite(norm):
        raise InvalidInput(f"{what} vector has zero (or overflowing) norm; it has no direction")
    return vec / norm


def pool(vectors: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """The normalised (weighted) mean of unit rows [N, dim] -> unit [dim]. One row is itself.

    An image and its caption pooled this way is the record-linkage vector of CLIPPINGS
    (Arora et al., 2023, "Linking representations with multimodal contrastive learning")."""
    if len(vectors) == 1:
        return np.asarray(vectors[0], dtype=np.float32)
    w = np.ones(len(vectors)) if weights is None else np.asarray(weights, dtype=np.float64)
    mean = (w[:, None] * vectors.astype(np.float64)).sum(axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-12:
        raise InvalidInput("the pooled vector is zero: the parts cancel out; change the weights")
    return (mean / norm).astype(np.float32)


def mmr(query: np.ndarray, candidates: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998): pick `k` of the unit rows of
    `candidates` [N, dim] greedily, each maximising
    (1 - diversity) * sim(query, c) - diversity * max sim(c, already picked).
    Returns row indices in pick order; diversity 0 keeps the relevance order."""
    if len(candidates) == 0:
        return []
    relevance = candidates @ query
    sims = candidates @ candidates.T
    picked: list[int] = [int(np.argmax(relevance))]
    redundancy = sims[picked[0]].copy()
    remaining = np.ones(len(candidates), dtype=bool)
    remaining[picked[0]] = False
    while len(picked) < min(k, len(candidates)):
        score = (1.0 - diversity) * relevance - diversity * redundancy
        score[~remaining] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        remaining[best] = False
        redundancy = np.maximum(redundancy, sims[best])
    return picked
