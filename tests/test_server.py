"""The gRPC server end to end, all real: ONNX Runtime on the exported tiny bundle, the embedded
Qdrant engine on a tmp dir, a grpc.aio server on port 0 (its own event loop in a thread) and the
sync `ClipServeClient`.

The only test double is `ControlledBackend`: the real ONNX backend behind a gate and a failure
switch, to hold a call in flight (overload, graceful drain) or make it crash (INTERNAL).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import BackgroundServer, ControlledBackend
from PIL import Image

from clipserve.index.embedded.edge import EdgeIndex
from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.serving.bundle import load_manifest
from clipserve.serving.client import ClipServeClient
from clipserve.serving.config import ServerConfig
from clipserve.serving.embedding.preprocess import decode_image, preprocess
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.serving.server import SERVICE_NAME, shutdown

T = TypeVar("T")
DIM = 128  # the tiny bundle's embedding dimension
LIMITS = dict(
    max_batch=8,
    max_text_chars=300,
    max_image_bytes=200_000,
    max_image_pixels=512 * 512,
    max_top_k=50,
)


def png(color: tuple[int, int, int], size: tuple[int, int] = (80, 60), noise: int = 0) -> bytes:
    rng = np.random.default_rng(sum(color) + size[0])
    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = color
    if noise:
        pixels = (pixels + rng.integers(0, noise, pixels.shape)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


RED, GREEN, BLUE = png((220, 20, 20)), png((20, 200, 40), (64, 90)), png((10, 30, 230), noise=40)


@pytest.fixture(scope="module")
def served(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundServer]:
    index = tmp_path_factory.mktemp("index")
    bg = BackgroundServer(ServerConfig(bundle=tiny_bundle, port=0, index_path=index, **LIMITS))
    yield bg
    bg.stop()


@pytest.fixture(scope="module")
def client(served: BackgroundServer) -> ClipServeClient:
    return served.client


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path) -> Iterator[Any]:
    """Embeddings computed by calling tokenizer, preprocessing and the backend directly."""
    manifest = load_manifest(tiny_bundle)
    tokenizer = ClipTokenizer.from_bundle(tiny_bundle, manifest)
    backend = OnnxRuntimeBackend(tiny_bundle, manifest)

    def embed(item: str | bytes) -> np.ndarray:
        if isinstance(item, str):
            return backend.embed_texts(tokenizer.pad(tokenizer.encode([item])))[0]
        image = decode_image(item, max_bytes=1 << 30, max_pixels=1 << 30)
        return backend.embed_images(preprocess([image], manifest))[0]

    yield embed
    backend.close()


def count(client: ClipServeClient, collection: str) -> int:
    return len(client.query(vector=np.ones(DIM), top_k=LIMITS["max_top_k"], collection=collection))


# -- Embed ---------------------------------------------------------------------------------


def test_embed_returns_unit_vectors_equal_to_the_backend(
    client: ClipServeClient, reference: Any
) -> None:
    items: list[str | bytes] = ["a photo of a red square", RED, "two dogs", GREEN]
    resp = client.stub.Embed(
        pb.EmbedRequest(inputs=[pb.Content(text=items[0]), pb.Content(image=RED)])
    )
    assert resp.dim == DIM and resp.model_version
    assert [e.modality for e in resp.embeddings] == [pb.MODALITY_TEXT, pb.MODALITY_IMAGE]
    vectors = client.embed(items)
    assert vectors.shape == (4, DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for vec, item in zip(vectors, items, strict=True):
        np.testing.assert_allclose(vec, reference(item), atol=1e-5)


def test_batch_equals_one_at_a_time(client: ClipServeClient) -> None:
    items: list[str | bytes] = [
        "a cat",
        BLUE,
        "a much longer caption about a cat on a mat",
        RED,
        "x",
    ]
    batch = client.embed(items)
    single = np.stack([client.embed([item])[0] for item in items])
    np.testing.assert_allclose(batch, single, atol=1e-5)


# -- Upsert / Query ------------------------------------------------------------------------


def test_upsert_then_query_finds_the_same_item_first(client: ClipServeClient) -> None:
    items = [("a red bicycle", {"kind": "caption"}), ("a green lake", {}), (RED, {"kind": "photo"}),
             (GREEN, {}), (BLUE, {})]  # fmt: skip
    ids = client.upsert(items, collection="find_first")
    assert len(set(ids)) == len(items)
    for (item, _), pid in zip(items, ids, strict=True):
        hits = client.query(**({"text": item} if isinstance(item, str) else {"image": item}),
                            top_k=3, collection="find_first")  # fmt: skip
        assert hits[0].id == pid
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].score >= hits[-1].score
    best = client.query(text="a red bicycle", top_k=1, collection="find_first")[0]
    assert best.payload == {"kind": "caption"}


def test_reupsert_does_not_duplicate(client: ClipServeClient) -> None:
    first = client.upsert([("a cat", {"v": 1}), (RED, {"v": 1})], collection="dedup")
    assert count(client, "dedup") == 2
    again = client.upsert(
        [("a cat", {"v": 2}), (RED, {"v": 2}), ("a cat", {"v": 3})], collection="dedup"
    )
    assert again[:2] == first and again[2] == first[0]
    assert count(client, "dedup") == 2
    hit = client.query(text="a cat", top_k=1, collection="dedup")[0]
    assert hit.id == first[0] and hit.payload == {"v": 3}  # last write wins


def test_payload_filter_ands_keyword_int_and_bool(client: ClipServeClient) -> None:
    client.upsert(
        [("item one", {"color": "red", "size": 1, "ok": True}),
         ("item two", {"color": "red", "size": 2, "ok": False}),
         ("item three", {"color": "blue", "size": 1, "ok": True})],
        collection="filtered",
    )  # fmt: skip

    def texts(**filter: Any) -> set[str]:
        hits = client.query(text="item", top_k=10, filter=filter, collection="filtered")
        return {h.payload["color"] + str(h.payload["size"]) for h in hits}

    assert texts(color="red") == {"red1", "red2"}
    assert texts(size=1) == {"red1", "blue1"}
    assert texts(ok=False) == {"red2"}
    assert texts(color="red", ok=True) == {"red1"}
    assert texts(color="green") == set()


def test_query_by_raw_vector(client: ClipServeClient) -> None:
    [pid] = client.upsert([("a vector query target", {})], collection="by_vector")
    vec = client.embed(["a vector query target"])[0]
    # Not unit length: the server normalises it.
    hits = client.query(vector=3.0 * vec, top_k=1, collection="by_vector")
    assert hits[0].id == pid and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_default_collection_is_used_when_none_is_named(client: ClipServeClient) -> None:
    [pid] = client.upsert([("in the default collection", {})])
    assert client.query(text="in the default collection", top_k=1)[0].id == pid
    assert (
        client.query(text="in the default collection", top_k=1, collection="clipserve")[0].id == pid
    )


# -- bad requests ---------------------------------------------------------------------------

LONG_TEXT = "w " * 90  # 92 tokens (with start/end) > context_length 32; 180 chars < max_text_chars
# Over max_image_bytes (noise compresses badly), and a small file with too many pixels.
BIG_IMAGE = png((1, 2, 3), (300, 300), noise=250)
HUGE_IMAGE = png((9, 9, 9), (600, 600))
assert len(BIG_IMAGE) > LIMITS["max_image_bytes"] > len(HUGE_IMAGE)


def embed_req(*contents: pb.Content) -> tuple[str, pb.EmbedRequest]:
    return "Embed", pb.EmbedRequest(inputs=list(contents))


def query_req(**fields: Any) -> tuple[str, pb.QueryRequest]:
    fields.setdefault("text", "ok")
    return "Query", pb.QueryRequest(**fields)


T_OK = pb.Content(text="fine")
BAD_REQUESTS = {
    "empty request": (embed_req(), "INVALID_ARGUMENT", "no inputs"),
    "too many inputs": (embed_req(*[T_OK] * 9), "INVALID_ARGUMENT", "9 inputs; the limit is 8"),
    "neither text nor image": (embed_req(T_OK, pb.Content()), "INVALID_ARGUMENT", "input 1: set exactly one"),
    "empty text": (embed_req(T_OK, T_OK, pb.Content(text="  ")), "INVALID_ARGUMENT", "input 2: text is empty"),
    "too many tokens": (
        embed_req(T_OK, T_OK, pb.Content(text=LONG_TEXT)),
        "INVALID_ARGUMENT",
        "input 2: text is 92 tokens; this model accepts at most 32 including start/end tokens",
    ),
    "too many chars": (embed_req(pb.Content(text="a" * 301)), "INVALID_ARGUMENT", "input 0: text is 301 characters; the limit is 300"),
    "image too many bytes": (embed_req(T_OK, pb.Content(image=BIG_IMAGE)), "INVALID_ARGUMENT", f"input 1: image is {len(BIG_IMAGE)} bytes"),
    "image too many pixels": (embed_req(pb.Content(image=HUGE_IMAGE)), "INVALID_ARGUMENT", "input 0: image is 600x600 = 360000 pixels"),
    "undecodable image": (embed_req(T_OK, pb.Content(image=b"\x89PNG not really")), "INVALID_ARGUMENT", "input 1: image data is not a recognised"),
    "empty image": (embed_req(pb.Content(image=b"")), "INVALID_ARGUMENT", "input 0: image is empty"),
    "upsert item bad": (
        ("Upsert", pb.UpsertRequest(collection="never_written", items=[pb.UpsertItem(content=T_OK), pb.UpsertItem()])),
        "INVALID_ARGUMENT",
        "input 1: set exactly one",
    ),
    "upsert no items": (("Upsert", pb.UpsertRequest()), "INVALID_ARGUMENT", "no items"),
    "query nothing": (("Query", pb.QueryRequest()), "INVALID_ARGUMENT", "exactly one of text, image or vector"),
    "query text too long": (query_req(text=LONG_TEXT), "INVALID_ARGUMENT", "query: text is 92 tokens"),
    "vector wrong dim": (("Query", pb.QueryRequest(vector=pb.Vector(values=[0.1] * 5))), "INVALID_ARGUMENT", "5 values; this model's dimension is 128"),
    "vector not finite": (("Query", pb.QueryRequest(vector=pb.Vector(values=[float("nan")] + [0.1] * 127))), "INVALID_ARGUMENT", "NaN or infinite"),
    "vector zero": (("Query", pb.QueryRequest(vector=pb.Vector(values=[0.0] * 128))), "INVALID_ARGUMENT", "zero"),
    "top_k zero": (query_req(top_k=0), "INVALID_ARGUMENT", "top_k is 0; it must be in [1, 50]"),
    "top_k too big": (query_req(top_k=51), "INVALID_ARGUMENT", "top_k is 51"),
    "bad collection name": (query_req(collection="../etc"), "INVALID_ARGUMENT", "'../etc' is not a valid name"),
    "unknown collection": (query_req(collection="no_such_thing"), "NOT_FOUND", "'no_such_thing' does not exist"),
    "filter without value": (query_req(filter=pb.Filter(must=[pb.FieldMatch(key="a")])), "INVALID_ARGUMENT", "filter condition 0 ('a'): no value"),
    "filter empty key": (query_req(filter=pb.Filter(must=[pb.FieldMatch(key="", keyword="x")])), "INVALID_ARGUMENT", "key is empty"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_request_is_rejected_precisely_and_server_keeps_serving(
    client: ClipServeClient, case: str
) -> None:
    (method, request), code, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as err:
        getattr(client.stub, method)(request, timeout=30)
    assert err.value.code().name == code, err.value.details()
    assert message in err.value.details()
    assert client.embed(["still serving", RED]).shape == (2, DIM)


def test_rejected_upsert_stores_nothing(client: ClipServeClient) -> None:
    with pytest.raises(grpc.RpcError):
        client.upsert([("good item", {}), ("", {})], collection="atomic")
    with pytest.raises(grpc.RpcError) as err:
        client.query(text="good item", collection="atomic")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- Info, health, reflection ---------------------------------------------------------------


def test_info_reports_model_and_limits(client: ClipServeClient, tiny_bundle: Path) -> None:
    info = client.info()
    manifest = load_manifest(tiny_bundle)
    assert (info.model_name, info.model_version, info.dim) == (
        manifest.model_name,
        manifest.version,
        DIM,
    )
    assert (info.image_height, info.image_width, info.context_length) == (64, 64, 32)
    assert info.limits.max_batch == 8 and info.limits.max_top_k == 50
    assert info.limits.max_image_bytes == 200_000 and info.limits.max_text_chars == 300
    assert info.limits.context_length == 32 and info.limits.max_in_flight >= 1
    # The default backend ("auto"): OpenVINO where it is installed, as in `make test`'s venv.
    if importlib.util.find_spec("openvino") is not None:  # images on OpenVINO, text on ORT
        assert info.backend == "openvino+onnxruntime"
        assert info.providers[0].startswith("OpenVINO ") and info.providers[0].endswith("(image)")
        assert info.providers[1] == "CPUExecutionProvider (text)"
    else:
        assert info.backend == "onnxruntime" and "CPUExecutionProvider" in info.providers
    assert info.index_kind == "qdrant-edge" and info.default_collection == "clipserve"


def test_health_is_serving_per_service(client: ClipServeClient) -> None:
    assert client.health("") == "SERVING"
    assert client.health(SERVICE_NAME) == "SERVING"
    with pytest.raises(grpc.RpcError) as err:
        client.health("no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_service(served: BackgroundServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


# -- overload, internal errors, graceful stop (each on its own server) ----------------------


@pytest.fixture()
def controlled(
    tiny_bundle: Path, tmp_path: Path
) -> Iterator[tuple[BackgroundServer, ControlledBackend]]:
    backend = ControlledBackend(OnnxRuntimeBackend(tiny_bundle))
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", max_in_flight=1
    )
    bg = BackgroundServer(config, backend=backend)
    yield bg, backend
    backend.open.set()
    if not bg.loop.is_closed():
        bg.stop()


def hold_one_call(
    bg: BackgroundServer, backend: ControlledBackend
) -> tuple[threading.Thread, list[Any]]:
    """Start an Embed that blocks inside the backend; returns its thread and result box."""
    backend.open.clear()
    backend.entered.clear()
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(bg.client.embed(["held"])))
    thread.start()
    assert backend.entered.wait(10)
    return thread, result


def test_over_max_in_flight_is_resource_exhausted(
    controlled: tuple[BackgroundServer, ControlledBackend],
) -> None:
    bg, backend = controlled
    thread, result = hold_one_call(bg, backend)
    with pytest.raises(grpc.RpcError) as err:
        bg.client.embed(["second"])
    assert (
        err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        and "server busy" in err.value.details()
    )
    assert bg.client.info().dim == DIM  # Info is cheap and not admission-controlled
    backend.open.set()
    thread.join(10)
    assert result[0].shape == (1, DIM)
    assert bg.client.embed(["after"]).shape == (1, DIM)


def test_unexpected_error_is_internal_without_details(
    controlled: tuple[BackgroundServer, ControlledBackend],
) -> None:
    bg, backend = controlled
    backend.fail = True
    with pytest.raises(grpc.RpcError) as err:
        bg.client.embed(["boom"])
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error"
    backend.fail = False
    assert bg.client.embed(["fine again"]).shape == (1, DIM)


def test_graceful_stop_drains_in_flight_calls(
    controlled: tuple[BackgroundServer, ControlledBackend], tmp_path: Path
) -> None:
    bg, backend = controlled
    thread, result = hold_one_call(bg, backend)
    stopping = asyncio.run_coroutine_threadsafe(shutdown(bg.server, 10.0), bg.loop)
    deadline = time.monotonic() + 5
    while True:  # wait until the server refuses new calls: the stop has begun
        try:
            bg.client.info()
        except grpc.RpcError as exc:
            # gRPC core answers a call racing the shutdown with either code.
            assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            break
        assert time.monotonic() < deadline, "server kept accepting calls after stop"
        time.sleep(0.05)
    assert thread.is_alive() and not stopping.done()  # the held call is still being served
    backend.open.set()
    thread.join(10)
    stopping.result(15)
    assert result and result[0].shape == (1, DIM)  # ... and it completed
    reopened = EdgeIndex(tmp_path / "index")  # the index was released: another owner can open it
    assert reopened.count("clipserve") == 0
    reopened.close()
    bg.stop()


def test_health_follows_the_backend_probe(tiny_bundle: Path, tmp_path: Path) -> None:
    backend = ControlledBackend(OnnxRuntimeBackend(tiny_bundle))
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", health_interval_s=0.2
    )
    bg = BackgroundServer(config, backend=backend)

    def wait_for(status: str) -> None:
        deadline = time.monotonic() + 10
        while bg.client.health() != status:
            assert time.monotonic() < deadline, f"health never became {status}"
            time.sleep(0.05)

    try:
        wait_for("SERVING")
        backend.fail = True  # the backend breaks: the periodic probe notices
        wait_for("NOT_SERVING")
        assert bg.client.health("") == "NOT_SERVING"
        backend.fail = False  # ... and recovers
        wait_for("SERVING")
    finally:
        bg.stop()


# -- the `clipserve serve` command ------------------------------------------------------------


def test_serve_command_writes_port_file_serves_and_stops_on_sigterm(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    port_file = tmp_path / "run" / "port"
    cmd = [sys.executable, "-m", "clipserve.cli.main", "serve", "--bundle", str(tiny_bundle), "--port", "0",
           "--index-path", str(tmp_path / "index"), "--port-file", str(port_file)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSERVE_")}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        with ClipServeClient(f"127.0.0.1:{int(port_file.read_text())}") as client:
            client.wait_ready(10)
            assert client.embed(["hello"]).shape == (1, DIM)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "serving clipserve-tiny" in out and "qdrant-edge" in out and "stopped" in out


def test_serve_command_reports_startup_errors_without_traceback(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clipserve.cli.main import main as cli_main

    assert cli_main(["serve", "--bundle", str(tmp_path), "--index-path", str(tmp_path)]) == 2
    assert "not a model bundle" in capsys.readouterr().err
    holder = EdgeIndex(tmp_path / "held")
    holder.ensure_collection("clipserve", DIM)  # another owner holds the index directory
    try:
        args = ["serve", "--bundle", str(tiny_bundle), "--port", "0", "--index-path"]
        assert cli_main([*args, str(tmp_path / "held")]) == 2
        assert "cannot open collection 'clipserve'" in capsys.readouterr().err
    finally:
        holder.close()


# -- config --------------------------------------------------------------------------------


def test_config_reads_env_once_and_overrides_win(tmp_path: Path) -> None:
    env = {
        "CLIPSERVE_BUNDLE": "/models/b",
        "CLIPSERVE_INDEX_PATH": str(tmp_path),
        "CLIPSERVE_MAX_BATCH": "7",
        "CLIPSERVE_GRACE_S": "2.5",
        "UNRELATED": "x",
    }
    config = ServerConfig.from_env(env, port=0, max_batch=None)  # None = not overridden
    assert (config.bundle, config.index_path) == (Path("/models/b"), tmp_path)
    assert (config.max_batch, config.grace_s, config.port) == (7, 2.5, 0)
    assert ServerConfig.from_env(env, max_batch=3).max_batch == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_default_onnx_threads_split_the_cpus_between_inference_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import clipserve.serving.config as config_module

    assert 1 <= config_module.usable_cpus() <= (os.cpu_count() or 1)
    monkeypatch.setattr(config_module, "usable_cpus", lambda: 8)
    base = {"bundle": Path("b"), "index_path": Path("i")}
    assert ServerConfig(**base, inference_workers=2).resolved_intra_op_threads == 4
    assert ServerConfig(**base, inference_workers=3).resolved_intra_op_threads == 2
    assert ServerConfig(**base, inference_workers=16).resolved_intra_op_threads == 1
    explicit = ServerConfig(**base, inference_workers=2, intra_op_threads=8)
    assert explicit.resolved_intra_op_threads == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of index_path"),
        ({"index_path": "i", "qdrant_url": "http://q:6333"}, "exactly one of index_path"),
        ({"index_path": "i", "port": 70000}, "port: 70000"),
        ({"index_path": "i", "collection": "a/b"}, "collection: 'a/b'"),
        ({"index_path": "i", "max_top_k": 0}, "max_top_k: must be a positive integer"),
        ({"index_path": "i", "grace_s": -1.0}, "grace_s"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ServerConfig(bundle=Path("b"), **kwargs)


def test_config_names_the_bad_env_var() -> None:
    with pytest.raises(ValueError, match="CLIPSERVE_MAX_BATCH='many'"):
        ServerConfig.from_env({"CLIPSERVE_BUNDLE": "b", "CLIPSERVE_MAX_BATCH": "many"})
    with pytest.raises(ValueError, match="CLIPSERVE_BUNDLE"):
        ServerConfig.from_env({})


def test_server_over_remote_qdrant_api(tiny_bundle: Path, tmp_path: Path) -> None:
    """The same server over `RemoteIndex` (qdrant-client; its local mode stands in for a
    Qdrant server here): Upsert, idempotent re-Upsert, Query and filters behave the same."""
    from qdrant_client import QdrantClient

    from clipserve.index.remote.remote import RemoteIndex

    qdrant = QdrantClient(":memory:")
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "unused", **LIMITS)
    bg = BackgroundServer(config, index=RemoteIndex(client=qdrant))
    try:
        assert bg.client.info().index_kind == "qdrant"
        items = [(RED, {"c": "red"}), (GREEN, {"c": "green"}), ("a blue square", {"c": "txt"})]
        ids = bg.client.upsert(items)
        assert bg.client.upsert(items) == ids
        assert qdrant.count("clipserve", exact=True).count == 3
        hits = bg.client.query(image=GREEN, top_k=3)
        assert hits[0].id == ids[1] and hits[0].payload == {"c": "green"}
        only_red = bg.client.query(text="a blue square", top_k=3, filter={"c": "red"})
        assert [h.id for h in only_red] == [ids[0]]
    finally:
        bg.stop()
        qdrant.close()


# -- truncation, EmbedStream, payload values ---------------------------------------------------


def test_long_text_is_truncated_only_when_asked_and_the_response_says_so(
    client: ClipServeClient, tiny_bundle: Path
) -> None:
    manifest = load_manifest(tiny_bundle)
    tokenizer = ClipTokenizer.from_bundle(tiny_bundle, manifest)
    backend = OnnxRuntimeBackend(tiny_bundle, manifest)
    try:
        ids = tokenizer.encode([LONG_TEXT])[0]
        cut = [*ids[:31], manifest.eot_token_id]  # open_clip's truncation rule
        expected = backend.embed_texts(tokenizer.pad([cut]))[0]
    finally:
        backend.close()
    resp = client.stub.Embed(
        pb.EmbedRequest(
            inputs=[pb.Content(text="short"), pb.Content(text=LONG_TEXT)], truncate=True
        )
    )
    short, long = resp.embeddings
    assert (short.truncated, short.tokens, short.original_tokens) == (False, 3, 3)
    assert (long.truncated, long.tokens, long.original_tokens) == (True, 32, 92)
    np.testing.assert_allclose(long.values, expected, atol=1e-5)
    image = client.stub.Embed(pb.EmbedRequest(inputs=[pb.Content(image=RED)], truncate=True))
    assert (image.embeddings[0].tokens, image.embeddings[0].truncated) == (0, False)

    upsert = client.stub.Upsert(
        pb.UpsertRequest(
            collection="truncated",
            items=[pb.UpsertItem(content=pb.Content(text="fits")),
                   pb.UpsertItem(content=pb.Content(text=LONG_TEXT))],
            truncate=True,
        )
    )  # fmt: skip
    assert [(t.item, t.original_tokens, t.tokens) for t in upsert.truncations] == [(1, 92, 32)]
    query = client.stub.Query(
        pb.QueryRequest(collection="truncated", text=LONG_TEXT, truncate=True)
    )
    assert query.query_truncated and query.hits[0].id == upsert.ids[1]
    assert not client.stub.Query(
        pb.QueryRequest(collection="truncated", text="fits")
    ).query_truncated


def test_embed_stream_answers_every_item_with_a_result_or_its_own_error(
    client: ClipServeClient, reference: Any
) -> None:
    items = [
        pb.EmbedStreamRequest(id=10, content=pb.Content(text="a streamed caption")),
        pb.EmbedStreamRequest(id=11, content=pb.Content(image=b"\x89PNG not really")),
        pb.EmbedStreamRequest(id=12, content=pb.Content(image=GREEN)),
        pb.EmbedStreamRequest(id=13, content=pb.Content(text=LONG_TEXT)),
        pb.EmbedStreamRequest(id=14, content=pb.Content(text=LONG_TEXT), truncate=True),
        pb.EmbedStreamRequest(id=15, content=pb.Content()),
    ] + [pb.EmbedStreamRequest(id=100 + i, content=pb.Content(text=f"bulk {i}")) for i in range(40)]
    responses = {r.id: r for r in client.stub.EmbedStream(iter(items), timeout=60)}
    assert set(responses) == {r.id for r in items}  # one answer per item, ids echoed
    np.testing.assert_allclose(
        responses[10].embedding.values, reference("a streamed caption"), atol=1e-5
    )
    np.testing.assert_allclose(responses[12].embedding.values, reference(GREEN), atol=1e-5)
    assert responses[11].error.code == "INVALID_ARGUMENT"
    assert "item 11: image data is not a recognised" in responses[11].error.message
    assert (
        responses[13].error.code == "INVALID_ARGUMENT"
        and "92 tokens" in responses[13].error.message
    )
    assert responses[14].embedding.truncated and responses[14].embedding.tokens == 32
    assert responses[15].error.code == "INVALID_ARGUMENT"
    assert all(responses[100 + i].WhichOneof("result") == "embedding" for i in range(40))
    assert responses[10].model_version == client.info().model_version


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_payload_values_json_cannot_hold_are_invalid_argument(
    client: ClipServeClient, bad: float
) -> None:
    payload = struct_pb2.Struct()
    payload.update({"ok": 1, "nested": {"score": bad}})
    request = pb.UpsertRequest(
        collection="nan_payload",
        items=[pb.UpsertItem(content=pb.Content(text="a"), payload=payload)],
    )
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Upsert(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "payload.nested.score" in err.value.details()


def test_request_over_the_message_limit_is_refused_by_grpc(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", max_request_bytes=1 << 16
    )
    bg = BackgroundServer(config)
    try:
        with pytest.raises(grpc.RpcError) as err:
            bg.client.stub.Embed(pb.EmbedRequest(inputs=[pb.Content(image=b"x" * (1 << 17))]))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert bg.client.embed(["small is fine"]).shape == (1, DIM)
    finally:
        bg.stop()
