"""`TrainSampling`: what the train loop asks about sampling, in one object.

- `batches(epoch, model)`: the epoch's batches of item rows. With a non-random mode it first
  makes sure the mined data is current: read from `sampling.mined`, or mined with the
  model's current weights at epoch 0 (no `sampling.mined`) and every
  `sampling.remine_every_epochs` epochs, saved under ``output_dir/mined/epoch_NNNN`` so a
  resumed run reads what the interrupted one mined instead of mining again. Under torchrun
  every rank mines the same (same weights, deterministic), each with its own index
  directory; rank 0 writes the files.
- `loss_batch(rows, step)`: the loss's side inputs (`LossBatch`) for those rows.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipserve.training.config import TrainConfig
from clipserve.training.data.manifest import Record
from clipserve.training.evaluate import embed_tensors
from clipserve.training.losses import LossBatch
from clipserve.training.mining.mine import (
    MineConfig,
    Mined,
    config_summary,
    mine,
    read_mined,
    write_mined,
)
from clipserve.training.mining.options import MINE_OPTIONS
from clipserve.training.sampling.batches import (
    BatchSampler,
    HardBatches,
    MinedNegativeBatches,
    RandomBatches,
)
from clipserve.training.sampling.side_inputs import ItemTable


def mine_config(cfg: TrainConfig) -> MineConfig:
    options = {name: getattr(cfg.sampling, name) for name in MINE_OPTIONS}
    lexical = "lexical" in (cfg.loss.estimator, cfg.sampling.filter)
    return MineConfig(**options, lexical=lexical, seed=cfg.run.seed)


# Estimators that read mined side inputs (cluster ids, caption words): training mines for
# them even on random batches.
MINED_ESTIMATORS = ("cluster", "lexical")


def needs_mining(cfg: TrainConfig) -> bool:
    """Whether training needs mined data: a non-random mode, or an estimator's mined inputs."""
    return (
        cfg.sampling.mode != "random"
        or cfg.loss.estimator in MINED_ESTIMATORS
        or cfg.sampling.filter in MINED_ESTIMATORS
    )


class TrainSampling:
    def __init__(
        self,
        cfg: TrainConfig,
        records: Sequence[Record],
        table: ItemTable,
        cached: tuple[torch.Tensor, torch.Tensor] | None,
        device: torch.device,
        out_dir: Path,
        progress: bool = True,
        rank: int = 0,
    ) -> None:
        self.cfg, self.records, self.table, self.rank = cfg, records, table, rank
        self.cached, self.device, self.progress = cached, device, progress
        self.mined_root = out_dir / "mined"
        self.mined: Mined | None = None
        self.mined_epoch: int | None = None  # the epoch whose mining `self.mined` is
        self.sampler: BatchSampler = RandomBatches(len(records), cfg.data.batch_size, cfg.run.seed)
        if needs_mining(cfg) and cfg.sampling.mined:
            self._use(read_mined(cfg.sampling.mined, records), epoch=-1)
        self.steps_per_epoch = self._steps_per_epoch()
        if needs_mining(cfg) and not cfg.sampling.mined and cached is None:
            raise ValueError(
                "mining during training embeds the in-memory image cache; with "
                "data.augment = true (or a data set over data.cache_max_mib) run "
                "`clipserve mine` first and set sampling.mined"
            )

    def _steps_per_epoch(self) -> int:
        """Known before any mining: it depends on the mode and sizes only."""
        s, n, b = self.cfg.sampling, len(self.records), self.cfg.data.batch_size
        if s.mode == "mined_negatives":
            return n // max(1, b // (1 + s.negatives))
        return n // b

    def mining_epoch(self, epoch: int) -> int | None:
        """The epoch whose mining applies to `epoch` (-1: the sampling.mined files)."""
        if not needs_mining(self.cfg):
            return None
        every = self.cfg.sampling.remine_every_epochs
        last = (epoch // every) * every if every else 0
        if self.cfg.sampling.mined and last == 0:
            return -1
        return last

    def batches(self, epoch: int, model: Any) -> list[np.ndarray]:
        due = self.mining_epoch(epoch)
        if due is not None and due != self.mined_epoch:
            saved = self.mined_root / f"epoch_{due:04d}"
            if (saved / "mine.json").is_file():
                self._use(read_mined(saved, self.records), due)
            else:
                self._use(self._mine_now(model, saved), due)
        return self.sampler.epoch(epoch)

    def loss_batch(self, rows: torch.Tensor | np.ndarray, step: int) -> LossBatch:
        return self.table.batch(torch.as_tensor(rows), step)

    # ------------------------------------------------------------------ internals

    def _use(self, mined: Mined, epoch: int) -> None:
        self.mined, self.mined_epoch = mined, epoch
        if mined.cluster_ids is not None:
            self.table = self.table.replace(
                cluster_ids=mined.cluster_ids, caption_cells=mined.caption_cells
            )
        if mined.caption_words is not None:
            self.table = self.table.replace(
                caption_words=mined.caption_words, image_neighbours=mined.image_neighbours
            )
        mode, b, seed = self.cfg.sampling.mode, self.cfg.data.batch_size, self.cfg.run.seed
        if mode == "hard_batches":
            self.sampler = HardBatches(mined.groups, b, seed)
        elif mode == "mined_negatives":
            self.sampler = MinedNegativeBatches(mined.negatives, b, seed)
        if self.cfg.loss.estimator == "cluster" and self.table.cluster_ids is None:
            raise ValueError(
                "loss.estimator = 'cluster' needs k-means cluster ids: set sampling.clusters "
                "> 0 (or mine with --clusters)"
            )
        if self.cfg.loss.estimator == "lexical" and self.table.caption_words is None:
            raise ValueError(
                "loss.estimator = 'lexical' needs caption words, which sampling.mined lacks: "
                "mine with --lexical (or leave sampling.mined unset and training mines them)"
            )

    def _mine_now(self, model: Any, out: Path) -> Mined:
        assert self.cached is not None
        if self.rank == 0:
            print(f"clipserve train: mining with the current weights -> {out}", file=sys.stderr)
        text, image = embed_tensors(model, self.cached[0], self.cached[1], device=self.device)
        loss = self.cfg.loss
        filter_cfg = replace(loss, estimator=self.cfg.sampling.filter)
        mcfg = mine_config(self.cfg)
        index_dir = self.mined_root / f"index-rank{self.rank}"
        captions = [r.caption for r in self.records]
        mined, _ = mine(
            text, image, self.table, mcfg, filter_cfg, index_dir, self.progress, captions
        )
        if self.rank == 0:
            write_mined(out, self.records, mined, config_summary(mcfg, filter_cfg))
        return mined
