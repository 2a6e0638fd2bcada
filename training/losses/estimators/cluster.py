"""`cluster`: items that share their nearest k-means centres are suspected matches.

MLCD-style (An et al., ECCV 2024: multi-label cluster discrimination): k-means centres over
the mined index; each item carries the ids of its K nearest centres in
`LossBatch.cluster_ids` ((B,) for K = 1, or (B, K)). The score of (a, k) is the fraction of
a's K centres that k shares (0/1 for K = 1), the same in both directions.
"""

from __future__ import annotations

import torch

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import EstimatorInput


class ClusterEstimator:
    def __init__(self, cfg: LossConfig) -> None:
        del cfg

    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        ids = x.batch.require("cluster_ids", "cluster").to(x.cos_i2t.device)
        if ids.ndim == 1:
            ids = ids[:, None]
        mine = ids[x.rows]  # (R, K)
        # shared[a, k] = #{centres of a that are among the centres of k}
        hits = (mine[:, None, :, None] == ids[None, :, None, :]).any(-1)  # (R, C, K)
        score = hits.to(x.cos_i2t.dtype).mean(-1)
        return score, score
