"""Admission by budget, not by count: a global pool of decoded-pixel units.

Every image holds units while it exists in memory in any form: its decoded size (after the
JPEG decoder's DCT-domain downscale) while it is being decoded, then three units per
model-input pixel (three float32 channels) until its embedding is computed. A request that
would pass the pool waits (bounded by `wait_s` and its deadline) and then gets
RESOURCE_EXHAUSTED, so resident memory stays under a fixed bound however many requests
arrive (see docs/benchmarks.md, "Bounded memory").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from clipserve.serving.errors import InvalidInput, Overloaded


class PixelBudget:
    """An async, FIFO-fair counting budget. Single event loop; not thread-safe."""

    def __init__(
        self, capacity: int, *, wait_s: float, on_change: Callable[[int], None] | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.wait_s = wait_s
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._on_change = on_change or (lambda used: None)

    async def acquire(self, units: int, deadline: float | None = None) -> None:
        """Take `units`, waiting (FIFO) at most `wait_s` or until `deadline` (monotonic).
        Raises InvalidInput if `units` could never fit, Overloaded on timeout."""
        if units > self.capacity:
            raise InvalidInput(
                f"needs {units} decoded pixels at once; the server's budget is {self.capacity}"
            )
        if not self._waiters and self.used + units <= self.capacity:
            self._take(units)
            return
        timeout = self.wait_s
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (units, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)  # cancels `fut` on timeout or cancellation
        except asyncio.TimeoutError:
            self._abandon(entry)
            raise Overloaded(
                f"server busy: {self.used} of {self.capacity} decoded pixels in flight "
                f"(max_inflight_pixels); retry with backoff"
            ) from None
        except asyncio.CancelledError:
            self._abandon(entry)
            raise

    def release(self, units: int) -> None:
        self.used -= units
        assert self.used >= 0, "budget released more than it gave"
        self._on_change(self.used)
        self._wake()

    @contextlib.asynccontextmanager
    async def hold(self, units: int, deadline: float | None = None) -> AsyncIterator[None]:
        await self.acquire(units, deadline)
        try:
            yield
        finally:
            self.release(units)

    def _abandon(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        units, fut = entry
        if fut.done() and not fut.cancelled():
            self.release(units)  # granted just as the caller gave up: hand it back
            return
        fut.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(entry)
        self._wake()  # a big waiter leaving may let smaller ones behind it in

    def _take(self, units: int) -> None:
        self.used += units
        self._on_change(self.used)

    def _wake(self) -> None:
        while self._waiters:
            units, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used + units > self.capacity:
                return
            self._waiters.popleft()
            self._take(units)
            fut.set_result(None)
