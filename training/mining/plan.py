"""What mining produces from the neighbour lists: mined negatives and hard-batch groups.

- Negatives (B3 / FlagEmbedding): anchor a's candidates are its neighbours at ranks
  [rank_start, rank_start + rank_window) (0 = nearest other item), skipping the top ranks
  where false negatives crowd; suspected false negatives are removed and the first
  `negatives` survivors kept, in rank order.
- Groups (GRIT-VLP / B3 hard batches): neighbourhoods of `group_size` items, built greedily
  from a seeded anchor order (an anchor plus its nearest not-yet-grouped neighbours). Every
  item is in exactly one group. A batch is a mix of several groups (`hard_batch_order`): a
  batch of one neighbourhood collapses training (issue 5's probe).
"""

from __future__ import annotations

import numpy as np


def rank_window(neighbours: np.ndarray, rank_start: int, rank_window: int) -> np.ndarray:
    """[N, m] the candidates at ranks [rank_start, rank_start + rank_window), -1 padded."""
    if rank_start < 0 or rank_window < 1:
        raise ValueError(
            f"need rank_start >= 0 and rank_window >= 1, got {rank_start}, {rank_window}"
        )
    out = np.full((len(neighbours), rank_window), -1, dtype=np.int64)
    part = neighbours[:, rank_start : rank_start + rank_window]
    out[:, : part.shape[1]] = part
    return out


def select_negatives(candidates: np.ndarray, suspected: np.ndarray, k: int) -> list[np.ndarray]:
    """Per anchor, the positions (columns of `candidates`) of the first k candidates that
    exist and are not suspected, in rank order."""
    if k < 1:
        raise ValueError(f"negatives must be at least 1, got {k}")
    keep = (candidates >= 0) & ~suspected
    return [np.flatnonzero(row)[:k] for row in keep]


def hard_batch_groups(neighbours: np.ndarray, group_size: int, seed: int) -> list[list[int]]:
    """Neighbourhood groups covering every row exactly once (see module docstring).

    Anchors whose neighbours are all taken start short groups; short groups are pooled at
    the end and cut into full ones, so every group but possibly the last has group_size items.
    """
    n = len(neighbours)
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    taken = np.zeros(n, dtype=bool)
    full: list[list[int]] = []
    leftover: list[int] = []
    for a in np.random.default_rng((seed, 23)).permutation(n).tolist():
        if taken[a]:
            continue
        group = [a]
        taken[a] = True
        for b in neighbours[a].tolist():
            if len(group) == group_size:
                break
            if b >= 0 and not taken[b]:
                group.append(b)
                taken[b] = True
        if len(group) == group_size:
            full.append(group)
        else:
            leftover.extend(group)
    full.extend(leftover[s : s + group_size] for s in range(0, len(leftover), group_size))
    return full


def hard_batch_order(groups: list[list[int]], seed: int, epoch: int) -> np.ndarray:
    """The item order of an epoch: groups in a seeded order, each kept contiguous, so a batch
    of B consecutive items holds about B / group_size neighbourhoods. A permutation of all
    items, different each epoch."""
    order = np.random.default_rng((seed, 29, epoch)).permutation(len(groups))
    return np.array([i for g in order.tolist() for i in groups[g]], dtype=np.int64)
