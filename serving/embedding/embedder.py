"""`Embedder`: contents -> vectors through validation, bounded decoding and the batchers.

Per request: every image header is parsed and checked, and every text tokenized and checked
(or truncated, when the caller allows it), before anything is decoded or queued, so a bad
item rejects its own request only and never reaches a batch. Images are then decoded one by
one under the global pixel budget (`budget.PixelBudget`), shrunk to the model input at once,
and queued; texts are queued as token ids. Cross-request batching happens in the two
`Batcher`s, which share the inference slots: `inference_workers` threads calling a sync
backend, or, for an async backend (Triton), up to `triton_max_inflight` batches awaited on
the event loop at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from clipserve.serving.backends.backend import (
    AsyncEmbeddingBackend,
    EmbeddingBackend,
    is_async_backend,
)
from clipserve.serving.bundle import Manifest
from clipserve.serving.config import ServerConfig
from clipserve.serving.embedding import memory
from clipserve.serving.embedding.batcher import (
    Batcher,
    BatchObserver,
    WorkerSlots,
    image_cost_fn,
    text_cost,
)
from clipserve.serving.embedding.budget import PixelBudget
from clipserve.serving.embedding.preprocess import (
    DecodePlan,
    load_pixels,
    open_image,
    plan_decode,
    preprocess_one,
)
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.serving.errors import InvalidInput
from clipserve.serving.ops.request_context import DEADLINE

log = logging.getLogger(__name__)

# Decodes at least this large are followed by malloc_trim (see serving/embedding/memory.py).
TRIM_ABOVE_PIXELS = 4_000_000


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
    tokens: tuple[int, ...] = ()  # per row: text tokens embedded (start/end included); 0 = image
    original_tokens: tuple[int, ...] = ()  # per row: text tokens before truncation

    def truncated(self, i: int) -> bool:
        return bool(self.tokens) and self.tokens[i] < self.original_tokens[i]

    @property
    def truncations(self) -> list[tuple[int, int, int]]:
        """(input index, original tokens, tokens kept) for every truncated text."""
        return [
            (i, self.original_tokens[i], self.tokens[i])
            for i in range(len(self.tokens))
            if self.truncated(i)
        ]


def input_label(i: int) -> str:
    return f"input {i}"


class Embedder:
    """Owns the decode threads, inference threads, the pixel budget and the two batchers;
    `close()` also closes the async side of an async backend (its loop-bound client)."""

    def __init__(
        self,
        config: ServerConfig,
        manifest: Manifest,
        backend: EmbeddingBackend,
        tokenizer: ClipTokenizer,
        *,
        observer: BatchObserver | None = None,
        on_budget: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        h, w = manifest.image_size
        self.input_units = 3 * h * w  # a preprocessed image: three float32 channels per pixel
        if config.max_batch_tokens < manifest.context_length:
            raise ValueError(
                f"max_batch_tokens ({config.max_batch_tokens}) is below the model's context "
                f"length ({manifest.context_length}): one long text would never fit a batch"
            )
        if config.max_batch_pixels < h * w:
            raise ValueError(
                f"max_batch_pixels ({config.max_batch_pixels}) is below one model input "
                f"({h}x{w}); no image would fit a batch"
            )
        self.budget = PixelBudget(
            max(config.max_inflight_pixels, self.input_units),
            wait_s=config.admission_wait_s,
            on_change=on_budget,
        )
        self._decode_pool = ThreadPoolExecutor(config.decode_workers, "clipserve-decode")
        # Its own thread: texts never wait behind large image decodes.
        self._tokenize_pool = ThreadPoolExecutor(1, "clipserve-tokenize")
        # An async backend's batch in flight holds no thread: it is awaited on the loop, up to
        # triton_max_inflight at once; a sync backend's runs on one of inference_workers.
        self._async_backend: AsyncEmbeddingBackend | None = (
            backend if is_async_backend(backend) else None
        )
        sync = self._async_backend is None
        self._infer_pool = (
            ThreadPoolExecutor(config.inference_workers, "clipserve-infer") if sync else None
        )
        common: dict[str, Any] = dict(
            executor=self._infer_pool,
            workers=WorkerSlots(self.inference_slots),  # shared: both modalities together
            max_batch=config.max_batch,
            max_wait_s=config.max_batch_wait_us / 1e6,
            max_queued=config.max_queued_items,
            observer=observer,
        )
        self.text: Batcher[list[int]] = Batcher(
            "text", self._run_texts if sync else None, text_cost,
            run_async=None if sync else self._run_texts_async,
            budget=config.max_batch_tokens, **common,
        )  # fmt: skip
        self.image: Batcher[np.ndarray] = Batcher(
            "image", self._run_images if sync else None, image_cost_fn(h * w),
            run_async=None if sync else self._run_images_async,
            budget=config.max_batch_pixels, **common,
        )  # fmt: skip

    async def embed(
        self,
        contents: Sequence[Content],
        *,
        truncate: bool = False,
        label: Callable[[int], str] = input_label,
        deadline: float | None = None,
    ) -> Embeddings:
        """Embed `contents` (already checked for presence and character limits) in order.

        Raises InvalidInput naming the input (`label(i)`), Overloaded when the budget or a
        queue is full, DeadlineExceeded when the deadline (monotonic; default: the call's,
        from `request_context`) passes before inference, or the backend's own error."""
        deadline = DEADLINE.get() if deadline is None else deadline
        m = self.manifest
        text_pos = [i for i, c in enumerate(contents) if c.text is not None]
        image_pos = [i for i, c in enumerate(contents) if c.text is None]
        opened = self._open_images(contents, image_pos, label)
        tokens = [0] * len(contents)
        original = [0] * len(contents)
        futures: list[asyncio.Future[np.ndarray]] = []
        try:
            if text_pos:
                texts = [contents[i].text or "" for i in text_pos]
                loop = asyncio.get_running_loop()
                rows = await loop.run_in_executor(
                    self._tokenize_pool, self._tokenize, texts, text_pos, truncate, label
                )
                for i, (ids, n_orig) in zip(text_pos, rows, strict=True):
                    tokens[i], original[i] = len(ids), n_orig
                    futures.append(self.text.submit(ids, deadline))
            loop = asyncio.get_running_loop()
            # A request decodes at most decode_workers images at once, so requests that
            # compete for the pixel budget each make progress instead of all queueing
            # every image at once (and all timing out).
            lane = asyncio.Semaphore(self.config.decode_workers)
            for i, (image, plan) in zip(image_pos, opened, strict=True):
                coro = self._embed_image(image, plan, deadline, label(i), lane)
                task = loop.create_task(coro)
                futures.append(task)
            opened = []  # owned by the tasks now
            vectors = await asyncio.gather(*futures)
        except BaseException:
            for f in futures:
                f.cancel()
            for image, _ in opened:
                image.close()
            raise
        out = np.empty((len(contents), m.embed_dim), dtype=np.float32)
        out[text_pos + image_pos] = np.stack(vectors)
        return Embeddings(
            out, tuple(c.kind for c in contents), m.version, tuple(tokens), tuple(original)
        )

    @property
    def inference_slots(self) -> int:
        """Batches that may run at once: worker threads, or batches in flight to an async
        backend."""
        if self._async_backend is not None:
            return self.config.triton_max_inflight
        return self.config.inference_workers

    async def close(self) -> None:
        """On the loop: stop the batchers (batches in flight finish), then close the async
        backend's loop-bound side; the backend's `close()` stays with its owner."""
        await self.text.close()
        await self.image.close()
        if self._async_backend is not None:
            await self._async_backend.aclose()

    def shutdown_threads(self) -> None:
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._tokenize_pool.shutdown(wait=True, cancel_futures=True)
        if self._infer_pool is not None:
            self._infer_pool.shutdown(wait=True, cancel_futures=True)

    # -- images -----------------------------------------------------------------------------------

    def _open_images(
        self, contents: Sequence[Content], image_pos: list[int], label: Callable[[int], str]
    ) -> list[tuple[Image.Image, DecodePlan]]:
        """Headers only (cheap, no pixels): every size check before any decoding."""
        opened: list[tuple[Image.Image, DecodePlan]] = []
        try:
            for i in image_pos:
                try:
                    image = open_image(
                        contents[i].image or b"",
                        max_bytes=self.config.max_image_bytes,
                        max_pixels=self.config.max_image_pixels,
                    )
                except InvalidInput as exc:
                    raise InvalidInput(f"{label(i)}: {exc}") from None
                opened.append((image, plan_decode(image, self.manifest.image_size)))
        except BaseException:
            for image, _ in opened:
                image.close()
            raise
        return opened

    async def _embed_image(
        self,
        image: Image.Image,
        plan: DecodePlan,
        deadline: float | None,
        where: str,
        lane: asyncio.Semaphore,
    ) -> np.ndarray:
        units, held = max(plan.pixels, self.input_units), 0
        try:
            async with lane:
                await self.budget.acquire(units, deadline)
                held = units
                try:
                    pixels = await self._decode_held(image, plan, held, where)
                except BaseException:
                    held = 0  # released by _decode_held (now or when the decode ends)
                    raise
            self.budget.release(held - self.input_units)
            held = self.input_units
            future = self.image.submit(pixels, deadline)
            try:
                return await future
            finally:
                future.cancel()  # a no-op once done; withdraws the item if we were cancelled
        except BaseException:
            image.close()  # never decoded (budget refused, cancelled): drop the header
            raise
        finally:
            if held:
                self.budget.release(held)

    async def _decode_held(
        self, image: Image.Image, plan: DecodePlan, held: int, where: str
    ) -> np.ndarray:
        """Decode on a decode thread; on failure the `held` budget is released once the
        thread is done with the pixels (at once, or when a cancelled decode ends)."""
        loop = asyncio.get_running_loop()
        decode = self._decode_pool.submit(self._decode, image, plan)
        try:
            return await asyncio.wrap_future(decode)
        except InvalidInput as exc:
            self.budget.release(held)
            raise InvalidInput(f"{where}: {exc}") from None
        except BaseException:
            if decode.done():
                self.budget.release(held)
            else:
                decode.add_done_callback(
                    lambda _: loop.call_soon_threadsafe(self.budget.release, held)
                )
            raise

    def _decode(self, image: Image.Image, plan: DecodePlan) -> np.ndarray:
        try:
            load_pixels(image)
            return preprocess_one(image, self.manifest, plan.box)
        finally:
            image.close()
            del image
            if plan.pixels >= TRIM_ABOVE_PIXELS:
                memory.trim()

    def _run_images(self, rows: list[np.ndarray]) -> np.ndarray:
        return self.backend.embed_images(np.stack(rows))

    async def _run_images_async(self, rows: list[np.ndarray]) -> np.ndarray:
        assert self._async_backend is not None
        return await self._async_backend.embed_images_async(np.stack(rows))

    # -- texts ------------------------------------------------------------------------------------

    def _tokenize(
        self,
        texts: list[str],
        positions: list[int],
        truncate: bool,
        label: Callable[[int], str],
    ) -> list[tuple[list[int], int]]:
        """(ids to embed, original token count) per text; cut to the context (open_clip's
        rule: keep the first context_length - 1 tokens, end with EOT) only if `truncate`."""
        ctx = self.manifest.context_length
        out = []
        for i, ids in zip(positions, self.tokenizer.encode(texts), strict=True):
            n = len(ids)
            if n > ctx:
                if not truncate:
                    raise InvalidInput(
                        f"{label(i)}: text is {n} tokens; this model accepts at most {ctx} "
                        "including start/end tokens (set truncate to cut it instead)"
                    )
                ids = [*ids[: ctx - 1], self.tokenizer.eot_token_id]
            out.append((ids, n))
        return out

    def _run_texts(self, rows: list[list[int]]) -> np.ndarray:
        return self.backend.embed_texts(self.tokenizer.pad(rows))

    async def _run_texts_async(self, rows: list[list[int]]) -> np.ndarray:
        assert self._async_backend is not None
        return await self._async_backend.embed_texts_async(self.tokenizer.pad(rows))
