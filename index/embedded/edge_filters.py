"""Domain filters (`clipserve.index.filters`) as `qdrant_edge` models."""

from __future__ import annotations

from typing import Any

import numpy as np
import qdrant_edge as qe

from clipserve.index.filters import Condition, FieldMatch, Filter, HasId, MatchAny, Range


def edge_filter(filter: Filter | None) -> qe.Filter | None:
    """The engine filter for `filter`; None (match everything) for None or an empty filter."""
    if filter is None or filter.is_empty():
        return None
    return _filter(filter)


def _filter(f: Filter) -> qe.Filter:
    return qe.Filter(
        must=[_condition(c) for c in f.must] or None,
        should=[_condition(c) for c in f.should] or None,
        must_not=[_condition(c) for c in f.must_not] or None,
    )


def _condition(c: Condition) -> Any:
    if isinstance(c, FieldMatch):
        value: Any = c.value
        if isinstance(value, bool):
            # qdrant_edge 0.9 reads a Python bool as the integer 0/1 (bool subclasses int), which
            # never matches a stored bool. numpy.bool_ is not an int, so it arrives as a bool.
            value = np.bool_(value)
        return qe.FieldCondition(key=c.key, match=qe.MatchValue(value))
    if isinstance(c, Range):
        return qe.FieldCondition(
            key=c.key,
            range=qe.RangeFloat(gte=_f(c.gte), gt=_f(c.gt), lte=_f(c.lte), lt=_f(c.lt)),
        )
    if isinstance(c, MatchAny):
        return qe.FieldCondition(key=c.key, match=qe.MatchAny(list(c.values)))
    if isinstance(c, HasId):
        return qe.HasIdCondition(set(c.ids))
    if isinstance(c, Filter):
        return _filter(c)
    raise TypeError(f"not a filter condition: {c!r}")  # Filter's validation makes this a bug


def _f(v: float | None) -> float | None:
    return None if v is None else float(v)
