"""`guide`: a frozen guide model decides (GISTEmbed, Solatorio 2024).

The guide's own image/text features come in `LossBatch.guide_image_features` /
`guide_text_features` (e.g. a frozen copy of the starting checkpoint, or a larger open_clip
model). Guide cosines g go through the `margin` thresholds. With `guide_anchor = "row"`
the image row uses the guide's image->text g, the text row its text->image g, each against
the row's own guide positive. With "text" each (caption, image) pair is decided once, on
the text->image g against the caption's guide positive, and the image->text rows apply the
same caption thresholds to the same caption-major products, so the two directions agree
about every pair; a row's own pair is never suspected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import EstimatorInput
from clipserve.training.losses.estimators.margin import positive_threshold, threshold_mask


class GuideEstimator:
    def __init__(self, cfg: LossConfig) -> None:
        self.mode, self.margin, self.anchor = cfg.margin_mode, cfg.margin, cfg.guide_anchor

    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        gi = F.normalize(x.batch.require("guide_image_features", "guide").float(), dim=-1)
        gt = F.normalize(x.batch.require("guide_text_features", "guide").float(), dim=-1)
        gi, gt = gi.to(x.cos_i2t.device), gt.to(x.cos_i2t.device)
        if self.anchor == "text":
            # Pair (caption c, image k) is suspected when g(c, k) > thr(g(c, c)), in both
            # directions: (R, C) blocks only, never the (C, C) matrix a large global batch
            # would make.
            thr = positive_threshold((gt * gi).sum(-1), self.mode, self.margin)  # (C,)
            t2i = gt[x.rows] @ gi.T > thr[x.rows, None]  # caption rows: their own threshold
            i2t = (gt @ gi[x.rows].T > thr[:, None]).T  # image rows: each column caption's
            # A row's own pair sits exactly at its threshold (margin 0): it is never suspected.
            own = torch.arange(t2i.shape[0], device=t2i.device)
            t2i[own, own + x.row_offset] = i2t[own, own + x.row_offset] = False
            return i2t.to(x.cos_i2t.dtype), t2i.to(x.cos_t2i.dtype)
        g_i2t = gi[x.rows] @ gt.T  # (R, C)
        g_t2i = gt[x.rows] @ gi.T
        return (
            threshold_mask(g_i2t, x.row_offset, self.mode, self.margin).to(x.cos_i2t.dtype),
            threshold_mask(g_t2i, x.row_offset, self.mode, self.margin).to(x.cos_t2i.dtype),
        )
