"""Protobuf <-> domain conversions of the index API, one small function per message.

Malformed messages (a condition with nothing set, a bad id) raise `InvalidInput` naming the
field, so the servicer methods stay one call each.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format, struct_pb2

from clipserve.index.base import (
    CollectionInfo,
    CollectionSettings,
    FieldMatch,
    Filter,
    HasId,
    Hit,
    MatchAny,
    Point,
    Provenance,
    Range,
)
from clipserve.index.filters import BadFilter, Condition
from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.serving.errors import InvalidInput
from clipserve.serving.search.dedup import DedupResult
from clipserve.serving.search.index_service import Mmr, QueryResult, QuerySpec, UpsertItem
from clipserve.serving.service import Content


def content_from_proto(msg: pb.Content) -> Content:
    which = msg.WhichOneof("kind")
    if which == "text":
        return Content(text=msg.text)
    if which == "image":
        return Content(image=bytes(msg.image))
    return Content()  # neither: the service rejects it with the input's index


def payload_from_proto(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Struct numbers are doubles; integral ones become ints so integer filters match them.
    Numbers JSON cannot hold (NaN, Infinity) are InvalidInput, naming the key."""
    _check_finite(struct, "payload")
    return {k: _intify(v) for k, v in json_format.MessageToDict(struct).items()}


def _check_finite(value: Any, path: str) -> None:
    if isinstance(value, struct_pb2.Struct):
        for k, v in value.fields.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(value, struct_pb2.ListValue):
        for j, v in enumerate(value.values):
            _check_finite(v, f"{path}[{j}]")
    elif isinstance(value, struct_pb2.Value):
        which = value.WhichOneof("kind")
        if which == "number_value" and not math.isfinite(value.number_value):
            raise InvalidInput(
                f"{path} is {value.number_value}; payload numbers must be finite (JSON has no "
                "NaN or Infinity)"
            )
        if which in ("struct_value", "list_value"):
            _check_finite(getattr(value, which), path)


def _intify(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _intify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_intify(v) for v in value]
    return value


def payload_to_proto(payload: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(payload)
    return struct


def upsert_item_from_proto(msg: pb.UpsertItem) -> UpsertItem:
    return UpsertItem(
        content=content_from_proto(msg.content) if msg.HasField("content") else None,
        payload=payload_from_proto(msg.payload),
        caption=msg.caption or None,
        vector=np.asarray(msg.vector.values, dtype=np.float32) if msg.HasField("vector") else None,
        id=msg.id or None,
    )


def filter_from_proto(msg: pb.Filter) -> Filter | None:
    """The domain filter (None when empty); InvalidInput naming the bad condition."""
    try:
        must = [_match(c, f"filter condition {j}") for j, c in enumerate(msg.must)]
        must += [_condition(c, f"filter.all[{j}]") for j, c in enumerate(msg.all)]
        should = [_condition(c, f"filter.should[{j}]") for j, c in enumerate(msg.should)]
        must_not = [_condition(c, f"filter.must_not[{j}]") for j, c in enumerate(msg.must_not)]
        f = Filter(must=tuple(must), should=tuple(should), must_not=tuple(must_not))
    except BadFilter as exc:
        raise InvalidInput(f"malformed filter: {exc}") from None
    return None if f.is_empty() else f


def _match(cond: pb.FieldMatch, where: str) -> FieldMatch:
    which = cond.WhichOneof("value")
    if which is None:
        raise InvalidInput(f"{where} ({cond.key!r}): no value set")
    if not cond.key:
        raise InvalidInput(f"{where}: key is empty")
    return FieldMatch(cond.key, getattr(cond, which))


def _condition(cond: pb.Condition, where: str) -> Condition:
    which = cond.WhichOneof("kind")
    if which == "match":
        return _match(cond.match, where)
    if which == "range":
        r = cond.range
        bounds = {b: getattr(r, b) for b in ("gt", "gte", "lt", "lte") if r.HasField(b)}
        return Range(r.key, **bounds)
    if which == "any":
        if cond.any.keywords and cond.any.integers:
            raise InvalidInput(
                f"{where} ({cond.any.key!r}): any-of takes keywords or integers, not both"
            )
        return MatchAny(cond.any.key, tuple(cond.any.keywords) or tuple(cond.any.integers))
    if which == "filter":
        nested = filter_from_proto(cond.filter)
        return nested if nested is not None else Filter()
    if which == "has_id":
        return HasId(tuple(cond.has_id.ids))
    raise InvalidInput(f"{where}: condition has nothing set")


def query_from_proto(msg: pb.QueryRequest) -> QuerySpec:
    which = msg.WhichOneof("query")
    mmr = Mmr(msg.mmr.diversity, msg.mmr.candidates) if msg.HasField("mmr") else None
    return QuerySpec(
        collection=msg.collection,
        content=Content(text=msg.text) if which == "text" else
        Content(image=bytes(msg.image)) if which == "image" else None,
        vector=np.asarray(msg.vector.values, dtype=np.float32) if which == "vector" else None,
        point_id=msg.point_id if which == "point_id" else "",
        multi=tuple((content_from_proto(p.content), p.weight) for p in msg.multi.parts),
        top_k=msg.top_k if msg.HasField("top_k") else None,
        filter=filter_from_proto(msg.filter),
        score_threshold=msg.score_threshold if msg.HasField("score_threshold") else None,
        offset=msg.offset,
        page_token=msg.page_token,
        mmr=mmr,
        truncate=msg.truncate,
        exact=msg.exact,
        vector_model_version=msg.vector_model_version,
    )  # fmt: skip


def hit_to_proto(hit: Hit) -> pb.Hit:
    return pb.Hit(id=hit.id, score=hit.score, payload=payload_to_proto(hit.payload))


def query_result_to_proto(result: QueryResult) -> pb.QueryResponse:
    return pb.QueryResponse(
        hits=[hit_to_proto(h) for h in result.hits],
        model_version=result.model_version,
        next_page_token=result.next_page_token,
        collection=result.collection,
        query_truncated=result.query_truncated,
    )


def point_to_proto(point: Point, with_vector: bool) -> pb.Point:
    msg = pb.Point(id=point.id, payload=payload_to_proto(point.payload))
    if with_vector:
        msg.vector.values.extend(np.asarray(point.vector, dtype=np.float32).tolist())
    return msg


# -- collections ---------------------------------------------------------------------------------

_SOURCES = {"content": pb.VECTOR_SOURCE_CONTENT, "image": pb.VECTOR_SOURCE_IMAGE,
            "text": pb.VECTOR_SOURCE_TEXT, "pooled": pb.VECTOR_SOURCE_POOLED}  # fmt: skip
_SOURCE_NAMES = {v: k for k, v in _SOURCES.items()} | {pb.VECTOR_SOURCE_UNSPECIFIED: "content"}
_TYPES = {"keyword": pb.PAYLOAD_TYPE_KEYWORD, "integer": pb.PAYLOAD_TYPE_INTEGER,
          "float": pb.PAYLOAD_TYPE_FLOAT, "bool": pb.PAYLOAD_TYPE_BOOL}  # fmt: skip
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}


def settings_from_proto(msg: pb.CollectionSettings) -> CollectionSettings:
    """Zero fields mean "the default"; InvalidInput for values the index refuses."""
    defaults = CollectionSettings()
    h = msg.hnsw
    schema = []
    for f in msg.payload_schema:
        if f.type not in _TYPE_NAMES:
            raise InvalidInput(f"payload_schema {f.key!r}: give a payload type")
        schema.append((f.key, _TYPE_NAMES[f.type]))
    try:
        return CollectionSettings(
            hnsw_m=h.m or defaults.hnsw_m,
            hnsw_ef_construct=h.ef_construct or defaults.hnsw_ef_construct,
            hnsw_ef_search=h.ef_search or defaults.hnsw_ef_search,
            full_scan_threshold=h.full_scan_threshold or defaults.full_scan_threshold,
            int8_quantization=msg.int8_quantization,
            payload_schema=tuple(schema),
            vector_source=_SOURCE_NAMES.get(msg.vector_source, "content"),  # type: ignore[arg-type]
            hnsw_build_threshold=msg.hnsw_build_threshold or defaults.hnsw_build_threshold,
        )
    except ValueError as exc:
        raise InvalidInput(f"settings: {exc}") from None


def settings_to_proto(s: CollectionSettings) -> pb.CollectionSettings:
    return pb.CollectionSettings(
        hnsw=pb.HnswSettings(m=s.hnsw_m, ef_construct=s.hnsw_ef_construct,
                             ef_search=s.hnsw_ef_search, full_scan_threshold=s.full_scan_threshold),
        int8_quantization=s.int8_quantization,
        payload_schema=[pb.PayloadField(key=k, type=_TYPES[t]) for k, t in s.payload_schema],
        vector_source=_SOURCES[s.vector_source],
        hnsw_build_threshold=s.hnsw_build_threshold,
    )  # fmt: skip


def provenance_to_proto(p: Provenance | None) -> pb.Provenance | None:
    if p is None:
        return None
    return pb.Provenance(model_version=p.model_version, model_name=p.model_name, dim=p.dim,
                         vector_source=_SOURCES[p.vector_source], created_at=p.created_at)  # fmt: skip


def collection_to_proto(c: CollectionInfo) -> pb.CollectionInfo:
    return pb.CollectionInfo(name=c.name, count=c.count, provenance=provenance_to_proto(c.provenance),
                             settings=settings_to_proto(c.settings), aliases=list(c.aliases))  # fmt: skip


def dedup_to_proto(result: DedupResult) -> pb.DedupResponse:
    return pb.DedupResponse(
        groups=[pb.DuplicateGroup(ids=list(g.ids), min_score=g.min_score) for g in result.groups],
        points_scanned=result.points_scanned,
    )
