"""Export-time attention: BatchFirstAttention equals nn.MultiheadAttention, the swap is undone
after the export, and the exported towers carry the short graph."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from clipserve.training.export.attention import BatchFirstAttention, batch_first_attention


def _mha(**kw) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True, **kw).eval()
    with torch.no_grad():  # out_proj's bias starts at zero; make it count
        for p in mha.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return mha


def _causal(length: int) -> torch.Tensor:
    return torch.full((length, length), float("-inf")).triu(1)


@pytest.mark.parametrize("mask", ["none", "float", "bool"])
def test_matches_multihead_attention(mask: str) -> None:
    mha = _mha()
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(1))
    attn_mask = {"none": None, "float": _causal(7), "bool": _causal(7).isinf()}[mask]
    with torch.no_grad():
        ref, _ = mha(x, x, x, need_weights=False, attn_mask=attn_mask)
        got, weights = BatchFirstAttention(mha)(x, x, x, need_weights=False, attn_mask=attn_mask)
    assert weights is None
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="batch-first self-attention"):
        BatchFirstAttention(nn.MultiheadAttention(32, 4, batch_first=False))
    with pytest.raises(ValueError, match="batch-first self-attention"):
        BatchFirstAttention(_mha(kdim=16, vdim=16))
    with pytest.raises(ValueError, match="batch-first self-attention"):
        BatchFirstAttention(_mha(add_bias_kv=True))
    x, y = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    with pytest.raises(ValueError, match="must match"):
        BatchFirstAttention(_mha())(x, y, y)


def test_swap_is_scoped_and_skips_unsupported_modules() -> None:
    plain, seq_first = _mha(), nn.MultiheadAttention(32, 4, batch_first=False)
    model = nn.ModuleDict({"a": plain, "b": nn.Sequential(seq_first)})
    with batch_first_attention(model) as swapped:
        assert swapped == 1
        assert isinstance(model["a"], BatchFirstAttention)
        assert model["b"][0] is seq_first
    assert model["a"] is plain
    with pytest.raises(RuntimeError), batch_first_attention(model):
        raise RuntimeError("an export that fails still restores the model")
    assert model["a"] is plain


def test_exported_towers_use_the_short_attention_graph(tiny_bundle: Path) -> None:
    """Per transformer block: one permute of the packed q/k/v, the key's transpose and the
    output's, with no sequence-first round trip of the residual stream ((1, 0, 2) perms)."""
    for tower in ("image.onnx", "text.onnx"):
        graph = onnx.load(str(tiny_bundle / tower)).graph
        blocks = sum(n.op_type == "Softmax" for n in graph.node)
        perms = Counter(
            tuple(a.ints)
            for n in graph.node
            if n.op_type == "Transpose"
            for a in n.attribute
            if a.name == "perm"
        )
        assert blocks > 0 and perms[(2, 0, 3, 1, 4)] == blocks, (tower, perms)
        assert perms[(1, 0, 2)] == 0, (tower, perms)
        assert sum(perms.values()) <= 3 * blocks + 1, (tower, perms)
