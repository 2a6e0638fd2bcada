"""The index's domain errors. The serving layer maps each to one gRPC status.

CollectionNotFound, AliasNotFound, PointNotFound   -> NOT_FOUND
CollectionExists                                   -> ALREADY_EXISTS
ProvenanceMismatch                                 -> FAILED_PRECONDITION
DimensionMismatch, BadFilter, ValueError           -> INVALID_ARGUMENT
"""

from __future__ import annotations

from clipserve.index.filters import BadFilter


class IndexError_(Exception):
    """Base class for index failures (named with a trailing _ to avoid shadowing IndexError)."""


class CollectionNotFound(IndexError_):
    """The named collection (or alias) does not exist."""


class AliasNotFound(CollectionNotFound):
    """The named alias does not exist."""


class PointNotFound(IndexError_):
    """A point asked for by id does not exist."""


class CollectionExists(IndexError_):
    """Creating a collection (or an alias) under a name that a collection or alias holds."""


class DimensionMismatch(IndexError_):
    """A vector's or an existing collection's dimension differs from what was asked."""


class ProvenanceMismatch(IndexError_):
    """The collection was made by another model than the caller's; the message names both."""


__all__ = [
    "AliasNotFound",
    "BadFilter",
    "CollectionExists",
    "CollectionNotFound",
    "DimensionMismatch",
    "IndexError_",
    "PointNotFound",
    "ProvenanceMismatch",
]
