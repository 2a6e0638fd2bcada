"""One suite for every VectorIndex: EdgeIndex (the embedded Qdrant engine on a tmp dir) and
RemoteIndex over qdrant-client's local mode (the same client API a Qdrant server gets).

Results are checked against a brute-force numpy reference, and the two engines against each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from clipserve.index.base import (
    CollectionNotFound,
    CollectionSettings,
    DimensionMismatch,
    FieldMatch,
    Filter,
    Point,
    Provenance,
    ProvenanceMismatch,
    VectorIndex,
    require_model,
)
from clipserve.index.embedded.edge import EdgeIndex
from clipserve.index.factory import open_index
from clipserve.index.ids import canonical_id, content_id, image_id, text_id
from clipserve.index.remote.remote import RemoteIndex

DIM = 128
N = 300
COLL = "test_items"


def _unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _payload(i: int) -> dict[str, object]:
    return {"i": i, "parity": "even" if i % 2 == 0 else "odd", "bucket": i % 5, "flag": i % 3 == 0}


VECTORS = _unit_vectors(N, DIM, seed=0)
QUERIES = _unit_vectors(20, DIM, seed=1)
POINTS = [Point(text_id(f"caption {i}"), VECTORS[i], _payload(i)) for i in range(N)]
ID_TO_ROW = {p.id: i for i, p in enumerate(POINTS)}


def _reference_top_k(query: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[str]:
    scores = VECTORS @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    order = [int(r) for r in np.argsort(-scores, kind="stable")[:k] if np.isfinite(scores[r])]
    return [POINTS[r].id for r in order]


def _top1(index: VectorIndex, row: int) -> str:
    return index.search(COLL, VECTORS[row], 1)[0].id


def _mask(flt: Filter) -> np.ndarray:
    return np.array([all(_payload(i)[c.key] == c.value for c in flt.must) for i in range(N)])


@pytest.fixture(params=["edge", "remote"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    idx: VectorIndex
    if request.param == "edge":
        idx = EdgeIndex(tmp_path / "edge")
    else:
        idx = RemoteIndex(client=QdrantClient(":memory:"))
    yield idx
    idx.close()


@pytest.fixture
def filled(index: VectorIndex) -> VectorIndex:
    index.ensure_collection(COLL, DIM)
    index.upsert(COLL, POINTS)
    return index


# --- collections ---


def test_implements_protocol(index: VectorIndex) -> None:
    assert isinstance(index, VectorIndex)


def test_ensure_collection_is_idempotent_and_keeps_data(index: VectorIndex) -> None:
    index.ensure_collection(COLL, DIM)
    index.ensure_collection(COLL, DIM)
    assert index.count(COLL) == 0
    index.upsert(COLL, POINTS[:10])
    index.ensure_collection(COLL, DIM)
    assert index.count(COLL) == 10


def test_dimension_mismatch(filled: VectorIndex) -> None:
    with pytest.raises(DimensionMismatch):
        filled.ensure_collection(COLL, DIM // 2)
    with pytest.raises(DimensionMismatch):
        filled.search(COLL, np.ones(DIM + 1, np.float32), 3)
    bad = Point(text_id("bad"), np.ones(DIM - 1, np.float32), {})
    new = Point(text_id("new"), VECTORS[0], {})
    with pytest.raises(DimensionMismatch):
        filled.upsert(COLL, [new, bad])
    assert filled.count(COLL) == N  # the call is rejected whole, not half-written


def test_missing_collection(index: VectorIndex) -> None:
    with pytest.raises(CollectionNotFound):
        index.search("nope", QUERIES[0], 3)
    with pytest.raises(CollectionNotFound):
        index.upsert("nope", POINTS[:1])
    with pytest.raises(CollectionNotFound):
        index.count("nope")
    with pytest.raises(CollectionNotFound):
        index.retrieve("nope", [POINTS[0].id])


@pytest.mark.parametrize("name", ["", "a/b", "../up", "x" * 65, "naïve", "sp ace", "a.b"])
def test_invalid_collection_names(index: VectorIndex, name: str) -> None:
    with pytest.raises(ValueError):
        index.ensure_collection(name, DIM)


def test_invalid_inputs(filled: VectorIndex) -> None:
    with pytest.raises(ValueError):
        filled.upsert(COLL, [Point("not-a-uuid", VECTORS[0], {})])
    nan = VECTORS[0].copy()
    nan[3] = np.nan
    with pytest.raises(ValueError):
        filled.upsert(COLL, [Point(text_id("nan"), nan, {})])
    with pytest.raises(ValueError):
        filled.search(COLL, QUERIES[0], 0)
    with pytest.raises(ValueError):
        filled.search(COLL, QUERIES[0], 3, Filter((FieldMatch("i", 1.5),)))  # type: ignore[arg-type]
    assert filled.count(COLL) == N


# --- search ---


def test_search_finds_exact_item_first(filled: VectorIndex) -> None:
    for row in (0, 17, 299):
        hits = filled.search(COLL, VECTORS[row], 5)
        assert hits[0].id == POINTS[row].id
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].payload == _payload(row)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_search_matches_numpy_reference(filled: VectorIndex) -> None:
    for q in QUERIES:
        hits = filled.search(COLL, q, 10)
        assert [h.id for h in hits] == _reference_top_k(q, 10)
        expected = [float(VECTORS[ID_TO_ROW[h.id]] @ q) for h in hits]
        np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)


@pytest.mark.parametrize("top_k", [1, 7, 50, N + 20])
def test_top_k_respected(filled: VectorIndex, top_k: int) -> None:
    assert len(filled.search(COLL, QUERIES[0], top_k)) == min(top_k, N)


@pytest.mark.parametrize(
    "flt",
    [
        Filter((FieldMatch("parity", "odd"),)),
        Filter((FieldMatch("bucket", 3),)),
        Filter((FieldMatch("flag", True),)),
        Filter((FieldMatch("flag", False),)),
        Filter((FieldMatch("flag", True), FieldMatch("parity", "even"))),
        Filter((FieldMatch("bucket", 0), FieldMatch("parity", "odd"))),
    ],
    ids=["keyword", "int", "bool-true", "bool-false", "and-bool-keyword", "and-int-keyword"],
)
def test_filters(filled: VectorIndex, flt: Filter) -> None:
    mask = _mask(flt)
    assert 0 < mask.sum() < N  # the filter is selective, so ignoring it would fail the test
    for q in QUERIES[:5]:
        hits = filled.search(COLL, q, 10, flt)
        assert [h.id for h in hits] == _reference_top_k(q, 10, mask)
        assert all(all(h.payload[c.key] == c.value for c in flt.must) for h in hits)


def test_filter_matching_nothing_and_empty_filter(filled: VectorIndex) -> None:
    assert filled.search(COLL, QUERIES[0], 5, Filter((FieldMatch("parity", "none"),))) == []
    unfiltered = [h.id for h in filled.search(COLL, QUERIES[0], 5)]
    assert [h.id for h in filled.search(COLL, QUERIES[0], 5, Filter())] == unfiltered


# --- upsert / retrieve ---


def test_reupsert_same_id_updates_without_duplicating(filled: VectorIndex) -> None:
    changed = [Point(p.id, p.vector, {**p.payload, "parity": "changed"}) for p in POINTS[:50]]
    filled.upsert(COLL, changed)
    filled.upsert(COLL, changed)  # a retried request
    assert filled.count(COLL) == N
    hits = filled.search(COLL, VECTORS[7], 1)
    assert hits[0].id == POINTS[7].id and hits[0].payload["parity"] == "changed"
    flt = Filter((FieldMatch("parity", "changed"),))
    assert len(filled.search(COLL, QUERIES[0], N, flt)) == 50


def test_retrieve(filled: VectorIndex) -> None:
    ids = [POINTS[5].id, text_id("never stored"), POINTS[2].id, POINTS[5].id]
    got = filled.retrieve(COLL, ids)
    assert [p.id for p in got] == [POINTS[5].id, POINTS[2].id]
    assert got[0].payload == _payload(5)
    np.testing.assert_allclose(got[1].vector, VECTORS[2], atol=1e-6)
    assert filled.retrieve(COLL, []) == []
    # Ids compare in canonical form whatever case the caller used.
    assert filled.retrieve(COLL, [POINTS[1].id.upper()])[0].id == POINTS[1].id


def test_concurrent_upserts_and_searches(index: VectorIndex) -> None:
    index.ensure_collection(COLL, DIM)
    errors: list[BaseException] = []

    def write(part: int) -> None:
        try:
            for start in range(part * 75, (part + 1) * 75, 15):
                index.upsert(COLL, POINTS[start : start + 15])
        except BaseException as exc:  # surfaced below; a thread would swallow it
            errors.append(exc)

    def read() -> None:
        try:
            for q in QUERIES:
                assert len(index.search(COLL, q, 5)) <= 5
                index.count(COLL)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert index.count(COLL) == N
    assert _top1(index, 123) == POINTS[123].id


# --- edge vs remote ---


def test_edge_and_remote_agree(tmp_path: Path) -> None:
    edge = EdgeIndex(tmp_path / "edge", exact=True)
    remote = RemoteIndex(client=QdrantClient(path=str(tmp_path / "local")), exact=True)
    try:
        for idx in (edge, remote):
            idx.ensure_collection(COLL, DIM)
            idx.upsert(COLL, POINTS)
        flt = Filter((FieldMatch("flag", False), FieldMatch("bucket", 2)))
        for q in QUERIES:
            for f in (None, flt):
                e, r = edge.search(COLL, q, 10, f), remote.search(COLL, q, 10, f)
                assert [h.id for h in e] == [h.id for h in r]
                np.testing.assert_allclose([h.score for h in e], [h.score for h in r], atol=1e-5)
                assert [h.payload for h in e] == [h.payload for h in r]
    finally:
        edge.close()
        remote.close()


# --- EdgeIndex on disk ---


def test_edge_persists_across_reopen(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as idx:
        idx.ensure_collection(COLL, DIM)
        idx.upsert(COLL, POINTS)
        idx.ensure_collection("other", 16)
    with EdgeIndex(tmp_path) as idx:
        # No ensure_collection first: the dimension comes from the directory.
        assert idx.count(COLL) == N
        assert _top1(idx, 42) == POINTS[42].id
        assert idx.retrieve(COLL, [POINTS[9].id])[0].payload == _payload(9)
        assert idx.count("other") == 0
        with pytest.raises(DimensionMismatch):
            idx.ensure_collection(COLL, 64)
        with pytest.raises(DimensionMismatch):
            idx.search(COLL, np.ones(64, np.float32), 1)
        idx.ensure_collection(COLL, DIM)
        assert idx.count(COLL) == N


_CRASH_SCRIPT = """
import os, sys, uuid
import numpy as np
from clipserve.index.base import Point
from clipserve.index.embedded.edge import EdgeIndex
idx = EdgeIndex(sys.argv[1])
idx.ensure_collection("crash", 8)
v = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
idx.upsert("crash", [Point(str(uuid.UUID(int=i + 1)), v[i], {"n": i}) for i in range(40)])
os._exit(0)  # no close(), no flush at exit: only what upsert made durable survives
"""


def test_edge_upsert_is_durable_without_close(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(tmp_path)], check=True, timeout=60)
    with EdgeIndex(tmp_path) as idx:
        assert idx.count("crash") == 40


def test_edge_directory_is_held_by_one_index(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as first:
        first.ensure_collection(COLL, DIM)
        second = EdgeIndex(tmp_path)
        with pytest.raises(RuntimeError):
            second.count(COLL)
        second.close()


def test_edge_close_is_idempotent_and_final(tmp_path: Path) -> None:
    idx = EdgeIndex(tmp_path)
    idx.ensure_collection(COLL, DIM)
    idx.close()
    idx.close()
    with pytest.raises(RuntimeError):
        idx.count(COLL)


def test_edge_payload_index_and_optimize_keep_results(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as idx:
        idx.ensure_collection(COLL, DIM)
        idx.upsert(COLL, POINTS)
        idx.create_payload_index(COLL, "parity", "keyword")
        idx.create_payload_index(COLL, "flag", "bool")
        idx.create_payload_index(COLL, "parity", "keyword")  # idempotent
        idx.optimize(COLL)
        flt = Filter((FieldMatch("flag", True), FieldMatch("parity", "odd")))
        hits = idx.search(COLL, QUERIES[0], 10, flt)
        assert [h.id for h in hits] == _reference_top_k(QUERIES[0], 10, _mask(flt))
        assert idx.count(COLL) == N


# --- ids ---


def test_content_ids_are_deterministic_and_kind_separated() -> None:
    assert content_id("text", b"a cat") == content_id("text", b"a cat")
    assert content_id("text", b"a cat") != content_id("image", b"a cat")
    assert content_id("text", b"a cat") != content_id("text", b"a cat ")
    assert text_id("a cat") == content_id("text", b"a cat")
    assert image_id(b"\x89PNG") == content_id("image", b"\x89PNG")
    parsed = uuid.UUID(text_id("a cat"))
    assert parsed.version == 8 and parsed.variant == uuid.RFC_4122
    assert canonical_id(str(parsed)) == str(parsed)


def test_content_id_is_pinned() -> None:
    # Changing the scheme re-ids every stored item (re-indexing would duplicate them): keep it.
    assert text_id("a cat") == "e9a5831b-d677-81cd-8405-e5f8c98c273d"


def test_content_id_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        content_id("audio", b"x")
    with pytest.raises(TypeError):
        content_id("text", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        canonical_id("not-a-uuid")


# --- factory ---


class _FakeClient:
    """Stands in for a QdrantClient to a server, which cannot run here: records its arguments."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_open_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    idx = open_index(path=str(tmp_path))
    assert isinstance(idx, EdgeIndex)
    idx.close()
    monkeypatch.setattr("clipserve.index.remote.remote.QdrantClient", _FakeClient)
    remote = open_index(url="http://qdrant:6333", api_key="k")
    assert isinstance(remote, RemoteIndex)
    client = remote._client
    assert isinstance(client, _FakeClient)
    assert client.kwargs["url"] == "http://qdrant:6333" and client.kwargs["api_key"] == "k"
    remote.close()
    assert client.closed  # a client the index built is the index's to close
    with pytest.raises(ValueError, match="no index configured"):
        open_index()
    with pytest.raises(ValueError):
        open_index(path=str(tmp_path), url="http://qdrant:6333")
    with pytest.raises(ValueError):
        open_index(path=str(tmp_path), api_key="k")


def test_remote_leaves_an_injected_client_open() -> None:
    client = QdrantClient(":memory:")
    idx = RemoteIndex(client=client)
    idx.ensure_collection(COLL, DIM)
    idx.close()
    assert client.collection_exists(COLL)  # still usable: the caller owns it
    client.close()
    with pytest.raises(ValueError, match="url or a client"):
        RemoteIndex()


# --- aliases, provenance, settings ---


def test_alias_switch_under_query_load_never_mixes(index: VectorIndex) -> None:
    # Two generations with disjoint ids: every answer must come wholly from one of them.
    for gen in (1, 2):
        name = f"gen{gen}"
        index.create_collection(name, DIM, provenance=Provenance(f"v{gen}", "tiny", DIM))
        index.upsert(
            name, [Point(text_id(f"g{gen} {i}"), VECTORS[i], {"gen": gen}) for i in range(60)]
        )
    index.set_alias("live", "gen1")
    seen: set[int] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def query_loop() -> None:
        try:
            while not stop.is_set():
                gens = {h.payload["gen"] for h in index.search("live", QUERIES[0], 10)}
                assert len(gens) == 1, f"mixed answer: {gens}"
                seen.update(gens)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=query_loop) for _ in range(2)]
    for t in readers:
        t.start()
    for k in range(40):
        previous = index.set_alias("live", "gen2" if k % 2 == 0 else "gen1")
        assert previous == ("gen1" if k % 2 == 0 else "gen2")
        for _ in range(3):
            # Let a reader in between switches: the GIL would otherwise keep them out.
            gens = {h.payload["gen"] for h in index.search("live", QUERIES[1], 5)}
            assert gens == {2 if k % 2 == 0 else 1}
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert seen  # the readers answered


def test_require_model_resolves_once_and_refuses_foreign_vectors(index: VectorIndex) -> None:
    index.create_collection("made_by_v1", DIM, provenance=Provenance("v1", "tiny", DIM))
    index.set_alias("live", "made_by_v1")
    assert require_model(index, "live", "v1") == "made_by_v1"
    with pytest.raises(ProvenanceMismatch, match="'v1'.*'v2'"):
        require_model(index, "live", "v2")
    with pytest.raises(DimensionMismatch):
        index.create_collection("wrong", DIM, provenance=Provenance("v1", "tiny", DIM + 1))


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="hnsw_m"):
        CollectionSettings(hnsw_m=0)
    with pytest.raises(ValueError, match="vector_source"):
        CollectionSettings(vector_source="audio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="payload_schema"):
        CollectionSettings(payload_schema=(("k", "geo"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        CollectionSettings(payload_schema=(("k", "keyword"), ("k", "integer")))
    with pytest.raises(ValueError, match="model_version"):
        Provenance("", "tiny", DIM)
    s = CollectionSettings(payload_schema=[["k", "keyword"]])  # type: ignore[list-item]
    assert CollectionSettings.from_dict(s.to_dict()) == s


def test_edge_aliases_and_provenance_persist(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as idx:
        idx.create_collection(COLL, DIM, provenance=Provenance("v1", "tiny", DIM))
        idx.upsert(COLL, POINTS[:10])
        idx.set_alias("live", COLL)
    with EdgeIndex(tmp_path) as idx:
        assert idx.aliases() == {"live": COLL}
        assert idx.count("live") == 10
        prov = idx.provenance("live")
        assert prov is not None and prov.model_version == "v1" and prov.created_at
        with pytest.raises(ProvenanceMismatch):
            idx.ensure_collection("live", DIM, provenance=Provenance("v2", "tiny", DIM))


def test_edge_reads_format_1_collections(tmp_path: Path) -> None:
    with EdgeIndex(tmp_path) as idx:
        idx.ensure_collection(COLL, DIM)
        idx.upsert(COLL, POINTS[:10])
    # What the first release wrote: dimension only.
    (tmp_path / COLL / "collection.json").write_text(
        json.dumps({"format": 1, "dim": DIM, "distance": "cosine"})
    )
    with EdgeIndex(tmp_path) as idx:
        info = idx.collection_info(COLL)
        assert info.count == 10 and info.provenance is None
        assert info.settings == CollectionSettings()
        idx.ensure_collection(COLL, DIM, provenance=Provenance("v9", "tiny", DIM))  # accepted


def test_edge_hnsw_int8_recall(tmp_path: Path) -> None:
    # Clustered data, as embeddings are: HNSW over int8 (rescored) must still find the
    # exact neighbours almost always.
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((20, DIM)).astype(np.float32)
    data = centers[rng.integers(0, 20, 3000)] + 0.4 * rng.standard_normal((3000, DIM)).astype(
        np.float32
    )
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(data))]
    settings = CollectionSettings(
        hnsw_m=16, hnsw_ef_construct=64, full_scan_threshold=0, int8_quantization=True
    )
    with EdgeIndex(tmp_path, background_build=False) as idx:
        idx.create_collection(COLL, DIM, settings)
        idx.upsert(COLL, [Point(ids[i], data[i], {}) for i in range(len(data))])
        idx.optimize(COLL)
        assert idx.indexed_count(COLL) == len(data)
        recall = []
        for q in data[:40] + 0.05:
            exact = [h.id for h in idx.search(COLL, q, 10, exact=True)]
            approx = [h.id for h in idx.search(COLL, q, 10)]
            reference = [ids[r] for r in np.argsort(-(data @ q), kind="stable")[:10]]
            assert exact == reference
            recall.append(len(set(approx) & set(reference)) / 10)
        assert np.mean(recall) >= 0.9


def test_open_index_passes_tls_and_grpc_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clipserve.index.remote.remote.QdrantClient", _FakeClient)
    remote = open_index(url="https://qdrant.example:6333", api_key="k", https=True)
    assert isinstance(remote, RemoteIndex)
    client = remote._client
    assert isinstance(client, _FakeClient)
    assert client.kwargs["https"] is True and client.kwargs["prefer_grpc"] is True
    remote.close()
    with pytest.raises(ValueError, match="https"):
        open_index(path="/tmp/x", https=True)


_NOSYNC_SCRIPT = """
import os, sys, uuid
import numpy as np
from clipserve.index.base import Point
from clipserve.index.embedded.edge import EdgeIndex
idx = EdgeIndex(sys.argv[1], fsync=False)
idx.ensure_collection("crash", 8)
v = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
idx.upsert("crash", [Point(str(uuid.UUID(int=i + 1)), v[i], {"n": i}) for i in range(40)])
idx.flush("crash")
idx.upsert("crash", [Point(str(uuid.UUID(int=99)), v[0], {"n": 99})])
os._exit(0)  # SIGKILL-like: the WAL already has the unflushed write too
"""


def test_edge_unflushed_writes_survive_a_process_crash(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", _NOSYNC_SCRIPT, str(tmp_path)], check=True, timeout=60)
    with EdgeIndex(tmp_path) as idx:
        assert idx.count("crash") == 41
