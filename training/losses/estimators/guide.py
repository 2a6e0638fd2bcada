"""`guide`: a frozen guide model decides (GISTEmbed, Solatorio 2024).

The guide's own image/text features come in `LossBatch.guide_image_features` /
`guide_text_features` (e.g. a frozen copy of the starting checkpoint, or a larger open_clip
model). Guide cosines g go through the `margin` thresholds: the image row uses the guide's
image->text g, the text row its text->image g, each against the row's own guide positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import EstimatorInput
from clipserve.training.losses.estimators.margin import threshold_mask


class GuideEstimator:
    def __init__(self, cfg: LossConfig) -> None:
        self.mode, self.margin = cfg.margin_mode, cfg.margin

    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        gi = F.normalize(x.batch.require("guide_image_features", "guide").float(), dim=-1)
        gt = F.normalize(x.batch.require("guide_text_features", "guide").float(), dim=-1)
        gi, gt = gi.to(x.cos_i2t.device), gt.to(x.cos_i2t.device)
        g_i2t = gi[x.rows] @ gt.T  # (R, C)
        g_t2i = gt[x.rows] @ gi.T
        return (
            threshold_mask(g_i2t, x.row_offset, self.mode, self.margin).to(x.cos_i2t.dtype),
            threshold_mask(g_t2i, x.row_offset, self.mode, self.margin).to(x.cos_t2i.dtype),
        )
