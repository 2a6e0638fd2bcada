"""`MineConfig`: how to mine, and the checks its options share with the `[sampling]` section
of a training config (which mines with the same options during training)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The options `MineConfig` and the `[sampling]` section share, by name.
MINE_OPTIONS = (
    "rank_start",
    "rank_window",
    "negatives",
    "group_size",
    "clusters",
    "cluster_top",
    "cluster_text_neighbours",
    "lexical_neighbours",
    "visual_ratio",
)


def check_mine_options(options: Any, prefix: str = "") -> None:
    """ValueError with a sentence naming the option (as `prefix` + name) that is out of range;
    `options` is anything with the `MINE_OPTIONS` attributes (either config)."""
    values = {name: getattr(options, name) for name in MINE_OPTIONS}
    for name in ("rank_start", "clusters", "cluster_text_neighbours", "lexical_neighbours"):
        if values[name] < 0:
            raise ValueError(f"{prefix}{name} must be 0 or more, got {values[name]}.")
    for name in ("rank_window", "negatives", "group_size", "cluster_top"):
        if values[name] < 1:
            raise ValueError(f"{prefix}{name} must be 1 or more, got {values[name]}.")
    if not values["visual_ratio"] >= 0:
        raise ValueError(f"{prefix}visual_ratio must be 0 or more, got {values['visual_ratio']}.")
    negatives, rank_window = values["negatives"], values["rank_window"]
    if negatives > rank_window:
        raise ValueError(
            f"{prefix}negatives ({negatives}) cannot exceed {prefix}rank_window ({rank_window})."
        )
    clusters, cluster_top = values["clusters"], values["cluster_top"]
    if clusters and cluster_top > clusters:
        raise ValueError(
            f"{prefix}cluster_top ({cluster_top}) exceeds {prefix}clusters ({clusters})."
        )
    # Training may read cells from `mined` files, unless it re-mines (which needs clusters).
    reads_files = getattr(options, "mined", None) and not getattr(options, "remine_every_epochs", 0)
    if values["cluster_text_neighbours"] and not clusters and not reads_files:
        raise ValueError(
            f"{prefix}cluster_text_neighbours needs {prefix}clusters > 0 (the k-means cells "
            "the neighbours' images fall in)."
        )


@dataclass(frozen=True)
class MineConfig:
    """How to mine. Defaults suit data sets of a few thousand items.

    rank_start / rank_window: negatives come from neighbour ranks [p, p + m) (0 = nearest).
    negatives: kept per anchor after filtering. group_size: items per hard-batch
    neighbourhood. clusters: k-means centres (0 = none); cluster_top: centre ids per item.
    cluster_text_neighbours: M > 0 gives each caption the cells of the images of its M
    nearest captions too (`caption_cells`, read by the `cluster` estimator); 0 = its own only.
    lexical: also mine the `lexical` estimator's inputs (`clipserve.training.mining.lexical`):
    each caption's visual words (words whose images' mean lies at least visual_ratio times
    further from the corpus mean than random images' would) and each image's
    lexical_neighbours nearest images (0 = none).
    """

    rank_start: int = 3
    rank_window: int = 30
    negatives: int = 3
    group_size: int = 16
    clusters: int = 0
    cluster_top: int = 1
    cluster_text_neighbours: int = 0
    lexical: bool = False
    lexical_neighbours: int = 10
    visual_ratio: float = 1.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or more, got {self.seed}.")
        check_mine_options(self)

    @property
    def neighbours(self) -> int:
        """How many neighbours to retrieve per item: enough for the window and the groups."""
        return max(self.rank_start + self.rank_window, self.group_size)
