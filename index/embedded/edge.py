"""`EdgeIndex`: Qdrant's own engine in-process (`qdrant_edge`), one shard per collection.

On-disk layout under `path` (see `edge_meta` for collection.json):

    <path>/aliases.json                   alias -> collection (see `aliases`)
    <path>/<collection>/collection.json   dim, settings, provenance, live shard directory
    <path>/<collection>/shard/            the EdgeShard: WAL, segments, payload indexes

`collection.json` is written (atomically) before the shard is created, so a directory that has it
is a collection. Dropping renames the directory to `.dropped-*` first (a crash leaves no half
collection) and then deletes it. Only one process may hold a directory: a shard's WAL is locked
while it is open.

Durability: `EdgeShard.update` appends to the WAL before applying, which survives a process crash;
writes then call `flush()` (WAL and segments to disk) so they also survive an OS crash or
power loss when they return. `fsync=False` skips that flush (~2-3 ms per call).

Threads: the engine is internally synchronised and releases the GIL in queries and updates, so
searches from several gRPC workers run concurrently. The Python lock here only guards opening,
creating, dropping and closing collections. `close()` expects in-flight calls to have finished
(the server drains first); a call racing it gets an error, not undefined behaviour.

Search is exact or HNSW per segment: segments under `full_scan_threshold` KB, and segments not
yet indexed, are scanned in full. The graph is built by `optimize(name)`, or in the background
once `hnsw_build_threshold` points have been written (see `edge_builder`). An exact search
(`exact=True`, per call or for the whole index) is answered from a matrix copy of the
collection's vectors through BLAS unless it filters on payload (see `edge_exact`): the engine's
own scan is several times slower.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from clipserve.index.aliases import AliasTable
from clipserve.index.base import (
    AliasNotFound,
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    CollectionSettings,
    DimensionMismatch,
    Filter,
    Hit,
    Point,
    Provenance,
    as_matrix,
    as_vector,
    check_collection_name,
    check_dim,
    check_model,
    check_scroll_args,
    check_search_args,
    delete_filter,
    neighbours,
    ordered_points,
    to_hit,
    to_point,
)
from clipserve.index.collections import creation_provenance
from clipserve.index.embedded.edge_builder import BuildTrigger
from clipserve.index.embedded.edge_collection import EdgeCollection
from clipserve.index.embedded.edge_exact import ExactMatrix, id_conditions, load_matrix
from clipserve.index.embedded.edge_filters import edge_filter
from clipserve.index.embedded.edge_meta import (
    EdgeMeta,
    edge_config,
    is_collection,
    payload_index_op,
    read_meta,
    write_meta,
)
from clipserve.index.embedded.edge_rebuild import clean_stale, rebuild
from clipserve.index.ids import canonical_id

_DROPPED_PREFIX = ".dropped-"


class EdgeIndex:
    """A `VectorIndex` on a local directory, one Qdrant Edge shard per collection.

    Args:
        path: root directory (created if missing).
        exact: force exact (brute-force) search even where an HNSW graph exists.
        batch_size: points per engine update (one WAL record each).
        fsync: flush WAL and segments before a write returns (see module docstring). With
            False a write survives a crash of this process (the WAL is written) but not of the
            machine until `flush(name)`; bulk ingest flushes once per checkpoint this way.
        background_build: build HNSW graphs on a background thread past each collection's
            `hnsw_build_threshold`; False leaves it to `optimize()`.
        exact_in_memory: answer exact searches from a float32 matrix copy of the vectors
            (`edge_exact`, 4 x dim bytes per point more, only for collections searched
            exactly); False leaves every search to the engine.
    """

    kind = "qdrant-edge"  # reported by the server's Info

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        exact: bool = False,
        batch_size: int = 256,
        fsync: bool = True,
        background_build: bool = True,
        exact_in_memory: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._root = Path(path)
        self._root.mkdir(parents=True, exist_ok=True)
        for stale in self._root.glob(_DROPPED_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)  # a drop interrupted by a crash
        self._exact = exact
        self._batch_size = batch_size
        self._fsync = fsync
        self._background_build = background_build
        self._exact_in_memory = exact_in_memory
        self._lock = threading.RLock()
        self._open: dict[str, EdgeCollection] = {}
        self._aliases = AliasTable(self._root)
        self._closed = False

    # --- collections ---

    def create_collection(
        self,
        name: str,
        dim: int,
        settings: CollectionSettings | None = None,
        provenance: Provenance | None = None,
    ) -> CollectionInfo:
        check_collection_name(name)
        check_dim(dim)
        settings = settings or CollectionSettings()
        provenance = creation_provenance(name, dim, settings, provenance)
        with self._lock:
            self._check_open()
            if name in self._open or is_collection(self._root / name):
                raise CollectionExists(f"collection {name!r} exists already")
            if self._aliases.get(name) is not None:
                raise CollectionExists(f"an alias named {name!r} exists already")
            coll = self._create(name, EdgeMeta(dim, settings, provenance))
        return self._info(coll)

    def ensure_collection(
        self,
        name: str,
        dim: int,
        settings: CollectionSettings | None = None,
        provenance: Provenance | None = None,
    ) -> None:
        check_collection_name(name)
        check_dim(dim)
        with self._lock:
            self._check_open()
            target = self._aliases.get(name) or name
            if target in self._open or is_collection(self._root / target):
                coll = self._get(target)
            else:
                self.create_collection(name, dim, settings, provenance)
                return
        if coll.dim != dim:
            raise DimensionMismatch(
                f"collection {name!r} exists with dim {coll.dim}, asked for {dim}"
            )
        if provenance is not None:
            check_model(coll.name, coll.meta.provenance, provenance.model_version)

    def drop_collection(self, name: str) -> None:
        check_collection_name(name)
        with self._lock:
            self._check_open()
            if self._aliases.get(name) is not None:
                raise ValueError(f"{name!r} is an alias; drop_collection takes a collection name")
            coll = self._get(name)
            if coll.builder is not None:
                coll.builder.close()
            self._aliases.drop_target(name)
            del self._open[name]
            coll.close()
            trash = self._root / f"{_DROPPED_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            os.replace(self._root / name, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def list_collections(self) -> list[CollectionInfo]:
        with self._lock:
            self._check_open()
            names = sorted(
                p.name
                for p in self._root.iterdir()
                if not p.name.startswith(".") and is_collection(p)
            )
        return [self._info(self._get(n)) for n in names]

    def collection_info(self, name: str) -> CollectionInfo:
        return self._info(self._get(name))

    def provenance(self, name: str) -> Provenance | None:
        return self._get(name).meta.provenance

    # --- aliases ---

    def set_alias(self, alias: str, collection: str) -> str | None:
        check_collection_name(alias)
        check_collection_name(collection)
        with self._lock:
            self._check_open()
            if self._aliases.get(collection) is not None:
                raise ValueError(f"{collection!r} is an alias; an alias must name a collection")
            if alias in self._open or is_collection(self._root / alias):
                raise CollectionExists(f"a collection named {alias!r} exists; pick another alias")
            self._get(collection)  # CollectionNotFound if missing
            return self._aliases.set(alias, collection)

    def delete_alias(self, alias: str) -> None:
        check_collection_name(alias)
        if not self._aliases.delete(alias):
            raise AliasNotFound(f"alias {alias!r} does not exist")

    def resolve(self, name: str) -> str:
        return self._get(name).name

    def aliases(self) -> dict[str, str]:
        return self._aliases.snapshot()

    # --- points ---

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        coll = self._get(name)
        # Validate the whole call before writing any of it: a bad point fails the call, not half.
        ids = [canonical_id(p.id) for p in points]
        if not ids:
            return
        matrix = as_matrix([p.vector for p in points], coll.dim)
        # Plain lists cross into the engine faster than numpy rows (measured: ~1.4x).
        rows = matrix.tolist()
        payloads = [dict(p.payload) for p in points]
        with coll.write_lock, coll.using() as shard:
            with coll.exact_writing():
                try:
                    for start in range(0, len(ids), self._batch_size):
                        end = start + self._batch_size
                        batch = zip(
                            ids[start:end], rows[start:end], payloads[start:end], strict=True
                        )
                        shard.update(
                            qe.UpdateOperation.upsert_points([qe.Point(*b) for b in batch])
                        )
                except BaseException:
                    coll.retire_exact()  # part of the call may be in
                    raise
                if coll.exact_matrix is not None:
                    coll.exact_matrix.put(ids, matrix)
            if self._fsync:
                shard.flush()
            coll.note_ids(ids)
        if coll.builder is not None:
            coll.builder.note_writes(len(ids))

    def delete(
        self, name: str, ids: Sequence[str] | None = None, filter: Filter | None = None
    ) -> None:
        flt = edge_filter(delete_filter(ids, filter))
        coll = self._get(name)
        if flt is None:  # cannot happen: delete_filter always returns a condition
            return
        by_ids_only = filter is None or filter.is_empty()
        with coll.write_lock, coll.using() as shard:
            with coll.exact_writing():
                try:
                    shard.update(qe.UpdateOperation.delete_points_by_filter(flt))
                except BaseException:
                    coll.retire_exact()
                    raise
                if coll.exact_matrix is not None:
                    if by_ids_only and ids is not None:
                        coll.exact_matrix.delete([canonical_id(i) for i in ids])
                    else:  # which points a payload filter hit is known only to the engine
                        coll.retire_exact()
            if self._fsync:
                shard.flush()
            coll.note_filter(flt)

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> list[Point]:
        """Stored points for `ids`, in the order asked, each once; unknown ids are left out.

        Vectors come back as stored: cosine collections keep the L2-normalised vector.
        """
        coll = self._get(name)
        wanted = list(dict.fromkeys(canonical_id(i) for i in ids))
        if not wanted:
            return []
        with coll.using() as shard:
            records = shard.retrieve(wanted, with_payload=True, with_vector=with_vectors)
        return ordered_points(wanted, records)

    def count(self, name: str, filter: Filter | None = None, exact: bool = True) -> int:
        request = qe.CountRequest(exact=exact, filter=edge_filter(filter))
        with self._get(name).using() as shard:
            return int(shard.count(request))

    def scroll(
        self,
        name: str,
        filter: Filter | None = None,
        limit: int = 100,
        page_token: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[Point], str | None]:
        offset = check_scroll_args(limit, page_token)
        coll = self._get(name)
        with coll.using() as shard:
            records, next_id = shard.scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=limit,
                    filter=edge_filter(filter),
                    with_payload=True,
                    with_vector=with_vectors,
                )
            )
        return [to_point(r) for r in records], None if next_id is None else str(next_id)

    def search(
        self,
        name: str,
        vector: np.ndarray,
        top_k: int,
        filter: Filter | None = None,
        *,
        offset: int = 0,
        score_threshold: float | None = None,
        exact: bool = False,
        with_vectors: bool = False,
    ) -> list[Hit]:
        coll = self._get(name)
        check_search_args(top_k, offset, score_threshold)
        if (exact or self._exact) and self._exact_in_memory:
            by_id = id_conditions(filter)
            if by_id is not None:  # no payload condition: BLAS over the matrix copy
                query = as_vector(vector, coll.dim)
                return self._search_matrix(
                    coll, query, top_k, offset, score_threshold, with_vectors, *by_id
                )
        request = qe.QueryRequest(
            limit=top_k,
            offset=offset,
            query=qe.Query.Nearest(as_vector(vector, coll.dim)),
            filter=edge_filter(filter),
            score_threshold=None if score_threshold is None else float(score_threshold),
            with_payload=True,
            with_vector=with_vectors,
            params=coll.search_params(exact or self._exact),
        )
        with coll.using() as shard:
            found = shard.query(request)
        return [to_hit(p, with_vectors) for p in found]

    def search_by_id(
        self,
        name: str,
        point_id: str,
        top_k: int,
        filter: Filter | None = None,
        *,
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        return neighbours(self, name, point_id, top_k, filter, score_threshold, exact)

    def flush(self, name: str) -> None:
        with self._get(name).using() as shard:
            shard.flush()

    def close(self) -> None:
        """Wait for running HNSW builds, then flush and close every open shard. Idempotent;
        the index is unusable afterwards."""
        with self._lock:
            self._closed = True
            colls, self._open = list(self._open.values()), {}
        for coll in colls:
            if coll.builder is not None:
                coll.builder.close()
            coll.close()

    # --- Edge-only extras ---

    def create_payload_index(self, name: str, key: str, kind: str) -> None:
        """Index payload field `key` ("keyword", "integer", "float" or "bool"). Idempotent."""
        op = payload_index_op(key, kind)
        coll = self._get(name)
        with coll.write_lock, coll.using() as shard:
            shard.update(op)
            if self._fsync:
                shard.flush()

    def optimize(self, name: str) -> bool:
        """Merge segments and build the HNSW graph now, in this process (blocking, and holding
        the GIL throughout: see `edge_builder`). True if anything changed."""
        with self._get(name).using() as shard:
            return bool(shard.optimize())

    def wait_for_build(self, name: str, timeout: float | None = None) -> bool:
        """Wait for a background HNSW build of `name`; True when none is running."""
        builder = self._get(name).builder
        return True if builder is None else builder.wait(timeout)

    def indexed_count(self, name: str) -> int:
        """Points of `name` that are in an HNSW graph (the rest are scanned in full)."""
        with self._get(name).using() as shard:
            return int(shard.info().indexed_vectors_count)

    def __enter__(self) -> EdgeIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---

    def _search_matrix(
        self,
        coll: EdgeCollection,
        query: np.ndarray,
        top_k: int,
        offset: int,
        score_threshold: float | None,
        with_vectors: bool,
        keep: set[str] | None,
        drop: set[str],
    ) -> list[Hit]:
        while True:
            matrix = coll.exact_matrix or self._load_matrix(coll)
            with matrix.reading():  # no write between scoring and reading the payloads
                found = matrix.search(query, offset + top_k, keep, drop, score_threshold)
                if found is None:  # retired by a write meanwhile
                    continue
                found = found[offset:]
                if not found:
                    return []
                with coll.using() as shard:
                    records = shard.retrieve(
                        [pid for pid, _ in found], with_payload=True, with_vector=with_vectors
                    )
            points = {p.id: p for p in (to_point(r) for r in records)}
            return [
                Hit(pid, score, points[pid].payload, points[pid].vector if with_vectors else None)
                for pid, score in found
                if pid in points  # always, as writes hold off reads; never a KeyError
            ]

    def _load_matrix(self, coll: EdgeCollection) -> ExactMatrix:
        with coll.write_lock:  # no write may land between reading the shard and going live
            if coll.exact_matrix is None:
                with coll.using() as shard:
                    count = int(shard.count(qe.CountRequest(exact=True)))
                    coll.exact_matrix = load_matrix(shard, coll.dim, count)
            return coll.exact_matrix

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("EdgeIndex is closed")

    def _get(self, name: str) -> EdgeCollection:
        target = self._aliases.get(name) or name
        coll = self._open.get(target)
        if coll is not None and not self._closed:
            return coll
        check_collection_name(name)
        with self._lock:
            self._check_open()
            coll = self._open.get(target)
            if coll is None:
                if not is_collection(self._root / target):
                    raise CollectionNotFound(f"collection {name!r} does not exist")
                coll = self._open_shard(target, read_meta(self._root / target))
            return coll

    def _create(self, name: str, meta: EdgeMeta) -> EdgeCollection:
        cdir = self._root / name
        cdir.mkdir(exist_ok=True)
        write_meta(cdir, meta)
        coll = self._open_shard(name, meta)
        with coll.using() as shard:
            for key, kind in meta.settings.payload_schema:
                shard.update(payload_index_op(key, kind))
            shard.flush()
        return coll

    def _open_shard(self, name: str, meta: EdgeMeta) -> EdgeCollection:
        cdir = self._root / name
        if cdir.exists():
            clean_stale(cdir, meta.shard)
        sdir = cdir / meta.shard
        config = edge_config(meta.dim, meta.settings)
        try:
            if sdir.exists():
                # Passing the config makes the engine check it against the stored segments.
                shard = qe.EdgeShard.load(str(sdir), config)
            else:
                shard = qe.EdgeShard.create(str(sdir), config)
        except Exception as exc:  # the engine raises bare Exception; add where and why
            raise RuntimeError(
                f"cannot open edge shard {sdir} (another process may hold it): {exc}"
            ) from exc
        coll = EdgeCollection(name, meta, shard)
        threshold = meta.settings.hnsw_build_threshold
        if self._background_build and threshold > 0:
            info = shard.info()
            pending = max(0, int(info.points_count) - int(info.indexed_vectors_count))
            builder = BuildTrigger(
                name, threshold, lambda stop: rebuild(coll, cdir, stop, self._fsync), pending
            )
            coll.builder = builder
            builder.note_writes(0)  # a reopened collection past its threshold builds now
        self._open[name] = coll
        return coll

    def _info(self, coll: EdgeCollection) -> CollectionInfo:
        aliases = tuple(sorted(a for a, c in self._aliases.snapshot().items() if c == coll.name))
        return CollectionInfo(
            name=coll.name,
            count=self.count(coll.name),
            provenance=coll.meta.provenance,
            settings=coll.meta.settings,
            aliases=aliases,
        )
