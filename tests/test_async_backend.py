"""The async side of the embedding path: a backend with `AsyncEmbeddingBackend` methods is
awaited on the event loop, bounded by `triton_max_inflight` batches in flight rather than by
inference worker threads, with the batcher's deadline / cancellation / failure guarantees
unchanged. The real async backend is Triton (tests/test_triton.py, against a real
tritonserver); here `AsyncOnnxDouble` stands in for it so these run in the quick suite."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import BackgroundServer
from PIL import Image

from clipserve.serving.backends.backend import BackendInfo, is_async_backend
from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.serving.bundle import load_manifest
from clipserve.serving.config import ServerConfig
from clipserve.serving.embedding.batcher import Batcher, WorkerSlots
from clipserve.serving.embedding.preprocess import decode_for_model
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.serving.errors import DeadlineExceeded
from clipserve.serving.server import _parser, service_of

TEXTS = ["a cat", "a much longer caption about a small cat sitting on a mat", "x"]


def _png(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


IMAGES = [_png(0, (96, 72)), _png(1, (40, 130))]


class AsyncOnnxDouble:
    """Test double of an async backend (Triton's place): the real ONNX backend behind the
    async methods (run with asyncio.to_thread), counting calls per path and `aclose`."""

    def __init__(self, real: OnnxRuntimeBackend) -> None:
        self.real, self.info = real, real.info
        self.sync_calls = 0
        self.async_calls = 0
        self.aclosed = 0
        self.closed = 0

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        self.sync_calls += 1
        return self.real.embed_texts(input_ids)

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        self.sync_calls += 1
        return self.real.embed_images(pixel_values)

    async def embed_texts_async(self, input_ids: np.ndarray) -> np.ndarray:
        self.async_calls += 1
        return await asyncio.to_thread(self.real.embed_texts, input_ids)

    async def embed_images_async(self, pixel_values: np.ndarray) -> np.ndarray:
        self.async_calls += 1
        return await asyncio.to_thread(self.real.embed_images, pixel_values)

    async def aclose(self) -> None:
        self.aclosed += 1

    def close(self) -> None:
        self.closed += 1
        self.real.close()


def test_is_async_backend_needs_all_three_coroutine_methods() -> None:
    class Sync:
        info = BackendInfo("x", "cpu", ())

        def embed_texts(self, input_ids: np.ndarray) -> np.ndarray: ...

        def embed_images(self, pixel_values: np.ndarray) -> np.ndarray: ...

        def close(self) -> None: ...

    class NoAclose(Sync):
        async def embed_texts_async(self, input_ids: np.ndarray) -> np.ndarray: ...

        async def embed_images_async(self, pixel_values: np.ndarray) -> np.ndarray: ...

    class Async(NoAclose):
        async def aclose(self) -> None: ...

    class NotCoroutines(Sync):
        embed_texts_async = Sync.embed_texts
        embed_images_async = Sync.embed_images
        aclose = Sync.close

    assert not is_async_backend(Sync())
    assert not is_async_backend(NoAclose())
    assert not is_async_backend(NotCoroutines())
    assert is_async_backend(Async())
    from clipserve.serving.backends.triton_backend import TritonBackend

    assert is_async_backend(TritonBackend)  # the class: nothing to connect to here
    assert not is_async_backend(OnnxRuntimeBackend)


def _async_batcher(
    run_async: Callable[[list[int]], Awaitable[np.ndarray]], slots: int, max_batch: int = 1
) -> Batcher[int]:
    return Batcher(
        "text", None, lambda vs: len(vs), executor=None, run_async=run_async,
        workers=WorkerSlots(slots), max_batch=max_batch, budget=1 << 20, max_wait_s=0.001,
        max_queued=1000,
    )  # fmt: skip


def test_async_batches_in_flight_are_bounded_by_slots_not_threads() -> None:
    """Six slots, no inference thread at all: six batches wait in the backend at once (the
    gate opens only then), never a seventh; every caller gets its own row."""
    in_flight, peak = 0, 0
    threads: set[int] = set()

    async def main() -> list[np.ndarray]:
        nonlocal in_flight, peak
        full = asyncio.Event()

        async def run(values: list[int]) -> np.ndarray:
            nonlocal in_flight, peak
            threads.add(threading.get_ident())
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight >= 6:
                full.set()
            try:
                await asyncio.wait_for(full.wait(), 10)
                await asyncio.sleep(0.01)
            finally:
                in_flight -= 1
            return np.array([[v, 0.0] for v in values], dtype=np.float32)

        batcher = _async_batcher(run, slots=6)
        rows = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.close()
        return rows

    rows = asyncio.run(main())
    assert peak == 6
    assert [float(r[0]) for r in rows] == list(range(20))
    assert threads == {threading.main_thread().ident}  # awaited on the loop itself


def test_async_batches_keep_deadline_cancel_and_failure_semantics() -> None:
    seen: list[list[int]] = []
    finished: list[list[int]] = []

    async def main() -> None:
        release = asyncio.Event()

        async def run(values: list[int]) -> np.ndarray:
            seen.append(values)
            if values == [13]:
                raise RuntimeError("backend down")
            await release.wait()
            finished.append(values)
            return np.array([[v] for v in values], dtype=np.float32)

        batcher = _async_batcher(run, slots=3, max_batch=8)
        expired = batcher.submit(0, deadline=time.monotonic() - 1)
        with pytest.raises(DeadlineExceeded):
            await expired
        a, b = batcher.submit(1), batcher.submit(2)  # two idle slots: a batch each
        while len(seen) < 2:
            await asyncio.sleep(0.001)
        a.cancel()  # its caller gives up while its batch runs
        failing = batcher.submit(13)  # the third slot: fails alone
        with pytest.raises(RuntimeError, match="backend down"):
            await failing
        release.set()
        assert float((await b)[0]) == 2.0
        await batcher.close()  # waits for the batches in flight
        assert a.cancelled()

    asyncio.run(main())
    assert sorted(seen) == [[1], [2], [13]]  # the expired item never reached the backend
    assert sorted(finished) == [[1], [2]]  # the cancelled caller's batch ran to its end


def test_batcher_takes_one_way_to_run() -> None:
    async def run_async(values: list[int]) -> np.ndarray:
        return np.zeros((len(values), 1), dtype=np.float32)

    def run(values: list[int]) -> np.ndarray:
        return np.zeros((len(values), 1), dtype=np.float32)

    common = dict(workers=WorkerSlots(1), max_batch=1, budget=1, max_wait_s=0.0, max_queued=1)
    with pytest.raises(ValueError, match="run_async alone"):
        Batcher("text", run, len, executor=None, run_async=run_async, **common)
    with pytest.raises(ValueError, match="run_async alone"):
        Batcher("text", run, len, executor=None, **common)


def test_triton_max_inflight_is_validated_and_configurable(tmp_path: Path) -> None:
    base = dict(bundle=tmp_path, index_path=tmp_path / "i")
    assert ServerConfig(**base).triton_max_inflight == 4
    for bad in (0, -2):
        with pytest.raises(ValueError, match="triton_max_inflight: must be a positive integer"):
            ServerConfig(**base, triton_max_inflight=bad)
    env = {"CLIPSERVE_TRITON_MAX_INFLIGHT": "16"}
    assert ServerConfig.from_env(env, **base).triton_max_inflight == 16
    with pytest.raises(ValueError, match="CLIPSERVE_TRITON_MAX_INFLIGHT='many'"):
        ServerConfig.from_env({"CLIPSERVE_TRITON_MAX_INFLIGHT": "many"}, **base)
    args = _parser().parse_args(["--triton-max-inflight", "8"])
    assert args.triton_max_inflight == 8


def test_server_awaits_an_async_backend_and_closes_it(tiny_bundle: Path, tmp_path: Path) -> None:
    """Through gRPC: requests take the async path (the sync one only for the health probe),
    vectors equal the backend's own, and shutdown closes the async side once."""
    manifest = load_manifest(tiny_bundle)
    real = OnnxRuntimeBackend(tiny_bundle, manifest)
    backend = AsyncOnnxDouble(real)
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", inference_workers=1,
        triton_max_inflight=3, health_interval_s=3600,
    )  # fmt: skip
    bg = BackgroundServer(config, backend=backend)
    try:
        probe_calls = backend.sync_calls
        assert service_of(bg.server).embedder.inference_slots == 3
        tok = ClipTokenizer.from_bundle(tiny_bundle, manifest)
        pixels = [decode_for_model(b, manifest, max_bytes=1 << 30, max_pixels=1 << 30)
                  for b in IMAGES]  # fmt: skip
        np.testing.assert_allclose(
            bg.client.embed_texts(TEXTS), real.embed_texts(tok.pad(tok.encode(TEXTS))), atol=1e-5
        )
        np.testing.assert_allclose(
            bg.client.embed_images(IMAGES), real.embed_images(np.stack(pixels)), atol=1e-5
        )
        assert backend.async_calls >= 2
        assert backend.sync_calls == probe_calls  # serving never took the thread path
    finally:
        bg.stop()
    assert (backend.aclosed, backend.closed) == (1, 1)
