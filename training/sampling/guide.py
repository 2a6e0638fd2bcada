"""The frozen guide model of the `guide` estimator (GISTEmbed), and its features of every
training item, computed once: the guide never trains, and the training images are fixed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from clipserve.training.config import ModelConfig
from clipserve.training.data.cache import cached as cached_entry
from clipserve.training.data.cache import images_key, model_key, tensors_key
from clipserve.training.data.manifest import Record
from clipserve.training.evaluate import embed_dataset, embed_tensors
from clipserve.training.model import LoadedModel, checkpoint_model_name, load_pretrained


def load_guide(cfg: ModelConfig, device: torch.device) -> LoadedModel | None:
    """The guide `cfg.guide` names (see ModelConfig), in eval mode, or None."""
    if not cfg.guide:
        return None
    if cfg.guide == "start":
        name, weights = cfg.name, cfg.pretrained
    else:
        weights = cfg.guide
        name = checkpoint_model_name(weights) or cfg.guide_name or cfg.name
        if cfg.guide_name and name != cfg.guide_name:
            raise ValueError(f"model.guide {weights} holds a {name!r}, not model.guide_name")
        if not Path(weights).expanduser().exists() and "/" in weights:
            raise FileNotFoundError(f"model.guide {weights} does not exist")
    loaded = load_pretrained(name, weights, device)
    loaded.model.eval()
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    return loaded


@torch.no_grad()
def guide_features(
    guide: LoadedModel,
    records: Sequence[Record],
    device: torch.device,
    cached: tuple[torch.Tensor, torch.Tensor] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [N, D], text [N, D]) guide features of every record, L2-normalised.

    `cached` = the training model's preprocessed (images, tokens), reused when the guide
    has the same image size and context length (same preprocessing and tokenizer assumed);
    otherwise images are decoded again with the guide's own preprocessing (e.g. a larger
    model). `cache_dir` (data.cache_dir): the features are read from there when a run with
    the same guide weights, images and captions wrote them (training/data/cache.py).
    """

    def key() -> str:
        tokens = guide.tokenizer([r.caption for r in records])
        return tensors_key(
            model_key(guide.model), images_key(records, guide.preprocess_val), tokens
        )

    def compute() -> dict[str, torch.Tensor]:
        size = getattr(guide.model.visual, "image_size", None)
        same_text = getattr(guide.model, "context_length", None) == (
            cached[1].shape[1] if cached is not None else None
        )
        if cached is not None and same_text and _same_size(size, tuple(cached[0].shape[-2:])):
            text, image = embed_tensors(guide.model, cached[0], cached[1], device=device)
        else:
            text, image = embed_dataset(
                guide.model, records, guide.preprocess_val, guide.tokenizer, device=device
            )
        return {"image": torch.from_numpy(image), "text": torch.from_numpy(text)}

    features = cached_entry(cache_dir, "guide", key, compute)
    return features["image"], features["text"]


def _same_size(size: object, hw: tuple[int, ...]) -> bool:
    if isinstance(size, int):
        return hw == (size, size)
    return isinstance(size, tuple | list) and tuple(size) == hw
