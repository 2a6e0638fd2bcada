"""Build an indexed Edge shard from exported points, in a process of its own.

    python -m clipserve.index.embedded.edge_build BUILD_DIR

BUILD_DIR holds what `export_points` wrote from the live shard:

    spec.json      {"dim", "settings", "payload_indexes": [[key, type]], "n", "target"}
    vectors.f32    n x dim float32, row-major
    points.jsonl   one {"id", "payload"} per row, same order

The process creates the shard at `target`, loads the points, creates the payload indexes, runs
the engine's `optimize()` (which builds the HNSW graph), flushes and closes it. It runs apart
from the serving process because `optimize()` holds the Python GIL for its whole run: in the
serving process it would stall every other thread for as long as the build takes.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from clipserve.index.collections import CollectionSettings
from clipserve.index.embedded.edge_meta import edge_config, payload_index_op

SPEC = "spec.json"
VECTORS = "vectors.f32"
POINTS = "points.jsonl"
_BATCH = 1024


class Cancelled(Exception):
    """The export or build was asked to stop."""


def export_points(
    shard: qe.EdgeShard,
    build_dir: Path,
    dim: int,
    settings: CollectionSettings,
    target: Path,
    stop: threading.Event | None = None,
    page: int = 2048,
) -> int:
    """Write every point of `shard` (scrolled in id order, concurrently with its other users)
    and the build spec into `build_dir`; return the number of points. Raises Cancelled when
    `stop` is set."""
    build_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    offset = None
    with open(build_dir / VECTORS, "wb") as vf, open(build_dir / POINTS, "w") as pf:
        while True:
            if stop is not None and stop.is_set():
                raise Cancelled
            records, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=page, with_payload=True, with_vector=True)
            )
            if records:
                vf.write(np.asarray([r.vector for r in records], dtype=np.float32).tobytes())
                for r in records:
                    pf.write(json.dumps({"id": str(r.id), "payload": r.payload or {}}) + "\n")
                n += len(records)
            if offset is None:
                break
    spec = {
        "dim": dim,
        "settings": settings.to_dict(),
        "payload_indexes": _payload_indexes(shard, settings),
        "n": n,
        "target": str(target),
    }
    (build_dir / SPEC).write_text(json.dumps(spec))
    return n


def _payload_indexes(shard: qe.EdgeShard, settings: CollectionSettings) -> list[list[str]]:
    """The declared schema plus indexes added later with `create_payload_index`."""
    names = {
        qe.PayloadSchemaType.Keyword: "keyword",
        qe.PayloadSchemaType.Integer: "integer",
        qe.PayloadSchemaType.Float: "float",
        qe.PayloadSchemaType.Bool: "bool",
    }
    found = {key: kind for key, kind in settings.payload_schema}
    for key, info in shard.info().payload_schema.items():
        kind = names.get(info.data_type)
        if kind is not None:
            found.setdefault(key, kind)
    return [[k, v] for k, v in sorted(found.items())]


def build(build_dir: Path) -> None:
    spec = json.loads((build_dir / SPEC).read_text())
    dim, n = int(spec["dim"]), int(spec["n"])
    settings = CollectionSettings.from_dict(spec["settings"])
    vectors = np.fromfile(build_dir / VECTORS, dtype=np.float32).reshape(n, dim)
    shard = qe.EdgeShard.create(spec["target"], edge_config(dim, settings))
    try:
        with open(build_dir / POINTS) as pf:
            batch: list[qe.Point] = []
            for row, line in enumerate(pf):
                rec = json.loads(line)
                batch.append(qe.Point(rec["id"], vectors[row], rec["payload"]))
                if len(batch) == _BATCH:
                    shard.update(qe.UpdateOperation.upsert_points(batch))
                    batch = []
            if batch:
                shard.update(qe.UpdateOperation.upsert_points(batch))
        for key, kind in spec["payload_indexes"]:
            shard.update(payload_index_op(key, kind))
        shard.optimize()
        shard.flush()
    finally:
        shard.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m clipserve.index.embedded.edge_build BUILD_DIR", file=sys.stderr)
        return 2
    build(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
