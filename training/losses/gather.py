"""All-gather of features across ranks, with or without a gradient path (open_clip semantics).

`gather_features` returns (all_x, all_y), the global batch in rank order, for the four
combinations of ``local_loss`` x ``gather_with_grad``. What each gives after DDP averages the
parameter gradients over W ranks (tested in tests/test_distributed.py):

- gather_with_grad: the gather's backward sums every rank's gradient into the owner, so the
  gradient equals a single process on the global batch, with local_loss or without.
- not gather_with_grad, not local_loss: other ranks' features are constants and the local
  slice is re-inserted with a gradient scaled by W (value unchanged), so the parameter
  gradient again equals a single process. open_clip re-inserts it unscaled, which gives 1/W
  of that gradient.
- not gather_with_grad, local_loss: each rank differentiates only its own rows' loss with the
  other ranks' features held constant; an approximation (the cross-rank terms are missing), as
  in open_clip. Prefer gather_with_grad with local_loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all_gather along dim 0. Backward: sum the gradients of all ranks and keep this
    rank's slice (an all_reduce, so it also runs on gloo, which lacks reduce_scatter)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each rank -> (world * n, ...) in rank order, differentiable."""
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each rank -> (world * n, ...) in rank order, no gradient (side inputs)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x in value, factor * (its gradient) in backward."""
    return x.detach() + factor * (x - x.detach()) if factor != 1 else x


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    *,
    local_loss: bool,
    gather_with_grad: bool,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B_l, D) x 2 per rank -> (B_g, D) x 2, B_g = world_size * B_l, in rank order."""
    if world_size == 1:
        return image_features, text_features
    if gather_with_grad:
        return all_gather_with_grad(image_features), all_gather_with_grad(text_features)
    out = []
    for local in (image_features, text_features):
        parts = list(all_gather_nograd(local).chunk(world_size, dim=0))
        # The local slice carries the gradient; scaled so DDP's mean over ranks gives the
        # single-process gradient (every rank computes the same full loss here).
        parts[rank] = local if local_loss else _scale_grad(local, float(world_size))
        out.append(torch.cat(parts, dim=0))
    return out[0], out[1]
