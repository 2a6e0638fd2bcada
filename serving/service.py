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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from clipserve.index.base import VectorIndex
from clipserve.serving.backend import EmbeddingBackend
from clipserve.serving.bundle import Manifest
from clipserve.serving.config import ServerConfig
from clipserve.serving.errors import InvalidInput, Overloaded
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
        )

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


def _server_version() -> str:
    try:
        return importlib.metadata.version("clipserve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
