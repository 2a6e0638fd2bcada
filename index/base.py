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

PayloadValue = str | int | bool


class IndexError_(Exception):
    """Base class for index failures (named with a trailing _ to avoid shadowing IndexError)."""


class CollectionNotFound(IndexError_):
    """The named collection does not exist."""


class DimensionMismatch(IndexError_):
    """A vector's or an existing collection's dimension differs from what was asked."""


@dataclass(frozen=True)
class Point:
    """One stored item. `id` is a UUID string (see `clipserve.index.ids`)."""

    id: str
    vector: np.ndarray  # float32 [dim], L2-normalised
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity, higher is closer
    payload: dict[str, Any]


@dataclass(frozen=True)
class FieldMatch:
    """payload[key] == value (keyword, integer or bool)."""

    key: str
    value: PayloadValue


@dataclass(frozen=True)
class Filter:
    """All conditions must hold (AND). An empty filter matches everything."""

    must: tuple[FieldMatch, ...] = ()


@runtime_checkable
class VectorIndex(Protocol):
    def ensure_collection(self, name: str, dim: int) -> None:
        """Create `name` (cosine distance) if missing; raise DimensionMismatch if it exists
        with another dimension."""

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        """Insert or overwrite points by id; durable when this returns."""

    def search(
        self, name: str, vector: np.ndarray, top_k: int, filter: Filter | None = None
    ) -> list[Hit]:
        """Top-k by cosine similarity, best first."""

    def count(self, name: str) -> int: ...

    def retrieve(self, name: str, ids: Sequence[str]) -> list[Point]: ...

    def close(self) -> None: ...


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


def ordered_points(wanted: Sequence[str], records: Sequence[Any]) -> list[Point]:
    """Qdrant records (anything with .id, .vector, .payload) as Points in `wanted` order,
    unknown ids left out. Shared by every VectorIndex.retrieve."""
    found = {str(r.id): r for r in records}
    return [
        Point(
            id=i,
            vector=np.asarray(found[i].vector, dtype=np.float32),
            payload=found[i].payload or {},
        )
        for i in wanted
        if i in found
    ]
