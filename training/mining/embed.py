"""Embed a manifest's captions and images with the model to mine with: a clipserve
checkpoint (PyTorch) or an exported ONNX bundle (ONNX Runtime, as the server runs it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clipserve.training.data.manifest import Record


def embed_with_checkpoint(
    path: str | Path, records: Sequence[Record], batch_size: int = 256, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(text [N, D], image [N, D]) L2-normalised, from a clipserve checkpoint."""
    import torch

    from clipserve.training.evaluate import embed_tensors
    from clipserve.training.model import load_checkpoint

    loaded, _ = load_checkpoint(path)
    texts, images = [], []
    for s in tqdm(range(0, len(records), batch_size), desc="embed", disable=not progress):
        chunk = records[s : s + batch_size]
        pix = torch.stack([loaded.preprocess_val(r.open_image()) for r in chunk])
        tok = loaded.tokenizer([r.caption for r in chunk])
        t, i = embed_tensors(loaded.model, pix, tok, batch_size)
        texts.append(t)
        images.append(i)
    return np.concatenate(texts), np.concatenate(images)


def embed_with_bundle(
    bundle: str | Path, records: Sequence[Record], batch_size: int = 64, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(text [N, D], image [N, D]) L2-normalised, from an ONNX model bundle."""
    from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
    from clipserve.serving.bundle import load_manifest
    from clipserve.serving.embedding.preprocess import preprocess
    from clipserve.serving.embedding.tokenizer import ClipTokenizer

    manifest = load_manifest(bundle)
    backend = OnnxRuntimeBackend(bundle, manifest, providers="auto")
    tokenizer = ClipTokenizer.from_bundle(bundle, manifest)
    texts, images = [], []
    try:
        for s in tqdm(range(0, len(records), batch_size), desc="embed", disable=not progress):
            chunk = records[s : s + batch_size]
            images.append(
                backend.embed_images(preprocess([r.open_image() for r in chunk], manifest))
            )
            ctx = manifest.context_length  # truncate as open_clip does: keep the EOT token
            encoded = [
                t if len(t) <= ctx else [*t[: ctx - 1], t[-1]]
                for t in tokenizer.encode([r.caption for r in chunk])
            ]
            ids = tokenizer.pad(encoded)
            texts.append(backend.embed_texts(ids))
    finally:
        backend.close()
    return _normalise(np.concatenate(texts)), _normalise(np.concatenate(images))


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
