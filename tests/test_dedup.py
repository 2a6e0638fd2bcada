"""Near-duplicate groups (Dedup RPC and `clipserve dedup`) through the index's own neighbour
search, against a brute-force reference, on controlled vectors and on real re-encoded images."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from index_support import DIM, BackgroundServer, png
from PIL import Image

from clipserve.index.ids import text_id
from clipserve.serving.config import ServerConfig


@pytest.fixture(scope="module")
def bg(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path_factory.mktemp("i"))
    server = BackgroundServer(config)
    yield server
    server.stop()


def reference_groups(ids: list[str], vectors: np.ndarray, threshold: float) -> list[list[str]]:
    """Leader clustering in id order, brute force: what Dedup must return."""
    order = np.argsort(ids)
    sims = vectors @ vectors.T
    grouped: set[int] = set()
    groups = []
    for i in order:
        if i in grouped:
            continue
        members = [j for j in np.argsort(-sims[i], kind="stable")
                   if j != i and j not in grouped and sims[i, j] >= threshold]  # fmt: skip
        if members:
            grouped.update([i, *members])
            groups.append([ids[i], *(ids[j] for j in members)])
    return groups


def test_dedup_groups_equal_the_brute_force_reference(bg: BackgroundServer) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, DIM))
    rows, sizes = [], [4, 1, 3, 1, 2, 1]  # clusters of near-duplicates, and singletons
    for c, size in zip(centres, sizes, strict=True):
        for _ in range(size):
            rows.append(c + rng.normal(scale=0.05, size=DIM))
    vectors = np.array(rows, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [(f"doc {i}", {"i": i}) for i in range(len(rows))]
    version = bg.client.info().model_version
    ids = bg.client.upsert(items, collection="dups", vectors=vectors, vector_model_version=version)
    resp = bg.client.dedup(0.95, collection="dups")
    got = [list(g.ids) for g in resp.groups]
    assert got == reference_groups(ids, vectors, 0.95)
    assert sorted(len(g) for g in got) == [2, 3, 4] and resp.points_scanned == len(rows)
    for g in resp.groups:  # min_score: the lowest similarity to the group's first id
        vec = {i: v for i, v in zip(ids, vectors, strict=True)}
        lowest = min(float(vec[g.ids[0]] @ vec[m]) for m in g.ids[1:])
        assert g.min_score == pytest.approx(lowest, abs=1e-4)
    assert len(bg.client.dedup(0.95, collection="dups", max_groups=2).groups) == 2
    # A filter restricts both the points scanned and their neighbours.
    only = bg.client.dedup(0.95, collection="dups", filter={"i": {"lt": 4}})
    assert [list(g.ids) for g in only.groups] == reference_groups(ids[:4], vectors[:4], 0.95)
    assert only.points_scanned == 4
    assert text_id("doc 0") in ids


def reencode(data: bytes, level: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def test_dedup_finds_reencoded_copies_of_real_images(
    bg: BackgroundServer, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    originals = [png(100 + i) for i in range(5)]
    copies = [reencode(originals[0], 1), reencode(originals[3], 9)]
    assert all(c not in originals for c in copies)  # other bytes: other ids
    ids = bg.client.upsert([(d, {}) for d in originals + copies], collection="photos")
    resp = bg.client.dedup(0.999, collection="photos")
    found = sorted(sorted(g.ids) for g in resp.groups)
    assert found == sorted([sorted([ids[0], ids[5]]), sorted([ids[3], ids[6]])])
    from clipserve.cli.main import main

    assert main(["dedup", "--server", bg.address, "--collection", "photos", "--threshold",
                 "0.999", "--json"]) == 0  # fmt: skip
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines()]
    assert sorted(sorted(g["ids"]) for g in lines) == found
    assert "2 groups, 2 duplicates among 7 points" in out.err
