"""Per-item side inputs of the whole training set, and the `LossBatch` of one batch.

The loss's estimators read things besides the features (`clipserve.training.losses.LossBatch`):
ground truth (labels or attribute tags, for `oracle` and the FN diagnostics), caption and
image-hash keys (`duplicate`), k-means cluster ids and caption cells (`cluster`), caption words
and image neighbours (`lexical`), a frozen guide model's features (`guide`) and the optimizer
step (`em`). They are properties of items, so they are
computed once for the data set (`ItemTable`, row i = record i) and sliced per batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clipserve.training.data.manifest import Record
from clipserve.training.evaluate import relevance_labels, tag_matrix
from clipserve.training.losses import LossBatch
from clipserve.training.losses.keys import caption_key, dhash

# What each estimator reads, beyond the ground truth every batch carries when it has one.
NEEDS: dict[str, tuple[str, ...]] = {
    "none": (),
    "em": (),
    "margin": (),
    "guide": ("guide_image_features", "guide_text_features"),
    "duplicate": ("caption_keys", "image_keys"),
    "cluster": ("cluster_ids",),
    "lexical": ("caption_words",),
    "oracle": (),
}


@dataclass(frozen=True)
class ItemTable:
    """Side inputs of N items; every tensor field has N rows (or is None: not available)."""

    n: int
    labels: torch.Tensor | None = None  # (N,) int64, equal ids = same labels
    image_tags: torch.Tensor | None = None  # (N, A) bool, attributes each image has
    text_tags: torch.Tensor | None = None  # (N, A) bool, attributes each caption names
    caption_keys: torch.Tensor | None = None  # (N,) int64
    image_keys: torch.Tensor | None = None  # (N,) int64 dHash
    cluster_ids: torch.Tensor | None = None  # (N,) or (N, K) int64
    caption_cells: torch.Tensor | None = None  # (N, 1 + M) int64, see mining.mine.caption_cells
    caption_words: torch.Tensor | None = None  # (N, L) int64, see mining.lexical
    image_neighbours: torch.Tensor | None = None  # (N, k) int64 rows of each image's nearest
    guide_image_features: torch.Tensor | None = None  # (N, D) float
    guide_text_features: torch.Tensor | None = None  # (N, D) float

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and value.shape[0] != self.n:
                raise ValueError(f"ItemTable.{f.name} has {value.shape[0]} rows, expected {self.n}")

    def replace(self, **changes: torch.Tensor | None) -> ItemTable:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def batch(self, index: torch.Tensor | Sequence[int], step: int | None = None) -> LossBatch:
        """The `LossBatch` of the items at `index` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        kw = {}
        for f in dataclasses.fields(LossBatch):
            value = getattr(self, f.name, None)
            if isinstance(value, torch.Tensor):
                kw[f.name] = value[idx]
        if self.caption_words is not None and self.image_neighbours is not None:
            kw["neighbour_words"] = self.caption_words[self.image_neighbours[idx]]
        return LossBatch(step=step, **kw)

    def missing(self, estimator: str) -> list[str]:
        """The fields `estimator` needs that this table lacks."""
        need = list(NEEDS.get(estimator, ()))
        if estimator == "oracle" and self.labels is None and self.image_tags is None:
            need.append("labels")
        return [name for name in need if getattr(self, name, None) is None]


def ground_truth(records: Sequence[Record]) -> dict[str, torch.Tensor]:
    """labels (and tags when captions name fewer attributes than images show), or {}."""
    rel = relevance_labels(records)
    if rel is None:
        return {}
    text_keys, image_keys, match = rel
    vocab: dict[str, int] = {}
    ids = torch.tensor([vocab.setdefault(k, len(vocab)) for k in image_keys], dtype=torch.int64)
    out = {"labels": ids}
    if match == "subset":
        tvocab: dict[str, int] = {}
        img = tag_matrix(image_keys, tvocab)
        txt = tag_matrix(text_keys, tvocab)
        width = len(tvocab)
        out["image_tags"] = torch.from_numpy(np.pad(img, ((0, 0), (0, width - img.shape[1]))))
        out["text_tags"] = torch.from_numpy(np.pad(txt, ((0, 0), (0, width - txt.shape[1]))))
    return out


def image_hashes(records: Iterable[Record]) -> torch.Tensor:
    """(N,) int64 dHash of every record's image (decodes each image once)."""
    return torch.tensor([dhash(r.open_image()) for r in records], dtype=torch.int64)


def build_item_table(
    records: Sequence[Record],
    *,
    image_keys: bool = False,
    cluster_ids: torch.Tensor | None = None,
    guide: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ItemTable:
    """Ground truth and caption keys always; image hashes only when asked (they decode every
    image); cluster ids and guide (image, text) features as given."""
    return ItemTable(
        n=len(records),
        caption_keys=torch.tensor([caption_key(r.caption) for r in records], dtype=torch.int64),
        image_keys=image_hashes(records) if image_keys else None,
        cluster_ids=cluster_ids,
        guide_image_features=None if guide is None else guide[0],
        guide_text_features=None if guide is None else guide[1],
        **ground_truth(records),
    )
