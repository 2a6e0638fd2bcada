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
    for last in ("transformer.resblocks.1", "visual.transformer.resblocks.1"):
        grad = grads[names.index(f"{last}.attn.in_proj_weight")]
        width = grad.shape[1]
        assert grad[:width].abs().sum() > 0 and grad[width:].abs().sum() > 0  # query, key/value


def test_training_forward_runs_unsupported_text_towers_as_they_are() -> None:
    model = _model()
    model.text_pool_type = "last"  # not argmax pooling: the towers cannot trim or pool it
    fast = TrainingForward(model)
    assert fast.text is None
    pixels, ids = _batch(model, 4)
    assert fast.host_trim(ids) is ids  # its captions keep their full context
    with torch.no_grad():
        torch.testing.assert_close(
            fast(image=pixels, text=ids)["text_features"],
            model(image=pixels, text=ids)["text_features"],
        )


def test_host_trim_is_the_forwards_own_trim() -> None:
    model = _model()
    fast = TrainingForward(model)
    pixels, ids = _batch(model)
    trimmed = fast.host_trim(ids)
    assert torch.equal(trimmed, trim_to_eot(ids)) and trimmed.shape[1] < ids.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(
            fast(image=pixels, text=trimmed)["text_features"],
            model(image=pixels, text=ids)["text_features"],
            atol=2e-6,
            rtol=0,
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_forward_on_cuda_does_not_sync_the_host() -> None:
    model = _model().cuda()
    fast = TrainingForward(model)
    pixels, ids = _batch(model)
    ref = model(image=pixels.cuda(), text=ids.cuda())["text_features"]
    text = fast.host_trim(ids).cuda()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the forward raises
    try:
        out = fast(image=pixels.cuda(), text=text)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out["text_features"], ref, atol=1e-4, rtol=0)


def test_bench_train_step_runs_both_ways() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "bench" / "bench_train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ref, ours, length = bench.bench("clipserve-micro", batch=8, reps=1)
    assert ref > 0 and ours > 0
    assert 4 < length < 32  # the synthetic captions use only part of the context


def test_training_forward_tracks_open_clip_over_many_steps_in_float64() -> None:
    """Training through either forward is the same computation: in float64 the weights stay
    equal to 1e-9 after 40 AdamW steps. (In float32 rounding differences grow through
    training until runs part: 0.05 apart after 150 steps, docs/benchmarks.md.)"""

    def train(fast: bool) -> torch.nn.Module:
        model = _model().double()
        pixels, ids = _batch(model, 16)
        pixels = pixels.double()
        forward = TrainingForward(model) if fast else model
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        loss_fn = open_clip.ClipLoss()
        g = torch.Generator().manual_seed(0)
        for _ in range(40):
            rows = torch.randperm(16, generator=g)[:8]
            loss = loss_fn(**forward(image=pixels[rows], text=ids[rows]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    ref, fast = train(False), train(True)
    for (name, a), b in zip(ref.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
