"""Nearest neighbours of every item through the embedded Qdrant index (`clipserve.index`).

Images go into an `EdgeIndex` collection (point id = the item's row as a UUID, payload
``{"row": i}``); each caption queries it. The neighbours of item a are the images closest to
a's caption, best first, with a's own image removed: text->image is the direction retrieval
serves and the one B3 / FlagEmbedding mine from.

`exact_neighbours` is the same-modality search mining's side inputs need: text->text for the
`cluster` estimator's caption cells, image->image for the `lexical` estimator (exact, in
blocks, without the index: it runs once per mining on features already in memory).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipserve.index.base import Point
from clipserve.index.embedded.edge import EdgeIndex

COLLECTION = "mine"


@dataclass(frozen=True)
class Neighbours:
    """Row a: the `k` images nearest to caption a, own image excluded, best first.

    index [N, k] int64 (-1 where the corpus has fewer items), score [N, k] float32 cosine,
    positive [N] float32: cosine of caption a with its own image.
    """

    index: np.ndarray
    score: np.ndarray
    positive: np.ndarray
    seconds: float  # index build + search time

    @property
    def queries_per_s(self) -> float:
        return len(self.index) / self.seconds if self.seconds > 0 else float("inf")


def row_id(row: int) -> str:
    return str(uuid.UUID(int=row + 1))


def nearest_neighbours(
    text: np.ndarray,
    image: np.ndarray,
    k: int,
    index_dir: str | os.PathLike[str],
    progress: bool = True,
) -> Neighbours:
    """Index `image` [N, D] under index_dir (replacing what a previous run left there) and
    retrieve the `k` nearest images of each caption in `text` [N, D] (both L2-normalised)."""
    n = len(text)
    if len(image) != n or n < 2:
        raise ValueError(f"need matching text/image rows (at least 2), got {len(text)}, {n}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    root = Path(index_dir)
    if (root / COLLECTION).exists():
        shutil.rmtree(root / COLLECTION)  # a stale index from an earlier mining run
    t0 = time.perf_counter()
    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_score = np.full((n, k), -np.inf, dtype=np.float32)
    # Exact search: mining must be reproducible; fsync off: the index is scratch space.
    with EdgeIndex(root, exact=True, fsync=False, batch_size=1024) as index:
        index.ensure_collection(COLLECTION, int(image.shape[1]))
        index.upsert(
            COLLECTION,
            [Point(row_id(i), image[i], {"row": i}) for i in range(n)],
        )
        for a in tqdm(range(n), desc="neighbours", unit="q", disable=not progress):
            hits = index.search(COLLECTION, text[a], top_k=min(k + 1, n))
            rows = [(int(h.payload["row"]), h.score) for h in hits]
            rows = [(r, s) for r, s in rows if r != a][:k]
            if rows:
                out_idx[a, : len(rows)] = [r for r, _ in rows]
                out_score[a, : len(rows)] = [s for _, s in rows]
    positive = np.einsum("nd,nd->n", text, image).astype(np.float32)
    return Neighbours(out_idx, out_score, positive, time.perf_counter() - t0)


def exact_neighbours(x: np.ndarray, m: int, block: int = 1024) -> np.ndarray:
    """[N, m] int64: the rows of the m items nearest to each item of x (cosine, exact, best
    first, itself excluded; equal scores in row order, as a stable sort gives them: templated
    captions repeat, so ties are common). x [N, D] is L2-normalised; m must be in [1, N).

    `block` rows at a time (4 KiB x N bytes of scores for 1024). A fixed block, not one sized
    from N: the matmul's shape changes its last bits, and with them near-ties."""
    n = len(x)
    if not 1 <= m < n:
        raise ValueError(f"neighbours must be in [1, {n - 1}] for {n} items, got {m}")
    x = np.asarray(x, dtype=np.float32)
    out = np.empty((n, m), dtype=np.int64)
    for s in range(0, n, block):
        rows = np.arange(s, min(s + block, n))
        sims = x[rows] @ x.T  # [b, N]
        sims[rows - s, rows] = -np.inf
        # The m-th best score of each row; every candidate at or above it, best first, equal
        # scores by row, then the first m (the tie at the m-th place goes to the lower rows).
        kth = -np.partition(-sims, m - 1, axis=1)[:, m - 1]
        for i, row in enumerate(sims):
            cand = np.flatnonzero(row >= kth[i])
            out[rows[i]] = cand[np.lexsort((cand, -row[cand]))[:m]]
    return out
