"""`EdgeIndex`: Qdrant's own engine in-process (`qdrant_edge`), one shard per collection.

On-disk layout under `path`:

    <path>/<collection>/collection.json   {"format": 1, "dim": 512, "distance": "cosine"}
    <path>/<collection>/shard/            the EdgeShard: WAL, segments, payload indexes

`collection.json` is written (atomically) before the shard is created, so a directory that has it
is a collection; reopening reads the dimension from it and the engine checks it against the
segments. Only one process may hold a directory: the shard's WAL is locked while it is open.

Durability: `EdgeShard.update` appends to the WAL before applying, which survives a process crash;
`upsert` then calls `flush()` (WAL and segments to disk) so the write also survives an OS crash or
power loss when `upsert` returns. `fsync=False` skips that flush (~2-3 ms per call).

Threads: the engine is internally synchronised (a WAL mutex, read/write-locked segments) and
releases the GIL, so searches from several gRPC workers run concurrently. The Python lock here
only guards opening, creating and closing collections. `close()` expects in-flight calls to have
finished (the server drains first); a call racing it gets an error, not undefined behaviour.

Search is exact or HNSW per segment, as the engine decides: segments under the HNSW
`full_scan_threshold`, and every segment not yet optimised, are scanned in full. The engine has
no background optimiser: `optimize(name)` builds the HNSW graph (seconds per 10k points), after
which searches use it unless `exact=True`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import qdrant_edge as qe

from clipserve.index.base import (
    CollectionNotFound,
    DimensionMismatch,
    Filter,
    Hit,
    Point,
    as_vector,
    check_collection_name,
    ordered_points,
)
from clipserve.index.ids import canonical_id

_META_FILE = "collection.json"
_SHARD_DIR = "shard"
_FORMAT = 1

PayloadKind = Literal["keyword", "integer", "bool"]
_SCHEMA = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "bool": qe.PayloadSchemaType.Bool,
}


@dataclass(frozen=True)
class _Collection:
    shard: qe.EdgeShard
    dim: int


class EdgeIndex:
    """A `VectorIndex` on a local directory, one Qdrant Edge shard per collection.

    Args:
        path: root directory (created if missing).
        exact: force exact (brute-force) search even where an HNSW graph exists.
        batch_size: points per engine update (one WAL record each).
        fsync: flush WAL and segments before `upsert` returns (see module docstring).
    """

    kind = "qdrant-edge"  # reported by the server's Info

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        exact: bool = False,
        batch_size: int = 256,
        fsync: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._root = Path(path)
        self._root.mkdir(parents=True, exist_ok=True)
        self._exact = exact
        self._batch_size = batch_size
        self._fsync = fsync
        self._lock = threading.Lock()
        self._open: dict[str, _Collection] = {}
        self._closed = False

    # --- VectorIndex ---

    def ensure_collection(self, name: str, dim: int) -> None:
        check_collection_name(name)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        with self._lock:
            self._check_open()
            coll = self._open.get(name)
            if coll is None and (self._root / name / _META_FILE).exists():
                coll = self._load(name)
            if coll is None:
                self._create(name, dim)
            elif coll.dim != dim:
                raise DimensionMismatch(
                    f"collection {name!r} exists with dim {coll.dim}, asked for {dim}"
                )

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        coll = self._get(name)
        # Validate the whole call before writing any of it: a bad point fails the call, not half.
        prepared = [
            (canonical_id(p.id), as_vector(p.vector, coll.dim), dict(p.payload)) for p in points
        ]
        for start in range(0, len(prepared), self._batch_size):
            batch = prepared[start : start + self._batch_size]
            coll.shard.update(
                qe.UpdateOperation.upsert_points([qe.Point(i, v, pl) for i, v, pl in batch])
            )
        if prepared and self._fsync:
            coll.shard.flush()

    def search(
        self, name: str, vector: np.ndarray, top_k: int, filter: Filter | None = None
    ) -> list[Hit]:
        coll = self._get(name)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        request = qe.QueryRequest(
            limit=top_k,
            query=qe.Query.Nearest(as_vector(vector, coll.dim)),
            filter=_edge_filter(filter),
            with_payload=True,
            params=qe.SearchParams(exact=self._exact),
        )
        return [
            Hit(id=str(p.id), score=float(p.score), payload=p.payload or {})
            for p in coll.shard.query(request)
        ]

    def count(self, name: str) -> int:
        return int(self._get(name).shard.count(qe.CountRequest(exact=True)))

    def retrieve(self, name: str, ids: Sequence[str]) -> list[Point]:
        """Stored points for `ids`, in the order asked, each once; unknown ids are left out.

        Vectors come back as stored: cosine collections keep the L2-normalised vector.
        """
        coll = self._get(name)
        wanted = list(dict.fromkeys(canonical_id(i) for i in ids))
        if not wanted:
            return []
        records = coll.shard.retrieve(wanted, with_payload=True, with_vector=True)
        return ordered_points(wanted, records)

    def close(self) -> None:
        """Flush and close every open shard. Idempotent; the index is unusable afterwards."""
        with self._lock:
            self._closed = True
            colls, self._open = list(self._open.values()), {}
        for coll in colls:
            coll.shard.close()  # close() flushes

    # --- Edge-only extras ---

    def create_payload_index(self, name: str, key: str, kind: PayloadKind) -> None:
        """Index payload field `key` so filters on it skip a full payload scan. Idempotent."""
        if kind not in _SCHEMA:
            raise ValueError(f"kind must be one of {sorted(_SCHEMA)}, got {kind!r}")
        coll = self._get(name)
        coll.shard.update(qe.UpdateOperation.create_field_index(key, _SCHEMA[kind]))
        if self._fsync:
            coll.shard.flush()

    def optimize(self, name: str) -> bool:
        """Merge segments and build the HNSW graph now (blocking). True if anything changed."""
        return bool(self._get(name).shard.optimize())

    def __enter__(self) -> EdgeIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("EdgeIndex is closed")

    def _get(self, name: str) -> _Collection:
        coll = self._open.get(name)
        if coll is not None and not self._closed:
            return coll
        check_collection_name(name)
        with self._lock:
            self._check_open()
            coll = self._open.get(name)
            if coll is None:
                if not (self._root / name / _META_FILE).exists():
                    raise CollectionNotFound(f"collection {name!r} does not exist")
                coll = self._load(name)
            return coll

    def _config(self, dim: int) -> qe.EdgeConfig:
        return qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine))

    def _create(self, name: str, dim: int) -> _Collection:
        cdir = self._root / name
        cdir.mkdir(exist_ok=True)
        _write_json_atomic(cdir / _META_FILE, {"format": _FORMAT, "dim": dim, "distance": "cosine"})
        return self._open_shard(name, dim)

    def _load(self, name: str) -> _Collection:
        meta = json.loads((self._root / name / _META_FILE).read_text())
        if meta.get("format") != _FORMAT or meta.get("distance") != "cosine":
            raise ValueError(f"collection {name!r}: unsupported metadata {meta}")
        return self._open_shard(name, int(meta["dim"]))

    def _open_shard(self, name: str, dim: int) -> _Collection:
        sdir = self._root / name / _SHARD_DIR
        try:
            if sdir.exists():
                # Passing the config makes the engine check it against the stored segments.
                shard = qe.EdgeShard.load(str(sdir), self._config(dim))
            else:
                shard = qe.EdgeShard.create(str(sdir), self._config(dim))
        except Exception as exc:  # the engine raises bare Exception; add where and why
            raise RuntimeError(
                f"cannot open edge shard {sdir} (another process may hold it): {exc}"
            ) from exc
        coll = _Collection(shard=shard, dim=dim)
        self._open[name] = coll
        return coll


def _edge_filter(filter: Filter | None) -> qe.Filter | None:
    if filter is None or not filter.must:
        return None
    conditions: list[Any] = []
    for cond in filter.must:
        value: Any = cond.value
        if isinstance(value, bool):
            # qdrant_edge 0.9 reads a Python bool as the integer 0/1 (bool subclasses int), which
            # never matches a stored bool. numpy.bool_ is not an int, so it arrives as a bool.
            value = np.bool_(value)
        elif not isinstance(value, str | int):
            raise ValueError(f"filter on {cond.key!r}: value must be str, int or bool")
        conditions.append(qe.FieldCondition(key=cond.key, match=qe.MatchValue(value)))
    return qe.Filter(must=conditions)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
