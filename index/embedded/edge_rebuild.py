"""Rebuild an embedded collection's shard with its HNSW graph, without stopping it.

    1. start a journal: from now on every write notes the ids it touched (and delete filters);
    2. export every point of the live shard (a scroll: reads, concurrent with everything);
    3. a subprocess (`edge_build`) loads them into a new shard directory and builds the graph;
    4. replay the journal onto the new shard, in rounds, outside the write lock while it is
       long: delete filters first, then each touched id copied from the live shard as it is
       now (upserted if present, deleted if not);
    5. under the write lock: replay the last round, flush, record the new shard directory in
       collection.json (atomically), make the new shard live, close and delete the old one.

Why the replay is exact: a point no write touched since step 1 has the same value in both
shards, so every delete filter matches it in both alike; a touched point ends as the live shard
has it. Reads are never blocked, writes only during step 5 (the last round of the journal).

A crash at any step leaves collection.json naming a complete shard: the old one until step 5
writes the new name. Unnamed `shard-*` and `.build-*` directories are removed when the
collection is next opened.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import qdrant_edge as qe

from clipserve.index.embedded.edge_build import Cancelled, export_points
from clipserve.index.embedded.edge_collection import EdgeCollection, Journal
from clipserve.index.embedded.edge_meta import edge_config, write_meta

log = logging.getLogger(__name__)

_ROUNDS = 5  # catch-up rounds outside the write lock before the final one under it
_SMALL = 2_000  # journal entries replayed under the lock without another round
_COPY_BATCH = 512


RebuildCancelled = Cancelled


def clean_stale(cdir: Path, live_shard: str) -> None:
    """Remove build leftovers of a crashed rebuild (anything but the live shard)."""
    for p in cdir.iterdir():
        if p.is_dir() and p.name != live_shard and _is_build_dir(p.name):
            shutil.rmtree(p, ignore_errors=True)


def _is_build_dir(name: str) -> bool:
    return name == "shard" or name.startswith(("shard-", ".build-"))


def rebuild(coll: EdgeCollection, cdir: Path, stop: threading.Event, fsync: bool = True) -> None:
    """Run steps 1-5 above for `coll` (directory `cdir`). Raises RebuildCancelled if `stop` is
    set before the swap; the live shard is then untouched."""
    gen = uuid.uuid4().hex[:12]
    new_name = f"shard-{gen}"
    build_dir = cdir / f".build-{gen}"
    with coll.write_lock:
        coll.journal = Journal()
    new: qe.EdgeShard | None = None
    try:
        with coll.using() as shard:
            n = export_points(shard, build_dir, coll.dim, coll.meta.settings, cdir / new_name, stop)
        log.info("collection %r: exported %d points, building", coll.name, n)
        _run_build(build_dir, stop)
        new = qe.EdgeShard.load(str(cdir / new_name), edge_config(coll.dim, coll.meta.settings))
        for _ in range(_ROUNDS):
            if stop.is_set():
                raise RebuildCancelled
            with coll.write_lock:
                if coll.journal is None or len(coll.journal) <= _SMALL:
                    break
                pending, coll.journal = coll.journal, Journal()
            _replay(coll, new, pending)
        with coll.write_lock:
            if stop.is_set():
                raise RebuildCancelled
            _replay(coll, new, coll.journal or Journal())
            new.flush()
            meta = replace(coll.meta, shard=new_name)
            write_meta(cdir, meta)
            coll.journal = None
            old = coll.swap(new, meta)
            new = None
        old.close()
    finally:
        with coll.write_lock:
            coll.journal = None
        if new is not None:
            new.close()
        shutil.rmtree(build_dir, ignore_errors=True)
    clean_stale(cdir, new_name)
    if fsync:
        _fsync_dir(cdir)


def _run_build(build_dir: Path, stop: threading.Event) -> None:
    cmd = [sys.executable, "-m", "clipserve.index.embedded.edge_build", str(build_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while True:
        try:
            _, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if stop.is_set():
                proc.kill()
                proc.communicate()
                raise RebuildCancelled from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace")[-2000:]
        raise RuntimeError(f"HNSW build process failed ({proc.returncode}): {tail}")


def _replay(coll: EdgeCollection, new: qe.EdgeShard, journal: Journal) -> None:
    for flt in journal.filters:
        new.update(qe.UpdateOperation.delete_points_by_filter(flt))
    ids = sorted(journal.ids)
    for start in range(0, len(ids), _COPY_BATCH):
        chunk = ids[start : start + _COPY_BATCH]
        with coll.using() as live:
            records = live.retrieve(chunk, with_payload=True, with_vector=True)
        found = {str(r.id) for r in records}
        if records:
            new.update(
                qe.UpdateOperation.upsert_points(
                    [qe.Point(str(r.id), r.vector, r.payload or {}) for r in records]
                )
            )
        gone = [i for i in chunk if i not in found]
        if gone:
            new.update(qe.UpdateOperation.delete_points(gone))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
