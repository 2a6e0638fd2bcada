"""The embedded engine's background HNSW build: writes and queries go on, correctly, while it runs.

The build runs the engine's optimize in a subprocess on an exported copy and swaps the new shard
in (see clipserve.index.embedded.edge_rebuild); these tests check that nothing written meanwhile is lost,
that answers stay right throughout, and that a crash or close mid-build leaves a working index.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipserve.index.base import CollectionSettings, FieldMatch, Filter, Point, Range
from clipserve.index.embedded import edge_rebuild
from clipserve.index.embedded.edge import EdgeIndex
from clipserve.index.embedded.edge_meta import read_meta
from clipserve.index.ids import text_id

DIM = 24
COLL = "built"
THRESHOLD = 1500
SETTINGS = CollectionSettings(
    hnsw_m=8,
    hnsw_ef_construct=32,
    full_scan_threshold=0,  # search through the graph as soon as it exists
    hnsw_build_threshold=THRESHOLD,
    payload_schema=(("group", "integer"),),
)


def _vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


VECTORS = _vectors(2600, 0)
IDS = [text_id(f"p{i}") for i in range(len(VECTORS))]


def _point(i: int, **extra: Any) -> Point:
    return Point(IDS[i], VECTORS[i], {"i": i, "group": i % 10, **extra})


def _exact_top(rows: list[int], q: np.ndarray, k: int) -> list[str]:
    scores = VECTORS[rows] @ q
    return [IDS[rows[j]] for j in np.argsort(-scores, kind="stable")[:k]]


def test_queries_and_writes_proceed_during_background_build(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path)
    try:
        idx.create_collection(COLL, DIM, SETTINGS)
        idx.upsert(COLL, [_point(i) for i in range(THRESHOLD)])  # reaches the threshold
        builder = idx._get(COLL).builder
        assert builder is not None and builder.building

        live = set(range(THRESHOLD))
        during = {"queries": 0, "writes": 0}
        errors: list[BaseException] = []
        next_row = THRESHOLD

        def check_queries() -> None:
            rows = sorted(live)
            for row in (rows[0], rows[len(rows) // 2], rows[-1]):
                hits = idx.search(COLL, VECTORS[row], 5, exact=True)
                assert [h.id for h in hits] == _exact_top(rows, VECTORS[row], 5)
            assert idx.count(COLL) == len(live)

        while builder.building and next_row < len(VECTORS):
            try:
                batch = list(range(next_row, min(next_row + 50, len(VECTORS))))
                idx.upsert(COLL, [_point(i) for i in batch])
                live.update(batch)
                next_row = batch[-1] + 1
                gone = sorted(live)[:: max(1, len(live) // 3)][:2]
                idx.delete(COLL, ids=[IDS[g] for g in gone])
                live.difference_update(gone)
                idx.upsert(COLL, [_point(sorted(live)[5], tag="rewritten")])
                during["writes"] += 3
                check_queries()
                during["queries"] += 1
            except BaseException as exc:
                errors.append(exc)
                break
        assert errors == []
        # The build took long enough for this loop to overlap it (it spawns a process and
        # builds a graph); a loop that never ran would prove nothing.
        assert during["queries"] > 0 and during["writes"] > 0
        assert idx.wait_for_build(COLL, timeout=300)
        assert builder.last_error is None and builder.builds >= 1

        assert idx.indexed_count(COLL) > 0  # the graph exists now
        rows = sorted(live)
        assert idx.count(COLL) == len(rows)
        got = idx.retrieve(COLL, [IDS[r] for r in rows])
        assert [p.id for p in got] == [IDS[r] for r in rows]
        assert sum(p.payload.get("tag") == "rewritten" for p in got) >= 1
        dead = sorted(set(range(next_row)) - live)
        assert idx.retrieve(COLL, [IDS[d] for d in dead]) == []
        for row in rows[:: len(rows) // 20]:
            assert idx.search(COLL, VECTORS[row], 1)[0].id == IDS[row]  # through the graph
            hits = idx.search(COLL, VECTORS[row], 10, exact=True)
            assert [h.id for h in hits] == _exact_top(rows, VECTORS[row], 10)
        flt = Filter((FieldMatch("group", 3), Range("i", lt=2000)))
        assert idx.count(COLL, flt) == sum(1 for r in rows if r % 10 == 3 and r < 2000)
    finally:
        idx.close()

    with EdgeIndex(tmp_path) as again:  # the swapped-in shard is the one that reopens
        assert again.count(COLL) == len(live)
        assert read_meta(tmp_path / COLL).shard.startswith("shard-")
        names = {p.name for p in (tmp_path / COLL).iterdir()}
        assert names == {"collection.json", read_meta(tmp_path / COLL).shard}


def test_writes_between_export_and_swap_are_replayed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = EdgeIndex(tmp_path, background_build=False)
    idx.create_collection(COLL, DIM, SETTINGS)
    idx.upsert(COLL, [_point(i) for i in range(300)])
    real_build = edge_rebuild._run_build

    def build_with_writes(build_dir: Path, stop: threading.Event) -> None:
        # Every kind of write, after the export and before the swap.
        idx.upsert(COLL, [_point(i) for i in range(300, 340)])  # new points
        idx.upsert(COLL, [_point(7, tag="new payload")])  # overwrite
        idx.delete(COLL, ids=[IDS[1], IDS[2]])  # by id
        idx.delete(COLL, filter=Filter((FieldMatch("group", 4),)))  # by filter
        idx.upsert(COLL, [_point(14)])  # group 4 again, after the filter delete
        real_build(build_dir, stop)

    monkeypatch.setattr(edge_rebuild, "_run_build", build_with_writes)
    coll = idx._get(COLL)
    edge_rebuild.rebuild(coll, tmp_path / COLL, threading.Event())
    expected = {r for r in range(340) if r not in (1, 2) and (r % 10 != 4 or r == 14)}
    assert idx.count(COLL) == len(expected)
    pages, token = [], None
    while True:
        page, token = idx.scroll(COLL, limit=100, page_token=token)
        pages += page
        if token is None:
            break
    assert sorted(p.id for p in pages) == sorted(IDS[r] for r in expected)
    assert idx.retrieve(COLL, [IDS[7]])[0].payload["tag"] == "new payload"
    assert idx.indexed_count(COLL) > 0
    idx.close()


def test_close_during_build_cancels_it_and_keeps_the_data(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path)
    idx.create_collection(COLL, DIM, SETTINGS)
    idx.upsert(COLL, [_point(i) for i in range(THRESHOLD)])
    idx.close()  # stops the build (kills its process) and waits for it
    with EdgeIndex(tmp_path, background_build=False) as again:
        assert again.count(COLL) == THRESHOLD
        names = {p.name for p in (tmp_path / COLL).iterdir()}
        assert names == {"collection.json", read_meta(tmp_path / COLL).shard}


def test_leftovers_of_a_crashed_build_are_removed(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path, background_build=False) as idx:
        idx.create_collection(COLL, DIM, SETTINGS)
        idx.upsert(COLL, [_point(i) for i in range(10)])
    (tmp_path / COLL / "shard-deadbeef").mkdir()
    (tmp_path / COLL / ".build-deadbeef").mkdir()
    with EdgeIndex(tmp_path, background_build=False) as idx:
        assert idx.count(COLL) == 10
    assert {p.name for p in (tmp_path / COLL).iterdir()} == {"collection.json", "shard"}
