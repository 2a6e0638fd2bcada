"""The one interface over every Qdrant deployment clipserve talks to.

`VectorIndex` is implemented by `EdgeIndex` (Qdrant's engine in-process via `qdrant_edge`, the
default, on a directory) and `RemoteIndex` (a Qdrant server or cluster via `qdrant-client`).
Callers only see these domain types, never a Qdrant client type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from clipserve.index.collections import (
    CollectionInfo,
    CollectionSettings,
    Provenance,
    check_model,
)
from clipserve.index.errors import (
    AliasNotFound,
    BadFilter,
    CollectionExists,
    CollectionNotFound,
    DimensionMismatch,
    IndexError_,
    PointNotFound,
    ProvenanceMismatch,
)
from clipserve.index.filters import FieldMatch, Filter, HasId, MatchAny, PayloadValue, Range
from clipserve.index.ids import canonical_id

__all__ = [
    "AliasNotFound",
    "BadFilter",
    "CollectionExists",
    "CollectionInfo",
    "CollectionNotFound",
    "CollectionSettings",
    "DimensionMismatch",
    "FieldMatch",
    "Filter",
    "HasId",
    "Hit",
    "IndexError_",
    "MatchAny",
    "PayloadValue",
    "Point",
    "PointNotFound",
    "Provenance",
    "ProvenanceMismatch",
    "Range",
    "VectorIndex",
    "check_model",
]

NO_VECTOR = np.zeros(0, dtype=np.float32)
NO_VECTOR.flags.writeable = False


@dataclass(frozen=True)
class Point:
    """One stored item. `id` is a UUID string (see `clipserve.index.ids`).

    `vector` is float32 [dim], L2-normalised; when a read did not ask for vectors it is the
    empty array `NO_VECTOR` (shape [0]).
    """

    id: str
    vector: np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity, higher is closer
    payload: dict[str, Any]
    vector: np.ndarray | None = None  # only when the search asked for vectors


@runtime_checkable
class VectorIndex(Protocol):
    """Every method taking a collection `name` also accepts an alias, resolved at the call.

    To run several calls against one collection while an alias may switch (e.g. check the
    provenance, then search), `resolve` the alias once and pass the collection name on.
    """

    kind: str

    # --- collections ---

    def create_collection(
        self,
        name: str,
        dim: int,
        settings: CollectionSettings | None = None,
        provenance: Provenance | None = None,
    ) -> CollectionInfo:
        """Create `name` (cosine distance). Raises CollectionExists if a collection or an alias
        holds the name."""

    def ensure_collection(
        self,
        name: str,
        dim: int,
        settings: CollectionSettings | None = None,
        provenance: Provenance | None = None,
    ) -> None:
        """Create `name` if missing. If it exists: raise DimensionMismatch for another dimension,
        ProvenanceMismatch if it was made by another model version than `provenance`'s;
        `settings` are not applied to an existing collection."""

    def drop_collection(self, name: str) -> None:
        """Delete the collection `name` (not an alias) with its points and its aliases."""

    def list_collections(self) -> list[CollectionInfo]:
        """Every collection, sorted by name."""

    def collection_info(self, name: str) -> CollectionInfo: ...

    def provenance(self, name: str) -> Provenance | None:
        """What made the collection's vectors; None if it was created without provenance."""

    # --- aliases ---

    def set_alias(self, alias: str, collection: str) -> str | None:
        """Point `alias` at `collection` atomically; return the collection it named before."""

    def delete_alias(self, alias: str) -> None:
        """Raises AliasNotFound if there is no such alias."""

    def resolve(self, name: str) -> str:
        """The collection that `name` (a collection or an alias) names now; CollectionNotFound
        if neither."""

    def aliases(self) -> dict[str, str]:
        """alias -> collection, for every alias."""

    # --- points ---

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        """Insert or overwrite points by id; durable when this returns."""

    def delete(
        self, name: str, ids: Sequence[str] | None = None, filter: Filter | None = None
    ) -> None:
        """Delete points by id, by filter, or (both given) the ids that match the filter."""

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> list[Point]:
        """Stored points for `ids`, in the order asked, each once; unknown ids are left out."""

    def count(self, name: str, filter: Filter | None = None, exact: bool = True) -> int: ...

    def scroll(
        self,
        name: str,
        filter: Filter | None = None,
        limit: int = 100,
        page_token: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[Point], str | None]:
        """A page of points in id order and the token of the next page (None after the last)."""

    def search(
        self,
        name: str,
        vector: np.ndarray,
        top_k: int,
        filter: Filter | None = None,
        *,
        offset: int = 0,
        score_threshold: float | None = None,
        exact: bool = False,
        with_vectors: bool = False,
    ) -> list[Hit]:
        """Top-k by cosine similarity, best first, after skipping `offset` hits; hits scoring
        below `score_threshold` are left out."""

    def search_by_id(
        self,
        name: str,
        point_id: str,
        top_k: int,
        filter: Filter | None = None,
        *,
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        """Nearest neighbours of a stored point, the point itself left out; PointNotFound if
        it is not stored."""

    def flush(self, name: str) -> None:
        """Make every write acknowledged so far survive power loss, not only a process crash
        (an index opened with fsync off relies on this, e.g. before recording ingest progress)."""

    def close(self) -> None: ...


def require_model(index: VectorIndex, name: str, model_version: str) -> str:
    """Resolve `name` once and check that its collection was made by `model_version`.

    Returns the collection name to use for the rest of the request, so an alias switching
    in between cannot pair one model's vectors with another's collection.
    """
    collection = index.resolve(name)
    check_model(collection, index.provenance(collection), model_version)
    return collection


# --- Shared validation, used by every implementation so they reject the same inputs. ---

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def check_collection_name(name: str) -> str:
    """Return `name` if it matches `[A-Za-z0-9_-]{1,64}`, else raise ValueError.

    Edge collections are directories, so the rule keeps names path-safe; remote collections obey
    the same rule so that data can move between the two without renaming.
    """
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not _NAME_CHARS.issuperset(name):
        raise ValueError(f"collection name must match [A-Za-z0-9_-]{{1,64}}, got {name!r}")
    return name


def as_vector(vector: np.ndarray | Sequence[float], dim: int) -> np.ndarray:
    """`vector` as a contiguous float32 array of shape [dim].

    Raises DimensionMismatch for another length (or a non-1-D array) and ValueError for NaN/inf.
    """
    arr = np.ascontiguousarray(vector, dtype=np.float32)
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise DimensionMismatch(f"expected a vector of shape [{dim}], got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("vector contains NaN or infinity")
    return arr


def as_matrix(vectors: Sequence[np.ndarray | Sequence[float]], dim: int) -> np.ndarray:
    """`vectors` as one contiguous float32 [n, dim] array, checked as `as_vector` checks one
    (one numpy pass for the whole batch instead of one per point)."""
    if len(vectors) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except ValueError:  # ragged: name the first bad one
        for v in vectors:
            as_vector(v, dim)
        raise
    if arr.ndim != 2 or arr.shape[1] != dim:
        for v in vectors:
            as_vector(v, dim)  # raises DimensionMismatch for the first bad one
        raise DimensionMismatch(f"expected vectors of shape [{dim}], got {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("vector contains NaN or infinity")
    return arr


def check_dim(dim: object) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    return dim


def check_search_args(top_k: int, offset: int, score_threshold: float | None) -> None:
    """The same argument errors from every implementation."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    if score_threshold is not None and (
        isinstance(score_threshold, bool)
        or not isinstance(score_threshold, int | float)
        or not np.isfinite(score_threshold)
    ):
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold!r}")


def check_scroll_args(limit: int, page_token: str | None) -> str | None:
    """Validate scroll arguments; return the page token as a canonical point id."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    if page_token is None or page_token == "":
        return None
    try:
        return canonical_id(page_token)
    except ValueError:
        raise ValueError(f"page_token {page_token!r} is not one this index handed out") from None


def delete_filter(ids: Sequence[str] | None, filter: Filter | None) -> Filter:
    """The one filter a delete by ids and/or filter runs: ids AND filter.

    An empty filter without ids is refused rather than deleting every point: a client that
    forgot to set its filter must not wipe the collection (drop it instead).
    """
    if isinstance(ids, str):
        raise ValueError("ids must be a list of ids, not one string")
    if filter is not None and filter.is_empty():
        filter = None
    if ids is None and filter is None:
        raise ValueError(
            "delete needs ids or a non-empty filter (to delete everything, drop the collection)"
        )
    conditions: list[Filter | HasId] = []
    if ids is not None:
        conditions.append(HasId(tuple(ids)))
    if filter is not None:
        conditions.append(filter)
    return Filter(must=tuple(conditions))


def neighbours(
    index: VectorIndex,
    name: str,
    point_id: str,
    top_k: int,
    filter: Filter | None,
    score_threshold: float | None,
    exact: bool,
) -> list[Hit]:
    """`search_by_id` for every implementation: the stored point's vector, searched with
    `filter` AND "not the point itself", in the collection `name` names now."""
    collection = index.resolve(name)
    found = index.retrieve(collection, [point_id])
    if not found:
        raise PointNotFound(f"point {point_id!r} is not in collection {collection!r}")
    not_self = Filter(
        must=(filter,) if filter is not None else (), must_not=(HasId((found[0].id,)),)
    )
    return index.search(
        collection, found[0].vector, top_k, not_self, score_threshold=score_threshold, exact=exact
    )


def to_point(record: Any) -> Point:
    """A Qdrant record or scored point (anything with .id, .vector, .payload) as a Point."""
    vector = record.vector
    return Point(
        id=str(record.id),
        vector=NO_VECTOR if vector is None else np.asarray(vector, dtype=np.float32),
        payload=record.payload or {},
    )


def to_hit(scored: Any, with_vectors: bool) -> Hit:
    vector = np.asarray(scored.vector, dtype=np.float32) if with_vectors else None
    return Hit(
        id=str(scored.id), score=float(scored.score), payload=scored.payload or {}, vector=vector
    )


def ordered_points(wanted: Sequence[str], records: Sequence[Any]) -> list[Point]:
    """Records as Points in `wanted` order, unknown ids left out. Shared by every retrieve."""
    found = {str(r.id): r for r in records}
    return [to_point(found[i]) for i in wanted if i in found]
