"""The contrastive loss family: InfoNCE and SigLIP with false-negative filtering.

Interface (what the train loop relies on):

- ``build_loss(config: LossConfig, rank=0, world_size=1) -> ContrastiveLoss``; `LossConfig`
  is the ``[loss]`` section of a training config (defaults = plain open_clip.ClipLoss).
- Call it as open_clip's losses, plus optional side inputs:
  ``loss(**model_out, output_dict=True, batch=LossBatch(step=..., labels=..., ...))`` ->
  ``{"contrastive_loss": tensor}``. `LossBatch` documents every side input; each rank passes
  its own items, the loss gathers them.
- ``loss.last_stats``: floats for logging (mask rate, FN precision/recall/F1 when the batch
  has labels, masked positives, which must be 0). Never part of the returned loss.
- Pure helpers: `fn_detection_counts` / `fn_detection_metrics` (FN precision/recall/F1 of a
  mask vs labels), `keys.caption_key` / `keys.dhash` (keys for the `duplicate` estimator).

Modules: `config` (LossConfig), `batch` (LossBatch), `gather` (all-gather with gradient),
`estimators/` (one module per FN detector), `policy` (drop / downweight / positive),
`softmax`, `hardness` (HN-NCE, HCL/DCL), `sigmoid` (the forms' per-row terms),
`contrastive` (the module tying them together), `diagnostics`, `keys`.
"""

from __future__ import annotations

from clipserve.training.losses.batch import LossBatch
from clipserve.training.losses.config import ESTIMATORS, FORMS, HARDNESS, POLICIES, LossConfig
from clipserve.training.losses.contrastive import ContrastiveLoss
from clipserve.training.losses.diagnostics import (
    FNCounts,
    fn_detection_counts,
    fn_detection_metrics,
)


def build_loss(
    config: LossConfig | None = None, rank: int = 0, world_size: int = 1
) -> ContrastiveLoss:
    """The loss `config` describes (default: plain ClipLoss), for `rank` of `world_size`."""
    return ContrastiveLoss(config or LossConfig(), rank=rank, world_size=world_size)


__all__ = [
    "ESTIMATORS",
    "FORMS",
    "HARDNESS",
    "POLICIES",
    "ContrastiveLoss",
    "FNCounts",
    "LossBatch",
    "LossConfig",
    "build_loss",
    "fn_detection_counts",
    "fn_detection_metrics",
]
