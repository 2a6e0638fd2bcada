"""Towers whose last transformer block computes only the token that is pooled (the ONNX
export, and through `clipserve.training.towers` the training step).

A CLIP tower keeps one token of its last block's output: the class token of a ViT (open_clip's
``pool_type = "tok"``), the EOT token of the text transformer (argmax pooling). Every other
position of that block is computed and thrown away. Here the last block runs its query,
attention output and MLP for the pooled token alone; the keys and values still cover the whole
sequence. The function is the same (``x + attn(ln_1(x))`` then ``+ mlp(ln_2(.))`` at that
token, with its causal-mask row for text); only the discarded work goes. For ViT-B-32 (50
tokens, 12 blocks) that is about 6.5 % of the image tower's multiply-adds, and about one
block in twelve of the text tower's.

`PooledBlock(block)` is that last block; `pooled_image_features` and `pooled_text_block` run
a tower with it when the tower is open_clip's plain one (`vision_supported`,
`transformer_supported`); `export.bundle` falls back to the full forward otherwise. The
export's parity check against the untouched torch model covers both.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipserve.training.export.attention import supported


def _plain_block(block: nn.Module) -> bool:
    attn = getattr(block, "attn", None)
    if not all(hasattr(block, name) for name in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")):
        return False
    if hasattr(block, "ln_1_kv") or attn is None:
        return False
    if isinstance(attn, nn.MultiheadAttention):
        return supported(attn)  # what BatchFirstAttention can express, this block can too
    # attention.BatchFirstAttention (swapped in for the export) has the same weights.
    return all(hasattr(attn, n) for n in ("in_proj_weight", "in_proj_bias", "out_proj"))


def transformer_supported(transformer: nn.Module) -> bool:
    """An open_clip `Transformer` of plain batch-first blocks (no custom attention)."""
    blocks = getattr(transformer, "resblocks", None)
    return (
        bool(getattr(transformer, "batch_first", False))
        and blocks is not None
        and len(blocks) > 0
        and all(_plain_block(b) for b in blocks)
    )


def vision_supported(visual: nn.Module) -> bool:
    """open_clip's `VisionTransformer` with class-token pooling and no attention pooler."""
    return (
        type(visual).__name__ == "VisionTransformer"
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", None) == "tok"
        and not getattr(visual, "output_tokens", False)
        and hasattr(visual, "_embeds")
        and transformer_supported(getattr(visual, "transformer", None))  # type: ignore[arg-type]
    )


class _InProjSlice(nn.Module):
    """Rows [start, stop) of an attention's packed in-projection, as a linear map that reads
    the attention's live weights (a view: gradients flow into `in_proj_weight`)."""

    def __init__(self, attn: Any, start: int, stop: int) -> None:
        super().__init__()
        self.attn, self.start, self.stop = attn, start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.attn.in_proj_bias
        return F.linear(
            x,
            self.attn.in_proj_weight[self.start : self.stop],
            None if bias is None else bias[self.start : self.stop],
        )


class PooledBlock(nn.Module):
    """`block` (an open_clip `ResidualAttentionBlock`) evaluated at one position per row: the
    query, attention output and MLP for that token, keys and values over the whole sequence.

    Shares the block's modules. For export (`share=False`) the packed in-projection is split
    into a query and a key/value `nn.Linear` (copies of the slices), so the exported graph
    holds them as plain weights (which int8 quantisation then sees like any other). For
    training (`share=True`) the query and key/value projections read slices of the block's
    own `in_proj_weight` at every call, so gradients reach the model's parameters."""

    def __init__(self, block: Any, share: bool = False) -> None:
        super().__init__()
        attn: Any = block.attn
        w, b = attn.in_proj_weight.detach(), attn.in_proj_bias
        width = w.shape[1]
        self.heads, self.head_dim = attn.num_heads, width // attn.num_heads
        self.q: nn.Module
        self.kv: nn.Module
        self.out_proj: nn.Module = attn.out_proj
        self.ln_1: nn.Module = block.ln_1
        self.ln_2: nn.Module = block.ln_2
        self.mlp: nn.Module = block.mlp
        self.ls_1: nn.Module = block.ls_1
        self.ls_2: nn.Module = block.ls_2
        if share:
            self.q, self.kv = _InProjSlice(attn, 0, width), _InProjSlice(attn, width, 3 * width)
            return
        like = {"device": w.device, "dtype": w.dtype}
        self.q = nn.Linear(width, width, bias=b is not None, **like)
        self.kv = nn.Linear(width, 2 * width, bias=b is not None, **like)
        with torch.no_grad():
            self.q.weight.copy_(w[:width])
            self.kv.weight.copy_(w[width:])
            if b is not None:
                self.q.bias.copy_(b.detach()[:width])
                self.kv.bias.copy_(b.detach()[width:])

    def forward(
        self, x: torch.Tensor, index: torch.Tensor | int, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x [N, L, W], index an int or [N] long, mask None or that position's row of the
        additive attention mask [N, L] -> the block's output at `index`, [N, W]."""
        n, length, width = x.shape
        y = self.ln_1(x)
        if isinstance(index, int):
            x_at, y_at = x[:, index], y[:, index]
        else:
            rows = torch.arange(n, device=x.device)
            x_at, y_at = x[rows, index], y[rows, index]
        q = self.q(y_at).reshape(n, self.heads, 1, self.head_dim)  # [N, H, 1, Dh]
        kv = self.kv(y).reshape(n, length, 2, self.heads, self.head_dim)
        kv = kv.permute(2, 0, 3, 1, 4)  # [2, N, H, L, Dh]
        scores = (q * self.head_dim**-0.5) @ kv[0].transpose(-2, -1)  # [N, H, 1, L]
        if mask is not None:
            scores = scores + mask[:, None, None, :]
        out = (scores.softmax(dim=-1) @ kv[1]).reshape(n, width)  # heads in order: [N, W]
        h = x_at + self.ls_1(self.out_proj(out))
        return h + self.ls_2(self.mlp(self.ln_2(h)))


def pooled_text_block(
    transformer: nn.Module,
    last: PooledBlock,
    x: torch.Tensor,
    attn_mask: torch.Tensor,
    eot: torch.Tensor,
) -> torch.Tensor:
    """open_clip's text `Transformer` on x [N, L, W] with the additive causal mask [L, L],
    returning only the EOT position's output [N, W] (eot: [N] long); `last` is
    PooledBlock(transformer.resblocks[-1])."""
    for block in transformer.resblocks[:-1]:  # type: ignore[index]
        x = block(x, attn_mask=attn_mask)
    return last(x, eot, attn_mask[eot])


def pooled_image_features(
    visual: nn.Module, last: PooledBlock, pixels: torch.Tensor
) -> torch.Tensor:
    """`visual(pixels)` for a `vision_supported` tower, with the last block at the class
    token only (`last` = PooledBlock(visual.transformer.resblocks[-1])): pixels
    [N, 3, H, W] -> image features [N, D] (not normalised)."""
    x = visual._embeds(pixels)  # type: ignore[operator]
    for block in visual.transformer.resblocks[:-1]:  # type: ignore[union-attr,index]
        x = block(x)
    pooled = visual.ln_post(last(x, 0, None))  # type: ignore[operator]
    proj = getattr(visual, "proj", None)
    return pooled @ proj if proj is not None else pooled
