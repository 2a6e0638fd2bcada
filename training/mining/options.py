"""`MineConfig`: how to mine, and the checks its options share with the `[sampling]` section
of a training config (which mines with the same options during training)."""

from __future__ import annotations

from dataclasses import dataclass


def check_mine_options(
    *,
    rank_start: int,
    rank_window: int,
    negatives: int,
    group_size: int,
    clusters: int,
    cluster_top: int,
    prefix: str = "",
) -> None:
    """ValueError with a sentence naming the option (as `prefix` + name) that is out of range."""
    values = {
        "rank_start": rank_start,
        "rank_window": rank_window,
        "negatives": negatives,
        "group_size": group_size,
        "clusters": clusters,
        "cluster_top": cluster_top,
    }
    for name in ("rank_start", "clusters"):
        if values[name] < 0:
            raise ValueError(f"{prefix}{name} must be 0 or more, got {values[name]}.")
    for name in ("rank_window", "negatives", "group_size", "cluster_top"):
        if values[name] < 1:
            raise ValueError(f"{prefix}{name} must be 1 or more, got {values[name]}.")
    if negatives > rank_window:
        raise ValueError(
            f"{prefix}negatives ({negatives}) cannot exceed {prefix}rank_window ({rank_window})."
        )
    if clusters and cluster_top > clusters:
        raise ValueError(
            f"{prefix}cluster_top ({cluster_top}) exceeds {prefix}clusters ({clusters})."
        )


@dataclass(frozen=True)
class MineConfig:
    """How to mine. Defaults suit data sets of a few thousand items.

    rank_start / rank_window: negatives come from neighbour ranks [p, p + m) (0 = nearest).
    negatives: kept per anchor after filtering. group_size: items per hard-batch
    neighbourhood. clusters: k-means centres (0 = none); cluster_top: centre ids per item.
    """

    rank_start: int = 3
    rank_window: int = 30
    negatives: int = 3
    group_size: int = 16
    clusters: int = 0
    cluster_top: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be 0 or more, got {self.seed}.")
        check_mine_options(
            rank_start=self.rank_start,
            rank_window=self.rank_window,
            negatives=self.negatives,
            group_size=self.group_size,
            clusters=self.clusters,
            cluster_top=self.cluster_top,
        )

    @property
    def neighbours(self) -> int:
        """How many neighbours to retrieve per item: enough for the window and the groups."""
        return max(self.rank_start + self.rank_window, self.group_size)
