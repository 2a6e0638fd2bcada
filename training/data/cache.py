"""An on-disk cache of what runs over the same data compute again (`data.cache_dir`): the
decoded, preprocessed images of a manifest, and a frozen guide model's features of them.

A sweep (the benchmark's 63 runs, a user's learning-rate search) decodes the same images
and embeds them with the same guide in every run: 3-6 s of a 1-minute run here. With a
cache directory the first run writes each entry and the others read it back, bit for bit.

Entries are keyed by everything that decides their bytes, so a changed input makes a new
entry, never a stale read:
- images: each image's absolute path, size and modification time (or its bytes, for an
  inline image), and the transform (its repr, without object addresses);
- features: the model's parameters and buffers, the images' key and the token ids.
An entry is written to a temporary file and renamed into place, so concurrent runs (the
benchmark's workers, DDP ranks) never read half a file; two runs that miss at once both
compute and write the same bytes. Nothing is evicted: delete the directory to reclaim it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from clipserve.training.data.manifest import ImageTextDataset, Record, materialize


def images_key(records: Sequence[Record], transform: object) -> str:
    """What decides the preprocessed images of `records` under `transform`."""
    h = hashlib.sha256(_describe(transform).encode())
    for r in records:
        if r.image_bytes is not None:
            h.update(b"bytes:" + hashlib.sha256(r.image_bytes).digest())
        else:
            assert r.image_path is not None
            path = os.path.abspath(r.image_path)
            st = os.stat(path)
            h.update(f"file:{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def tensors_key(*parts: torch.Tensor | str) -> str:
    """A key over tensors (dtype, shape and bytes) and strings, in order."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, str):
            h.update(b"str:" + p.encode() + b"\n")
        else:
            t = p.detach().cpu().contiguous()
            h.update(f"tensor:{t.dtype}:{tuple(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def model_key(model: torch.nn.Module) -> str:
    """A key over a model's parameters and buffers (names, dtypes, shapes, bytes)."""
    parts: list[torch.Tensor | str] = []
    for name, t in model.state_dict().items():
        parts += [name, t]
    return tensors_key(*parts)


def cached(
    cache_dir: str | Path | None,
    kind: str,
    key: Callable[[], str],
    compute: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """`compute()` (a dict of tensors), read from CACHE_DIR/KIND-KEY.pt when an earlier run
    wrote it; written there otherwise. cache_dir None: compute, nothing is stored, and the
    key (which stats every image or hashes a model) is never computed."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"{kind}-{key()}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(value, f)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep the cache from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return value


def materialize_cached(
    dataset: ImageTextDataset, cache_dir: str | Path | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`manifest.materialize` with the images read from (or written to) the cache; the
    tokens are always the dataset's own (tokenising is cheap)."""
    images = cached(
        cache_dir,
        "images",
        lambda: images_key(dataset.records, dataset.transform),
        lambda: {"images": materialize(dataset)[0]},
    )
    return images["images"], dataset.tokens


def _describe(transform: object) -> str:
    """A transform's repr without object addresses (``<function f at 0x7f...>``), which
    differ from one process to the next."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))
