"""`EmbeddingService`: the serving logic between the gRPC servicer and the backend/index.

It validates every request as a whole before doing any work (a rejected request embeds and
stores nothing), enforces the configured limits, hands embedding to the `Embedder` (bounded
decoding, cross-request batching: serving/embedding/embedder.py, serving/embedding/batcher.py), runs the index on
worker threads so the event loop never blocks, maps index errors to the domain errors of
`serving/errors.py`, and feeds readiness (serving/ops/health.py) and metrics from what real
requests find. It knows nothing about protobuf.

For other services (the index service): `await service.embed(contents, truncate=...)` is the
one way to get vectors, and `await service.index_call(fn, *args)` the one way to run an index
operation (worker thread, failures -> UNAVAILABLE + readiness off, successes count as health).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.metadata
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from clipserve.index.base import (
    CollectionNotFound,
    DimensionMismatch,
    VectorIndex,
)
from clipserve.serving.backends.backend import EmbeddingBackend
from clipserve.serving.bundle import Manifest
from clipserve.serving.config import ServerConfig
from clipserve.serving.embedding.embedder import Content, Embedder, Embeddings, input_label
from clipserve.serving.embedding.preprocess import preprocess
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.serving.errors import (
    BackendUnavailable,
    InvalidInput,
    Overloaded,
    ServingError,
    grpc_status,
)
from clipserve.serving.ops.health import INDEX, INFERENCE, HealthMonitor
from clipserve.serving.ops.metrics import Metrics

__all__ = ["Content", "Embeddings", "EmbeddingService", "StreamItem", "StreamResult"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class StreamItem:
    """One EmbedStream item: the client's id, what to embed, whether to truncate."""

    id: int
    content: Content
    truncate: bool = False


@dataclass(frozen=True)
class StreamResult:
    """Exactly one of `embeddings` (one row) / `error_code` (a gRPC status name) is set."""

    id: int
    embeddings: Embeddings | None = None
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class ServiceInfo:
    model_name: str
    model_version: str
    dim: int
    image_size: tuple[int, int]  # (H, W)
    context_length: int
    backend: str
    device: str
    providers: tuple[str, ...]
    index_kind: str
    default_collection: str
    max_batch: int
    max_text_chars: int
    max_image_bytes: int
    max_image_pixels: int
    max_top_k: int
    max_in_flight: int
    max_request_bytes: int
    max_batch_tokens: int
    max_batch_pixels: int
    max_inflight_pixels: int
    max_batch_wait_us: int
    auth_required: bool
    server_version: str
    precision: str = "fp32"
    model_variant: str = "default"


_ADMITTED: contextvars.ContextVar[bool] = contextvars.ContextVar("admitted", default=False)


class EmbeddingService:
    """Owns the backend, tokenizer and index it is given; `close()` releases them.

    Create it, then `await start()` on the serving loop (batchers, health loop); `aclose()`
    there, then `close()` anywhere to release threads, backend and index."""

    def __init__(
        self,
        config: ServerConfig,
        manifest: Manifest,
        backend: EmbeddingBackend,
        tokenizer: ClipTokenizer,
        index: VectorIndex,
        index_kind: str = "",
        *,
        auth_required: bool = False,
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        self.index = index
        self.index_kind = index_kind or type(index).__name__
        self.auth_required = auth_required
        self.metrics = Metrics()
        self.metrics.backend_in_use(backend.info)
        self._in_flight = 0
        self.readiness_listeners: list[Callable[[bool], Awaitable[None]]] = []
        self.health = HealthMonitor(
            {INFERENCE: self._probe_sync, INDEX: self._probe_index_sync},
            self._readiness_changed,
            interval_s=config.health_interval_s,
        )
        self.embedder = Embedder(
            config, manifest, backend, tokenizer,
            observer=_BatchObserver(self.metrics, self.health),
            on_budget=self.metrics.inflight_pixels.set,
        )  # fmt: skip
        # Index calls have their own threads so slow inference never starves them.
        # Both index implementations are thread-safe.
        self._index_pool = ThreadPoolExecutor(4, "clipserve-index")
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        """Warm up (probe inference and the index once) and start the health loop; returns
        whether both work."""
        ready = await self.health.check(timeout_s=max(120.0, self.config.health_interval_s))
        self._health_task = asyncio.get_running_loop().create_task(self.health.run())
        return ready

    # -- public API (each call counts against max_in_flight) ---------------------------------

    async def embed(self, contents: Sequence[Content], truncate: bool = False) -> Embeddings:
        """Vectors for `contents` (1..max_batch texts / encoded images), in order.

        Long texts raise InvalidInput unless `truncate`; then they are cut to the context and
        `Embeddings.truncations` lists them. Counts against max_in_flight unless the caller
        is already admitted (an Upsert calling this). Errors: InvalidInput (names the input),
        Overloaded, DeadlineExceeded, BackendUnavailable."""
        async with self._admit():
            self._check_batch(contents, "inputs")
            return await self.embedder.embed(contents, truncate=truncate)

    async def embed_stream(self, items: AsyncIterable[StreamItem]) -> AsyncIterator[StreamResult]:
        """One result per item, in completion order; a bad item gets an error result and
        the stream goes on. At most max_batch items of one stream are in work at once (the
        rest wait in gRPC's flow control); the stream counts once against max_in_flight."""
        async with self._admit():
            window = asyncio.Semaphore(self.config.max_batch)
            results: asyncio.Queue[StreamResult | None] = asyncio.Queue()
            tasks: set[asyncio.Task[None]] = set()

            async def one(item: StreamItem) -> None:
                try:
                    label = lambda _: f"item {item.id}"  # noqa: E731
                    self._check_batch([item.content], "inputs", label)
                    emb = await self.embedder.embed(
                        [item.content], truncate=item.truncate, label=label
                    )
                    await results.put(StreamResult(item.id, emb))
                except ServingError as exc:
                    await results.put(StreamResult(item.id, None, grpc_status(exc).name, str(exc)))
                except Exception:
                    log.exception("stream item %d failed with an unexpected error", item.id)
                    await results.put(StreamResult(item.id, None, "INTERNAL", "internal error"))
                finally:
                    window.release()

            async def read() -> None:
                try:
                    async for item in items:
                        await window.acquire()
                        task = asyncio.get_running_loop().create_task(one(item))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    while tasks:
                        await asyncio.gather(*tasks, return_exceptions=True)
                finally:
                    await results.put(None)

            reader = asyncio.get_running_loop().create_task(read())
            try:
                while (result := await results.get()) is not None:
                    yield result
                await reader  # re-raises a failure of the request stream itself
            finally:
                reader.cancel()
                for task in list(tasks):
                    task.cancel()

    def info(self) -> ServiceInfo:
        cfg, m, b = self.config, self.manifest, self.backend.info
        return ServiceInfo(
            model_name=m.model_name,
            model_version=m.version,
            dim=m.embed_dim,
            image_size=(int(m.image_size[0]), int(m.image_size[1])),
            context_length=m.context_length,
            backend=b.name,
            device=b.device,
            providers=tuple(b.providers),
            index_kind=self.index_kind,
            default_collection=cfg.collection,
            max_batch=cfg.max_batch,
            max_text_chars=cfg.max_text_chars,
            max_image_bytes=cfg.max_image_bytes,
            max_image_pixels=cfg.max_image_pixels,
            max_top_k=cfg.max_top_k,
            max_in_flight=cfg.max_in_flight,
            max_request_bytes=cfg.max_request_bytes,
            max_batch_tokens=cfg.max_batch_tokens,
            max_batch_pixels=cfg.max_batch_pixels,
            max_inflight_pixels=self.embedder.budget.capacity,
            max_batch_wait_us=cfg.max_batch_wait_us,
            auth_required=self.auth_required,
            server_version=_server_version(),
            precision=b.precision,
            model_variant=b.model_variant,
        )

    async def index_call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run an index operation on the index threads. Domain errors (ServingError,
        CollectionNotFound, DimensionMismatch) and ValueError/TypeError pass through; any
        other failure is the index failing: logged, readiness re-checked at once, and raised
        as BackendUnavailable (UNAVAILABLE)."""
        try:
            result = await self._run(self._index_pool, fn, *args)
        except (ServingError, CollectionNotFound, DimensionMismatch, ValueError, TypeError):
            self.health.record_success(INDEX)  # the index answered
            raise
        except Exception as exc:
            log.exception("index call %s failed", getattr(fn, "__name__", fn))
            self.health.record_failure(INDEX)
            raise BackendUnavailable(f"the index is unavailable ({type(exc).__name__})") from None
        self.health.record_success(INDEX)
        return result

    async def aclose(self) -> None:
        """On the serving loop: stop the health loop and the batchers."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.embedder.close()

    def close(self) -> None:
        self.health.close()
        self.embedder.shutdown_threads()
        self._index_pool.shutdown(wait=True, cancel_futures=True)
        for resource in (self.backend, self.index):
            try:
                resource.close()
            except Exception:
                log.exception("error closing %s", type(resource).__name__)

    # -- admission, validation ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admit(self) -> AsyncIterator[None]:
        if _ADMITTED.get():  # nested (e.g. the index service calling embed): counted once
            yield
            return
        # Reject rather than queue: a queue hides overload from the client and grows latency.
        if self._in_flight >= self.config.max_in_flight:
            raise Overloaded(
                f"server busy: {self._in_flight} requests in flight "
                f"(max_in_flight={self.config.max_in_flight}); retry with backoff"
            )
        self._in_flight += 1
        self.metrics.inflight_requests.set(self._in_flight)
        token = _ADMITTED.set(True)
        try:
            yield
        finally:
            _ADMITTED.reset(token)
            self._in_flight -= 1
            self.metrics.inflight_requests.set(self._in_flight)

    async def _readiness_changed(self, serving: bool) -> None:
        self.metrics.ready.set(1 if serving else 0)
        for listener in self.readiness_listeners:
            await listener(serving)

    def _check_batch(
        self, inputs: Sequence[Content], what: str, label: Callable[[int], str] = input_label
    ) -> None:
        """Cheap checks on the event loop: counts, presence, text length. Token counts and
        images (size, pixels, decoding) are checked by the Embedder, before any inference."""
        cfg = self.config
        if not inputs:
            raise InvalidInput(f"request has no {what}; send 1 to {cfg.max_batch}")
        if len(inputs) > cfg.max_batch:
            raise InvalidInput(f"request has {len(inputs)} {what}; the limit is {cfg.max_batch}")
        for i, c in enumerate(inputs):
            where = label(i)
            if (c.text is None) == (c.image is None):
                raise InvalidInput(f"{where}: set exactly one of text or image")
            if c.text is not None:
                if not c.text.strip():
                    raise InvalidInput(f"{where}: text is empty")
                if len(c.text) > cfg.max_text_chars:
                    raise InvalidInput(
                        f"{where}: text is {len(c.text)} characters; the limit is {cfg.max_text_chars}"
                    )

    # -- worker-thread bodies -----------------------------------------------------------------

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        fut: Awaitable[T] = loop.run_in_executor(pool, fn, *args)
        return await fut

    def _probe_sync(self) -> None:
        from PIL import Image

        h, w = self.manifest.image_size
        vecs = np.concatenate(
            [
                self.backend.embed_texts(self.tokenizer.pad(self.tokenizer.encode(["a photo"]))),
                self.backend.embed_images(preprocess([Image.new("RGB", (w, h))], self.manifest)),
            ]
        )
        if vecs.shape != (2, self.manifest.embed_dim) or not np.all(np.isfinite(vecs)):
            raise RuntimeError(f"backend returned {vecs.shape} / non-finite embeddings")

    def _probe_index_sync(self) -> None:
        # The index answered if it says the collection is missing: a dropped default
        # collection is not a broken index.
        with contextlib.suppress(CollectionNotFound):
            self.index.count(self.config.collection)


class _BatchObserver:
    """Batch events -> metrics, and inference evidence -> readiness."""

    def __init__(self, metrics: Metrics, health: HealthMonitor) -> None:
        self.metrics, self.health = metrics, health

    def queue_depth(self, modality: str, depth: int) -> None:
        self.metrics.queue_depth_changed(modality, depth)

    def batch_started(self, modality: str, key: int) -> None:
        self.health.batch_started(key)

    def batch_finished(self, modality: str, key: int) -> None:
        self.health.batch_finished(key)

    def batch_done(
        self, modality: str, size: int, cost: int, waits_s: Sequence[float], infer_s: float
    ) -> None:
        self.metrics.batch_done(modality, size, cost, waits_s, infer_s)
        self.health.record_success(INFERENCE)

    def batch_failed(self, modality: str, size: int, exc: BaseException) -> None:
        self.metrics.batch_failed(modality)
        log.error("%s batch of %d failed: %r", modality, size, exc)
        self.health.record_failure(INFERENCE)


def _server_version() -> str:
    try:
        return importlib.metadata.version("clipserve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
