"""Helpers shared by the index tests: small distinct PNGs and image folders; the real server
on port 0 is `helpers.BackgroundServer`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from helpers import BackgroundServer
from PIL import Image

DIM = 128  # the tiny bundle's embedding dimension


def png(seed: int, size: int = 24) -> bytes:
    """A distinct small PNG per seed (random blocks, so near-duplicates are rare)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def write_folder(root: Path, n: int, captions: bool = True, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = root / f"sub{i % 3}" / f"img{i:05d}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(png(i))
        if captions and i % 2 == 0:
            p.with_suffix(".txt").write_text(f"picture number {i}\n")
        paths.append(p)
    return paths


__all__ = ["DIM", "BackgroundServer", "png", "write_folder"]
