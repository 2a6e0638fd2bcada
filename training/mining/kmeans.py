"""Spherical k-means over the mined embeddings: centres for the `cluster` estimator.

MLCD (An et al., ECCV 2024) clusters the corpus once and treats items that share their
nearest centres as likely matches. Centres are L2-normalised and assignment is by cosine,
like the index. Deterministic for a seed (k-means++ seeding, fixed iterations).
"""

from __future__ import annotations

import numpy as np


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 25) -> np.ndarray:
    """Centres [k, D] (L2-normalised) of the rows of x [N, D] (L2-normalised).

    Raises ValueError when k is not in [1, N].
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= clusters <= items ({n}), got {k}")
    rng = np.random.default_rng((seed, 17))
    centres = [x[rng.integers(n)]]
    dist = 1.0 - x @ centres[0]
    for _ in range(1, k):  # k-means++: next centre drawn with probability ~ distance^2
        p = np.maximum(dist, 0) ** 2
        total = p.sum()
        i = int(rng.choice(n, p=p / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[i])
        dist = np.minimum(dist, 1.0 - x @ x[i])
    c = np.stack(centres)
    for _ in range(iters):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.zeros_like(c)
        np.add.at(new, assign, x)
        norms = np.linalg.norm(new, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        new[~empty] /= norms[~empty]
        new[empty] = c[empty]  # an empty cluster keeps its centre
        if np.array_equal(new, c):
            break
        c = new
    return c


def nearest_centres(x: np.ndarray, centres: np.ndarray, top: int = 1) -> np.ndarray:
    """[N, top] int64 ids of each row's `top` nearest centres, nearest first."""
    if not 1 <= top <= len(centres):
        raise ValueError(f"top must be in [1, {len(centres)}], got {top}")
    sims = np.asarray(x, dtype=np.float32) @ centres.T
    return np.argsort(-sims, axis=1, kind="stable")[:, :top].astype(np.int64)
