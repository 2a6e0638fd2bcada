"""The ingest pipeline: read -> prepare (embed) -> write, overlapped, committed in order.

The main thread reads a batch of source items and prepares it (local target: embeds it)
while writer threads write earlier batches. Batches commit to the journal strictly in source
order, only after their write returned, so the journal always names a finished prefix.

One bad item never fails its batch: when the target refuses a batch for its input
(`BadInput`), its items are sent one at a time and those refused again go to the rejects file
with the target's reason. Transient failures are retried with backoff (`retry.py`).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from tqdm import tqdm

from clipserve.index.ingest.journal import Journal, Progress
from clipserve.index.ingest.retry import BadInput, RetryPolicy, call_with_retry
from clipserve.index.ingest.sources import SourceItem
from clipserve.index.ingest.targets import Target
from clipserve.serving.search.index_service import SOURCE_KEY, TEXT_KEY, UpsertItem
from clipserve.serving.service import Content

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Summary:
    total: int  # items in the source
    resumed_from: int  # items already done by earlier runs
    progress: Progress  # cumulative over all runs
    written_now: int  # points written by this run
    seconds: float
    final_count: int  # points in the collection at the end

    def lines(self) -> list[str]:
        p = self.progress
        rate = self.written_now / self.seconds if self.seconds > 0 else 0.0
        return [
            f"items: {p.done}/{self.total} done ({self.resumed_from} by earlier runs)",
            f"points written: {p.points} in all, {self.written_now} by this run "
            f"({rate:.0f}/s over {self.seconds:.1f} s)",
            f"rejected: {p.rejects}",
            f"collection now holds {self.final_count} points",
        ]


def load_item(item: SourceItem) -> UpsertItem:
    """The upsert item for a source item; ValueError (the reject reason) if unreadable.
    `item.point_id`, when set, keeps that id (re-indexing) instead of deriving it."""
    if item.error:
        raise ValueError(item.error)
    payload = dict(item.payload)
    pid = item.point_id or None
    if item.image_path is not None:
        try:
            data = item.image_path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {item.image_path}: {exc.strerror or exc}") from None
        payload[SOURCE_KEY] = str(item.image_path)
        return UpsertItem(Content(image=data), payload, caption=item.caption, id=pid)
    if item.image_bytes is not None:
        return UpsertItem(Content(image=item.image_bytes), payload, caption=item.caption, id=pid)
    payload[TEXT_KEY] = item.caption
    return UpsertItem(Content(text=item.caption), payload, id=pid)


class Pipeline:
    def __init__(
        self,
        target: Target,
        journal: Journal,
        *,
        batch_size: int = 64,
        writers: int = 1,
        retry: RetryPolicy | None = None,
        load: Callable[[SourceItem], UpsertItem] = load_item,
    ) -> None:
        if batch_size < 1 or writers < 1:
            raise ValueError(f"batch_size and writers must be >= 1, got {batch_size}, {writers}")
        self.target, self.journal = target, journal
        self.batch_size = min(batch_size, target.max_batch)
        self.writers, self.retry, self.load = writers, retry or RetryPolicy(), load
        self.retries = 0

    def run(self, items: Iterable[SourceItem], total: int, progress_bar: bool = True) -> Summary:
        start, resumed = time.monotonic(), self.journal.progress.done
        written = 0
        bar = tqdm(total=total, initial=resumed, unit="item", disable=not progress_bar,
                   desc="ingest", dynamic_ncols=True)  # fmt: skip
        pending: collections.deque[tuple[Future[tuple[int, list[dict[str, Any]]]], int]]
        pending = collections.deque()
        with ThreadPoolExecutor(self.writers, "clipserve-ingest-write") as pool:

            def commit_head() -> None:
                nonlocal written
                fut, n_items = pending.popleft()
                points, rejects = fut.result()
                self.journal.commit(n_items, points, rejects)
                written += points
                bar.update(n_items)
                bar.set_postfix(rejected=self.journal.progress.rejects, refresh=False)

            for batch in _batches(islice(items, resumed, None), self.batch_size):
                good, rejects = self._load(batch)
                prepared = self._prepare(good, rejects) if good else None
                while len(pending) >= self.writers + 1 or (pending and pending[0][0].done()):
                    commit_head()
                pending.append((pool.submit(self._write, prepared, good, rejects), len(batch)))
            while pending:
                commit_head()
        bar.close()
        if self.journal.progress.done >= total:
            self.journal.mark_complete()
        return Summary(total, resumed, self.journal.progress, written,
                       time.monotonic() - start, self.target.count())  # fmt: skip

    # -- stages -----------------------------------------------------------------------------

    def _load(
        self, batch: list[SourceItem]
    ) -> tuple[list[tuple[SourceItem, UpsertItem]], list[dict[str, Any]]]:
        good, rejects = [], []
        for item in batch:
            try:
                good.append((item, self.load(item)))
            except ValueError as exc:
                rejects.append(_reject(item, str(exc)))
        return good, rejects

    def _prepare(
        self, good: list[tuple[SourceItem, UpsertItem]], rejects: list[dict[str, Any]]
    ) -> Any:
        """The prepared batch, or None when the target refused it (then `_write` isolates the
        bad items one by one)."""
        try:
            return self._with_retry(lambda: self.target.prepare([u for _, u in good]))
        except BadInput:
            return None

    def _write(
        self,
        prepared: Any,
        good: list[tuple[SourceItem, UpsertItem]],
        rejects: list[dict[str, Any]],
    ) -> tuple[int, list[dict[str, Any]]]:
        if not good:
            return 0, rejects
        if prepared is not None:
            try:
                return self._with_retry(lambda: self.target.write(prepared)), rejects
            except BadInput:
                pass
        points, rejects = 0, list(rejects)
        for item, upsert in good:  # one at a time: only the bad ones are rejected
            try:
                points += self._one(upsert)
            except BadInput as exc:
                rejects.append(_reject(item, str(exc)))
        rejects.sort(key=lambda r: r["position"])
        return points, rejects

    def _one(self, upsert: UpsertItem) -> int:
        prepared = self._with_retry(lambda: self.target.prepare([upsert]))
        return int(self._with_retry(lambda: self.target.write(prepared)))

    def _with_retry(self, fn: Callable[[], Any]) -> Any:
        def note(attempt: int, exc: Exception) -> None:
            self.retries += 1
            log.warning("transient failure (attempt %d), retrying: %s", attempt + 1, exc)

        return call_with_retry(fn, self.retry, on_retry=note)


def _reject(item: SourceItem, reason: str) -> dict[str, Any]:
    return {"position": item.position, "key": item.key, "reason": reason}


def _batches(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch
