"""Index at scale: ingest rate, query latency, recall@10 and memory of the embedded engine.

    python bench/bench_index_scale.py [--n 100000] [--dim 512] [--queries 200]
                                      [--variants numpy,exact,exact_engine,hnsw,hnsw_int8]
                                      [--embeddings FILE.npz]

Data: clustered synthetic unit vectors (1000 Gaussian clusters, fixed seed), as a stand-in for
real embeddings, which are also clustered; queries are further draws from the same clusters,
not stored points. With `--embeddings` (written by bench/embed_synth.py: a bundle's image
embeddings of synthetic images, and caption embeddings as queries) the data are real
embeddings instead, and --n / --dim / --queries come from the file. Each variant runs in a
fresh subprocess so that its resident memory (VmRSS after the queries, and the peak VmHWM)
is its own:

    numpy      exact search as one float32 matrix product + argpartition: the reference
    exact      EdgeIndex, exact (brute-force) search: BLAS over its matrix copy of the
               vectors (index/embedded/edge_exact.py), the default for exact searches
    exact_engine   the same searches left to the engine's own scan (exact_in_memory=False)
    hnsw       EdgeIndex after building the HNSW graph (m 16, ef_construct 100, ef 128)
    hnsw_int8  the same over int8 scalar-quantised vectors, rescored with the originals

Edge variants first ingest the precomputed vectors through `VectorIndex.upsert` in calls of
`--batch` points, each call durable (flushed) when it returns, and report points/s; the exact
variant also feeds the same batches straight to a bare engine shard, alternating with ours, so
"engine pts/s" is the engine's own rate at the same moment. Recall@10 is against the numpy
top-10. RSS is read after a warm-up pass of the queries, before the variant's own numpy copy is
loaded; then its queries alternate with numpy exact search one by one, and "p50/numpy" is the
ratio of the two medians, so both saw the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import qdrant_edge as qe

VARIANTS = ("numpy", "exact", "exact_engine", "hnsw", "hnsw_int8")
COLL = "bench"


def make_data(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), dtype=np.float32)
        for s in range(0, m, 65536):  # chunks keep the temporary copies small at 1M x 512
            k = min(65536, m - s)
            v = centers[rng.integers(0, len(centers), k)]
            v += 0.6 * rng.standard_normal((k, dim)).astype(np.float32)
            out[s : s + k] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out

    return draw(n), draw(queries)


def _rss_mb() -> tuple[float, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _time_queries(search: object, queries: np.ndarray) -> tuple[list[float], list[list[int]]]:
    lat, ids = [], []
    search(queries[0])  # type: ignore[operator]  # warm-up
    for q in queries:
        start = time.perf_counter()
        rows = search(q)  # type: ignore[operator]
        lat.append((time.perf_counter() - start) * 1e3)
        ids.append(rows)
    return lat, ids


def _numpy_top10(matrix: np.ndarray, q: np.ndarray) -> list[int]:
    scores = matrix @ q
    top = np.argpartition(-scores, 10)[:10]
    return [int(r) for r in top[np.argsort(-scores[top], kind="stable")]]


def _raw_shard(path: Path, dim: int) -> qe.EdgeShard:
    return qe.EdgeShard.create(
        str(path), qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine))
    )


def run_variant(variant: str, data_path: str, query_path: str, work: str, batch: int) -> dict:
    """One variant, in this (fresh) process; returns its measurements."""
    data = np.load(data_path, mmap_mode="r")
    queries = np.load(query_path)
    out: dict = {"variant": variant}
    if variant == "numpy":
        matrix = np.ascontiguousarray(data)

        out["lat"], out["ids"] = _time_queries(lambda q: _numpy_top10(matrix, q), queries)
    else:
        from clipserve.index.base import CollectionSettings, Point
        from clipserve.index.embedded.edge import EdgeIndex

        settings = CollectionSettings(
            int8_quantization=variant == "hnsw_int8", hnsw_build_threshold=0
        )
        exact = variant in ("exact", "exact_engine")
        idx = EdgeIndex(
            Path(work) / variant,
            exact=exact,
            background_build=False,
            exact_in_memory=variant != "exact_engine",
        )
        idx.create_collection(COLL, data.shape[1], settings)
        ids = [str(uuid.UUID(int=i + 1)) for i in range(len(data))]
        raw = (
            _raw_shard(Path(work) / f"{variant}-engine", data.shape[1])
            if variant == "exact"
            else None
        )
        ours_s = raw_s = 0.0
        for s in range(0, len(data), batch):
            chunk = np.asarray(data[s : s + batch])
            start = time.perf_counter()
            idx.upsert(COLL, [Point(ids[s + j], chunk[j], {"i": s + j}) for j in range(len(chunk))])
            ours_s += time.perf_counter() - start
            if raw is not None:  # the engine alone, same batch, same moment: our overhead
                start = time.perf_counter()
                rows = chunk.tolist()
                raw.update(
                    qe.UpdateOperation.upsert_points(
                        [qe.Point(ids[s + j], rows[j], {"i": s + j}) for j in range(len(rows))]
                    )
                )
                raw.flush()
                raw_s += time.perf_counter() - start
        out["ingest_pps"] = len(data) / ours_s
        if raw is not None:
            out["engine_pps"] = len(data) / raw_s
            raw.close()
        if not exact:
            start = time.perf_counter()
            idx.optimize(COLL)
            out["build_s"] = time.perf_counter() - start
        out["indexed"] = idx.indexed_count(COLL)

        def search(q: np.ndarray) -> list[int]:
            return [int(h.payload["i"]) for h in idx.search(COLL, q, 10)]

        _time_queries(search, queries)  # touch what the queries touch, then read the memory
        out["rss_mb"], out["peak_rss_mb"] = _rss_mb()
        # Index and numpy alternate query by query, so both see the same machine load.
        matrix = np.ascontiguousarray(data)
        out["lat"], out["ids"], out["np_lat"] = [], [], []
        for q in queries:
            start = time.perf_counter()
            out["ids"].append(search(q))
            out["lat"].append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            _numpy_top10(matrix, q)
            out["np_lat"].append((time.perf_counter() - start) * 1e3)
        idx.close()
        return out
    out["rss_mb"], out["peak_rss_mb"] = _rss_mb()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1024, help="points per upsert call")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--embeddings", help="real embeddings (.npz from bench/embed_synth.py)")
    ap.add_argument(
        "--child", nargs=4, metavar=("VARIANT", "DATA", "QUERIES", "WORK"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_variant(*args.child, batch=args.batch)))
        return 0

    if args.embeddings and not Path(args.embeddings).is_file():
        ap.error(
            f"--embeddings: {args.embeddings} does not exist (write it with bench/embed_synth.py)"
        )
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        if args.embeddings:
            with np.load(args.embeddings) as f:
                data, queries = f["data"], f["queries"]
                kind = (
                    f"real embeddings of model {str(f['model_version'])[:12]} ({args.embeddings})"
                )
            args.n, args.dim, args.queries = data.shape[0], data.shape[1], queries.shape[0]
        else:
            data, queries = make_data(args.n, args.dim, args.queries)
            kind = "clustered unit vectors"
        np.save(f"{tmp}/data.npy", data)
        np.save(f"{tmp}/queries.npy", queries)
        del data
        for v in ["numpy"] + [v for v in variants if v != "numpy"]:
            cmd = [
                sys.executable,
                __file__,
                "--batch",
                str(args.batch),
                "--child",
                v,
                f"{tmp}/data.npy",
                f"{tmp}/queries.npy",
                tmp,
            ]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{v}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                return 1
            results[v] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[v]
            brief = {k: round(x, 2) for k, x in r.items() if isinstance(x, float)}
            print(f"  {v}: done in {time.perf_counter() - start:.0f} s {brief}", file=sys.stderr)

    truth = results["numpy"]["ids"]
    print(
        f"Index scale benchmark: {args.n:,} x {args.dim} {kind}, "
        f"{args.queries} top-10 queries, upsert calls of {args.batch}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'variant':<11}{'ingest pts/s':>13}{'engine pts/s':>13}{'build s':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'recall@10':>11}{'RSS MB':>9}{'peak MB':>9}{'p50/numpy':>11}"
    )
    for v, r in results.items():
        recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(r["ids"], truth, strict=True)])
        r["recall_at_10"] = float(recall)
        r["p50_ms"] = float(np.percentile(r["lat"], 50))
        r["p99_ms"] = float(np.percentile(r["lat"], 99))
        # numpy timed alternately with this variant's queries, in the same process
        r["p50_vs_numpy"] = r["p50_ms"] / float(np.percentile(r.get("np_lat", r["lat"]), 50))
        ingest = f"{r['ingest_pps']:,.0f}" if "ingest_pps" in r else "-"
        engine = f"{r['engine_pps']:,.0f}" if "engine_pps" in r else "-"
        build = f"{r['build_s']:.0f}" if "build_s" in r else "-"
        print(
            f"{v:<11}{ingest:>13}{engine:>13}{build:>9}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{recall:>11.3f}{r['rss_mb']:>9.0f}{r['peak_rss_mb']:>9.0f}"
            f"{r['p50_vs_numpy']:>11.2f}"
        )
    if args.json:
        slim = {
            v: {k: x for k, x in r.items() if k not in ("ids", "lat")} for v, r in results.items()
        }
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": slim}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
