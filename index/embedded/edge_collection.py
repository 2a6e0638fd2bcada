"""One open embedded collection: its live shard, who is using it, and the write journal.

The live shard can be replaced while the collection serves (a background HNSW rebuild swaps in
a new shard, see `edge_rebuild`), so every call borrows the shard it runs on with `using()`:

    with coll.using() as shard:      # a read, or a write under `coll.write_lock`
        shard.query(...)

A swap points `live` at the new shard (one reference assignment, under the condition lock), then
waits until no call still uses the old one before closing it. A call therefore runs wholly on the
old shard or wholly on the new one. Writes hold `write_lock` for their whole duration, so a swap
(which takes it too) never races a half-applied write, and while a rebuild runs each write also
notes what it touched in `journal`, which the rebuild replays onto the new shard.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import qdrant_edge as qe

from clipserve.index.embedded.edge_builder import BuildTrigger
from clipserve.index.embedded.edge_exact import ExactMatrix
from clipserve.index.embedded.edge_meta import EdgeMeta

# int8 search: fetch this many times the candidates asked for, rescore them with the full
# vectors, keep the best. Recall@10 at 100k x 512: 0.94 without it (docs/benchmarks.md).
_OVERSAMPLING = 2.0


@dataclass
class Journal:
    """What writes touched while a rebuild ran: point ids, and delete-by-filter operations."""

    ids: set[str] = field(default_factory=set)
    filters: list[qe.Filter] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids) + len(self.filters)


class _Live:
    def __init__(self, shard: qe.EdgeShard) -> None:
        self.shard = shard
        self.users = 0


class EdgeCollection:
    def __init__(self, name: str, meta: EdgeMeta, shard: qe.EdgeShard) -> None:
        self.name = name
        self.meta = meta
        self.dim = meta.dim
        self.write_lock = threading.Lock()
        self.journal: Journal | None = None
        self._cv = threading.Condition()
        self._live = _Live(shard)
        self.builder: BuildTrigger | None = None  # set by the index
        # The vectors as one matrix for exact search, loaded on the first one (edge_exact);
        # replaced and dropped under write_lock.
        self.exact_matrix: ExactMatrix | None = None

    def exact_writing(self) -> contextlib.AbstractContextManager[None]:
        """Wrap a write (caller holds write_lock) so exact searches see it wholly or not."""
        m = self.exact_matrix
        return m.writing() if m is not None else contextlib.nullcontext()

    def retire_exact(self) -> None:
        """Inside `exact_writing()`: the matrix can no longer follow the shard; the next exact
        search loads a new one."""
        if self.exact_matrix is not None:
            self.exact_matrix.retired = True
            self.exact_matrix = None

    def search_params(self, exact: bool) -> qe.SearchParams:
        s = self.meta.settings
        quant = (
            qe.QuantizationSearchParams(rescore=True, oversampling=_OVERSAMPLING)
            if s.int8_quantization
            else None
        )
        return qe.SearchParams(hnsw_ef=s.hnsw_ef_search, exact=exact, quantization=quant)

    @contextmanager
    def using(self) -> Iterator[qe.EdgeShard]:
        with self._cv:
            live = self._live
            live.users += 1
        try:
            yield live.shard
        finally:
            with self._cv:
                live.users -= 1
                if live.users == 0:
                    self._cv.notify_all()

    def note_ids(self, ids: Sequence[str]) -> None:
        """Record written ids if a rebuild is running (caller holds write_lock)."""
        if self.journal is not None:
            self.journal.ids.update(ids)

    def note_filter(self, flt: qe.Filter) -> None:
        """Record a delete-by-filter if a rebuild is running (caller holds write_lock)."""
        if self.journal is not None:
            self.journal.filters.append(flt)

    def swap(self, shard: qe.EdgeShard, meta: EdgeMeta) -> qe.EdgeShard:
        """Make `shard` live (caller holds write_lock); wait for the old shard's last user and
        return it, unused, for the caller to close."""
        with self._cv:
            old = self._live
            self._live = _Live(shard)
            self.meta = meta
            self._cv.wait_for(lambda: old.users == 0)
        return old.shard

    def close(self) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._live.users == 0, timeout=30)
            self._live.shard.close()  # close() flushes
