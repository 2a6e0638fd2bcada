"""Per-item keys for the `duplicate` estimator: normalised-caption keys and image dHashes.

- `normalize_caption`: Unicode NFKC, lower case, punctuation dropped, whitespace collapsed,
  so "A red  Circle." and "a red circle" get the same key.
- `caption_key`: a signed 64-bit BLAKE2b key of the normalised caption (stable across
  processes and runs, unlike Python's `hash`).
- `dhash`: the 64-bit difference hash (Krawetz): grey, resize to 9x8, one bit per
  horizontally adjacent pair "left pixel brighter than the right". Near-identical images have
  hashes within a few bits; `hamming_matrix` counts the differing bits.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

_PUNCT = re.compile(r"[^\w\s]", flags=re.UNICODE)
_SPACE = re.compile(r"\s+", flags=re.UNICODE)


def normalize_caption(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def caption_key(text: str) -> int:
    """Signed int64 key of the normalised caption (fits a torch.int64 tensor)."""
    digest = hashlib.blake2b(normalize_caption(text).encode("utf-8"), digest_size=8).digest()
    return _signed64(int.from_bytes(digest, "big"))


def dhash(image: Image.Image | np.ndarray, size: int = 8) -> int:
    """Signed int64 difference hash of an image (PIL image or HxW[xC] uint8 array)."""
    if size != 8:
        raise ValueError("dhash keys are 64-bit: size must be 8.")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    grey = np.asarray(
        image.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), np.int16
    )
    bits = (grey[:, :-1] > grey[:, 1:]).flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return _signed64(value)


def keys_tensor(keys: Iterable[int]) -> torch.Tensor:
    """A LongTensor of keys, for LossBatch.caption_keys / image_keys."""
    return torch.tensor(list(keys), dtype=torch.int64)


_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def hamming_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(R,) x (C,) int64 hashes -> (R, C) int64 number of differing bits."""
    x = a[:, None] ^ b[None, :]
    table = _POPCOUNT8.to(x.device)
    total = torch.zeros_like(x)
    for byte in range(8):
        total += table[(x >> (8 * byte)) & 0xFF]
    return total
