"""Softmax (InfoNCE) rows with per-pair weights or soft targets, and EMCRL's push-down term.

Weighted InfoNCE core (ALGORITHMS.md §0), per row a with positive column p:

    loss_a = logsumexp_k(l_ak + log w_ak) - sum_k T_ak l_ak

w_ap = 1 (or HN-NCE's alpha), w_ak = 0 removes a pair (log 0 = -inf), T = one-hot(p) or the
row-normalised soft targets of the `positive` policy. With w = 1 and T = one-hot it is
ClipLoss's cross-entropy. A row whose negatives are all removed keeps its positive in the
logsumexp and stays finite (its loss is 0).
"""

from __future__ import annotations

import torch


def weighted_ce_rows(
    logits: torch.Tensor,  # (R, C)
    pos: torch.Tensor,  # (R, C) bool, one True per row
    log_weight: torch.Tensor | None = None,  # (R, C), -inf = removed; 0 = weight 1
    targets: torch.Tensor | None = None,  # (R, C) >= 0; None = one-hot(pos)
) -> torch.Tensor:
    """(R,) per-row loss -sum_k T_ak log_softmax(l + log w)_ak, written with the raw logits in
    the numerator: sum_k T_ak * logsumexp(l + log w) - sum_k T_ak l_ak."""
    den = logits if log_weight is None else logits + log_weight
    lse = torch.logsumexp(den, dim=1)
    # masked_select keeps row order: exactly one True per row.
    if targets is None:
        return lse - logits.masked_select(pos)
    return targets.sum(dim=1) * lse - (targets * logits).sum(dim=1)


def neg_bce_rows(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """EMCRL's M-step push-down, per row: -sum_k (1 - t_ak) log(1 - P_ak), P = softmax(l).

    (R,) per-row term; t = 1 (the positive, flipped or fully-suspected pairs) adds nothing.
    """
    p = torch.softmax(logits, dim=1)
    # Clamped so a pair with P ~ 1 and zero coefficient cannot make 0 * inf.
    log1m = torch.log1p(-p.clamp(max=1 - 1e-6))
    return -((1 - target) * log1m).sum(dim=1)
