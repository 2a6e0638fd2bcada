"""The training forward (`towers.TrainingForward`): open_clip's forward, loss and gradients,
computed with each text batch trimmed after its last EOT and the last blocks at the pooled
tokens."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.loss import SigLipLoss

from clipserve.training.model import ModelSpec, create_model
from clipserve.training.towers import TrainingForward, trim_to_eot

CAPTIONS = [
    "a red circle",
    "there is a large shape coloured red in the top left",
    "x",
    "in the bottom right of the picture, a small blue triangle",
]


def _model(name: str = "clipserve-micro") -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(ModelSpec(name)).model
    model.output_dict = True
    return model


def _batch(model: torch.nn.Module, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    tok = open_clip.get_tokenizer("ViT-B-32")
    ids = tok([CAPTIONS[i % len(CAPTIONS)] for i in range(n)], context_length=32)
    pixels = torch.randn(n, 3, *model.visual.image_size, generator=torch.Generator().manual_seed(1))
    return pixels, ids


def _loss_and_grads(forward, model, loss_fn, pixels, ids):  # type: ignore[no-untyped-def]
    out = forward(image=pixels, text=ids)
    loss = loss_fn(**out)
    params = [p for p in model.parameters() if p.requires_grad]
    return out, loss, torch.autograd.grad(loss, params)


def test_trim_to_eot_keeps_every_rows_eot() -> None:
    ids = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS, context_length=32)
    trimmed = trim_to_eot(ids)
    longest = int((ids != 0).sum(dim=1).max())
    assert trimmed.shape == (len(CAPTIONS), longest)
    assert torch.equal(trimmed.argmax(dim=-1), ids.argmax(dim=-1))
    assert torch.equal(ids[:, longest:], torch.zeros_like(ids[:, longest:]))  # only padding cut
    full = torch.arange(1, 33).repeat(2, 1)  # EOT (the largest id) at the last position
    assert trim_to_eot(full).shape == (2, 32)


@pytest.mark.parametrize("loss_name", ["clip", "siglip"], ids=["ClipLoss", "SigLipLoss+logit_bias"])
def test_training_forward_matches_open_clip(loss_name: str) -> None:
    if loss_name == "clip":
        model, loss_fn = _model(), open_clip.ClipLoss()
    else:
        model, loss_fn = _model(), SigLipLoss()
        model.logit_bias = torch.nn.Parameter(torch.full((1,), -10.0))  # as init_logit_bias
    pixels, ids = _batch(model)
    fast = TrainingForward(model)
    assert fast.image.pooled and fast.text is not None and fast.text.pooled
    ref_out, ref_loss, ref_grads = _loss_and_grads(model, model, loss_fn, pixels, ids)
    out, loss, grads = _loss_and_grads(fast, model, loss_fn, pixels, ids)
    assert out.keys() == ref_out.keys()
    for key in out:
        torch.testing.assert_close(out[key], ref_out[key], atol=2e-6, rtol=0)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-6)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, g, ref in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    # The last blocks' packed in-projections get their gradient through the sliced views.
    last = model.transformer.resblocks[-1].attn.in_proj_weight
    assert grads[names.index("transformer.resblocks.1.attn.in_proj_weight")].abs().sum() > 0
    assert last.shape[0] == 3 * last.shape[1]


def test_training_forward_runs_unsupported_text_towers_as_they_are() -> None:
    model = _model()
    model.text_pool_type = "last"  # not argmax pooling: the towers cannot trim or pool it
    fast = TrainingForward(model)
    assert fast.text is None
    pixels, ids = _batch(model, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            fast(image=pixels, text=ids)["text_features"],
            model(image=pixels, text=ids)["text_features"],
        )
