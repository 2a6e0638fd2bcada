"""Insert throughput and top-10 query latency: EdgeIndex vs RemoteIndex (qdrant-client local mode).

    python bench/bench_index.py [--n 20000] [--dim 128] [--queries 200] [--filtered 20] [--no-hnsw]

Both sides get the same random unit vectors (fixed seed) and payloads, inserted through the
`VectorIndex` interface in calls of `--batch` points (EdgeIndex flushes to disk per call, so each
call is durable as the interface promises). Queries are exact top-10 on both sides; the extra
"edge hnsw" row builds the HNSW graph (`optimize`) and reports its latency and recall@10 against
the exact result. "filt" is a keyword filter matching 1/8 of the points, without and with a
payload index on the field. Local mode is qdrant-client's pure-Python stand-in for a server, not a server:
the ratio says how much faster the embedded engine is than that stand-in, nothing about a real
Qdrant deployment, which adds a network round trip per call.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from qdrant_client import QdrantClient

from clipserve.index.base import FieldMatch, Filter, Point, VectorIndex
from clipserve.index.embedded.edge import EdgeIndex
from clipserve.index.ids import text_id
from clipserve.index.remote.remote import RemoteIndex

COLL = "bench"


def _points(n: int, dim: int, seed: int) -> tuple[list[Point], np.ndarray]:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pts = [Point(text_id(f"item {i}"), v[i], {"i": i, "shard": f"s{i % 8}"}) for i in range(n)]
    return pts, v


def _insert(index: VectorIndex, points: list[Point], dim: int, batch: int) -> float:
    """Points per second through `upsert`."""
    index.ensure_collection(COLL, dim)
    start = time.perf_counter()
    for i in range(0, len(points), batch):
        index.upsert(COLL, points[i : i + batch])
    elapsed = time.perf_counter() - start
    assert index.count(COLL) == len(points)
    return len(points) / elapsed


def _query(
    index: VectorIndex, queries: np.ndarray, flt: Filter | None = None
) -> tuple[np.ndarray, list[list[str]]]:
    """Per-query latency in ms and the returned ids."""
    index.search(COLL, queries[0], 10, flt)  # warm-up
    lat, ids = [], []
    for q in queries:
        start = time.perf_counter()
        hits = index.search(COLL, q, 10, flt)
        lat.append((time.perf_counter() - start) * 1e3)
        ids.append([h.id for h in hits])
    return np.array(lat), ids


def _recall(got: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth, strict=True)]))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument(
        "--filtered", type=int, default=20, help="filtered queries (local mode is slow)"
    )
    ap.add_argument("--batch", type=int, default=1024, help="points per upsert call")
    ap.add_argument("--no-hnsw", action="store_true", help="skip the edge HNSW row")
    args = ap.parse_args(argv)

    points, _ = _points(args.n, args.dim, seed=0)
    queries, _ = _points(args.queries, args.dim, seed=1)
    qv = np.stack([p.vector for p in queries])
    qfv = qv[: args.filtered]
    flt = Filter((FieldMatch("shard", "s3"),))
    Row = tuple[float | None, np.ndarray | None, np.ndarray | None, float | None]
    rows: dict[str, Row] = {}

    with tempfile.TemporaryDirectory() as tmp:
        edge = EdgeIndex(os.path.join(tmp, "edge"), exact=True)
        remote = RemoteIndex(client=QdrantClient(":memory:"))
        try:
            ins_e = _insert(edge, points, args.dim, args.batch)
            lat_e, ids_e = _query(edge, qv)
            flat_e, _ = _query(edge, qfv, flt)
            rows["edge exact"] = (ins_e, lat_e, flat_e, None)
            edge.create_payload_index(COLL, "shard", "keyword")
            flat_k, _ = _query(edge, qfv, flt)
            rows["edge exact +payload idx"] = (None, _query(edge, qv)[0], flat_k, None)

            nosync = EdgeIndex(os.path.join(tmp, "edge-nosync"), exact=True, fsync=False)
            rows["edge insert, fsync=False"] = (
                _insert(nosync, points, args.dim, args.batch),
                None,
                None,
                None,
            )
            nosync.close()

            ins_r = _insert(remote, points, args.dim, args.batch)
            lat_r, ids_r = _query(remote, qv)
            flat_r, _ = _query(remote, qfv, flt)
            rows["remote(local) exact"] = (ins_r, lat_r, flat_r, _recall(ids_r, ids_e))

            if not args.no_hnsw:
                start = time.perf_counter()
                edge.optimize(COLL)
                build_s = time.perf_counter() - start
                edge.close()  # reopen the same directory without forcing exact search
                edge = EdgeIndex(os.path.join(tmp, "edge"))
                lat_h, ids_h = _query(edge, qv)
                flat_h, _ = _query(edge, qfv, flt)
                rows[f"edge hnsw (build {build_s:.1f}s)"] = (
                    None,
                    lat_h,
                    flat_h,
                    _recall(ids_h, ids_e),
                )
        finally:
            edge.close()
            remote.close()

    print(
        f"VectorIndex benchmark: {args.n} x {args.dim} float32 unit vectors, {args.queries} "
        f"top-10 queries, upsert calls of {args.batch}; {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(
        f"{'index':<26}{'insert pts/s':>14}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'filt p50':>10}{'recall@10':>11}"
    )

    def pct(x: np.ndarray | None, q: float, width: int) -> str:
        return f"{np.percentile(x, q):>{width}.3f}" if x is not None else f"{'-':>{width}}"

    for name, (ins, lat, flat, rec) in rows.items():
        ins_s = f"{ins:,.0f}" if ins is not None else "-"
        rec_s = "-" if lat is None else f"{rec:.3f}" if rec is not None else "ref"
        print(
            f"{name:<26}{ins_s:>14}{pct(lat, 50, 9)}{pct(lat, 95, 9)}{pct(flat, 50, 10)}{rec_s:>11}"
        )
    e, r = rows["edge exact"], rows["remote(local) exact"]
    assert e[0] is not None and r[0] is not None and e[1] is not None and r[1] is not None
    print(
        f"edge / remote(local): insert x{e[0] / r[0]:.1f}, "
        f"query p50 x{np.percentile(r[1], 50) / np.percentile(e[1], 50):.1f} faster"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
