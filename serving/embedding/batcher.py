"""`Batcher`: dynamic batching across requests, one per modality.

Items (already validated and preprocessed: token ids, or a [3,H,W] pixel array) join a FIFO
queue; a loop forms batches and runs them in the shared inference slots (`WorkerSlots`): a
slot is an inference worker thread for a sync backend, or a batch in flight, awaited on the
event loop, for an async one (Triton). A batch closes when it holds `max_batch` items, when
the next item would take it past `budget` (padded tokens for text, model-input pixels for
images: `cost` prices a whole batch), or `max_wait_s` after its oldest item arrived. Batches
only start forming once a slot is free, so while all are busy the queue fills and the next
batch is bigger: batch size follows load without a long fixed wait (the Triton / TEI
scheme). When other slots are idle too, a batch takes only its share of what is queued
(queued / idle slots, rounded up) and closes at once, so the idle slots run the rest in
parallel instead of one running everything while the others wait: on a CPU each worker has
its own cores; Triton spreads them over its instances.

Guarantees:
- An item whose caller was cancelled, or whose deadline passed, is dropped before inference
  (its future is cancelled / failed with DeadlineExceeded); it never reaches the backend.
- A backend failure fails only the items of that batch, with the backend's exception.
- A batch that started runs to its end (sync or async alike): cancelling its callers only
  discards their rows.
- The queue is bounded: `submit` raises Overloaded (RESOURCE_EXHAUSTED) when it is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from clipserve.serving.errors import DeadlineExceeded, Overloaded
from clipserve.serving.ops.request_context import expired

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class BatchObserver(Protocol):
    """What the batcher reports (metrics, health). All methods are called on the loop."""

    def queue_depth(self, modality: str, depth: int) -> None: ...

    def batch_started(self, modality: str, key: int) -> None: ...

    def batch_finished(self, modality: str, key: int) -> None: ...

    def batch_done(
        self, modality: str, size: int, cost: int, waits_s: Sequence[float], infer_s: float
    ) -> None: ...

    def batch_failed(self, modality: str, size: int, exc: BaseException) -> None: ...


class WorkerSlots:
    """How many batches may run at once (over every batcher sharing it), and how many more
    could start now: inference worker threads for a sync backend, batches in flight for an
    async one."""

    def __init__(self, workers: int) -> None:
        self._sem = asyncio.Semaphore(workers)
        self._idle = workers

    @property
    def idle(self) -> int:
        return self._idle

    async def acquire(self) -> None:
        await self._sem.acquire()
        self._idle -= 1

    def release(self) -> None:
        self._idle += 1
        self._sem.release()


@dataclass
class _Pending(Generic[Item]):
    value: Item
    future: asyncio.Future[np.ndarray]
    deadline: float | None  # time.monotonic()
    enqueued: float = field(default_factory=time.monotonic)

    def dead(self, now: float) -> bool:
        return self.future.done() or expired(self.deadline, now)


class Batcher(Generic[Item]):
    """Cross-request micro-batcher for one modality. Create and use on one event loop."""

    def __init__(
        self,
        modality: str,
        run: Callable[[list[Item]], np.ndarray] | None,
        cost: Callable[[Sequence[Item]], int],
        *,
        executor: Executor | None,
        workers: WorkerSlots,
        max_batch: int,
        budget: int,
        max_wait_s: float,
        max_queued: int,
        observer: BatchObserver | None = None,
        run_async: Callable[[list[Item]], Awaitable[np.ndarray]] | None = None,
    ) -> None:
        """`run(values) -> float32 [len(values), D]` runs on `executor` (blocking is fine);
        or, given `run_async` instead (with `run` and `executor` None), batches await
        `run_async(values)` on the loop (it must not block). `workers` bounds batches in
        flight over every batcher sharing it."""
        if (run_async is None) == (run is None) or (run is None) != (executor is None):
            raise ValueError("give run and executor, or run_async alone")
        self.modality = modality
        self._run = run
        self._run_async = run_async
        self._cost = cost
        self._executor = executor
        self._workers = workers
        self.max_batch = max_batch
        self.budget = budget
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self._observer = observer
        self._queue: deque[_Pending[Item]] = deque()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, value: Item, deadline: float | None = None) -> asyncio.Future[np.ndarray]:
        """Queue one item; the future resolves to its float32 [D] row. Cancel the future to
        withdraw the item (it is then skipped). Raises Overloaded when the queue is full."""
        if len(self._queue) >= self.max_queued:
            self._prune(time.monotonic())
            if len(self._queue) >= self.max_queued:
                raise Overloaded(
                    f"server busy: {len(self._queue)} {self.modality} items waiting for "
                    f"inference (max_queued_items={self.max_queued}); retry with backoff"
                )
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"batcher-{self.modality}"
            )
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(value, fut, deadline))
        self._arrived.set()
        self._report_depth()
        return fut

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def close(self) -> None:
        """Stop forming batches, fail what is queued, wait for batches in flight."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(Overloaded("server is shutting down"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # -- the loop ------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._workers.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._workers.release()
                raise
            if not batch:
                self._workers.release()
                continue
            task = asyncio.get_running_loop().create_task(self._dispatch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Pending[Item]]:
        """Take items FIFO until the batch is full, over budget, or its wait is over; with
        other workers idle, only this batch's share of the queue."""
        batch: list[_Pending[Item]] = []
        values: list[Item] = []
        limit = self.max_batch
        if self._workers.idle > 0 and len(self._queue) > 1:
            limit = min(limit, -(-len(self._queue) // (self._workers.idle + 1)))
        while True:
            now = time.monotonic()
            while self._queue and len(batch) < limit:
                head = self._queue[0]
                if head.dead(now):
                    self._queue.popleft()
                    _fail_if_expired(head, now)
                    continue
                if batch and self._cost([*values, head.value]) > self.budget:
                    self._report_depth()
                    return batch  # full by budget; the head starts the next batch
                self._queue.popleft()
                batch.append(head)
                values.append(head.value)
            self._report_depth()
            if not batch:
                return batch
            if len(batch) >= limit:
                return batch
            remaining = batch[0].enqueued + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                return batch
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    async def _dispatch(self, batch: list[_Pending[Item]]) -> None:
        try:
            now = time.monotonic()
            live = [p for p in batch if not p.dead(now)]
            for p in batch:
                _fail_if_expired(p, now)
            if not live:
                return
            values = [p.value for p in live]
            waits = [now - p.enqueued for p in live]
            t0 = time.perf_counter()
            if self._observer is not None:
                self._observer.batch_started(self.modality, id(batch))
            try:
                if self._run_async is not None:
                    out = await self._run_async(values)
                else:
                    assert self._run is not None
                    out = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self._run, values
                    )
                if out.shape[0] != len(live):
                    raise RuntimeError(f"backend returned {out.shape[0]} rows for {len(live)}")
            except Exception as exc:
                if self._observer is not None:
                    self._observer.batch_finished(self.modality, id(batch))
                    self._observer.batch_failed(self.modality, len(live), exc)
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            infer_s = time.perf_counter() - t0
            if self._observer is not None:
                self._observer.batch_finished(self.modality, id(batch))
                self._observer.batch_done(
                    self.modality, len(live), self._cost(values), waits, infer_s
                )
            for p, row in zip(live, out, strict=True):
                if not p.future.done():  # cancelled while running: nobody is waiting
                    p.future.set_result(row)
        finally:
            self._workers.release()

    def _prune(self, now: float) -> None:
        """Drop cancelled items anywhere in the queue; fail expired ones."""
        if not any(p.dead(now) for p in self._queue):
            return
        kept: deque[_Pending[Item]] = deque()
        for p in self._queue:
            if p.dead(now):
                _fail_if_expired(p, now)
            else:
                kept.append(p)
        self._queue = kept

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self.modality, len(self._queue))


def _fail_if_expired(p: _Pending[Any], now: float) -> None:
    if not p.future.done() and expired(p.deadline, now):
        p.future.set_exception(DeadlineExceeded("the call's deadline passed before inference"))


def text_cost(rows: Sequence[Sequence[int]]) -> int:
    """Padded tokens of a text batch: rows x the longest row (serving pads to that)."""
    return len(rows) * max((len(r) for r in rows), default=0)


def image_cost_fn(pixels_per_image: int) -> Callable[[Sequence[Any]], int]:
    def cost(images: Sequence[Any]) -> int:
        return len(images) * pixels_per_image

    return cost
