"""Which items form each training batch, epoch by epoch (`sampling.mode`).

- `RandomBatches` ("random"): a seeded shuffle per epoch, as open_clip trains.
- `HardBatches` ("hard_batches", GRIT-VLP / B3): neighbourhood groups from the batch plan,
  kept contiguous in a seeded group order, so a batch mixes B / group_size neighbourhoods.
- `MinedNegativeBatches` ("mined_negatives", B3 / FlagEmbedding negatives): each batch holds
  B // (1 + k) anchors followed by their mined negatives (as whole image-caption pairs),
  topped up with seeded random items.

Every sampler is a pure function of (seed, epoch): `epoch(e)` returns the same batches each
time, which is how a resumed run skips the batches it already trained on. An epoch is
`steps_per_epoch` full batches of item rows; each epoch of `RandomBatches` and `HardBatches`
uses every item at most once (all of them when the batch size divides N).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from clipserve.training.mining.plan import hard_batch_order

MODES = ("random", "hard_batches", "mined_negatives")


class BatchSampler(Protocol):
    steps_per_epoch: int

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches: `steps_per_epoch` int64 arrays of item rows."""
        ...


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffle of epoch `epoch`: a pure function of (seed, epoch), so resume can skip."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _chunks(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    steps = len(order) // batch_size
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


class RandomBatches:
    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size

    def epoch(self, epoch: int) -> list[np.ndarray]:
        perm = epoch_permutation(self.seed, epoch, self.n).numpy()
        return _chunks(perm, self.batch_size)


class HardBatches:
    def __init__(self, groups: Sequence[Sequence[int]], batch_size: int, seed: int) -> None:
        self.groups = [list(g) for g in groups]
        self.n = sum(len(g) for g in self.groups)
        self.batch_size, self.seed = batch_size, seed
        self.steps_per_epoch = self.n // batch_size

    def epoch(self, epoch: int) -> list[np.ndarray]:
        return _chunks(hard_batch_order(self.groups, self.seed, epoch), self.batch_size)


class MinedNegativeBatches:
    def __init__(self, negatives: Sequence[np.ndarray], batch_size: int, seed: int) -> None:
        self.negatives = [np.asarray(x, dtype=np.int64) for x in negatives]
        self.n = len(self.negatives)
        k = max((len(x) for x in self.negatives), default=0)
        if batch_size < 1 + k:
            raise ValueError(
                f"data.batch_size {batch_size} cannot hold an anchor and its {k} negatives"
            )
        self.batch_size, self.seed = batch_size, seed
        self.anchors_per_batch = batch_size // (1 + k)
        self.steps_per_epoch = self.n // self.anchors_per_batch

    def epoch(self, epoch: int) -> list[np.ndarray]:
        order = epoch_permutation(self.seed, epoch, self.n).numpy()
        fill = np.random.default_rng((self.seed, 31, epoch))
        out = []
        for s in range(self.steps_per_epoch):
            anchors = order[s * self.anchors_per_batch : (s + 1) * self.anchors_per_batch]
            items: dict[int, None] = {}  # insertion-ordered set
            for a in anchors.tolist():
                items[a] = None
                for b in self.negatives[a].tolist():
                    items.setdefault(b, None)
            need = self.batch_size - len(items)
            if need > 0:  # top up with random items not in the batch yet
                pool = np.setdiff1d(np.arange(self.n), np.fromiter(items, np.int64))
                items.update(dict.fromkeys(fill.choice(pool, need, replace=False).tolist()))
            out.append(np.fromiter(items, np.int64)[: self.batch_size])
        return out
