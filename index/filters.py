"""Payload filters as domain types, validated when built.

A `Filter` holds three lists of conditions, with Qdrant's meaning:

    must      every condition holds (AND)
    should    if non-empty, at least one holds (OR)
    must_not  none holds (NOT)

A condition is a `FieldMatch`, `Range`, `MatchAny`, `HasId` or a nested `Filter`, so any
AND/OR/NOT expression can be written. An empty filter matches everything. Both backends translate
these types (`edge_filters`, `remote_filters`) and must give identical answers; the congruence
suite checks that they do.

Every constructor validates its input and raises `BadFilter` (a ValueError) with a message that
names the offending key, so a malformed filter never reaches an engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Union

from clipserve.index.ids import canonical_id

PayloadValue = str | int | bool

# Nesting depth above which a filter is refused: deep enough for any real query, shallow
# enough that translating it can never blow the Python stack.
MAX_DEPTH = 16


class BadFilter(ValueError):
    """A filter that no engine should be asked to evaluate (the message says why)."""


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, str):
        raise BadFilter(f"{what}: key must be a string, got {key!r}")
    if not key:
        raise BadFilter(f"{what}: key is empty")


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class FieldMatch:
    """payload[key] == value (keyword, integer or bool)."""

    key: str
    value: PayloadValue

    def __post_init__(self) -> None:
        _check_key(self.key, "match")
        if not isinstance(self.value, str | int):  # bool is an int
            raise BadFilter(
                f"match on {self.key!r}: value must be str, int or bool, "
                f"got {type(self.value).__name__}"
            )


@dataclass(frozen=True)
class Range:
    """Numeric bounds on payload[key]; at least one bound, at most one per side."""

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    def __post_init__(self) -> None:
        _check_key(self.key, "range")
        bounds = {"gt": self.gt, "gte": self.gte, "lt": self.lt, "lte": self.lte}
        given = {k: v for k, v in bounds.items() if v is not None}
        if not given:
            raise BadFilter(f"range on {self.key!r}: give at least one of gt, gte, lt, lte")
        for name, v in given.items():
            if not _is_number(v) or not math.isfinite(v):  # type: ignore[arg-type]
                raise BadFilter(f"range on {self.key!r}: {name} must be a finite number, got {v!r}")
        if self.gt is not None and self.gte is not None:
            raise BadFilter(f"range on {self.key!r}: give gt or gte, not both")
        if self.lt is not None and self.lte is not None:
            raise BadFilter(f"range on {self.key!r}: give lt or lte, not both")


@dataclass(frozen=True)
class MatchAny:
    """payload[key] is one of `values`: all keywords or all integers (not bools, not mixed)."""

    key: str
    values: tuple[str, ...] | tuple[int, ...]

    def __post_init__(self) -> None:
        _check_key(self.key, "any-of")
        values = tuple(self.values) if not isinstance(self.values, str) else None
        if not values:
            raise BadFilter(f"any-of on {self.key!r}: give a non-empty list of values")
        all_str = all(isinstance(v, str) for v in values)
        if not all_str and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise BadFilter(
                f"any-of on {self.key!r}: values must be all strings or all integers, "
                f"got {sorted({type(v).__name__ for v in values})}"
            )
        object.__setattr__(self, "values", values)


@dataclass(frozen=True)
class HasId:
    """The point's id is one of `ids` (UUID strings, stored in canonical form)."""

    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.ids, str):
            raise BadFilter("has_id: give a list of ids, not one string")
        try:
            ids = tuple(dict.fromkeys(canonical_id(i) for i in self.ids))
        except ValueError as exc:
            raise BadFilter(f"has_id: {exc}") from None
        object.__setattr__(self, "ids", ids)


Condition = Union[FieldMatch, Range, MatchAny, HasId, "Filter"]
_CONDITION_TYPES = (FieldMatch, Range, MatchAny, HasId)


@dataclass(frozen=True)
class Filter:
    """AND of `must`, OR of `should` (when non-empty), NOT of `must_not`; nests."""

    must: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = field(default=())
    must_not: tuple[Condition, ...] = field(default=())

    def __post_init__(self) -> None:
        for part in ("must", "should", "must_not"):
            conds = getattr(self, part)
            if isinstance(conds, str) or not isinstance(conds, Iterable):
                raise BadFilter(f"filter.{part} must be a list of conditions, got {conds!r}")
            conds = tuple(conds)
            for c in conds:
                if not isinstance(c, (*_CONDITION_TYPES, Filter)):
                    raise BadFilter(
                        f"filter.{part}: {type(c).__name__} is not a condition "
                        "(FieldMatch, Range, MatchAny, HasId or Filter)"
                    )
            object.__setattr__(self, part, conds)
        if self.depth() > MAX_DEPTH:
            raise BadFilter(f"filter nests deeper than {MAX_DEPTH} levels")

    def is_empty(self) -> bool:
        return not (self.must or self.should or self.must_not)

    def depth(self) -> int:
        inner = [
            c.depth() for c in (*self.must, *self.should, *self.must_not) if isinstance(c, Filter)
        ]
        return 1 + max(inner, default=0)


def all_of(*conditions: Condition | None) -> Filter | None:
    """AND of the given conditions, None ones skipped; None when nothing is left."""
    kept = tuple(c for c in conditions if c is not None and not _empty(c))
    if not kept:
        return None
    if len(kept) == 1 and isinstance(kept[0], Filter):
        return kept[0]
    return Filter(must=kept)


def _empty(c: Condition) -> bool:
    return isinstance(c, Filter) and c.is_empty()
