"""Dynamic batching across requests, on a real server (ONNX Runtime on the tiny bundle, the
embedded index, gRPC on port 0). `ControlledBackend` wraps the real backend to count calls
and to hold one batch in flight so that the next requests queue up deterministically."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import BackgroundServer, ControlledBackend
from PIL import Image

from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.serving.bundle import load_manifest
from clipserve.serving.config import ServerConfig
from clipserve.serving.embedding.batcher import Batcher, WorkerSlots, text_cost
from clipserve.serving.embedding.preprocess import decode_image, preprocess
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.serving.server import service_of

DIM = 128
TEXTS = ["a cat", "a much longer caption about a small cat sitting on a mat", "x", "two red dogs",
         "an aerial view of a city at night with many lights", "a bee", "snow", "a plate of pasta"]  # fmt: skip


def jpeg(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


IMAGES = [jpeg(i) for i in range(4)]


@pytest.fixture()
def gated(
    tiny_bundle: Path, tmp_path: Path
) -> Iterator[tuple[BackgroundServer, ControlledBackend]]:
    backend = ControlledBackend(OnnxRuntimeBackend(tiny_bundle))
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", max_batch=16,
        inference_workers=1, max_batch_wait_us=1000, health_interval_s=3600,
    )  # fmt: skip
    bg = BackgroundServer(config, backend=backend)
    backend.calls.clear()  # the warm-up probe
    yield bg, backend
    backend.open.set()
    bg.stop()


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path) -> Iterator[Callable[[str | bytes], np.ndarray]]:
    """One item at a time, straight through tokenizer/preprocess and the backend (batch 1)."""
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


def hold_first_batch(bg: BackgroundServer, backend: ControlledBackend) -> threading.Thread:
    """An Embed that blocks inside the backend (the one inference worker is then busy)."""
    backend.open.clear()
    backend.entered.clear()
    thread = threading.Thread(target=lambda: bg.client.embed(["held"]), daemon=True)
    thread.start()
    assert backend.entered.wait(10)
    return thread


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def queued(bg: BackgroundServer, modality: str) -> int:
    embedder = service_of(bg.server).embedder
    return (embedder.text if modality == "text" else embedder.image).depth


def test_concurrent_single_item_requests_are_batched_and_equal_one_at_a_time(
    gated: tuple[BackgroundServer, ControlledBackend], reference: Any
) -> None:
    bg, backend = gated
    held = hold_first_batch(bg, backend)
    items: list[str | bytes] = [*TEXTS, *IMAGES]
    with ThreadPoolExecutor(len(items)) as pool:
        futures = [pool.submit(bg.client.embed, [item]) for item in items]
        wait_until(lambda: queued(bg, "text") == len(TEXTS), "texts to queue")
        wait_until(lambda: queued(bg, "image") == len(IMAGES), "images to queue")
        backend.open.set()
        results = [f.result(30)[0] for f in futures]
    held.join(10)
    # One held batch, then every queued text in one batch and every image in one batch.
    assert backend.batch_sizes("text") == [1, len(TEXTS)]
    assert backend.batch_sizes("image") == [len(IMAGES)]
    # Text is padded to the longest row of its batch, not to the context.
    text_batch = backend.calls[-2][1] if backend.calls[-2][0] == "text" else backend.calls[-1][1]
    lengths = [int(np.count_nonzero(row)) for row in text_batch]
    assert text_batch.shape[1] == max(lengths) < 32
    for vec, item in zip(results, items, strict=True):
        np.testing.assert_allclose(vec, reference(item), atol=1e-5)


def test_batches_respect_the_token_budget(tiny_bundle: Path, tmp_path: Path) -> None:
    backend = ControlledBackend(OnnxRuntimeBackend(tiny_bundle))
    budget = 40  # padded tokens: a couple of short captions per batch, never more
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", max_batch=16,
        inference_workers=1, max_batch_tokens=budget, health_interval_s=3600,
    )  # fmt: skip
    bg = BackgroundServer(config, backend=backend)
    try:
        backend.calls.clear()
        held = hold_first_batch(bg, backend)
        with ThreadPoolExecutor(len(TEXTS)) as pool:
            futures = [pool.submit(bg.client.embed, [t]) for t in TEXTS]
            wait_until(lambda: queued(bg, "text") == len(TEXTS), "texts to queue")
            backend.open.set()
            for f in futures:
                f.result(30)
        held.join(10)
        batches = [a for m, a in backend.calls if m == "text"][1:]
        assert sum(len(b) for b in batches) == len(TEXTS) and len(batches) > 1
        for b in batches:
            assert b.size <= budget or len(b) == 1
            assert text_cost([list(r[r != 0]) for r in b]) == b.size
    finally:
        backend.open.set()
        bg.stop()


def test_a_bad_item_fails_only_its_own_request(
    gated: tuple[BackgroundServer, ControlledBackend],
) -> None:
    bg, backend = gated
    truncated_jpeg = IMAGES[0][: len(IMAGES[0]) // 2]  # a valid header, then the data stops
    held = hold_first_batch(bg, backend)
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(bg.client.embed, ["fine", IMAGES[1]]) for _ in range(2)]
        bad = pool.submit(bg.client.embed, ["fine too", truncated_jpeg])
        with pytest.raises(grpc.RpcError) as err:
            bad.result(30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 1: image could not be decoded" in err.value.details()
        backend.open.set()
        for f in good:
            assert f.result(30).shape == (2, DIM)
    held.join(10)


def test_a_backend_failure_fails_only_that_batch(
    gated: tuple[BackgroundServer, ControlledBackend],
) -> None:
    bg, backend = gated
    backend.fail_next = 1  # the held batch will fail; the one queued behind it will not
    backend.open.clear()
    backend.entered.clear()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(bg.client.embed, ["in the failing batch"])
        assert backend.entered.wait(10)
        later = [pool.submit(bg.client.embed, [t]) for t in TEXTS[:3]]
        wait_until(lambda: queued(bg, "text") == 3, "texts to queue")
        backend.open.set()
        with pytest.raises(grpc.RpcError) as err:
            first.result(30)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == "internal error"
        for f in later:
            assert f.result(30).shape == (1, DIM)
    # The failed batch, then the three queued texts as one batch. The health monitor's probe
    # (a one-text embed, run at once because a batch failed) may come before or after it.
    sizes = backend.batch_sizes("text")
    assert sizes[0] == 1 and 3 in sizes[1:3], sizes


def test_cancelled_and_expired_calls_never_reach_the_backend(
    gated: tuple[BackgroundServer, ControlledBackend], tiny_bundle: Path
) -> None:
    bg, backend = gated
    tokenizer = ClipTokenizer.from_bundle(tiny_bundle)
    expired_text, cancelled_text = "zebra crossing at noon", "quilt of many colours"
    held = hold_first_batch(bg, backend)
    stub = bg.client.stub
    # A deadline that passes while queued, and a call the client cancels while queued.
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(inputs=[pb.Content(text=expired_text)]), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    call = stub.Embed.future(
        pb.EmbedRequest(inputs=[pb.Content(text=cancelled_text), pb.Content(image=IMAGES[2])])
    )
    wait_until(lambda: queued(bg, "text") >= 1 and queued(bg, "image") >= 1, "the call to queue")
    call.cancel()
    kept = stub.Embed.future(pb.EmbedRequest(inputs=[pb.Content(text="still wanted")]))
    wait_until(lambda: queued(bg, "text") >= 2, "the kept call to queue")
    time.sleep(0.3)  # let the server see the cancellation
    backend.open.set()
    assert len(kept.result(30).embeddings) == 1
    held.join(10)
    sent = [row[row != 0].tolist() for m, a in backend.calls if m == "text" for row in a]
    for text in (expired_text, cancelled_text):
        assert tokenizer.encode([text])[0] not in sent
    assert tokenizer.encode(["still wanted"])[0] in sent
    assert backend.batch_sizes("image") == []  # the cancelled call's image never ran


def test_a_full_queue_answers_resource_exhausted(tiny_bundle: Path, tmp_path: Path) -> None:
    backend = ControlledBackend(OnnxRuntimeBackend(tiny_bundle))
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", inference_workers=1,
        max_queued_items=3, health_interval_s=3600,
    )  # fmt: skip
    bg = BackgroundServer(config, backend=backend)
    try:
        held = hold_first_batch(bg, backend)
        with ThreadPoolExecutor(1) as pool:
            queued_call = pool.submit(bg.client.embed, ["one", "two"])
            wait_until(lambda: queued(bg, "text") == 2, "two texts to queue")
            with pytest.raises(grpc.RpcError) as err:
                bg.client.embed(["three", "four"])  # the queue holds 3: no unbounded queueing
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_queued_items=3" in err.value.details()
            backend.open.set()
            assert queued_call.result(30).shape == (2, DIM)
        held.join(10)
        assert bg.client.embed(["and then it serves again"]).shape == (1, DIM)
    finally:
        backend.open.set()
        bg.stop()


def test_idle_workers_share_the_queue_instead_of_one_taking_it_all() -> None:
    """With a second worker idle, a batch takes half of what is queued and the other worker
    runs the rest at the same time; with one worker, one batch takes everything."""

    def run_batches(workers: int, items: int) -> list[int]:
        sizes: list[int] = []
        lock = threading.Lock()

        def run(values: list[int]) -> np.ndarray:
            with lock:
                sizes.append(len(values))
            time.sleep(0.05)
            return np.zeros((len(values), 4), dtype=np.float32)

        async def main() -> None:
            with ThreadPoolExecutor(workers) as pool:
                batcher: Batcher[int] = Batcher(
                    "text", run, lambda vs: len(vs), executor=pool,
                    workers=WorkerSlots(workers), max_batch=64, budget=1 << 20,
                    max_wait_s=0.001, max_queued=1000,
                )  # fmt: skip
                futures = [batcher.submit(i) for i in range(items)]  # queued before any batch
                rows = await asyncio.gather(*futures)
                assert len(rows) == items
                await batcher.close()

        asyncio.run(main())
        return sizes

    assert run_batches(1, 8) == [8]
    assert run_batches(2, 8) == [4, 4]
    assert run_batches(2, 9) == [5, 4]
    assert run_batches(3, 9) == [3, 3, 3]
    assert run_batches(2, 1) == [1]
