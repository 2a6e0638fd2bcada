"""Serving preprocessing against open_clip's preprocess_val, and image decoding errors."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from clipserve.serving.bundle import load_manifest
from clipserve.serving.embedding.preprocess import decode_image, preprocess
from clipserve.serving.errors import InvalidInput

MAX_DIFF = 1e-5


def _image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    # Smooth gradients plus noise: resampling differences would show on both.
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w, 1), yy * 255 / max(h, 1), (xx + yy) % 256], -1)
    rgb = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
        return Image.merge("RGBA", (*image.split(), Image.fromarray(alpha, "L")))
    if mode == "P":
        return image.quantize(64)
    return image.convert(mode)


def _transform(manifest, interpolation: str):
    _, _, val = open_clip.create_model_and_transforms("clipserve-tiny")
    if interpolation == "bicubic":
        return val
    return open_clip.image_transform(
        manifest.image_size, is_train=False, mean=manifest.mean, std=manifest.std,
        interpolation=interpolation, resize_mode="shortest",
    )  # fmt: skip


CASES = [
    ("RGB", (64, 64)),
    ("RGB", (640, 480)),
    ("RGB", (480, 640)),
    ("RGB", (333, 97)),
    ("RGB", (65, 1000)),
    ("RGB", (31, 17)),  # upscaled
    ("RGB", (1, 1)),
    ("RGBA", (200, 150)),
    ("L", (120, 90)),
    ("P", (90, 120)),
    ("CMYK", (100, 77)),
    ("LA", (81, 80)),
    ("1", (70, 70)),
    ("I;16", (50, 90)),
]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_matches_open_clip_preprocess_val(tiny_bundle: Path, interpolation: str) -> None:
    manifest = replace(load_manifest(tiny_bundle), interpolation=interpolation)
    reference = _transform(manifest, interpolation)
    images = [_image(mode, size, seed) for seed, (mode, size) in enumerate(CASES)]
    ours = preprocess(images, manifest)
    assert ours.dtype == np.float32 and ours.shape == (len(CASES), 3, 64, 64)
    for i, (image, case) in enumerate(zip(images, CASES, strict=True)):
        want = reference(image).numpy()
        diff = float(np.abs(ours[i] - want).max())
        assert diff <= MAX_DIFF, f"{case}: max abs diff {diff}"


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def test_decode_roundtrip_png_jpeg() -> None:
    image = _image("RGB", (40, 30))
    decoded = decode_image(_encode(image, "PNG"), max_bytes=1 << 20, max_pixels=10_000)
    assert decoded.size == (40, 30)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))
    assert decode_image(_encode(image, "JPEG"), max_bytes=1 << 20, max_pixels=10_000).size == (
        40,
        30,
    )


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (b"", {}, "empty"),
        (b"definitely not an image", {}, "not a recognised image"),
        (b"x" * 101, {"max_bytes": 100}, "over the limit of 100 bytes"),
    ],
)
def test_decode_rejects_bad_bytes(data: bytes, kwargs: dict, message: str) -> None:
    limits = {"max_bytes": 1 << 20, "max_pixels": 1 << 20, **kwargs}
    with pytest.raises(InvalidInput, match=message):
        decode_image(data, **limits)


def test_decode_rejects_truncated_image() -> None:
    data = _encode(_image("RGB", (200, 200)), "PNG")
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(data[: len(data) // 2], max_bytes=1 << 20, max_pixels=1 << 20)


def test_decode_rejects_too_many_pixels_before_decoding() -> None:
    data = _encode(Image.new("L", (2000, 1000)), "PNG")  # compresses to a few KB
    assert len(data) < 20_000
    with pytest.raises(InvalidInput, match="2000x1000 = 2000000 pixels, over the limit"):
        decode_image(data, max_bytes=1 << 20, max_pixels=1_000_000)


def test_decode_rejects_pil_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    """PIL's own bomb check (2x its global limit) is reported as InvalidInput too."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = _encode(Image.new("L", (100, 100)), "PNG")
    with pytest.raises(InvalidInput, match="decompression bomb"):
        decode_image(data, max_bytes=1 << 20, max_pixels=1 << 30)
