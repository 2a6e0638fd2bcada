"""Near-duplicate groups through the index's own neighbour search.

Leader clustering in id order: scroll every point (matching the filter); a point not yet in a
group becomes a leader, and its neighbours with cosine similarity >= threshold that are not
yet grouped join its group. Each group is thus "a point and everything within the threshold
of it": `min_score` is the lowest similarity to the leader. One search per leader (bounded by
`max_neighbours`), so the cost is about one query per distinct item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from clipserve.index.base import Filter

if TYPE_CHECKING:
    from clipserve.serving.search.index_ops import IndexOps

PAGE = 256


@dataclass(frozen=True)
class DuplicateGroup:
    ids: tuple[str, ...]  # the leader first, then its duplicates, most similar first
    min_score: float


@dataclass(frozen=True)
class DedupResult:
    groups: list[DuplicateGroup]
    points_scanned: int


def find_duplicates(
    ops: IndexOps,
    collection: str,
    threshold: float,
    filter: Filter | None,
    max_groups: int,
    max_neighbours: int,
) -> DedupResult:
    grouped: set[str] = set()
    groups: list[DuplicateGroup] = []
    scanned, token = 0, ""
    while True:
        points, token = ops.scroll(collection, filter, PAGE, token, True)
        for p in points:
            scanned += 1
            if p.id in grouped:
                continue
            hits = ops.search(collection, p.vector, max_neighbours, ops.without(p.id, filter),
                              score_threshold=threshold)  # fmt: skip
            members = [h for h in hits if h.id not in grouped]
            if not members:
                continue
            grouped.add(p.id)
            grouped.update(h.id for h in members)
            groups.append(DuplicateGroup((p.id, *(h.id for h in members)),
                                         min(h.score for h in members)))  # fmt: skip
            if max_groups and len(groups) >= max_groups:
                return DedupResult(groups, scanned)
        if not token:
            return DedupResult(groups, scanned)
