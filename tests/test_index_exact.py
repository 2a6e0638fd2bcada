"""Exact search through BLAS (`index/embedded/edge_exact.py`) against the engine's own scan and a
numpy reference: same ids in the same order, scores to float rounding, through every write."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipserve.index.base import FieldMatch, Filter, HasId, Hit, Point, Range
from clipserve.index.embedded.edge import EdgeIndex
from clipserve.index.embedded.edge_exact import ExactMatrix, id_conditions

DIM = 32
N = 1500
COLL = "items"


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


VECTORS = _unit(N, 0)
QUERIES = _unit(12, 1) * 3.0  # not unit length: both paths must normalise the query
IDS = [str(uuid.UUID(int=i + 1)) for i in range(N)]


def _points(rows: range | list[int], vectors: np.ndarray = VECTORS) -> list[Point]:
    return [Point(IDS[i], vectors[i], {"i": i, "even": i % 2 == 0}) for i in rows]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[EdgeIndex, EdgeIndex]]:
    """The same writes into an index answering exact searches by BLAS and one by the engine."""
    blas = EdgeIndex(tmp_path / "blas", fsync=False, background_build=False)
    engine = EdgeIndex(tmp_path / "engine", fsync=False, background_build=False,
                       exact_in_memory=False)  # fmt: skip
    for idx in (blas, engine):
        idx.create_collection(COLL, DIM)
        idx.upsert(COLL, _points(range(N)))
    yield blas, engine
    blas.close()
    engine.close()


def _same(a: list[Hit], b: list[Hit]) -> None:
    assert [h.id for h in a] == [h.id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    assert [h.payload for h in a] == [h.payload for h in b]


def _both(pair: tuple[EdgeIndex, EdgeIndex], method: str, *args: Any, **kw: Any) -> None:
    blas, engine = pair
    _same(getattr(blas, method)(*args, **kw), getattr(engine, method)(*args, **kw))


def _matrix(idx: EdgeIndex) -> ExactMatrix | None:
    return idx._get(COLL).exact_matrix


# --- the matrix alone ---


def test_matrix_matches_numpy_through_overwrites_deletes_and_reuse() -> None:
    m = ExactMatrix(DIM, capacity=4)  # grows several times
    m.put(IDS[:N], VECTORS * 2.0)  # normalised on the way in
    m.put(IDS[:10], VECTORS[N - 10 :])  # overwrite
    m.delete(IDS[10:60] + ["not-there"])
    m.put(IDS[N - 50 : N], VECTORS[:50])  # already present: overwritten in place
    expected = VECTORS.copy()
    expected[:10] = VECTORS[N - 10 :]
    expected[N - 50 :] = VECTORS[:50]
    alive = np.ones(N, bool)
    alive[10:60] = False
    assert len(m) == N - 50
    for q in QUERIES:
        scores = np.where(alive, expected @ (q / np.linalg.norm(q)), -np.inf)
        want = [IDS[r] for r in np.argsort(-scores, kind="stable")[:7]]
        got = m.search(q, 7)
        assert [pid for pid, _ in got] == want
        np.testing.assert_allclose([s for _, s in got], np.sort(scores)[::-1][:7], atol=1e-5)
    m.put(["new"], VECTORS[:1])  # reuses a freed row
    assert m.search(VECTORS[0], 2)[0][0] in ("new", IDS[N - 50])


def test_matrix_keep_drop_threshold_and_small_collections() -> None:
    m = ExactMatrix(DIM)
    assert m.search(QUERIES[0], 5) == []
    m.put(IDS[:3], VECTORS[:3])
    assert len(m.search(QUERIES[0], 10)) == 3  # limit above the size
    assert [p for p, _ in m.search(VECTORS[1], 3, keep={IDS[1], IDS[2], "x"})][0] == IDS[1]
    assert IDS[1] not in [p for p, _ in m.search(VECTORS[1], 3, drop={IDS[1]})]
    assert [p for p, _ in m.search(VECTORS[1], 3, keep={IDS[1]}, drop={IDS[1]})] == []
    hits = m.search(VECTORS[2], 3, score_threshold=0.999)
    assert [p for p, _ in hits] == [IDS[2]]


def test_only_id_conditions_stay_off_the_engine() -> None:
    assert id_conditions(None) == (None, set())
    assert id_conditions(Filter()) == (None, set())
    assert id_conditions(Filter(must_not=(HasId((IDS[0],)),))) == (None, {IDS[0]})
    assert id_conditions(Filter(must=(HasId((IDS[0], IDS[1])), HasId((IDS[1],))))) == (
        {IDS[1]},
        set(),
    )
    assert id_conditions(Filter(must=(FieldMatch("even", True),))) is None
    assert id_conditions(Filter(should=(HasId((IDS[0],)),))) is None
    assert id_conditions(Filter(must=(Filter(must=(HasId((IDS[0],)),)),))) is None


# --- EdgeIndex: BLAS and the engine give the same answers ---


def test_exact_search_agrees_with_the_engine(pair: tuple[EdgeIndex, EdgeIndex]) -> None:
    blas, engine = pair
    for q in QUERIES:
        _both(pair, "search", COLL, q, 10, exact=True)
        _both(pair, "search", COLL, q, 5, exact=True, offset=7)
        _both(pair, "search", COLL, q, 50, exact=True, score_threshold=0.3)
    assert _matrix(blas) is not None and _matrix(engine) is None
    _both(pair, "search_by_id", COLL, IDS[17], 8, exact=True)  # must_not has_id: BLAS
    keep = Filter(must=(HasId(tuple(IDS[:40])),))
    _both(pair, "search", COLL, QUERIES[0], 10, keep, exact=True)
    # A payload condition goes to the engine on both sides.
    _both(pair, "search", COLL, QUERIES[0], 10, Filter(must=(Range("i", lt=500),)), exact=True)
    a = blas.search(COLL, QUERIES[0], 3, exact=True, with_vectors=True)
    b = engine.search(COLL, QUERIES[0], 3, exact=True, with_vectors=True)
    np.testing.assert_allclose(np.stack([h.vector for h in a]), np.stack([h.vector for h in b]))


def test_writes_reach_exact_search(pair: tuple[EdgeIndex, EdgeIndex]) -> None:
    blas, _ = pair
    blas.search(COLL, QUERIES[0], 1, exact=True)  # load the matrix first
    moved = _unit(N, 2)
    for idx in pair:
        idx.upsert(COLL, _points(range(0, 200), moved))  # overwrite
        idx.upsert(COLL, [Point(str(uuid.UUID(int=10**6)), QUERIES[1], {"i": -1, "even": 1})])
        idx.delete(COLL, ids=IDS[200:260])
    assert _matrix(blas) is not None  # kept up to date, not reloaded
    for q in QUERIES:
        _both(pair, "search", COLL, q, 10, exact=True)
    assert blas.search(COLL, QUERIES[1], 1, exact=True)[0].payload["i"] == -1
    for idx in pair:  # the matrix cannot tell which points a payload filter deletes: reloaded
        idx.delete(COLL, filter=Filter(must=(FieldMatch("even", True),)))
    assert _matrix(blas) is None
    for q in QUERIES:
        _both(pair, "search", COLL, q, 10, exact=True)
    assert blas.count(COLL) == len(_matrix(blas))  # type: ignore[arg-type]


class _FailingShard:
    """The live shard, except that its second update raises (a write failing half-way)."""

    def __init__(self, shard: Any) -> None:
        self._shard, self.updates = shard, 0

    def update(self, op: Any) -> None:
        self.updates += 1
        if self.updates == 2:
            raise RuntimeError("disk full")
        self._shard.update(op)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._shard, name)


def test_a_failed_write_drops_the_matrix(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path / "i", batch_size=10, fsync=False, background_build=False)
    idx.create_collection(COLL, DIM)
    idx.upsert(COLL, _points(range(100)))
    idx.search(COLL, QUERIES[0], 1, exact=True)
    coll = idx._get(COLL)
    real = coll._live.shard
    coll._live.shard = _FailingShard(real)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="disk full"):
        idx.upsert(COLL, _points(range(100, 150)))  # 10 points in, 40 not
    coll._live.shard = real
    assert coll.exact_matrix is None
    hits = idx.search(COLL, VECTORS[105], 1, exact=True)  # reloaded from what the shard holds
    assert hits[0].id == IDS[105]
    assert len(coll.exact_matrix) == idx.count(COLL) == 110  # type: ignore[arg-type]
    idx.close()


def test_exact_search_sees_every_acknowledged_write_under_concurrency(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path / "i", fsync=False, background_build=False)
    idx.create_collection(COLL, DIM)
    idx.upsert(COLL, _points(range(500)))
    stop, errors = threading.Event(), []

    def reader() -> None:
        rng = np.random.default_rng(threading.get_ident() % 2**32)
        while not stop.is_set():
            try:
                hits = idx.search(COLL, rng.standard_normal(DIM), 10, exact=True)
                assert len(hits) == 10 and len({h.id for h in hits}) == 10
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(500, N):
            idx.upsert(COLL, _points([i]))
            assert idx.search(COLL, VECTORS[i], 1, exact=True)[0].id == IDS[i]
            if i % 7 == 0:
                idx.delete(COLL, ids=[IDS[i - 400]])
                assert IDS[i - 400] not in {
                    h.id for h in idx.search(COLL, VECTORS[i - 400], 5, exact=True)
                }
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    idx.close()


def test_index_wide_exact_flag_and_opt_out(tmp_path: Path) -> None:
    on = EdgeIndex(tmp_path / "on", exact=True, fsync=False)
    off = EdgeIndex(tmp_path / "off", exact=True, fsync=False, exact_in_memory=False)
    for idx in (on, off):
        idx.create_collection(COLL, DIM)
        idx.upsert(COLL, _points(range(300)))
        idx.search(COLL, QUERIES[0], 5)
    assert on._get(COLL).exact_matrix is not None
    assert off._get(COLL).exact_matrix is None
    _same(on.search(COLL, QUERIES[2], 10), off.search(COLL, QUERIES[2], 10))
    on.close()
    off.close()


def test_a_stream_of_readers_does_not_starve_a_writer() -> None:
    m = ExactMatrix(DIM)
    m.put(IDS[:100], VECTORS[:100])
    stop = threading.Event()

    def reader() -> None:  # overlapping reads, never a moment with no reader
        while not stop.is_set():
            with m.reading():
                m.search(QUERIES[0], 5)  # re-entrant inside reading()
                stop.wait(0.002)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    got = threading.Event()

    def writer() -> None:
        with m.writing():
            m.put([IDS[100]], VECTORS[100:101])
        got.set()

    w = threading.Thread(target=writer)
    w.start()
    try:
        assert got.wait(5), "the writer never got the lock while readers kept coming"
    finally:
        stop.set()
        for t in [*threads, w]:
            t.join()
    assert m.search(VECTORS[100], 1)[0][0] == IDS[100]  # type: ignore[index]
