"""`HealthMonitor`: readiness from evidence, probing only when there is none.

Each component (inference, index) is ready when it succeeded recently: a real request that
succeeded within the last interval counts, so a busy server is never probed and never reads
as broken. Without recent evidence, or right after a failure was reported, the component's
own probe runs on its own thread (never an inference worker or an index worker, so it never
queues behind traffic) with the interval as timeout. A probe that raises marks the component
down; one that times out while inference batches are running counts as busy, not broken,
until the oldest running batch has been stuck for `stall_intervals` intervals. The probe
timeout is the interval, but at least `min_probe_timeout_s`.

The monitor calls `on_change(serving)` when readiness flips; the server maps that to the
gRPC health statuses. Liveness is separate (the server answers at all) and not decided here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)

INFERENCE, INDEX = "inference", "index"


class HealthMonitor:
    def __init__(
        self,
        probes: Mapping[str, Callable[[], None]],
        on_change: Callable[[bool], Awaitable[None]],
        *,
        interval_s: float,
        stall_intervals: float = 6.0,
        min_probe_timeout_s: float = 5.0,
    ) -> None:
        self.interval_s = interval_s
        # A probe that raises counts at once; one that hangs counts after this long, never
        # less than a few seconds, so a slow (busy, shared) machine is not read as broken.
        self.probe_timeout_s = max(interval_s, min_probe_timeout_s)
        # A batch running longer than this is stuck, not busy (a minute at least: one large
        # batch on a loaded CPU can take tens of seconds).
        self.stall_s = max(stall_intervals * interval_s, 12 * self.probe_timeout_s)
        self._probes = dict(probes)
        self._on_change = on_change
        self._last_ok = {name: float("-inf") for name in self._probes}
        self._failed = {name: False for name in self._probes}
        self._pending: dict[str, Future[None]] = {}
        # One thread per component: a wedged index probe never delays the inference one.
        self._threads = {
            name: ThreadPoolExecutor(1, f"clipserve-health-{name}") for name in self._probes
        }
        self._running_batches: dict[int, float] = {}
        self._wake = asyncio.Event()
        self.serving: bool | None = None
        self.components: dict[str, bool] = {}

    # -- evidence from traffic (called on the event loop) -------------------------------------

    def record_success(self, component: str) -> None:
        self._last_ok[component] = time.monotonic()
        if self._failed.get(component):
            self._failed[component] = False
            self._wake.set()

    def record_failure(self, component: str) -> None:
        """A real request found `component` broken: re-check it now, not at the next tick."""
        self._failed[component] = True
        self._wake.set()

    def batch_started(self, key: int) -> None:
        self._running_batches[key] = time.monotonic()

    def batch_finished(self, key: int) -> None:
        self._running_batches.pop(key, None)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Check every interval (sooner after a reported failure) until cancelled."""
        while True:
            self._wake.clear()  # before checking: a failure reported meanwhile wakes us again
            await self.check()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    async def check(self, timeout_s: float | None = None) -> bool:
        """Decide readiness now; returns it (and calls on_change when it flipped).
        `timeout_s` overrides the probe timeout (the warm-up allows for first-run costs)."""
        timeout = self.probe_timeout_s if timeout_s is None else timeout_s
        results = await asyncio.gather(*(self._component_ok(n, timeout) for n in self._probes))
        self.components = dict(zip(self._probes, results, strict=True))
        serving = all(results)
        if serving != self.serving:
            if self.serving is not None or not serving:
                log.warning("readiness: %s (%s)", "SERVING" if serving else "NOT_SERVING",
                            ", ".join(f"{k}={'ok' if v else 'down'}" for k, v in self.components.items()))  # fmt: skip
            self.serving = serving
            await self._on_change(serving)
        return serving

    def close(self) -> None:
        for pool in self._threads.values():
            pool.shutdown(wait=False, cancel_futures=True)

    async def _component_ok(self, name: str, timeout: float) -> bool:
        now = time.monotonic()
        if not self._failed[name] and now - self._last_ok[name] < self.interval_s:
            return True  # a request succeeded recently: no probe, no competition with it
        pending = self._pending.get(name)
        if pending is None or pending.done():
            pending = self._threads[name].submit(self._probes[name])
            self._pending[name] = pending
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(pending)), timeout)
        except asyncio.TimeoutError:
            if name == INFERENCE and self._busy_not_stalled():
                return self.components.get(name, True)  # busy is not broken
            log.error("%s probe did not answer within %.1f s", name, timeout)
            return False
        except Exception:
            log.exception("%s probe failed", name)
            return False
        self._last_ok[name] = time.monotonic()
        self._failed[name] = False
        return True

    def _busy_not_stalled(self) -> bool:
        if not self._running_batches:
            return False
        oldest = min(self._running_batches.values())
        return time.monotonic() - oldest < self.stall_s
