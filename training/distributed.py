"""Data-parallel training under ``torchrun``: the process group, sharding and the DDP wrapper.

``torchrun --nproc_per_node N -m clipserve.cli.main train --config ...`` starts N processes
with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set; this module is the one
place that reads them. Every rank builds the same data order (seeded) and takes its
contiguous shard of each global batch (data.batch_size is the global batch); the model is
wrapped in DistributedDataParallel (gradients averaged over ranks); the loss all-gathers
features (`clipserve.training.losses.gather`). Rank 0 alone writes checkpoints, metrics,
plots and runs evaluation. Without WORLD_SIZE > 1 everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module initialised the process group (and ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on
    CUDA, one GPU per local rank). Returns the context and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError("the process group does not match RANK / WORLD_SIZE")
    return DistContext(rank, world, local, owns), device


def launched_rank() -> int:
    """The rank torchrun gave this process (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (dim 0)."""
    if not ctx.enabled:
        return x
    n = x.shape[0]
    if n % ctx.world_size:
        raise ValueError(
            f"data.batch_size={n} (the global batch) must be a multiple of the "
            f"{ctx.world_size} ranks."
        )
    per = n // ctx.world_size
    return x[ctx.rank * per : (ctx.rank + 1) * per]


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> Any:
    """The module to call forward on: DDP around `model` when distributed, else `model`.
    Keep using `model` itself for parameters, logit_scale and state_dict."""
    if not ctx.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean_over_ranks(value: float, ctx: DistContext, device: torch.device) -> float:
    """The mean of a per-rank scalar (for logging the global loss)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / ctx.world_size
