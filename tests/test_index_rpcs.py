"""Every index RPC through a real gRPC server on port 0 (tiny bundle on ONNX Runtime, the
embedded Qdrant engine), with its bad inputs and their documented statuses:

    unknown ids           Get: listed in missing_ids;  Query point_id: NOT_FOUND
    malformed filters     INVALID_ARGUMENT
    another model's data  FAILED_PRECONDITION, naming both model versions
    unknown collection    NOT_FOUND;  creating an existing one: ALREADY_EXISTS
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from index_support import DIM, BackgroundServer, png

from clipserve.index.collections import Provenance
from clipserve.index.embedded.edge import EdgeIndex
from clipserve.index.ids import text_id
from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.serving.client import ClipServeClient
from clipserve.serving.config import ServerConfig
from clipserve.serving.search.vectors import mmr

FOREIGN = Provenance("f" * 64, "some-other-model", DIM)
TEXTS = [f"item {i} about {'cats' if i % 2 else 'dogs'}" for i in range(20)]


@pytest.fixture(scope="module")
def bg(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    path = tmp_path_factory.mktemp("index")
    with EdgeIndex(path) as index:  # a collection another model made
        index.create_collection("foreign", DIM, provenance=FOREIGN)
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=path, max_top_k=50)
    server = BackgroundServer(config)
    items = [(t, {"n": i, "animal": "cat" if i % 2 else "dog", "even": i % 2 == 0})
             for i, t in enumerate(TEXTS)]  # fmt: skip
    server.client.upsert(items, collection="docs")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(bg: BackgroundServer) -> ClipServeClient:
    return bg.client


def status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def ids_of(resp: pb.QueryResponse) -> list[str]:
    return [h.id for h in resp.hits]


# -- points ---------------------------------------------------------------------------------


def test_get_returns_points_in_order_and_lists_missing_ids(client: ClipServeClient) -> None:
    unknown = "00000000-0000-8000-8000-000000000000"
    want = [text_id(TEXTS[3]), unknown, text_id(TEXTS[0])]
    points, missing = client.get(want, collection="docs", with_vectors=True)
    assert [p.id for p in points] == [want[0], want[2]] and missing == [unknown]
    assert points[0].payload["n"] == 3 and points[0].vector.shape == (DIM,)
    np.testing.assert_allclose(points[0].vector, client.embed([TEXTS[3]])[0], atol=1e-5)
    code, msg = status(lambda: client.get(["not-a-uuid"], collection="docs"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not-a-uuid" in msg


def test_count_with_match_range_any_and_nested_filters(client: ClipServeClient) -> None:
    assert client.count(collection="docs") == 20
    assert client.count(collection="docs", filter={"animal": "cat"}) == 10
    assert client.count(collection="docs", filter={"n": {"gte": 5, "lt": 9}}) == 4
    assert client.count(collection="docs", filter={"n": [1, 2, 3, 40]}) == 3
    assert client.count(collection="docs", filter={"even": True}) == 10
    # (n < 3 OR n >= 18) AND NOT animal == dog  ->  1, 19
    nested = pb.Filter(
        should=[pb.Condition(range=pb.RangeCondition(key="n", lt=3)),
                pb.Condition(range=pb.RangeCondition(key="n", gte=18))],
        must_not=[pb.Condition(match=pb.FieldMatch(key="animal", keyword="dog"))],
    )  # fmt: skip
    assert client.count(collection="docs", filter=nested) == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (pb.Filter(all=[pb.Condition(range=pb.RangeCondition(key="n"))]), "at least one of gt"),
        (pb.Filter(all=[pb.Condition(any=pb.MatchAny(key="n"))]), "non-empty list"),
        (pb.Filter(all=[pb.Condition(any=pb.MatchAny(key="n", keywords=["a"], integers=[1]))]),
         "not both"),
        (pb.Filter(should=[pb.Condition()]), "nothing set"),
        (pb.Filter(must=[pb.FieldMatch(key="a")]), "no value set"),
        (pb.Filter(all=[pb.Condition(has_id=pb.IdList(ids=["nope"]))]), "UUID"),
    ],
)  # fmt: skip
def test_malformed_filters_are_invalid_argument(
    client: ClipServeClient, bad: pb.Filter, message: str
) -> None:
    for call in (
        lambda: client.count(collection="docs", filter=bad),
        lambda: client.query(text="cats", collection="docs", filter=bad),
        lambda: client.scroll(collection="docs", filter=bad),
    ):
        code, msg = status(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message in msg, msg


def test_scroll_pages_through_everything_once(client: ClipServeClient) -> None:
    seen, token, pages = [], "", 0
    while True:
        points, token = client.scroll(collection="docs", limit=6, page_token=token)
        seen += [p.id for p in points]
        pages += 1
        if not token:
            break
    assert pages == 4 and sorted(seen) == sorted(text_id(t) for t in TEXTS) and seen == sorted(seen)
    cats = list(client.scroll_all(collection="docs", filter={"animal": "cat"}, limit=3))
    assert len(cats) == 10 and all(p.payload["animal"] == "cat" for p in cats)
    code, _ = status(lambda: client.scroll(collection="docs", page_token="garbage"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_by_ids_and_by_filter(client: ClipServeClient) -> None:
    items = [(f"tmp {i}", {"batch": "tmp", "n": i}) for i in range(6)]
    ids = client.upsert(items, collection="scratch")
    assert client.delete([ids[0]], collection="scratch") == "scratch"
    client.delete(filter={"n": {"gte": 4}}, collection="scratch")
    assert client.count(collection="scratch") == 3
    _, missing = client.get(ids, collection="scratch")
    assert missing == [ids[0], ids[4], ids[5]]
    code, msg = status(lambda: client.delete(collection="scratch"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ids, a filter, or both" in msg


# -- query ----------------------------------------------------------------------------------


def test_query_answers_carry_model_version_and_collection(client: ClipServeClient) -> None:
    resp = client.search(text="cats", collection="docs", top_k=3)
    assert resp.model_version == client.info().model_version and resp.collection == "docs"
    assert len(resp.hits) == 3


def test_more_like_this_by_point_id(client: ClipServeClient) -> None:
    pid = text_id(TEXTS[4])
    resp = client.search(point_id=pid, collection="docs", top_k=5, exact=True)
    [vec] = client.embed([TEXTS[4]])
    direct = client.search(vector=vec, collection="docs", top_k=6, exact=True)
    assert ids_of(resp) == [h for h in ids_of(direct) if h != pid][:5]  # itself left out
    unknown = "00000000-0000-8000-8000-000000000001"
    code, msg = status(lambda: client.search(point_id=unknown, collection="docs"))
    assert code == grpc.StatusCode.NOT_FOUND and unknown in msg


def test_score_threshold_offset_and_page_tokens(client: ClipServeClient) -> None:
    full = client.search(text="dogs", collection="docs", top_k=20, exact=True)
    scores = [h.score for h in full.hits]
    cut = (scores[7] + scores[8]) / 2  # between two hits: no float-rounding tie at the edge
    above = client.search(text="dogs", collection="docs", top_k=20, score_threshold=cut, exact=True)
    assert ids_of(above) == ids_of(full)[:8]
    page2 = client.search(text="dogs", collection="docs", top_k=5, offset=5, exact=True)
    assert ids_of(page2) == ids_of(full)[5:10]
    paged, token = [], ""
    for _ in range(4):
        r = client.search(text="dogs", collection="docs", top_k=5, page_token=token, exact=True)
        paged += ids_of(r)
        token = r.next_page_token
    assert paged == ids_of(full) and token  # 4 full pages; a token while pages may follow
    last = client.search(text="dogs", collection="docs", top_k=5, page_token=token, exact=True)
    assert not last.hits and not last.next_page_token
    code, _ = status(lambda: client.search(text="dogs", collection="docs", page_token="!!"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_multi_query_is_the_weighted_normalised_mean(client: ClipServeClient) -> None:
    image = png(5)
    t, i = client.embed(["a cat", image])
    mixed = 0.7 * t + 0.3 * i
    mixed /= np.linalg.norm(mixed)
    multi = client.search(multi=[("a cat", 0.7), (image, 0.3)], collection="docs", top_k=8,
                          exact=True)  # fmt: skip
    direct = client.search(vector=mixed, collection="docs", top_k=8, exact=True)
    assert ids_of(multi) == ids_of(direct)
    np.testing.assert_allclose(
        [h.score for h in multi.hits], [h.score for h in direct.hits], atol=1e-5
    )
    code, msg = status(lambda: client.search(multi=[("a cat", 0.0)], collection="docs"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "weight" in msg


def test_mmr_matches_the_reference_and_zero_diversity_keeps_relevance(
    client: ClipServeClient,
) -> None:
    plain = client.search(text="cats", collection="docs", top_k=5, exact=True)
    same = client.search(text="cats", collection="docs", top_k=5, mmr=0.0, exact=True)
    assert ids_of(same) == ids_of(plain)
    diverse = client.search(text="cats", collection="docs", top_k=5, mmr=0.7, mmr_candidates=20,
                            exact=True)  # fmt: skip
    pool_ = client.search(text="cats", collection="docs", top_k=20, exact=True)
    points, _ = client.get(ids_of(pool_), collection="docs", with_vectors=True)
    [q] = client.embed(["cats"])
    order = mmr(q, np.stack([p.vector for p in points]), 5, 0.7)
    assert ids_of(diverse) == [points[j].id for j in order]
    assert ids_of(diverse) != ids_of(plain)
    code, _ = status(lambda: client.search(text="cats", collection="docs", mmr=0.5, offset=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# -- provenance -----------------------------------------------------------------------------


def test_another_models_collection_refuses_writes_and_content_queries(
    client: ClipServeClient,
) -> None:
    mine = client.info().model_version
    for call in (
        lambda: client.upsert([("x", {})], collection="foreign"),
        lambda: client.search(text="x", collection="foreign"),
    ):
        code, msg = status(call)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert FOREIGN.model_version in msg and mine in msg, msg


def test_foreign_model_vectors_are_refused(client: ClipServeClient) -> None:
    vec = np.ones((1, DIM), dtype=np.float32)
    code, msg = status(lambda: client.upsert([("v", {})], collection="docs", vectors=vec,
                                             vector_model_version="other-version"))  # fmt: skip
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "other-version" in msg
    code, msg = status(lambda: client.search(vector=vec[0], collection="docs",
                                             vector_model_version="other-version"))  # fmt: skip
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "other-version" in msg
    code, msg = status(lambda: client.upsert([("v", {})], collection="docs", vectors=vec))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "vector_model_version is required" in msg
    mine = client.info().model_version
    [pid] = client.upsert([("precomputed", {})], collection="docs", vectors=vec,
                          vector_model_version=mine)  # fmt: skip
    hit = client.search(vector=vec[0], collection="docs", top_k=1, vector_model_version=mine)
    assert hit.hits[0].id == pid == text_id("precomputed")
    client.delete([pid], collection="docs")


# -- collections and aliases ----------------------------------------------------------------


def test_create_list_alias_and_drop_collections(client: ClipServeClient) -> None:
    settings = pb.CollectionSettings(
        vector_source=pb.VECTOR_SOURCE_IMAGE, int8_quantization=True,
        hnsw=pb.HnswSettings(m=8), payload_schema=[pb.PayloadField(key="n", type=pb.PAYLOAD_TYPE_INTEGER)],
    )  # fmt: skip
    info = client.create_collection("images_v1", settings)
    assert info.name == "images_v1" and info.count == 0
    assert info.provenance.model_version == client.info().model_version
    assert info.provenance.vector_source == pb.VECTOR_SOURCE_IMAGE
    assert info.settings.int8_quantization and info.settings.hnsw.m == 8
    code, msg = status(lambda: client.create_collection("images_v1"))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "images_v1" in msg
    assert client.set_alias("images", "images_v1") == ""
    client.upsert([(png(1), {"n": 1})], collection="images")  # writes through the alias
    listed = {c.name: c for c in client.list_collections()}
    assert listed["images_v1"].count == 1 and list(listed["images_v1"].aliases) == ["images"]
    assert (
        listed["docs"].count == 20 and listed["foreign"].provenance.model_name == "some-other-model"
    )
    # An image collection refuses a text item (nothing to take the image vector of).
    code, msg = status(lambda: client.upsert([("text", {})], collection="images"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "send an image" in msg
    client.create_collection("images_v2", settings)
    assert client.set_alias("images", "images_v2") == "images_v1"
    assert client.search(image=png(1), collection="images").collection == "images_v2"
    client.drop_collection("images_v1")
    assert "images_v1" not in {c.name for c in client.list_collections()}


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (lambda c: c.search(text="x", collection="nowhere"), "NOT_FOUND", "'nowhere'"),
        (lambda c: c.count(collection="nowhere"), "NOT_FOUND", "'nowhere'"),
        (lambda c: c.get(["00000000-0000-8000-8000-000000000000"], collection="nowhere"),
         "NOT_FOUND", "'nowhere'"),
        (lambda c: c.drop_collection("nowhere"), "NOT_FOUND", "'nowhere'"),
        (lambda c: c.set_alias("a1", "nowhere"), "NOT_FOUND", "'nowhere'"),
        (lambda c: c.dedup(0.9, collection="nowhere"), "NOT_FOUND", "'nowhere'"),
        (lambda c: c.create_collection("bad/name"), "INVALID_ARGUMENT", "not a valid name"),
        (lambda c: c.create_collection(""), "INVALID_ARGUMENT", "needs a name"),
        (lambda c: c.set_alias("", "docs"), "INVALID_ARGUMENT", "alias"),
        (lambda c: c.set_alias("docs", "foreign"), "ALREADY_EXISTS", "docs"),
        (lambda c: c.create_collection("x", pb.CollectionSettings(hnsw_build_threshold=0,
            payload_schema=[pb.PayloadField(key="k")])), "INVALID_ARGUMENT", "payload type"),
        (lambda c: c.dedup(1.5, collection="docs"), "INVALID_ARGUMENT", "threshold"),
        (lambda c: c.scroll(collection="docs", limit=51), "INVALID_ARGUMENT", "limit"),
    ],
)  # fmt: skip
def test_bad_collection_requests(
    client: ClipServeClient, call: Any, code: str, message: str
) -> None:
    got, msg = status(lambda: call(client))
    assert got.name == code and message in msg, msg
    assert client.health() == "SERVING"  # the server keeps serving
