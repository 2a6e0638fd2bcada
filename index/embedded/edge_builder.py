"""When to rebuild an embedded collection's HNSW graph, on a background thread.

The engine has no optimiser of its own: the graph is built when asked. A `BuildTrigger` counts
points written since the last build and, once they reach the collection's `hnsw_build_threshold`,
runs the build (`edge_rebuild.rebuild`) on a daemon thread; writes arriving meanwhile are counted
for the next round, which starts as soon as this one ends if they reach the threshold again.

Measured with qdrant_edge 0.9: `EdgeShard.optimize()` holds the Python GIL for its whole run
(10k x 64-d points: ~30 s on the shared 2-core machine, during which another Python thread ran
once), so calling it on a thread of the serving process would stall every gRPC worker. The
rebuild therefore runs the engine's build in a subprocess on an exported copy and swaps the new
shard in; this thread only waits on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class BuildTrigger:
    """Runs `build()` on a background thread each time `threshold` new points accumulate.

    Args:
        name: the collection, for log lines and the thread's name.
        threshold: points written since the last build that start the next one; 0 = never.
        build: the blocking build, given an Event that `close()` sets to ask it to stop early;
            an exception is logged and kept in `last_error`, and the next write past the
            threshold tries again.
        pending: points already written but not yet in the graph (when reopening).
    """

    def __init__(
        self,
        name: str,
        threshold: int,
        build: Callable[[threading.Event], object],
        pending: int = 0,
    ) -> None:
        self._name = name
        self._threshold = threshold
        self._build = build
        self._lock = threading.Lock()
        self._pending = pending
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stop = threading.Event()
        self.builds = 0
        self.last_error: BaseException | None = None

    def note_writes(self, n: int) -> None:
        """Count `n` written points; start a build if they reach the threshold."""
        with self._lock:
            self._pending += n
            self._maybe_start()

    @property
    def building(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running build (and any round it chains); True when none is running."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.building

    def close(self) -> None:
        """Start no further builds; stop the running one and wait for it."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self.wait()

    def _maybe_start(self) -> None:  # caller holds _lock
        if self._closed or self._threshold <= 0 or self._pending < self._threshold:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._pending = 0
        self._thread = threading.Thread(
            target=self._run, name=f"hnsw-build-{self._name}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                log.info("collection %r: building the HNSW graph", self._name)
                self._build(self._stop)
                self.builds += 1
                self.last_error = None
            except Exception as exc:  # keep serving: search stays exact until a build succeeds
                if self._stop.is_set():
                    return
                log.exception("collection %r: HNSW build failed", self._name)
                self.last_error = exc
            with self._lock:
                if self._closed or self._pending < self._threshold or self.last_error:
                    return
                self._pending = 0
