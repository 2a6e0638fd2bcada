"""The export's last block at the pooled token only: same features as the full forward."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipserve.training.export.attention import batch_first_attention
from clipserve.training.export.pooled import (
    pooled_image_features,
    transformer_supported,
    vision_supported,
)
from clipserve.training.model import ModelSpec, create_model
from clipserve.training.towers import ImageTower, TextTower


@pytest.fixture(scope="module", params=["clipserve-tiny", "ViT-B-32"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    if request.param == "ViT-B-32":  # open_clip's own config, random weights (no download)
        return open_clip.create_model("ViT-B-32", pretrained=None).eval()
    return create_model(ModelSpec(request.param)).model.eval()


def _pixels(model: torch.nn.Module, n: int) -> torch.Tensor:
    size = model.visual.image_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(n))


@torch.no_grad()
@pytest.mark.parametrize("swapped", [False, True], ids=["mha", "batch-first"])
def test_image_tower_equals_encode_image(model: torch.nn.Module, swapped: bool) -> None:
    assert vision_supported(model.visual)
    pixels = _pixels(model, 3)
    ref = F.normalize(model.encode_image(pixels), dim=-1)
    tower = ImageTower(model)
    assert tower.pooled
    if swapped:  # the export runs inside batch_first_attention
        with batch_first_attention(model):
            got = tower(pixels)
    else:
        got = tower(pixels)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
    # Not only equal after normalisation: the raw pooled features too.
    torch.testing.assert_close(
        pooled_image_features(model.visual, tower.last, pixels),
        model.visual(pixels),
        atol=2e-5,
        rtol=1e-5,
    )


@torch.no_grad()
def test_text_tower_equals_encode_text(model: torch.nn.Module) -> None:
    tok = open_clip.get_tokenizer("ViT-B-32")
    texts = ["a red circle", "x", "a much longer caption about a small blue square", ""]
    ids = tok(texts, context_length=model.context_length)
    ref = F.normalize(model.encode_text(ids), dim=-1)
    tower = TextTower(model)
    assert tower.pooled and transformer_supported(tower.transformer)
    longest = int((ids != 0).sum(1).max())
    with batch_first_attention(model):
        full, trimmed = tower(ids), tower(ids[:, :longest])
    torch.testing.assert_close(full, ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(trimmed, ref, atol=2e-6, rtol=0)
    tower.pooled = False  # the full path gives the same embeddings
    torch.testing.assert_close(tower(ids), ref, atol=2e-6, rtol=0)


def test_other_towers_fall_back_to_the_full_forward() -> None:
    torch.manual_seed(0)
    model = create_model(ModelSpec("clipserve-tiny")).model.eval()
    model.visual.pool_type = "avg"  # mean over patch tokens: every position is used
    assert not vision_supported(model.visual) and not ImageTower(model).pooled
    pixels = _pixels(model, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            ImageTower(model)(pixels), F.normalize(model.encode_image(pixels), dim=-1)
        )
    model.transformer.resblocks[0].ln_1_kv = torch.nn.LayerNorm(8)  # a cross-attention block
    assert not transformer_supported(model.transformer)
