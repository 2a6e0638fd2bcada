"""When to build an embedded collection's HNSW graph, on a background thread.

The engine has no optimiser of its own: `EdgeShard.optimize()` builds the graph when called. A
`BuildTrigger` counts points written since the last build and, once they reach the collection's
`hnsw_build_threshold`, runs the build on a daemon thread; writes arriving meanwhile are counted
for the next round, which starts as soon as this one ends if they reach the threshold again.

Measured with qdrant_edge 0.9: the engine is internally synchronised, so queries and upserts
made during `optimize()` succeed and see every acknowledged write (tests/test_index_build.py
checks this while a build runs), but `optimize()` holds the Python GIL for its whole run, so
other Python threads of the process (gRPC workers included) make no progress until it returns:
they wait, they do not fail. The build of 10k x 64-d points takes ~30 s on the shared 2-core
test machine, scaling roughly with n log n and the dimension. See docs/benchmarks.md.
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
        build: the blocking build (the engine's optimize); an exception is logged and kept in
            `last_error`, and the next write past the threshold tries again.
        pending: points already written but not yet in the graph (when reopening).
    """

    def __init__(
        self, name: str, threshold: int, build: Callable[[], object], pending: int = 0
    ) -> None:
        self._name = name
        self._threshold = threshold
        self._build = build
        self._lock = threading.Lock()
        self._pending = pending
        self._thread: threading.Thread | None = None
        self._closed = False
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
        """Start no further builds and wait for the running one (the engine cannot cancel it)."""
        with self._lock:
            self._closed = True
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
                self._build()
                self.builds += 1
                self.last_error = None
            except Exception as exc:  # keep serving: search stays exact until a build succeeds
                log.exception("collection %r: HNSW build failed", self._name)
                self.last_error = exc
            with self._lock:
                if self._closed or self._pending < self._threshold or self.last_error:
                    return
                self._pending = 0
