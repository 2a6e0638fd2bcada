"""Model creation and checkpoints: any open_clip model, plus clipserve's own small configs.

`create_model` is a thin shell over `open_clip.create_model_and_transforms`, so every open_clip
model name works; `pretrained` is an open_clip tag (downloads when the network allows) or a
local checkpoint path. clipserve registers the configs in `model_configs/` (e.g.
``clipserve-tiny``, a ViT that fine-tunes on a CPU in minutes) with open_clip at import time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import open_clip
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "clipserve.training needs the [train] extra: pip install 'clipserve[train]'"
    ) from exc

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

CHECKPOINT_FORMAT = "clipserve-checkpoint/1"


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a model: an open_clip name and where its starting weights came from."""

    name: str
    pretrained: str | None = None


@dataclass
class LoadedModel:
    model: Any  # open_clip.CLIP (or CustomTextCLIP)
    preprocess_train: Any  # torchvision transform used for training
    preprocess_val: Any  # torchvision transform used for eval; serving must match it
    tokenizer: Any  # open_clip tokenizer (callable: list[str] -> LongTensor [N, context_length])
    spec: ModelSpec


class _DropNoPretrainedWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


def create_model(spec: ModelSpec, device: str | torch.device = "cpu") -> LoadedModel:
    """Build an open_clip model with its transforms and tokenizer.

    Raises ValueError with the list of known names when `spec.name` is not an open_clip model.
    """
    if spec.name not in open_clip.list_models():
        raise ValueError(
            f"unknown model {spec.name!r}; known: clipserve-tiny and open_clip's "
            f"{len(open_clip.list_models())} models (open_clip.list_models())"
        )
    pretrained = spec.pretrained or None
    if pretrained and Path(pretrained).expanduser().exists():
        pretrained = str(Path(pretrained).expanduser())
    quiet = None if pretrained else _DropNoPretrainedWarning()
    if quiet:  # expected when training from scratch or loading a checkpoint right after
        logging.getLogger().addFilter(quiet)
    try:
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            spec.name, pretrained=pretrained, device=device
        )
    finally:
        if quiet:
            logging.getLogger().removeFilter(quiet)
    tokenizer = open_clip.get_tokenizer(spec.name)
    return LoadedModel(model, preprocess_train, preprocess_val, tokenizer, spec)


def load_pretrained(
    name: str, pretrained: str | None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Model `name` with starting weights `pretrained`: an open_clip tag, a local open_clip /
    state-dict file, or a clipserve checkpoint (weights only; its model_name must be `name`).
    """
    if pretrained and Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser()
        state = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
            if state["model_name"] != name:
                raise ValueError(
                    f"{path} holds a {state['model_name']!r} model, but the model asked "
                    f"for is {name!r}."
                )
            loaded = create_model(ModelSpec(name, None), device=device)
            loaded.model.load_state_dict(state["model"])
            return LoadedModel(
                loaded.model,
                loaded.preprocess_train,
                loaded.preprocess_val,
                loaded.tokenizer,
                ModelSpec(name, str(path)),
            )
    return create_model(ModelSpec(name, pretrained), device=device)


def checkpoint_model_name(path: str | Path) -> str | None:
    """The model_name of a clipserve checkpoint, or None for anything else."""
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    state = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        return str(state["model_name"])
    return None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically (tmp file + rename), so a crash never leaves half a file.

    `state` must hold at least: model (state_dict), model_name, pretrained, step.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[LoadedModel, dict[str, Any]]:
    """Load a clipserve training checkpoint: returns the model (eval mode) and the raw state."""
    state = torch.load(Path(path), map_location=device, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a clipserve checkpoint (format {CHECKPOINT_FORMAT})")
    loaded = create_model(ModelSpec(state["model_name"], None), device=device)
    loaded.model.load_state_dict(state["model"])
    loaded.model.eval()
    loaded = LoadedModel(
        loaded.model,
        loaded.preprocess_train,
        loaded.preprocess_val,
        loaded.tokenizer,
        ModelSpec(state["model_name"], state.get("pretrained")),
    )
    return loaded, state
