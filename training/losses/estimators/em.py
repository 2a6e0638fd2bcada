"""`em`: EMCRL's soft E-step with the random flip, adapted to CLIP.

EMCRL (Expectation-Maximization Contrastive Representation Learning), as its released code
does it (ALGORITHMS.md §1): Q = row-softmax(gamma * C) over the cosines C (no gradient),
read as the probability that candidate k shares anchor a's relation; plus flips
F ~ Bernoulli(rho) that turn a negative into a positive. Score = clip(Q + F, 0, 1).

Per CLIP direction C is the image->text (or text->image) cosine matrix. The flips of the whole
global batch (C x C per direction) are drawn from a CPU generator seeded by
(loss.em_seed, step) and this loss's rows are sliced out, so every rank and every
gradient-accumulation micro-step of one optimizer step sees the same flips, and a distributed
run equals a single process. EMCRL's M-step push-down term is `loss.neg_bce_weight`; its
soft targets are `policy = "positive"`.
"""

from __future__ import annotations

import torch

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import EstimatorInput


def em_flips(seed: int, step: int, n: int, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The (n, n) bool flip matrices (image->text, text->image) of optimizer step `step`."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.rand(n, n, generator=g) < prob, torch.rand(n, n, generator=g) < prob


class EMEstimator:
    def __init__(self, cfg: LossConfig) -> None:
        self.gamma, self.prob, self.seed = cfg.em_gamma, cfg.em_flip_prob, cfg.em_seed

    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        flips = em_flips(self.seed, x.step, x.cos_i2t.shape[1], self.prob) if self.prob else None
        for d, cos in enumerate((x.cos_i2t, x.cos_t2i)):
            q = torch.softmax(self.gamma * cos, dim=1)
            if flips is not None:
                q = q + flips[d][x.rows].to(q.device, q.dtype)
            out.append(q.clamp(0, 1))
        return out[0], out[1]
