"""`LossBatch`: the per-batch side inputs a filtered loss may read, besides the features.

The train loop builds one per micro-batch, from the items of **this rank's** batch, in the
same order as the image/text features, and passes it as ``loss(**model_out, batch=b)``. Every
field is optional; an estimator that needs a missing field raises a ValueError naming it.
The loss all-gathers the tensors itself (plain all_gather, same rank order as the features),
so each rank passes only its own items.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class LossBatch:
    """Side inputs for one local batch of B items (item i = image i + its caption i).

    - ``step``: the optimizer step (int). Seeds the `em` estimator's random flips, so every
      gradient-accumulation micro-step of one optimizer step sees the same flips. Without it
      the loss counts its own calls instead (then accumulation would change the flips).
    - ``labels``: (B,) int64 ground-truth ids; items with equal ids match each other. Read by
      `oracle` and by the FN precision/recall diagnostics.
    - ``image_tags`` / ``text_tags``: (B, A) bool, the attributes an image has and the
      attributes its caption names. Caption k matches image a iff text_tags[k] is a subset of
      image_tags[a] (under-specified captions match many images). An alternative to
      ``labels`` for `oracle` and the diagnostics; when both are given the tags win.
    - ``guide_image_features`` / ``guide_text_features``: (B, D) features of a frozen guide
      model (any scale; they are L2-normalised here). Read by `guide`.
    - ``caption_keys``: (B,) int64 keys of the normalised caption text
      (`clipserve.training.losses.keys.caption_key`). Read by `duplicate`.
    - ``image_keys``: (B,) int64 perceptual hashes of the images (`keys.dhash`). Read by
      `duplicate` (duplicates: Hamming distance <= loss.hash_max_distance).
    - ``cluster_ids``: (B,) or (B, K) int64 ids of each item's nearest k-means centre(s) over
      the mined index (MLCD-style). Read by `cluster`.
    - ``caption_cells``: (B, 1 + M) int64, the cell of each item's own image, then the cells
      of the images paired with its caption's M nearest captions. Read by `cluster` when set
      (an image in one of a caption's cells is a suspected match of that caption).
    - ``caption_words``: (B, L) int64 ids of each caption's visual words, -1 padded
      (`clipserve.training.mining.lexical`). Read by `lexical`.
    - ``neighbour_words``: (B, k, L) int64, the ``caption_words`` of the captions paired with
      each image's k nearest images. Read by `lexical` when set.
    """

    step: int | None = None
    labels: torch.Tensor | None = None
    image_tags: torch.Tensor | None = None
    text_tags: torch.Tensor | None = None
    guide_image_features: torch.Tensor | None = None
    guide_text_features: torch.Tensor | None = None
    caption_keys: torch.Tensor | None = None
    image_keys: torch.Tensor | None = None
    cluster_ids: torch.Tensor | None = None
    caption_cells: torch.Tensor | None = None
    caption_words: torch.Tensor | None = None
    neighbour_words: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensor fields that are set, by name."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value
        return out

    def check(self, n: int) -> None:
        """Raise ValueError unless every tensor field has `n` rows."""
        for name, value in self.tensors().items():
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(
                    f"LossBatch.{name} has shape {tuple(value.shape)}; it needs {n} rows, one "
                    "per item of the local batch."
                )

    def require(self, name: str, estimator: str) -> torch.Tensor:
        value = getattr(self, name)
        if value is None:
            raise ValueError(
                f"loss.estimator = {estimator!r} needs LossBatch.{name}, which this batch lacks."
            )
        return value
