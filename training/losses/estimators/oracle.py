"""`oracle`: the ground truth as an estimator (for measuring the others; never a default).

Reads `LossBatch.labels` (equal ids match) or `image_tags`/`text_tags` (caption k matches
image a iff text_tags[k] is a subset of image_tags[a]); see `truth_matrices`.
"""

from __future__ import annotations

import torch

from clipserve.training.losses.batch import LossBatch
from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import EstimatorInput, pairwise_equal


def truth_matrices(batch: LossBatch, rows: slice) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Ground-truth matches (image->text, text->image), each (R, C) bool, or None when the
    batch carries neither labels nor tags."""
    if batch.image_tags is not None and batch.text_tags is not None:
        img, txt = batch.image_tags.bool(), batch.text_tags.bool()
        # text k is a subset of image a  <=>  no attribute named by k is missing from a.
        missing = txt.float() @ (~img).float().T  # (C_text, C_image)
        ok = missing == 0
        return ok.T[rows], ok[rows]
    if batch.labels is not None:
        same = pairwise_equal(batch.labels, rows)
        return same, same
    return None


class OracleEstimator:
    def __init__(self, cfg: LossConfig) -> None:
        del cfg

    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        truth = truth_matrices(x.batch, x.rows)
        if truth is None:
            raise ValueError(
                "loss.estimator = 'oracle' needs LossBatch.labels or LossBatch.image_tags and "
                "text_tags, and this batch has neither."
            )
        return (
            truth[0].to(x.cos_i2t.device, x.cos_i2t.dtype),
            truth[1].to(x.cos_t2i.device, x.cos_t2i.dtype),
        )
