"""The ingest journal: what a run has durably finished, so a killed run resumes exactly.

Two append-only files:

    <journal>            JSON lines: a header {"format", "run": {...}}, then one line per
                         committed batch {"done": items, "points": n, "rejects": n,
                         "rejects_bytes": size of the rejects file}, then {"complete": true}
    <rejects>            JSON lines {"position", "key", "reason"}, one per rejected item

A batch commits in this order: its points are written to the index (durable when the write
returns), its rejects are appended to the rejects file and fsynced, then its journal line is
appended and fsynced. A SIGKILL anywhere leaves one of: the line is there (the batch is done),
or it is not (the batch is redone: point ids derive from content, so rewriting a point
overwrites it, never duplicates it). A torn last line is ignored, and the rejects file is cut
back to the size the last whole line records, so rejects are never listed twice.

The header describes the run (source and its fingerprint, target, collection); resuming a
journal with another header is refused, since "the first N items" would mean other items.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1


@dataclass(frozen=True)
class Progress:
    done: int = 0  # source items finished (written or rejected), a prefix in source order
    points: int = 0  # points written (an item whose content repeats counts each time)
    rejects: int = 0
    rejects_bytes: int = 0
    complete: bool = False


class Journal:
    def __init__(self, path: Path, rejects_path: Path, run: dict[str, Any]) -> None:
        """Open (or start) the journal at `path` for `run`. ValueError if `path` holds the
        journal of another run."""
        self.path, self.rejects_path, self.run = Path(path), Path(rejects_path), run
        self.progress = self._read()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
        self._rejects = open(self.rejects_path, "ab")  # noqa: SIM115 (held until close())
        self._rejects.truncate(self.progress.rejects_bytes)  # drop uncommitted rejects
        self._rejects.seek(self.progress.rejects_bytes)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._journal = open(self.path, "ab")  # noqa: SIM115 (held until close())
        if fresh:
            self._append(self._journal, [{"format": FORMAT, "run": run}])

    def commit(self, items: int, points: int, rejects: list[dict[str, Any]]) -> Progress:
        """Record that the next `items` source items are finished."""
        if rejects:
            self._append(self._rejects, rejects)
        p = self.progress
        self.progress = Progress(
            done=p.done + items,
            points=p.points + points,
            rejects=p.rejects + len(rejects),
            rejects_bytes=self._rejects.tell(),
        )
        q = self.progress
        self._append(self._journal, [{"done": q.done, "points": q.points, "rejects": q.rejects,
                                      "rejects_bytes": q.rejects_bytes}])  # fmt: skip
        return self.progress

    def mark_complete(self) -> None:
        self._append(self._journal, [{"complete": True}])
        self.progress = Progress(**{**self.progress.__dict__, "complete": True})

    def close(self) -> None:
        self._journal.close()
        self._rejects.close()

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _append(f: Any, records: list[dict[str, Any]]) -> None:
        f.write(b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records))
        f.flush()
        os.fsync(f.fileno())

    def _read(self) -> Progress:
        if not self.path.exists():
            return Progress()
        progress, header = Progress(), None
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn by a crash mid-write: never committed
                rec = json.loads(raw)
                if header is None:
                    header = rec
                    self._check_header(rec)
                elif rec.get("complete"):
                    progress = Progress(**{**progress.__dict__, "complete": True})
                else:
                    progress = Progress(rec["done"], rec["points"], rec["rejects"],
                                        rec["rejects_bytes"])  # fmt: skip
        return progress

    def _check_header(self, header: dict[str, Any]) -> None:
        if header.get("format") != FORMAT or header.get("run") != self.run:
            raise ValueError(
                f"journal {self.path} belongs to another ingest run ({header.get('run')}); "
                "rerun that exact command, pass --restart to start over, or pick another --journal"
            )
