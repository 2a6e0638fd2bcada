"""`ContrastiveLoss`: the loss module `build_loss` returns, a drop-in for open_clip's losses.

Called like open_clip's ClipLoss / SigLipLoss, plus the optional side inputs:

    loss(image_features, text_features, logit_scale, logit_bias=None, output_dict=False,
         batch: LossBatch | None = None)

Steps: gather the features across ranks (`gather`), logits of this loss's rows against all
columns, an estimator's FN scores (`estimators`, no gradient), the policy's weights/targets
(`policy`), then the form's rows (`softmax`, `hardness` or `sigmoid`). With every option off
(`LossConfig.is_plain`) it runs open_clip's exact expressions instead, so the loss and its
gradients equal open_clip's bit for bit on one process.

Layouts (B_l local items, B_g = world_size * B_l):
- clip: image->text and text->image rows, both (R, B_g) with R = B_l under local_loss
  (rows offset by rank * B_l) or R = B_g otherwise; loss = (mean_i2t + mean_t2i) / 2.
- siglip: local image rows against all texts, (B_l, B_g), summed over the row and divided by
  B_l, as open_clip.SigLipLoss (whose exchange of text features equals this gather).

Diagnostics go to ``self.last_stats`` (a dict of floats), never into the returned loss.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipserve.training.losses.batch import LossBatch
from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.diagnostics import fn_detection_counts
from clipserve.training.losses.estimators import EstimatorInput, build_estimator, truth_matrices
from clipserve.training.losses.gather import all_gather_nograd, gather_features
from clipserve.training.losses.hardness import hard_log_weights, hcl_rows, hn_nce_rows
from clipserve.training.losses.policy import PairPlan, apply_policy, positive_mask
from clipserve.training.losses.sigmoid import sigmoid_rows
from clipserve.training.losses.softmax import neg_bce_rows, weighted_ce_rows


def _gather_batch(batch: LossBatch, world_size: int) -> LossBatch:
    if world_size == 1:
        return batch
    gathered: dict[str, Any] = {k: all_gather_nograd(v) for k, v in batch.tensors().items()}
    return LossBatch(step=batch.step, **gathered)


class ContrastiveLoss(nn.Module):
    def __init__(self, config: LossConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} / world_size {world_size} is not a valid layout.")
        self.config, self.rank, self.world_size = config, rank, world_size
        self.estimator = build_estimator(config)
        self.calls = 0
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ open_clip's exact path

    def _plain_clip(self, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, b: Any) -> Any:
        cfg = self.config
        if self.world_size > 1:
            ax, ay = gather_features(
                x,
                y,
                local_loss=cfg.local_loss,
                gather_with_grad=cfg.gather_with_grad,
                rank=self.rank,
                world_size=self.world_size,
            )
            if cfg.local_loss:
                li, lt = s * x @ ay.T, s * y @ ax.T
            else:
                li = s * ax @ ay.T
                lt = li.T
        else:
            li, lt = s * x @ y.T, s * y @ x.T
        if b is not None:
            li, lt = li + b, lt + b
        labels = torch.arange(li.shape[0], device=x.device, dtype=torch.long)
        if self.world_size > 1 and cfg.local_loss:
            labels = labels + li.shape[0] * self.rank
        return (F.cross_entropy(li, labels) + F.cross_entropy(lt, labels)) / 2

    def _plain_siglip(self, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, b: Any) -> Any:
        if self.world_size > 1:
            _, y = gather_features(
                x,
                y,
                local_loss=True,
                gather_with_grad=self.config.gather_with_grad,
                rank=self.rank,
                world_size=self.world_size,
            )
        logits = s * x @ y.T
        if b is not None:
            logits = logits + b
        n = x.shape[0]
        labels = -torch.ones_like(logits)
        labels[torch.arange(n), torch.arange(n) + self.rank * n] = 1
        return -F.logsigmoid(labels * logits).sum() / n

    # ------------------------------------------------------------------ general path

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        output_dict: bool = False,
        batch: LossBatch | None = None,
    ) -> Any:
        cfg = self.config
        step = batch.step if batch is not None and batch.step is not None else self.calls
        self.calls += 1
        if batch is not None:
            batch.check(image_features.shape[0])
        if cfg.is_plain:
            plain = self._plain_clip if cfg.name == "clip" else self._plain_siglip
            loss = plain(image_features, text_features, logit_scale, logit_bias)
            self.last_stats = self._truth_stats(image_features, batch)
            return {"contrastive_loss": loss} if output_dict else loss

        siglip = cfg.name == "siglip"
        local = cfg.local_loss or siglip or self.world_size == 1
        ax, ay = gather_features(
            image_features,
            text_features,
            local_loss=local,
            gather_with_grad=cfg.gather_with_grad,
            rank=self.rank,
            world_size=self.world_size,
        )
        if local:
            rx, ry, offset = image_features, text_features, self.rank * image_features.shape[0]
        else:
            rx, ry, offset = ax, ay, 0
        # (R, C) cosines; float32 at least, so the filters' arithmetic is exact under autocast.
        dt = torch.promote_types(rx.dtype, torch.float32)
        sim_i2t, sim_t2i = (rx @ ay.T).to(dt), (ry @ ax.T).to(dt)
        bias = 0.0 if logit_bias is None else logit_bias
        l_i2t, l_t2i = logit_scale * sim_i2t + bias, logit_scale * sim_t2i + bias
        rows, cols = l_i2t.shape
        pos = positive_mask(rows, cols, offset, l_i2t.device)

        gbatch = _gather_batch(batch or LossBatch(), self.world_size)
        plans = self._plans(sim_i2t, sim_t2i, pos, offset, gbatch, step)

        if siglip:
            plan = plans[0]
            if plan is None:
                loss = sigmoid_rows(l_i2t, pos.to(l_i2t.dtype)).sum() / rows
            else:
                loss = sigmoid_rows(l_i2t, plan.target, plan.weight).sum() / rows
        else:
            s_detached = logit_scale.detach()
            loss = 0.5 * sum(  # type: ignore[assignment]
                self._softmax_rows(lg, pos, plan, s_detached, bias).mean()
                for lg, plan in ((l_i2t, plans[0]), (l_t2i, plans[1]))
            )
        self.last_stats = self._stats(plans, pos, gbatch, offset, rows)
        return {"contrastive_loss": loss} if output_dict else loss

    def _plans(
        self,
        sim_i2t: torch.Tensor,
        sim_t2i: torch.Tensor,
        pos: torch.Tensor,
        offset: int,
        gbatch: LossBatch,
        step: int,
    ) -> tuple[PairPlan | None, PairPlan | None]:
        if self.estimator is None:
            return None, None
        with torch.no_grad():
            inp = EstimatorInput(sim_i2t.detach(), sim_t2i.detach(), offset, gbatch, step)
            s_i2t, s_t2i = self.estimator(inp)
            cfg = self.config
            return (
                apply_policy(s_i2t.to(sim_i2t.dtype), pos, cfg.policy, cfg.fn_threshold),
                apply_policy(s_t2i.to(sim_t2i.dtype), pos, cfg.policy, cfg.fn_threshold),
            )

    def _softmax_rows(
        self,
        logits: torch.Tensor,
        pos: torch.Tensor,
        plan: PairPlan | None,
        scale: torch.Tensor,
        bias: Any,
    ) -> torch.Tensor:
        cfg = self.config
        log_w = torch.zeros_like(logits) if plan is None else plan.log_weight()
        targets = None
        if plan is not None and cfg.policy == "positive":
            targets = plan.soft_targets() if cfg.normalize_targets else plan.target
        if cfg.hardness == "none":
            rows = weighted_ce_rows(logits, pos, None if plan is None else log_w, targets)
        else:
            # HCL's beta is on sim / 0.5; on CLIP logits s * sim that is 2 * beta / s.
            beta_clip = 0.0 if cfg.hard_beta == 0 else 2.0 * cfg.hard_beta / scale
            neg_log_w, n_neg = hard_log_weights(logits, pos, log_w, beta_clip)
            if cfg.hardness == "hn-nce":
                if targets is None:
                    rows = hn_nce_rows(logits, pos, neg_log_w, cfg.hard_alpha)
                else:
                    alpha = torch.full_like(logits, math.log(cfg.hard_alpha))
                    full = torch.where(pos, alpha, neg_log_w)
                    rows = weighted_ce_rows(logits, pos, full, targets)
            else:
                rows = hcl_rows(logits, pos, neg_log_w, n_neg, cfg.tau_plus, -scale + bias)
        if cfg.neg_bce_weight:
            target = pos.to(logits.dtype) if plan is None else plan.target
            if plan is not None and cfg.policy != "positive":
                # A dropped (or down-weighted) pair is not pushed down either (or less).
                target = torch.maximum(pos.to(logits.dtype), 1 - plan.weight)
            rows = rows + cfg.neg_bce_weight * neg_bce_rows(logits, target)
        return rows

    # ------------------------------------------------------------------ diagnostics

    @torch.no_grad()
    def _stats(
        self,
        plans: tuple[PairPlan | None, PairPlan | None],
        pos: torch.Tensor,
        gbatch: LossBatch,
        offset: int,
        rows: int,
    ) -> dict[str, float]:
        stats: dict[str, float] = {}
        directions = [p for p in plans if p is not None]
        if not directions:
            return self._truth_stats_global(gbatch, offset, rows, pos)
        n_off = max(int((~pos).sum()), 1)
        stats["fn_mask_rate"] = sum(float(p.suspected.sum()) for p in directions) / (
            n_off * len(directions)
        )
        stats["fn_mean_weight"] = sum(
            float(p.weight.masked_select(~pos).mean()) for p in directions
        ) / len(directions)
        stats["fn_masked_positives"] = float(
            sum(int(((p.weight < 1) | (p.target < 1)).masked_select(pos).sum()) for p in directions)
        )
        truth = truth_matrices(gbatch, slice(offset, offset + rows))
        if truth is not None:
            counts = [
                fn_detection_counts(p.suspected, t.to(pos.device), exclude=pos)
                for p, t in zip(directions, truth, strict=False)
            ]
            total = counts[0]
            for c in counts[1:]:
                total = total + c
            stats.update(total.as_dict())
            stats["fn_true_rate"] = float(total.tp + total.fn) / max(total.pairs, 1)
        return stats

    @torch.no_grad()
    def _truth_stats_global(
        self, gbatch: LossBatch, offset: int, rows: int, pos: torch.Tensor
    ) -> dict[str, float]:
        truth = truth_matrices(gbatch, slice(offset, offset + rows))
        if truth is None:
            return {}
        n_true = sum(int((t.to(pos.device) & ~pos).sum()) for t in truth)
        return {"fn_true_rate": n_true / max(int((~pos).sum()) * 2, 1)}

    def _truth_stats(self, x: torch.Tensor, batch: LossBatch | None) -> dict[str, float]:
        """Plain path: the rate of true false negatives in the batch, when labels say."""
        if batch is None or not batch.tensors():
            return {}
        gbatch = _gather_batch(batch, self.world_size)
        n = x.shape[0] * self.world_size
        pos = positive_mask(n, n, 0, x.device)
        return self._truth_stats_global(gbatch, 0, n, pos)
