"""Optimizer, learning-rate schedule and the optimizer step of `clipserve train`.

- AdamW without weight decay on biases, gains, embeddings and logit_scale (open_clip's split),
  fused (one kernel for all parameters) on CPU and CUDA: on the 2-core CPU the per-tensor
  loop took 60 ms of a 0.37 s step of clipserve-tiny-p16 at batch 128, the fused one 17 ms.
- Per-step linear warm-up then cosine decay to 0 (open_clip's ``cosine_lr``).
- One optimizer step: backward (through a GradScaler under fp16), optional gradient-norm
  clipping, step; then logit_scale clamped to [0, ln 100], as open_clip's train loop does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from clipserve.training.config import OptimConfig

LOGIT_SCALE_MAX = math.log(100)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's split: no decay on 1-d params (biases, LayerNorm gains), embeddings and
    logit_scale/bias; decay on weight matrices."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "embedding" in name or "logit_" in name or name.endswith("bias")
        (no_decay if exclude else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def fused_supported(params: list[nn.Parameter]) -> bool:
    """True when torch's fused AdamW kernel takes these parameters (floating point, CPU or
    CUDA); the same update as the per-tensor loop, to float rounding."""
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        fused=fused_supported(params) or None,
    )


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up to base_lr over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base_lr


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def optimizer_step(
    model: Any,
    opt: torch.optim.Optimizer,
    loss: torch.Tensor,
    scaler: torch.amp.GradScaler | None,
    grad_clip_norm: float,
) -> None:
    """Backward `loss` and step `opt` (clipping gradients when grad_clip_norm > 0), then clamp
    the model's logit_scale."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip_norm:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        if grad_clip_norm:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
