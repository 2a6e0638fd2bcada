"""Policies: what to do with a suspected false negative, given an estimator's FN scores.

Detection (an estimator) and the decision (a policy) are separate: any estimator's (R, C)
score matrix p in [0, 1] goes through one of

- ``drop``: weight 0 in the denominator when p >= loss.fn_threshold (GIST, UniME, NV-Retriever
  drop candidates this way);
- ``downweight``: weight 1 - p;
- ``positive``: a soft extra positive with target mass p; targets are row-normalised, as
  ALBEF/BLIP's image-id targets pos / pos.sum(1) (Li et al., 2021), so with only the true
  positive they are one-hot.

The true positive (column row_offset + r of row r) always keeps weight 1 and full target
mass, whatever the estimator says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PairPlan:
    """The per-pair decision for one direction; all (R, C), no gradient."""

    weight: torch.Tensor  # w_ak in [0, 1]; 1 on the positive column
    target: torch.Tensor  # t_ak in [0, 1], "positive-ness"; 1 on the positive column
    suspected: torch.Tensor  # bool, p >= threshold off the positive column

    def log_weight(self) -> torch.Tensor:
        return torch.log(self.weight)  # log 0 = -inf removes the pair

    def soft_targets(self) -> torch.Tensor:
        """Row-normalised targets for a soft cross-entropy."""
        return self.target / self.target.sum(dim=1, keepdim=True)


def positive_mask(rows: int, cols: int, row_offset: int, device: torch.device) -> torch.Tensor:
    """(R, C) bool: True at each row's true positive column."""
    idx = torch.arange(rows, device=device)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=device)
    mask[idx, idx + row_offset] = True
    return mask


@torch.no_grad()
def apply_policy(score: torch.Tensor, pos: torch.Tensor, policy: str, threshold: float) -> PairPlan:
    """FN scores (R, C) and the positive mask (R, C) -> the pair plan of `policy`."""
    score = score.clamp(0, 1).masked_fill(pos, 0)
    suspected = (score >= threshold) & ~pos
    ones = torch.ones_like(score)
    eye = pos.to(score.dtype)
    if policy == "drop":
        return PairPlan(ones.masked_fill(suspected, 0), eye, suspected)
    if policy == "downweight":
        return PairPlan((1 - score).masked_fill(pos, 1), eye, suspected)
    if policy == "positive":
        return PairPlan(ones, torch.maximum(eye, score), suspected)
    raise ValueError(f"unknown loss.policy {policy!r}")
