"""Congruence: the embedded engine (EdgeIndex) and a Qdrant server's client API (RemoteIndex over
qdrant-client's local mode) give identical answers to the same scenarios.

Each scenario is a function of one index that returns what it observed (ids, order, scores,
payloads, counts, errors). `test_congruent` runs it on both backends and requires equal results
(scores to 1e-5); `test_reference` checks each backend's result against a plain-Python/numpy
evaluation of the same scenario, so "both wrong the same way" fails too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from clipserve.index.base import (
    AliasNotFound,
    BadFilter,
    CollectionExists,
    CollectionNotFound,
    CollectionSettings,
    FieldMatch,
    Filter,
    HasId,
    MatchAny,
    Point,
    PointNotFound,
    Provenance,
    ProvenanceMismatch,
    Range,
    VectorIndex,
)
from clipserve.index.embedded.edge import EdgeIndex
from clipserve.index.ids import text_id
from clipserve.index.remote.remote import RemoteIndex

DIM = 32
N = 200
COLL = "congruence"
PROV = Provenance(model_version="model-v1", model_name="tiny", dim=DIM)


def _payload(i: int) -> dict[str, Any]:
    p: dict[str, Any] = {
        "i": i,
        "parity": "even" if i % 2 == 0 else "odd",
        "bucket": i % 5,
        "flag": i % 3 == 0,
        "score": round(i / N, 4),
        "color": ["red", "green", "blue", "cyan"][i % 4],
    }
    if i % 7 == 0:
        del p["color"]  # a field some points lack
    return p


_rng = np.random.default_rng(7)
VECTORS = _rng.standard_normal((N, DIM)).astype(np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)
QUERIES = _rng.standard_normal((4, DIM)).astype(np.float32)
QUERIES /= np.linalg.norm(QUERIES, axis=1, keepdims=True)
IDS = [text_id(f"item {i}") for i in range(N)]
POINTS = [Point(IDS[i], VECTORS[i], _payload(i)) for i in range(N)]
ROW = {pid: i for i, pid in enumerate(IDS)}

FILTERS: dict[str, Filter] = {
    "keyword": Filter((FieldMatch("parity", "odd"),)),
    "int": Filter((FieldMatch("bucket", 3),)),
    "bool": Filter((FieldMatch("flag", True),)),
    "range-gt-lte": Filter((Range("score", gt=0.2, lte=0.55),)),
    "range-int-gte-lt": Filter((Range("i", gte=50, lt=120),)),
    "any-keywords": Filter((MatchAny("color", ("red", "cyan")),)),
    "any-ints": Filter((MatchAny("bucket", (0, 4)),)),
    "has-id": Filter((HasId(tuple(IDS[::9])),)),
    "not": Filter(must_not=(FieldMatch("parity", "even"), FieldMatch("bucket", 1))),
    "or": Filter(should=(FieldMatch("bucket", 2), Range("score", gte=0.9))),
    "missing-key-not": Filter(must_not=(FieldMatch("color", "red"),)),
    "nested": Filter(
        must=(
            Filter(should=(FieldMatch("flag", True), MatchAny("color", ("blue",)))),
            Filter(must_not=(Range("i", lt=30),)),
        ),
        must_not=(Filter(must=(FieldMatch("parity", "odd"), FieldMatch("bucket", 4))),),
    ),
    "and-or-not": Filter(
        must=(Range("score", gte=0.1),),
        should=(FieldMatch("parity", "odd"), HasId((IDS[4], IDS[10]))),
        must_not=(MatchAny("bucket", (3,)),),
    ),
}


# --- a reference evaluation of the domain filter, in plain Python ---


def _matches(cond: Any, pid: str, payload: dict[str, Any]) -> bool:
    if isinstance(cond, Filter):
        return (
            all(_matches(c, pid, payload) for c in cond.must)
            and (not cond.should or any(_matches(c, pid, payload) for c in cond.should))
            and not any(_matches(c, pid, payload) for c in cond.must_not)
        )
    if isinstance(cond, HasId):
        return pid in cond.ids
    value = payload.get(cond.key)
    if isinstance(cond, FieldMatch):
        return value is not None and type(value) is type(cond.value) and value == cond.value
    if isinstance(cond, MatchAny):
        return value in cond.values
    if isinstance(cond, Range):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return (
            (cond.gt is None or value > cond.gt)
            and (cond.gte is None or value >= cond.gte)
            and (cond.lt is None or value < cond.lt)
            and (cond.lte is None or value <= cond.lte)
        )
    raise TypeError(cond)


def _ref_ids(flt: Filter | None, rows: range | list[int] = range(N)) -> list[str]:
    return [IDS[r] for r in rows if flt is None or _matches(flt, IDS[r], _payload(r))]


def _ref_search(q: np.ndarray, k: int, flt: Filter | None, offset: int = 0) -> list[str]:
    allowed = {ROW[i] for i in _ref_ids(flt)}
    scores = VECTORS @ q
    order = [int(r) for r in np.argsort(-scores, kind="stable") if int(r) in allowed]
    return [IDS[r] for r in order[offset : offset + k]]


# --- backends ---


@pytest.fixture(params=["edge", "remote"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    idx = _make(request.param, tmp_path)
    yield idx
    idx.close()


def _make(kind: str, tmp_path: Path) -> VectorIndex:
    if kind == "edge":
        return EdgeIndex(tmp_path / "edge", exact=True)
    return RemoteIndex(client=QdrantClient(":memory:"))


def _filled(idx: VectorIndex) -> VectorIndex:
    idx.create_collection(COLL, DIM, CollectionSettings(), PROV)
    idx.upsert(COLL, POINTS)
    return idx


def _hits(hits: list[Any]) -> list[tuple[str, float, dict[str, Any]]]:
    return [(h.id, float(h.score), h.payload) for h in hits]


def _error(fn: Callable[[], object]) -> str:
    try:
        fn()
    except Exception as exc:  # the scenario records which error, the test compares
        return type(exc).__name__
    return "no error"


# --- scenarios: each returns what it observed ---


def scenario_upsert_retrieve(idx: VectorIndex) -> Any:
    _filled(idx)
    got = idx.retrieve(COLL, [IDS[5], IDS[0], text_id("absent"), IDS[5]])
    return {
        "count": idx.count(COLL),
        "retrieved": [(p.id, p.payload, p.vector.astype(float).tolist()) for p in got],
        "no_vectors": [p.vector.shape for p in idx.retrieve(COLL, IDS[:3], with_vectors=False)],
    }


def scenario_overwrite(idx: VectorIndex) -> Any:
    _filled(idx)
    changed = [Point(IDS[i], VECTORS[(i + 1) % N], {"i": i, "parity": "new"}) for i in range(20)]
    idx.upsert(COLL, changed)
    idx.upsert(COLL, changed)  # a retried request
    return {
        "count": idx.count(COLL),
        "new": idx.count(COLL, Filter((FieldMatch("parity", "new"),))),
        "top": _hits(idx.search(COLL, VECTORS[1], 3)),
    }


def scenario_delete_by_id(idx: VectorIndex) -> Any:
    _filled(idx)
    idx.delete(COLL, ids=IDS[:10] + [text_id("never stored")])
    idx.delete(COLL, ids=[])
    return {"count": idx.count(COLL), "left": [p.id for p in idx.retrieve(COLL, IDS[:12])]}


def scenario_delete_by_filter(idx: VectorIndex) -> Any:
    _filled(idx)
    idx.delete(COLL, filter=FILTERS["nested"])
    idx.delete(COLL, ids=IDS[100:140], filter=Filter((FieldMatch("parity", "odd"),)))
    pages, token = [], None
    while True:
        page, token = idx.scroll(COLL, limit=64, page_token=token)
        pages += [p.id for p in page]
        if token is None:
            return {"count": idx.count(COLL), "ids": pages}


def scenario_filters(idx: VectorIndex) -> Any:
    _filled(idx)
    out = {}
    for name, flt in FILTERS.items():
        out[name] = {
            "count": idx.count(COLL, flt),
            "search": [_hits(idx.search(COLL, q, 8, flt)) for q in QUERIES],
            "scroll": [p.id for p in idx.scroll(COLL, flt, limit=N)[0]],
        }
    return out


def scenario_search_options(idx: VectorIndex) -> Any:
    _filled(idx)
    q = QUERIES[0]
    return {
        "offset": _hits(idx.search(COLL, q, 5, offset=3)),
        "offset_past_end": _hits(idx.search(COLL, q, 5, offset=N)),
        "threshold": _hits(idx.search(COLL, q, 50, score_threshold=0.25)),
        "filter_offset": _hits(idx.search(COLL, q, 4, FILTERS["or"], offset=2)),
        "vectors": [
            h.vector.astype(float).tolist()
            for h in idx.search(COLL, q, 2, with_vectors=True)
            if h.vector is not None
        ],
        "by_id": _hits(idx.search_by_id(COLL, IDS[3], 5)),
        "by_id_filtered": _hits(idx.search_by_id(COLL, IDS[3], 5, FILTERS["keyword"])),
        "by_missing_id": _error(lambda: idx.search_by_id(COLL, text_id("absent"), 5)),
    }


def scenario_scroll_pages(idx: VectorIndex) -> Any:
    _filled(idx)
    pages, token = [], None
    for _ in range(N):
        page, token = idx.scroll(COLL, FILTERS["keyword"], limit=7, page_token=token)
        pages.append([(p.id, p.payload) for p in page])
        if token is None:
            break
    with_vec, _ = idx.scroll(COLL, limit=2, with_vectors=True)
    return {
        "pages": pages,
        "vectors": [p.vector.astype(float).tolist() for p in with_vec],
        "bad_token": _error(lambda: idx.scroll(COLL, page_token="not-a-token")),
        "bad_limit": _error(lambda: idx.scroll(COLL, limit=0)),
    }


def scenario_aliases(idx: VectorIndex) -> Any:
    _filled(idx)
    idx.create_collection("next", DIM, provenance=Provenance("model-v2", "tiny", DIM))
    idx.upsert("next", POINTS[:5])
    first = idx.set_alias("live", COLL)
    seen_old = idx.count("live")
    second = idx.set_alias("live", "next")
    seen_new = idx.count("live")
    hits = _hits(idx.search("live", QUERIES[0], 3))
    info = idx.collection_info("live")
    out = {
        "previous": [first, second],
        "counts": [seen_old, seen_new],
        "resolve": [idx.resolve("live"), idx.resolve(COLL)],
        "hits": hits,
        "aliases": idx.aliases(),
        "info": [info.name, info.count, info.aliases, info.provenance.model_version],
        "prov_via_alias": idx.provenance("live").model_version,
        "alias_to_alias": _error(lambda: idx.set_alias("other", "live")),
        "alias_on_collection": _error(lambda: idx.set_alias(COLL, "next")),
        "collection_on_alias": _error(lambda: idx.create_collection("live", DIM)),
        "alias_to_missing": _error(lambda: idx.set_alias("x", "missing")),
        "drop_alias_name": _error(lambda: idx.drop_collection("live")),
    }
    idx.delete_alias("live")
    out["after_delete"] = [idx.aliases(), _error(lambda: idx.count("live"))]
    out["delete_again"] = _error(lambda: idx.delete_alias("live"))
    idx.set_alias("live2", "next")
    idx.drop_collection("next")
    out["after_drop"] = [idx.aliases(), [c.name for c in idx.list_collections()]]
    return out


def scenario_provenance(idx: VectorIndex) -> Any:
    _filled(idx)
    other = Provenance("model-v2", "tiny", DIM)
    try:
        idx.ensure_collection(COLL, DIM, provenance=other)
        refused = "no error"
    except ProvenanceMismatch as exc:
        refused = str(exc)
    idx.ensure_collection(COLL, DIM, provenance=PROV)  # same model: fine
    settings = CollectionSettings(
        hnsw_m=8, int8_quantization=True, payload_schema=(("parity", "keyword"), ("i", "integer"))
    )
    idx.create_collection("plain", DIM, settings)
    listed = [
        (c.name, c.count, c.provenance and c.provenance.model_version, c.settings)
        for c in idx.list_collections()
    ]
    prov = idx.provenance(COLL)
    return {
        "refused": refused,
        "exists": _error(lambda: idx.create_collection(COLL, DIM)),
        "listed": listed,
        "provenance": (prov.model_version, prov.model_name, prov.dim, prov.vector_source),
        "created_at_set": bool(prov.created_at),
        "no_provenance": idx.provenance("plain"),
        "missing": _error(lambda: idx.collection_info("missing")),
    }


def scenario_errors(idx: VectorIndex) -> Any:
    _filled(idx)
    calls: dict[str, Callable[[], object]] = {
        "search_missing": lambda: idx.search("missing", QUERIES[0], 3),
        "count_missing": lambda: idx.count("missing"),
        "scroll_missing": lambda: idx.scroll("missing"),
        "delete_missing": lambda: idx.delete("missing", ids=IDS[:1]),
        "retrieve_missing": lambda: idx.retrieve("missing", []),
        "drop_missing": lambda: idx.drop_collection("missing"),
        "delete_nothing": lambda: idx.delete(COLL),
        "delete_empty_filter": lambda: idx.delete(COLL, filter=Filter()),
        "bad_dim": lambda: idx.search(COLL, np.ones(DIM + 1, np.float32), 3),
        "bad_top_k": lambda: idx.search(COLL, QUERIES[0], 0),
        "bad_offset": lambda: idx.search(COLL, QUERIES[0], 3, offset=-1),
        "bad_threshold": lambda: idx.search(COLL, QUERIES[0], 3, score_threshold=float("nan")),
        "bad_id": lambda: idx.retrieve(COLL, ["nope"]),
        "bad_name": lambda: idx.count("a/b"),
    }
    return {name: _error(fn) for name, fn in calls.items()}


SCENARIOS = {
    name.removeprefix("scenario_"): fn
    for name, fn in dict(globals()).items()
    if name.startswith("scenario_")
}


def _assert_same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5), path
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        assert len(a) == len(b), f"{path}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_congruent(scenario: str, tmp_path: Path) -> None:
    edge, remote = _make("edge", tmp_path), _make("remote", tmp_path)
    try:
        _assert_same(SCENARIOS[scenario](edge), SCENARIOS[scenario](remote), scenario)
    finally:
        edge.close()
        remote.close()


# --- each backend against the reference ---


def test_reference_filters(index: VectorIndex) -> None:
    got = scenario_filters(index)
    for name, flt in FILTERS.items():
        expected = _ref_ids(flt)
        assert 0 < len(expected) < N, name  # selective, so ignoring the filter would fail
        assert got[name]["count"] == len(expected), name
        assert got[name]["scroll"] == sorted(expected), name
        for q, hits in zip(QUERIES, got[name]["search"], strict=True):
            assert [h[0] for h in hits] == _ref_search(q, 8, flt), name
            for pid, score, payload in hits:
                assert payload == _payload(ROW[pid])
                assert score == pytest.approx(float(VECTORS[ROW[pid]] @ q), abs=1e-5)


def test_reference_search_options(index: VectorIndex) -> None:
    got = scenario_search_options(index)
    q = QUERIES[0]
    assert [h[0] for h in got["offset"]] == _ref_search(q, 5, None, offset=3)
    assert got["offset_past_end"] == []
    expected = [i for i in _ref_search(q, N, None) if float(VECTORS[ROW[i]] @ q) >= 0.25]
    assert 0 < len(expected) < 50
    assert [h[0] for h in got["threshold"]] == expected
    assert [h[0] for h in got["filter_offset"]] == _ref_search(q, 4, FILTERS["or"], offset=2)
    assert [h[0] for h in got["by_id"]] == _ref_search(VECTORS[3], 6, None)[1:]
    flt = Filter(must=(FILTERS["keyword"],), must_not=(HasId((IDS[3],)),))
    assert [h[0] for h in got["by_id_filtered"]] == _ref_search(VECTORS[3], 5, flt)
    assert got["by_missing_id"] == PointNotFound.__name__
    assert len(got["vectors"]) == 2


def test_reference_deletes_and_scroll(index: VectorIndex, tmp_path: Path) -> None:
    got = scenario_delete_by_filter(index)
    gone = set(_ref_ids(FILTERS["nested"]))
    gone |= set(_ref_ids(Filter((FieldMatch("parity", "odd"),)), list(range(100, 140))))
    expected = sorted(set(IDS) - gone)
    assert got["ids"] == expected and got["count"] == len(expected)


def test_reference_scroll_pages(index: VectorIndex) -> None:
    got = scenario_scroll_pages(index)
    flat = [pid for page in got["pages"] for pid, _ in page]
    assert flat == sorted(_ref_ids(FILTERS["keyword"]))
    assert all(len(page) == 7 for page in got["pages"][:-1])
    assert got["bad_token"] == "ValueError" and got["bad_limit"] == "ValueError"


def test_reference_aliases_and_provenance(index: VectorIndex) -> None:
    got = scenario_aliases(index)
    assert got["previous"] == [None, COLL]
    assert got["counts"] == [N, 5]
    assert got["resolve"] == ["next", COLL]
    assert got["info"] == ["next", 5, ("live",), "model-v2"]
    assert got["alias_to_alias"] == "ValueError"
    assert got["alias_on_collection"] == got["collection_on_alias"] == "CollectionExists"
    assert got["alias_to_missing"] == "CollectionNotFound"
    assert got["after_delete"] == [{}, "CollectionNotFound"]
    assert got["delete_again"] == AliasNotFound.__name__
    assert got["after_drop"] == [{}, [COLL]]


def test_reference_provenance(index: VectorIndex) -> None:
    got = scenario_provenance(index)
    assert "model-v1" in got["refused"] and "model-v2" in got["refused"]
    assert got["exists"] == CollectionExists.__name__
    assert got["provenance"] == ("model-v1", "tiny", DIM, "content")
    assert got["created_at_set"] and got["no_provenance"] is None
    assert got["missing"] == CollectionNotFound.__name__
    assert [row[0] for row in got["listed"]] == [COLL, "plain"]
    assert got["listed"][1][3].int8_quantization and got["listed"][1][3].hnsw_m == 8


def test_reference_errors(index: VectorIndex) -> None:
    got = scenario_errors(index)
    for name in ("search", "count", "scroll", "delete", "retrieve", "drop"):
        assert got[f"{name}_missing"] == "CollectionNotFound", name
    assert got["bad_dim"] == "DimensionMismatch"
    for name in (
        "delete_nothing",
        "delete_empty_filter",
        "bad_top_k",
        "bad_offset",
        "bad_threshold",
        "bad_id",
    ):
        assert got[name] == "ValueError", name
    assert got["bad_name"] == "ValueError"


@pytest.mark.parametrize(
    "make",
    [
        lambda: FieldMatch("k", 1.5),
        lambda: FieldMatch("", "x"),
        lambda: Range("k"),
        lambda: Range("k", gt=1, gte=2),
        lambda: Range("k", lt=float("inf")),
        lambda: Range("k", gt=True),
        lambda: MatchAny("k", ()),
        lambda: MatchAny("k", ("a", 1)),
        lambda: MatchAny("k", (True, False)),
        lambda: HasId(("not-a-uuid",)),
        lambda: HasId("a-string"),
        lambda: Filter(must=("not a condition",)),
        lambda: Filter(must=FieldMatch("k", 1)),
    ],
)
def test_bad_filters_are_refused_when_built(make: Callable[[], object]) -> None:
    with pytest.raises(BadFilter) as info:
        make()
    assert isinstance(info.value, ValueError) and str(info.value)


def test_filter_depth_is_bounded() -> None:
    flt = Filter((FieldMatch("k", 1),))
    for _ in range(15):
        flt = Filter(must=(flt,))
    with pytest.raises(BadFilter, match="deeper"):
        Filter(must=(flt,))
