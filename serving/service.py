"""`EmbeddingService`: the serving logic between the gRPC servicer and the backend/index.

It validates every request as a whole before doing any work (a rejected request embeds and
stores nothing), enforces the configured limits, tokenizes and preprocesses, runs the backend
and the index on worker threads so the event loop never blocks, and maps index errors to the
domain errors of `serving/errors.py`. It knows nothing about protobuf.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from clipserve.index.base import (
    CollectionNotFound,
    DimensionMismatch,
    Filter,
    Hit,
    Point,
    VectorIndex,
)
from clipserve.index.ids import content_id
from clipserve.serving.backend import EmbeddingBackend
from clipserve.serving.bundle import Manifest
from clipserve.serving.config import COLLECTION_RULE, ServerConfig, is_valid_collection_name
from clipserve.serving.errors import InvalidInput, NotFound, Overloaded
from clipserve.serving.preprocess import decode_image, preprocess
from clipserve.serving.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 10
T = TypeVar("T")


@dataclass(frozen=True)
class Content:
    """One input: exactly one of `text` / `image` (encoded bytes) must be set."""

    text: str | None = None
    image: bytes | None = None

    @property
    def kind(self) -> str:
        return "text" if self.text is not None else "image"

    @property
    def data(self) -> bytes:
        """The bytes the point id is derived from."""
        return self.text.encode("utf-8") if self.text is not None else (self.image or b"")


@dataclass(frozen=True)
class UpsertItem:
    content: Content
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [N, dim], rows L2-normalised, in input order
    kinds: tuple[str, ...]  # "text" | "image" per row
    model_version: str


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
    server_version: str
    precision: str = "fp32"
    model_variant: str = "default"


class EmbeddingService:
    """Owns the backend, tokenizer and index it is given; `close()` releases them."""

    def __init__(
        self,
        config: ServerConfig,
        manifest: Manifest,
        backend: EmbeddingBackend,
        tokenizer: ClipTokenizer,
        index: VectorIndex,
        index_kind: str = "",
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        self.index = index
        self.index_kind = index_kind or type(index).__name__
        self._in_flight = 0
        self._known_collections: set[str] = set()
        # Separate pools so slow inference never starves cheap index calls (and vice versa).
        # ONNX Runtime sessions and both index implementations are thread-safe.
        self._infer_pool = ThreadPoolExecutor(config.inference_workers, "clipserve-infer")
        self._index_pool = ThreadPoolExecutor(4, "clipserve-index")

    # -- public API (each call counts against max_in_flight) ---------------------------------

    async def embed(self, inputs: Sequence[Content]) -> Embeddings:
        async with self._admit():
            self._check_batch(inputs, "inputs")
            vectors = await self._run(self._infer_pool, self._embed_sync, list(inputs))
            return Embeddings(vectors, tuple(c.kind for c in inputs), self.manifest.version)

    async def upsert(self, collection: str, items: Sequence[UpsertItem]) -> tuple[str, list[str]]:
        """Embed and store `items`; returns (collection, ids in item order)."""
        async with self._admit():
            name = self._collection(collection)
            self._check_batch([it.content for it in items], "items")
            vectors = await self._run(
                self._infer_pool, self._embed_sync, [it.content for it in items]
            )
            ids = [content_id(it.content.kind, it.content.data) for it in items]
            # The same content twice in one request is one point: the last payload wins.
            points = {
                pid: Point(pid, vec, dict(it.payload))
                for pid, vec, it in zip(ids, vectors, items, strict=True)
            }
            await self._run(self._index_pool, self._upsert_sync, name, list(points.values()))
            return name, ids

    async def query(
        self,
        collection: str,
        *,
        content: Content | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        top_k: int | None = None,
        filter: Filter | None = None,
    ) -> list[Hit]:
        """Nearest stored points to `content` (embedded) or `vector` (normalised here)."""
        async with self._admit():
            name = self._collection(collection)
            k = self._top_k(top_k)
            _check_filter(filter)
            if (content is None) == (vector is None):
                raise InvalidInput("query: set exactly one of text, image or vector")
            if vector is not None:
                query_vec = self._check_vector(vector)
            else:
                assert content is not None
                self._check_batch([content], "query")
                vecs = await self._run(self._infer_pool, self._embed_sync, [content], True)
                query_vec = vecs[0]
            return await self._run(self._index_pool, self._search_sync, name, query_vec, k, filter)

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
            server_version=_server_version(),
            precision=b.precision,
            model_variant=b.model_variant,
        )

    async def ensure_collection(self, name: str) -> None:
        """Create `name` with the model's dimension if missing (startup: the default one)."""
        await self._run(self._index_pool, self._ensure_sync, self._collection(name))

    async def probe(self, timeout_s: float = 30.0) -> bool:
        """Can the backend embed right now? One tiny text and one blank image, with a timeout,
        so a wedged backend reads as unhealthy instead of hanging the caller."""
        try:
            await asyncio.wait_for(self._run(self._infer_pool, self._probe_sync), timeout=timeout_s)
            return True
        except Exception:
            log.exception("backend probe failed")
            return False

    def close(self) -> None:
        self._infer_pool.shutdown(wait=True, cancel_futures=True)
        self._index_pool.shutdown(wait=True, cancel_futures=True)
        for resource in (self.backend, self.index):
            try:
                resource.close()
            except Exception:
                log.exception("error closing %s", type(resource).__name__)

    # -- admission, validation ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admit(self) -> AsyncIterator[None]:
        # Reject rather than queue: a queue hides overload from the client and grows latency.
        if self._in_flight >= self.config.max_in_flight:
            raise Overloaded(
                f"server busy: {self._in_flight} requests in flight "
                f"(max_in_flight={self.config.max_in_flight}); retry with backoff"
            )
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    def _collection(self, name: str) -> str:
        if not name:
            return self.config.collection
        if not is_valid_collection_name(name):
            raise InvalidInput(f"collection {name[:80]!r} is not a valid name: {COLLECTION_RULE}")
        return name

    def _top_k(self, top_k: int | None) -> int:
        k = min(DEFAULT_TOP_K, self.config.max_top_k) if top_k is None else top_k
        if not 1 <= k <= self.config.max_top_k:
            raise InvalidInput(f"top_k is {k}; it must be in [1, {self.config.max_top_k}]")
        return k

    def _check_vector(self, vector: Sequence[float] | np.ndarray) -> np.ndarray:
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        dim = self.manifest.embed_dim
        if vec.shape[0] != dim:
            raise InvalidInput(
                f"query vector has {vec.shape[0]} values; this model's dimension is {dim}"
            )
        if not np.all(np.isfinite(vec)):
            raise InvalidInput("query vector contains NaN or infinite values")
        norm = float(np.linalg.norm(vec))
        if norm == 0.0 or not math.isfinite(norm):
            raise InvalidInput("query vector has zero (or overflowing) norm; it has no direction")
        return vec / norm

    def _check_batch(self, inputs: Sequence[Content], what: str) -> None:
        """Cheap checks on the event loop: counts, presence, text length. Token counts and
        images (size, pixels, decoding: `decode_image`) are checked on the worker
        (`_embed_sync`), still before any inference."""
        cfg = self.config
        if not inputs:
            raise InvalidInput(f"request has no {what}; send 1 to {cfg.max_batch}")
        if len(inputs) > cfg.max_batch:
            raise InvalidInput(f"request has {len(inputs)} {what}; the limit is {cfg.max_batch}")
        for i, c in enumerate(inputs):
            where = "query" if what == "query" else f"input {i}"
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

    def _embed_sync(self, inputs: list[Content], is_query: bool = False) -> np.ndarray:
        """Tokenize / decode everything first (so a bad item rejects the request before any
        inference), then one backend call per modality; rows come back in input order."""
        m = self.manifest

        def where(i: int) -> str:
            return "query" if is_query else f"input {i}"

        text_pos = [i for i, c in enumerate(inputs) if c.text is not None]
        image_pos = [i for i, c in enumerate(inputs) if c.text is None]
        token_ids = (
            self.tokenizer.encode([inputs[i].text or "" for i in text_pos]) if text_pos else []
        )
        for i, ids in zip(text_pos, token_ids, strict=True):
            if len(ids) > m.context_length:
                raise InvalidInput(
                    f"{where(i)}: text is {len(ids)} tokens; this model accepts at most "
                    f"{m.context_length} including start/end tokens"
                )
        images = []
        for i in image_pos:
            try:
                images.append(
                    decode_image(
                        inputs[i].image or b"",
                        max_bytes=self.config.max_image_bytes,
                        max_pixels=self.config.max_image_pixels,
                    )
                )
            except InvalidInput as exc:
                raise InvalidInput(f"{where(i)}: {exc}") from None
        out = np.empty((len(inputs), m.embed_dim), dtype=np.float32)
        if text_pos:
            out[text_pos] = self.backend.embed_texts(self.tokenizer.pad(token_ids))
        if image_pos:
            out[image_pos] = self.backend.embed_images(preprocess(images, m))
        return out

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

    def _ensure_sync(self, name: str) -> None:
        if name in self._known_collections:
            return
        try:
            self.index.ensure_collection(name, self.manifest.embed_dim)
        except DimensionMismatch as exc:
            raise InvalidInput(f"collection {name!r}: {exc}") from None
        self._known_collections.add(name)

    def _upsert_sync(self, name: str, points: list[Point]) -> None:
        self._ensure_sync(name)  # writing to a new collection creates it (model's dimension)
        self.index.upsert(name, points)

    def _search_sync(self, name: str, vec: np.ndarray, k: int, filter: Filter | None) -> list[Hit]:
        try:
            return self.index.search(name, vec, k, filter)
        except CollectionNotFound:
            self._known_collections.discard(name)
            raise NotFound(f"collection {name!r} does not exist; upsert into it first") from None
        except DimensionMismatch as exc:
            raise InvalidInput(f"collection {name!r}: {exc}") from None


def _server_version() -> str:
    try:
        return importlib.metadata.version("clipserve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _check_filter(filter: Filter | None) -> None:
    for j, cond in enumerate(filter.must if filter else ()):
        if not cond.key:
            raise InvalidInput(f"filter condition {j}: key is empty")
        if not isinstance(cond.value, str | int | bool):
            raise InvalidInput(
                f"filter condition {j} ({cond.key!r}): value must be keyword, integer or bool"
            )
