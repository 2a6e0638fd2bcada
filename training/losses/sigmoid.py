"""Sigmoid (SigLIP) rows with several, possibly soft, positives per row.

SigLIP (Zhai et al., ICCV 2023): -sum_k log sigmoid(z_ak l_ak), z = +1 for positives and -1
otherwise, summed over the row; open_clip divides the total by the number of rows. With a
soft positive-ness t in [0, 1] and a pair weight v (0 drops the pair):

    loss_a = -sum_k v_ak [t_ak log sigmoid(l_ak) + (1 - t_ak) log sigmoid(-l_ak)]

which is SigLIP's z = 2t - 1 form when t is 0/1 and v = 1. Several positives only change t
(FFF, Bulat et al., CVPR 2024, trains with a sigmoid loss for exactly this reason).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_rows(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """(R, C) logits, targets t and weights v -> (R,) per-row sum."""
    pair = -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits))
    if weight is not None:
        pair = pair * weight
    return pair.sum(dim=1)
