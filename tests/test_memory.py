"""Bounded memory: reduced-size JPEG decoding stays within tolerance of open_clip's transform,
the pixel budget admits, waits and refuses as specified, and a real server subprocess under
a sustained adversarial load (bench/bench_memory.py, shortened) keeps its resident memory
under the stated bound and returns near its baseline."""

from __future__ import annotations

import asyncio
import importlib.util
import io
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.serving.bundle import load_manifest
from clipserve.serving.embedding.budget import PixelBudget
from clipserve.serving.embedding.preprocess import (
    decode_for_model,
    decode_image,
    open_image,
    plan_decode,
    preprocess_one,
)
from clipserve.serving.errors import InvalidInput, Overloaded

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_memory.py"
# Reduced decoding vs the full-size decode, in normalised units (one grey level ~ 0.015).
MEAN_TOL, MAX_TOL = 0.01, 0.2


def photo_like(w: int, h: int, fmt: str, seed: int = 0) -> bytes:
    """Smooth colour fields, hard-edged shapes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(10, w // 6))
        draw.ellipse((x, y, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    noisy = np.asarray(image).astype(np.int16) + rng.integers(-12, 12, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, fmt, quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("side", [64, 224])
@pytest.mark.parametrize("size", [(2400, 1600), (1601, 2399)])  # odd: partial blocks
def test_reduced_jpeg_decode_is_within_tolerance_of_the_full_decode(
    tiny_bundle: Path, side: int, size: tuple[int, int]
) -> None:
    manifest = replace(load_manifest(tiny_bundle), image_size=(side, side))
    data = photo_like(*size, "JPEG")
    full = preprocess_one(decode_image(data, max_bytes=1 << 30, max_pixels=1 << 30), manifest)
    image = open_image(data, max_bytes=1 << 30, max_pixels=1 << 30)
    plan = plan_decode(image, manifest.image_size)
    w, h = size
    assert plan.pixels <= (w / 2 + 1) * (h / 2 + 1)  # decoded at half size or smaller
    reduced = decode_for_model(data, manifest, max_bytes=1 << 30, max_pixels=1 << 30)
    diff = np.abs(reduced - full)
    assert diff.mean() <= MEAN_TOL and diff.max() <= MAX_TOL, (diff.mean(), diff.max())


def test_reduced_decode_embeds_like_the_full_decode_and_open_clip(tiny_bundle: Path) -> None:
    import open_clip
    import torch

    manifest = load_manifest(tiny_bundle)
    data = photo_like(2400, 1800, "JPEG", seed=3)
    _, _, transform = open_clip.create_model_and_transforms("clipserve-tiny")
    with torch.no_grad():
        reference = transform(Image.open(io.BytesIO(data))).numpy()
    reduced = decode_for_model(data, manifest, max_bytes=1 << 30, max_pixels=1 << 30)
    assert np.abs(reduced - reference).mean() <= MEAN_TOL
    backend = OnnxRuntimeBackend(tiny_bundle, manifest)
    try:
        a, b = backend.embed_images(np.stack([reduced, reference.astype(np.float32)]))
    finally:
        backend.close()
    assert float(a @ b) >= 0.999


def test_formats_the_decoder_cannot_scale_are_decoded_exactly(tiny_bundle: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    data = photo_like(900, 700, "PNG")
    full = preprocess_one(decode_image(data, max_bytes=1 << 30, max_pixels=1 << 30), manifest)
    np.testing.assert_array_equal(
        decode_for_model(data, manifest, max_bytes=1 << 30, max_pixels=1 << 30), full
    )


def test_pixel_budget_waits_grants_in_order_and_refuses_after_its_wait() -> None:
    async def scenario() -> None:
        changes: list[int] = []
        budget = PixelBudget(100, wait_s=0.2, on_change=changes.append)
        await budget.acquire(70)
        with pytest.raises(InvalidInput, match="budget is 100"):
            await budget.acquire(101)
        waiter = asyncio.ensure_future(budget.acquire(50))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        budget.release(70)
        await waiter
        assert budget.used == 50
        with pytest.raises(Overloaded, match="50 of 100 decoded pixels"):
            await budget.acquire(60)  # nobody releases within wait_s
        cancelled = asyncio.ensure_future(budget.acquire(60))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        budget.release(50)
        assert budget.used == 0 and changes[-1] == 0

    asyncio.run(scenario())


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_server_memory_is_bounded_under_adversarial_load(tiny_bundle: Path) -> None:
    bench = _bench()
    args = bench.argparse.Namespace(
        model="clipserve-tiny", bundle=str(tiny_bundle), max_pixels=6_000_000,
        inflight_pixels=15_000_000, batch=8, clients=4, seconds=8.0,
    )  # fmt: skip
    result = bench.run(args)
    mib = 1 << 20
    codes = result["codes"]
    assert codes.get("OK", 0) >= 1, result
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, result  # no INTERNAL
    assert result["peak_mib"] <= result["bound_mib"], result
    # Near baseline afterwards: freed decode buffers went back to the OS.
    assert result["after_mib"] <= result["baseline_mib"] + 64, result
    assert result["next_request_ok"], result
    # The budget, not the load, sets the peak: 4 clients x 8 images x 6 MP would be
    # 192 MP = 576 MiB decoded at once without it.
    assert (result["peak_mib"] - result["baseline_mib"]) * mib < 576 * mib, result
