"""`margin`: positive-aware thresholds on the model's own similarities.

Suspect candidate k of anchor a when sim(a, k) > thr(sim(a, a)), from the row's own positive:
- absolute: thr(p) = p - margin. NV-Retriever TopK-MarginPos (Moreira et al., 2024) and
  GISTEmbed's absolute mode; UniME's filter "drop if S_ak > S_aa + 0.1" (Gu et al., 2025)
  is margin = -0.1.
- relative: thr(p) = p - |p| * margin. NV-Retriever TopK-PercPos (95% -> margin 0.05), the
  current sentence-transformers `relative_margin`.
Scores are 0/1. The same thresholds serve the `guide` estimator on guide similarities.
"""

from __future__ import annotations

import torch

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import EstimatorInput


def positive_threshold(pos: torch.Tensor, mode: str, margin: float) -> torch.Tensor:
    """thr(p) for positives p (any shape): a candidate scoring above it is suspected."""
    return pos - margin if mode == "absolute" else pos - pos.abs() * margin


def threshold_mask(sim: torch.Tensor, row_offset: int, mode: str, margin: float) -> torch.Tensor:
    """(R, C) similarities -> (R, C) float 0/1: sim[a, k] > thr(sim[a, positive of a])."""
    rows = torch.arange(sim.shape[0], device=sim.device)
    pos = sim[rows, rows + row_offset].unsqueeze(1)  # (R, 1)
    return (sim > positive_threshold(pos, mode, margin)).to(sim.dtype)


class MarginEstimator:
    def __init__(self, cfg: LossConfig) -> None:
        self.mode, self.margin = cfg.margin_mode, cfg.margin

    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            threshold_mask(x.cos_i2t, x.row_offset, self.mode, self.margin),
            threshold_mask(x.cos_t2i, x.row_offset, self.mode, self.margin),
        )
