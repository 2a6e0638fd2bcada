"""Hard-negative emphasis in the batch: HN-NCE (DiHT) and HCL/DCL, in log space.

Both re-weight each row's negatives by h_ak = exp(beta_clip * l_ak), normalised to keep the
(weighted) mean weight at 1 over the row's kept negatives:

    log w'_ak = log w_ak + log h_ak + log N_a - logsumexp_k(log w_ak + log h_ak),
    N_a = sum_k w_ak  (w = the policy's weights; removed pairs stay removed).

HCL's beta multiplies sim / t with t = 0.5 (Robinson et al., ICLR 2021, "Contrastive
Learning with Hard Negative Samples"); CLIP's logits are s * sim with s up to 100, so the
config's beta (HCL units) becomes beta_clip = 2 * beta / s on the logits, i.e. the exponent
2 * beta * cos whatever the logit scale. The weights keep their gradient, as both reference
implementations do.

- HN-NCE (Radenovic et al., CVPR 2023, "Filtering, Distillation, and Hard Negatives for
  Vision-Language Pre-Training"): loss_a = log(alpha e^{l_ap} + sum_k w'_ak e^{l_ak}) - l_ap.
- HCL with DCL's debiasing (Chuang et al., NeurIPS 2020, "Debiased Contrastive Learning"):
  G_a = max((sum_k w'_ak e^{l_ak} - tau+ N_a e^{l_ap}) / (1 - tau+), N_a e^{-s + b}),
  loss_a = log(e^{l_ap} + G_a) - l_ap. tau+ = 0 and beta = 0 give InfoNCE.
"""

from __future__ import annotations

import math

import torch


def hard_log_weights(
    logits: torch.Tensor,  # (R, C)
    pos: torch.Tensor,  # (R, C) bool
    log_weight: torch.Tensor,  # (R, C) policy log-weights; 0 on the positive
    beta_clip: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log w' on the negatives with -inf on the positive, N_a (R,))."""
    neg_log_w = log_weight.masked_fill(pos, -math.inf)
    n_neg = neg_log_w.exp().sum(dim=1)  # (R,) N_a, no gradient (policy weights are constants)
    if isinstance(beta_clip, float) and beta_clip == 0:
        return neg_log_w, n_neg
    alive = (n_neg > 0).unsqueeze(1)
    # Rows with no negative left get a dummy finite row, so logsumexp's gradient stays finite.
    tilted = torch.where(alive, neg_log_w + beta_clip * logits, torch.zeros_like(logits))
    norm = torch.log(n_neg.clamp_min(1e-30)).unsqueeze(1) - torch.logsumexp(
        tilted, dim=1, keepdim=True
    )
    return torch.where(alive, tilted + norm, neg_log_w), n_neg


def hn_nce_rows(
    logits: torch.Tensor, pos: torch.Tensor, neg_log_w: torch.Tensor, alpha: float
) -> torch.Tensor:
    """(R,) HN-NCE per-row loss from the re-weighted negatives."""
    den = torch.where(pos, logits + math.log(alpha), logits + neg_log_w)
    return torch.logsumexp(den, dim=1) - logits.masked_select(pos)


def hcl_rows(
    logits: torch.Tensor,
    pos: torch.Tensor,
    neg_log_w: torch.Tensor,
    n_neg: torch.Tensor,
    tau_plus: float,
    min_logit: torch.Tensor | float,
) -> torch.Tensor:
    """(R,) HCL/DCL per-row loss; `min_logit` = -s (+ b), the logit of cosine -1."""
    l_pos = logits.masked_select(pos)  # (R,)
    alive = n_neg > 0
    safe = torch.where(alive.unsqueeze(1), logits + neg_log_w, torch.zeros_like(logits))
    a = torch.logsumexp(safe, dim=1)  # log sum_k w'_ak e^{l_ak}
    log_n = torch.log(n_neg.clamp_min(1e-30))
    floor = log_n + min_logit
    if tau_plus > 0:
        x = torch.exp(math.log(tau_plus) + log_n + l_pos - a)
        ok = x < 1
        x_safe = torch.where(ok, x, torch.zeros_like(x))
        debiased = a + torch.log1p(-x_safe) - math.log1p(-tau_plus)
        log_g = torch.where(ok, torch.maximum(debiased, floor), floor)
    else:
        log_g = torch.maximum(a, floor)
    row = torch.logaddexp(l_pos, log_g) - l_pos
    return torch.where(alive, row, torch.zeros_like(row))
