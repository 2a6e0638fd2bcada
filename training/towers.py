"""A CLIP's two towers as modules of their inputs, shared by the ONNX export and training.

`ImageTower` (pixels -> normalised embeddings) and `TextTower` (token ids [N, L], any
L <= context_length -> normalised embeddings) compute what open_clip's ``encode_image`` /
``encode_text`` compute, minus discarded work: the last block of each tower runs at the pooled
token only (`export.pooled`), and the text tower accepts ids trimmed after the batch's last EOT
(with a causal mask, padding after EOT cannot change the EOT token's features).

`share=False` (export) copies the last block's query/key/value weights into plain layers for
the ONNX graph; `share=True` (training) reads the model's own parameters, so gradients reach
them. `TrainingForward` is open_clip's ``CLIP.forward(image, text)`` built from the shared
towers, with each text batch trimmed to its longest caption: the same loss and gradients
(tests/test_towers.py checks both against open_clip). On the synthetic captions (15 of the
32 token positions used) a training step at batch 128 on 2 cores is 1.6-1.7x faster for
clipserve-tiny-p16 and 1.8-1.9x for clipserve-micro (bench/bench_train_step.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipserve.training.export.pooled import (
    PooledBlock,
    pooled_image_features,
    pooled_text_block,
    transformer_supported,
    vision_supported,
)


class ImageTower(nn.Module):
    """pixel_values float32 [N,3,H,W] -> L2-normalised embeddings float32 [N,D].

    An open_clip ViT with class-token pooling runs its last block at the class token only
    (`export.pooled`); any other image tower runs ``encode_image`` as it is."""

    def __init__(self, model: Any, share: bool = False) -> None:
        super().__init__()
        self.model = model
        visual: Any = getattr(model, "visual", None)
        self.pooled = visual is not None and vision_supported(visual)
        if self.pooled:
            self.last = PooledBlock(visual.transformer.resblocks[-1], share=share)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.pooled:
            features = pooled_image_features(self.model.visual, self.last, pixel_values)
            return F.normalize(features, dim=-1)
        return F.normalize(self.model.encode_image(pixel_values), dim=-1)


class TextTower(nn.Module):
    """input_ids int64 [N,L], L <= context_length -> L2-normalised embeddings float32 [N,D].

    Re-states open_clip's ``CLIP.encode_text`` with the positional embedding and causal mask
    sliced to L; pooling takes the features at argmax(input_ids), the EOT token, and the last
    block computes that token alone (`export.pooled`) when the transformer is the plain one.
    """

    attn_mask: torch.Tensor  # [context_length, context_length] additive causal mask

    def __init__(self, model: nn.Module, share: bool = False) -> None:
        super().__init__()
        parts = text_parts(model)
        self.token_embedding = parts["token_embedding"]
        self.positional_embedding = parts["positional_embedding"]
        self.transformer = parts["transformer"]
        self.ln_final = parts["ln_final"]
        self.text_projection = parts["text_projection"]
        self.register_buffer("attn_mask", parts["attn_mask"], persistent=False)
        self.pooled = transformer_supported(self.transformer)
        if self.pooled:
            self.last = PooledBlock(self.transformer.resblocks[-1], share=share)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        x = self.token_embedding(input_ids)  # [N, L, W]
        x = x + self.positional_embedding[:seq_len]
        mask = self.attn_mask[:seq_len, :seq_len]
        eot = input_ids.argmax(dim=-1)
        if self.pooled:
            x = pooled_text_block(self.transformer, self.last, x, mask, eot)  # [N, W] at EOT
            x = self.ln_final(x)
        else:
            x = self.transformer(x, attn_mask=mask)
            x = self.ln_final(x)[torch.arange(x.shape[0]), eot]  # [N, W] at EOT
        if isinstance(self.text_projection, nn.Linear):
            x = self.text_projection(x)
        elif self.text_projection is not None:
            x = x @ self.text_projection
        return F.normalize(x, dim=-1)


def text_parts(model: nn.Module) -> dict[str, Any]:
    """The pieces of a causal, argmax-pooled CLIP text tower, or ValueError if it is not one."""
    owner: Any = model
    pool = getattr(model, "text_pool_type", None)
    if hasattr(model, "text") and not hasattr(model, "token_embedding"):  # CustomTextCLIP
        owner = model.text
        pool = getattr(owner, "pool_type", None)
        if getattr(owner, "cls_emb", None) is not None or getattr(owner, "use_pad_mask", False):
            raise ValueError("text towers with a class token or pad mask are not supported")
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if any(getattr(owner, name, None) is None for name in needed) or pool != "argmax":
        raise ValueError(
            f"{type(model).__name__}: only causal CLIP text towers with argmax (EOT) pooling "
            "can be exported (open_clip's built-in text transformer)"
        )
    parts = {name: getattr(owner, name) for name in needed}
    parts["text_projection"] = getattr(owner, "text_projection", None)
    return parts


class TrainingForward(nn.Module):
    """``forward(image, text)`` -> open_clip's output dict (normalised image_features and
    text_features, logit_scale = exp of the parameter, logit_bias when the model has one),
    computed by the towers above on the model's own parameters, the text trimmed to the
    batch's longest caption. A model whose text tower is not open_clip's causal one with
    argmax pooling runs its own ``encode_text``.

    The trim reads the longest caption's length, a host sync on an accelerator: callers
    there trim on the host with `host_trim` before the transfer, and `forward` trims only
    tensors that are on the CPU (the trim of already-trimmed ids is the identity)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.image = ImageTower(model, share=True)
        try:
            self.text: TextTower | None = TextTower(model, share=True)
        except ValueError:
            self.text = None

    def host_trim(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids trimmed as `forward` would, for a CPU batch about to move to a device."""
        return trim_to_eot(text) if self.text is not None else text

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        model: Any = self.model
        if self.text is not None:
            text_features = self.text(trim_to_eot(text) if text.device.type == "cpu" else text)
        else:
            text_features = model.encode_text(text, normalize=True)
        out = {
            "image_features": self.image(image),
            "text_features": text_features,
            "logit_scale": model.logit_scale.exp(),
        }
        if getattr(model, "logit_bias", None) is not None:
            out["logit_bias"] = model.logit_bias
        return out


def trim_to_eot(ids: torch.Tensor) -> torch.Tensor:
    """Token ids [N, L] cut after the last EOT of the batch (the EOT is the row's largest id,
    as argmax pooling assumes): positions after every row's EOT are padding."""
    if ids.shape[1] == 0:
        return ids
    return ids[:, : int(ids.argmax(dim=-1).max()) + 1]
