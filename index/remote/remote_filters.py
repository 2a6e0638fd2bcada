"""Domain filters (`clipserve.index.filters`) as `qdrant_client` models."""

from __future__ import annotations

from qdrant_client import models

from clipserve.index.filters import Condition, FieldMatch, Filter, HasId, MatchAny, Range


def remote_filter(filter: Filter | None) -> models.Filter | None:
    """The client filter for `filter`; None (match everything) for None or an empty filter."""
    if filter is None or filter.is_empty():
        return None
    return _filter(filter)


def _filter(f: Filter) -> models.Filter:
    return models.Filter(
        must=[_condition(c) for c in f.must] or None,
        should=[_condition(c) for c in f.should] or None,
        must_not=[_condition(c) for c in f.must_not] or None,
    )


def _condition(c: Condition) -> models.Condition:
    if isinstance(c, FieldMatch):
        return models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))
    if isinstance(c, Range):
        return models.FieldCondition(
            key=c.key, range=models.Range(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte)
        )
    if isinstance(c, MatchAny):
        return models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.values)))
    if isinstance(c, HasId):
        return models.HasIdCondition(has_id=list(c.ids))
    if isinstance(c, Filter):
        return _filter(c)
    raise TypeError(f"not a filter condition: {c!r}")  # Filter's validation makes this a bug
