"""`cluster`: items that share their nearest k-means centres are suspected matches.

MLCD-style (An et al., ECCV 2024: multi-label cluster discrimination): k-means centres over
the mined index; each item carries the ids of its K nearest centres in
`LossBatch.cluster_ids` ((B,) for K = 1, or (B, K)). The score of (a, k) is the fraction of
a's K centres that k shares (0/1 for K = 1), the same in both directions.

With `LossBatch.caption_cells` (mining's ``cluster_text_neighbours`` M > 0) a caption also
suspects every image in a cell that holds the image of one of its M nearest captions: the
training pairs say what such captions describe (FFF's text-text + image-image positives, read
through the pairs). The pair (caption c, image i) then scores 1 when i's nearest cell is one
of c's cells, in both directions (image row a, caption column k: a's cell among k's cells),
or the shared-centre fraction above when that is higher. M = 0 is the rule above.
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
        cells = x.batch.caption_cells
        if cells is None:
            return score, score
        cells = cells.to(ids.device)
        cell = ids[:, 0]  # (C,) each image's nearest cell
        # t2i: caption row a, image column k; i2t: image row a, caption column k.
        t2i = (cells[x.rows, None, :] == cell[None, :, None]).any(-1)  # (R, C)
        i2t = (cells[None, :, :] == cell[x.rows, None, None]).any(-1)  # (R, C)
        dtype = x.cos_i2t.dtype
        return torch.maximum(score, i2t.to(dtype)), torch.maximum(score, t2i.to(dtype))
