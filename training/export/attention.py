"""Export-time self-attention: the same function as ``nn.MultiheadAttention``, written so the
exported ONNX graph has three transposes per block instead of eight.

``nn.MultiheadAttention`` works in (L, N, E) internally, so with ``batch_first=True`` (open_clip's
default) its traced graph transposes the residual stream in and out of every block and splits
the packed q/k/v projection through gathers and further transposes. In ONNX Runtime those
Transposes cost ~8 % of the ViT-B-32 image tower in fp32 and ~20 % once int8 has sped up the
MatMuls (profiled, docs/benchmarks.md). `BatchFirstAttention` computes the packed projection on
(N, L, E) and moves q/k/v to (3, N, H, L, Dh) in one permute; the key's transpose for the
scores and the output's back to (N, L, E) are the other two.

`batch_first_attention(model)` swaps it in for every plain self-attention module of a model
for the duration of an export and puts the originals back after; modules it cannot express
(separate k/v dimensions, bias_k/bias_v, add_zero_attn, sequence-first) are left as they are.
The export's parity check against the untouched torch model covers the rewritten graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class BatchFirstAttention(nn.Module):
    """Self-attention with the weights of `mha` (shared, not copied); inference only."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not supported(mha):
            raise ValueError("only batch-first self-attention with packed q/k/v is supported")
        self.num_heads = mha.num_heads
        self.head_dim = mha.head_dim
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query:
            raise ValueError(
                "BatchFirstAttention is self-attention: query, key and value must match"
            )
        n, length, width = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [N, H, L, Dh] each
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # True = not allowed, as nn.MultiheadAttention
                attn_mask = torch.zeros_like(attn_mask, dtype=scores.dtype).masked_fill(
                    attn_mask, float("-inf")
                )
            scores = scores + attn_mask
        out = scores.softmax(dim=-1) @ v  # [N, H, L, Dh]
        out = out.transpose(1, 2).reshape(n, length, width)
        return self.out_proj(out), None


def supported(mha: nn.MultiheadAttention) -> bool:
    return bool(
        mha.batch_first
        and mha._qkv_same_embed_dim
        and mha.in_proj_weight is not None
        and mha.bias_k is None
        and mha.bias_v is None
        and not mha.add_zero_attn
    )


@contextmanager
def batch_first_attention(model: nn.Module) -> Iterator[int]:
    """Within the block, every supported ``nn.MultiheadAttention`` child of `model` is replaced
    by a `BatchFirstAttention` on the same weights; yields how many were replaced."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention) and supported(child):
                swapped.append((parent, name, child))
    try:
        for parent, name, child in swapped:
            setattr(parent, name, BatchFirstAttention(child))  # type: ignore[arg-type]
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
