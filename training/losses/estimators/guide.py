"""`guide`: a frozen guide model decides (GISTEmbed, Solatorio 2024).

The guide's own image/text features come in `LossBatch.guide_image_features` /
`guide_text_features` (e.g. a frozen copy of the starting checkpoint, or a larger open_clip
model). Guide cosines g go through the `margin` thresholds. With `guide_anchor = "row"`
the image row uses the guide's image->text g, the text row its text->image g, each against
the row's own guide positive. With "text" each (caption, image) pair is decided once, on
the text->image g against the caption's guide positive, and the image->text rows read the
same decisions transposed, so the two directions never disagree about one pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import EstimatorInput
from clipserve.training.losses.estimators.margin import threshold_mask


class GuideEstimator:
    def __init__(self, cfg: LossConfig) -> None:
        self.mode, self.margin, self.anchor = cfg.margin_mode, cfg.margin, cfg.guide_anchor

    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        gi = F.normalize(x.batch.require("guide_image_features", "guide").float(), dim=-1)
        gt = F.normalize(x.batch.require("guide_text_features", "guide").float(), dim=-1)
        gi, gt = gi.to(x.cos_i2t.device), gt.to(x.cos_i2t.device)
        if self.anchor == "text":
            # (C, C) decisions, caption rows x image columns; row r's positive is column r.
            pairs = threshold_mask(gt @ gi.T, 0, self.mode, self.margin)
            return (
                pairs.T[x.rows].to(x.cos_i2t.dtype),
                pairs[x.rows].to(x.cos_t2i.dtype),
            )
        g_i2t = gi[x.rows] @ gt.T  # (R, C)
        g_t2i = gt[x.rows] @ gi.T
        return (
            threshold_mask(g_i2t, x.row_offset, self.mode, self.margin).to(x.cos_i2t.dtype),
            threshold_mask(g_t2i, x.row_offset, self.mode, self.margin).to(x.cos_t2i.dtype),
        )
