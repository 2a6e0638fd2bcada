"""`ExactMatrix`: exact (brute-force) search of an embedded collection as one BLAS product.

The engine's own exact search scores point by point on one core: at 100k points it took
3.7x (128-d) to 5.7x (512-d) the time of a numpy matrix-vector product over the same vectors
(docs/benchmarks.md). So an embedded collection that is searched exactly keeps a copy of its
vectors here, as one contiguous float32 matrix, and answers

    scores = matrix @ query;  top = argpartition(scores)   (both cores, through BLAS)

then reads the winners' payloads from the shard. Costs and limits:

- Memory: one more float32 copy of the vectors (4 x dim bytes per point), built only for a
  collection that gets an exact search, on its first one (that search waits for the load).
- Filters: only id conditions (`HasId` in must / must_not, as "more like this" uses) are
  evaluated here; any payload condition sends the search to the engine, which has the payload
  indexes. Results are the same either way (scores to float rounding: the engine sums in
  another order); `tests/test_index_exact.py` checks it.
- Consistency: `EdgeIndex` writes to the shard and to this copy inside `writing()`, and an
  exact search scores and then reads payloads inside `reading()`, so a search sees the shard
  and the copy agree: a write wholly or not at all, never a point scored here and gone from
  the shard. A delete by payload filter (which ids it hit is not known here) `retire`s the
  copy instead; the next exact search reloads it from the shard.

Reads run concurrently (numpy releases the GIL); a write waits for running reads, and exact
searches wait for the write (one engine update: milliseconds).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from clipserve.index.filters import Filter, HasId

# Rows fetched per engine scroll call when loading the copy.
_LOAD_PAGE = 4096


class _ReadWriteLock:
    """Many readers or one writer. A waiting writer holds off new readers (so a steady stream
    of searches cannot starve writes); a thread already reading may read again (re-entrant),
    which a waiting writer must not block or it would wait for that thread forever."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._readers = 0
        self._writers_waiting = 0
        self._writing = False
        self._depth = threading.local()

    @contextmanager
    def read(self) -> Iterator[None]:
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            with self._cv:
                self._cv.wait_for(lambda: not self._writing and not self._writers_waiting)
                self._readers += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                with self._cv:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cv.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cv:
            self._writers_waiting += 1
            try:
                self._cv.wait_for(lambda: not self._writing and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cv:
                self._writing = False
                self._cv.notify_all()


def id_conditions(filter: Filter | None) -> tuple[set[str] | None, set[str]] | None:
    """(ids to keep or None for all, ids to exclude) when `filter` holds only id conditions
    at its top level (must: HasId..., must_not: HasId...); None when it needs the engine."""
    if filter is None or filter.is_empty():
        return None, set()
    if filter.should:
        return None
    keep: set[str] | None = None
    for c in filter.must:
        if not isinstance(c, HasId):
            return None
        keep = set(c.ids) if keep is None else keep & set(c.ids)
    drop: set[str] = set()
    for c in filter.must_not:
        if not isinstance(c, HasId):
            return None
        drop.update(c.ids)
    return keep, drop


class ExactMatrix:
    """The vectors of one collection, L2-normalised, with their point ids.

    Rows of deleted points are marked dead and reused by later inserts.
    """

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self.retired = False  # set under writing(): out of date, load a new one
        self._rows = np.zeros((max(capacity, 1), dim), dtype=np.float32)
        self._alive = np.zeros(len(self._rows), dtype=bool)
        self._ids: list[str | None] = []  # row -> id (None: dead)
        self._slot: dict[str, int] = {}  # id -> row
        self._free: list[int] = []
        self._dead = 0
        self._lock = _ReadWriteLock()

    def __len__(self) -> int:
        return len(self._slot)

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Hold off writes (re-entrant in one thread: `search` takes it too)."""
        return self._lock.read()

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive: wraps a write to the shard and the matching `put`/`delete`/retire."""
        return self._lock.write()

    # --- writes: inside writing() once the matrix is shared (one thread may fill a new one) ---

    def put(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or overwrite: `vectors` float32 [len(ids), dim], normalised here."""
        for pid, row in zip(ids, _normalise(vectors), strict=True):
            slot = self._slot.get(pid)
            if slot is None:
                slot = self._new_slot(pid)
            self._rows[slot] = row

    def delete(self, ids: Sequence[str]) -> None:
        for pid in ids:
            slot = self._slot.pop(pid, None)
            if slot is not None:
                self._ids[slot] = None
                self._alive[slot] = False
                self._free.append(slot)
                self._dead += 1

    # --- reads ---

    def search(
        self,
        query: np.ndarray,
        limit: int,
        keep: set[str] | None = None,
        drop: set[str] | None = None,
        score_threshold: float | None = None,
    ) -> list[tuple[str, float]] | None:
        """The best `limit` (id, cosine score) pairs, best first; ties in row order. None if
        the matrix was retired (search the collection's current one)."""
        q = _normalise(query[None, :])[0]
        with self._lock.read():
            if self.retired:
                return None
            n = len(self._ids)
            if n == 0 or limit <= 0:
                return []
            if keep is not None:  # a handful of ids: score only those
                rows = np.array(sorted(self._slot[i] for i in keep if i in self._slot), np.int64)
                scores = self._rows[rows] @ q if len(rows) else np.zeros(0, np.float32)
            else:
                rows = None
                scores = self._rows[:n] @ q
                if self._dead:
                    scores[~self._alive[:n]] = -np.inf
            if drop:
                bad = [self._slot[i] for i in drop if i in self._slot]
                if rows is None:
                    scores[bad] = -np.inf
                else:
                    scores[np.isin(rows, bad)] = -np.inf
            k, m = min(limit, len(scores)), len(scores)
            top = np.argpartition(scores, m - k)[m - k :] if k < m else np.arange(k)
            top = top[np.lexsort((top, -scores[top]))]
            out = []
            for j in top:
                s = float(scores[j])
                if s == -np.inf or (score_threshold is not None and s < score_threshold):
                    break
                slot = int(j) if rows is None else int(rows[j])
                pid = self._ids[slot]
                if pid is not None:
                    out.append((pid, s))
            return out

    def _new_slot(self, pid: str) -> int:
        if self._free:
            slot = self._free.pop()
            self._dead -= 1
            self._ids[slot] = pid
        else:
            slot = len(self._ids)
            if slot == len(self._rows):
                grown = np.zeros((max(16, len(self._rows) * 3 // 2), self.dim), np.float32)
                grown[:slot] = self._rows
                self._rows = grown
                self._alive = np.concatenate([self._alive, np.zeros(len(grown) - slot, bool)])
            self._ids.append(pid)
        self._slot[pid] = slot
        self._alive[slot] = True
        return slot


def load_matrix(shard: object, dim: int, count: int) -> ExactMatrix:
    """An `ExactMatrix` of every point in `shard` (an `EdgeShard`; `count` sizes it)."""
    import qdrant_edge as qe

    matrix = ExactMatrix(dim, capacity=count + count // 8 + 16)
    offset = None
    while True:
        records, offset = shard.scroll(  # type: ignore[attr-defined]
            qe.ScrollRequest(offset=offset, limit=_LOAD_PAGE, with_payload=False, with_vector=True)
        )
        if records:
            matrix.put(
                [str(r.id) for r in records],
                np.asarray([_dense(r.vector) for r in records], dtype=np.float32),
            )
        if offset is None:
            return matrix


def _dense(vector: object) -> object:
    # A record's vector is a list, or a {name: list} dict for named vectors.
    if isinstance(vector, dict):
        return next(iter(vector.values()))
    return vector


def _normalise(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1, norms)
