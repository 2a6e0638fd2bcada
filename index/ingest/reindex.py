"""`clipserve reindex --bundle NEW --alias A`: rebuild the collection behind an alias with
another model, then switch the alias atomically.

    1. A names collection OLD (made by the old model). A new collection NEW (default
       "<A>-<first 12 of the new model version>") is created with OLD's settings and the new
       model's provenance.
    2. Every point of OLD is embedded again from its stored source: `_source` (the image
       file's path) with its `caption`, or `_text` (a text item). Points keep their ids and
       payloads. This runs through the ingest pipeline: batches, overlap, retries, a journal
       (a killed re-index resumes), and a rejects file for points that cannot be re-embedded
       (a missing file, or no stored source).
    3. Only when every point made it (or --accept-rejects) does A switch to NEW, in one atomic
       step: queries through A see OLD or NEW, never a mix. OLD is kept (--drop-old drops it).

Queries keep working throughout. After the switch a server still running the old bundle
answers text/image queries on A with FAILED_PRECONDITION (its vectors would be of the wrong
model); point and precomputed-vector queries keep working. Restart servers with the new
bundle as you switch.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipserve.cli.connect import reports_errors
from clipserve.index.ingest.journal import Journal
from clipserve.index.ingest.pipeline import Pipeline, Summary
from clipserve.index.ingest.retry import RetryPolicy
from clipserve.index.ingest.sources import SourceItem
from clipserve.index.ingest.targets import LocalTarget
from clipserve.serving.search.index_service import SOURCE_KEY, TEXT_KEY


@dataclass(frozen=True)
class ReindexResult:
    alias: str
    old: str
    new: str
    summary: Summary
    switched: bool


def points_as_items(index: Any, collection: str, page: int = 256) -> Iterator[SourceItem]:
    """Every point of `collection`, in id order, as the source item it was made from."""
    token: str | None = None
    pos = 0
    while True:
        points, token = index.scroll(collection, None, page, token, False)
        for p in points:
            yield _item(pos, p.id, dict(p.payload))
            pos += 1
        if not token:
            return


def _item(pos: int, pid: str, payload: dict[str, Any]) -> SourceItem:
    src, text = payload.pop(SOURCE_KEY, None), payload.pop(TEXT_KEY, None)
    caption = payload.get("caption")
    if isinstance(src, str) and src:
        return SourceItem(pos, pid, image_path=Path(src), caption=caption, payload=payload,
                          point_id=pid)  # fmt: skip
    if isinstance(text, str) and text:
        return SourceItem(pos, pid, caption=text, payload=payload, point_id=pid)
    return SourceItem(pos, pid, error=f"no stored source: the payload has neither {SOURCE_KEY} "
                      f"(an image path) nor {TEXT_KEY}", point_id=pid)  # fmt: skip


def reindex(
    target: LocalTarget,
    alias: str,
    *,
    new: str = "",
    journal_dir: Path,
    batch_size: int = 64,
    accept_rejects: bool = False,
    restart: bool = False,
    progress_bar: bool = True,
) -> ReindexResult:
    """Re-embed the collection behind `alias` into a new collection with `target`'s model
    and switch `alias` to it. `target` holds the new model and the (open) index."""
    index = target.index
    old = index.resolve(alias)
    if old == alias:
        raise ValueError(
            f"{alias!r} is a collection, not an alias; point an alias at it first "
            f"(clipserve collections alias NAME {alias}) and query through the alias"
        )
    info = index.collection_info(old)
    new = new or f"{alias}-{target.model_version[:12]}"
    if new == old:
        raise ValueError(f"alias {alias!r} already names {old!r}, made by this model")
    target.collection = new
    settings = info.settings
    target.create(settings)
    run = {"reindex": old, "into": new, "model": target.model_version, "points": info.count}
    key = hashlib.sha256(repr(sorted(run.items())).encode()).hexdigest()[:10]
    path = journal_dir / f"reindex-{alias}-{key}.journal"
    rejects = path.with_suffix(".rejects.jsonl")
    if restart:
        path.unlink(missing_ok=True)
        rejects.unlink(missing_ok=True)
    journal = Journal(path, rejects, run)
    try:
        if journal.progress.complete:
            summary = Summary(info.count, info.count, journal.progress, 0, 0.0, target.count())
        else:
            pipeline = Pipeline(target, journal, batch_size=batch_size, retry=RetryPolicy())
            summary = pipeline.run(points_as_items(index, old), info.count, progress_bar)
    finally:
        journal.close()
    ok = summary.progress.rejects == 0 or accept_rejects
    if ok:
        index.set_alias(alias, new)
    return ReindexResult(alias, old, new, summary, switched=ok)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clipserve reindex",
        description="Re-embed the collection behind an alias with a new model bundle into a new "
        "collection, then switch the alias atomically. Resumable: rerun after a crash.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="the NEW model bundle")
    p.add_argument("--alias", required=True, help="the alias to move")
    p.add_argument("--index-path", type=Path, help="embedded Qdrant index directory")
    p.add_argument("--qdrant-url", help="a Qdrant server instead")
    p.add_argument("--qdrant-api-key")
    p.add_argument("--new-collection", default="", help="default <alias>-<new model version[:12]>")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--journal-dir", type=Path,
                   default=Path.home() / ".local" / "state" / "clipserve" / "reindex")  # fmt: skip
    p.add_argument("--accept-rejects", action="store_true",
                   help="switch even if some points could not be re-embedded")  # fmt: skip
    p.add_argument("--drop-old", action="store_true", help="drop the old collection after")
    p.add_argument("--restart", action="store_true", help="forget an interrupted run's journal")
    p.add_argument("--no-progress", action="store_true")
    return p


@reports_errors("clipserve reindex")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from clipserve.serving.config import ServerConfig

    config = ServerConfig(bundle=args.bundle, index_path=args.index_path,
                          qdrant_url=args.qdrant_url, qdrant_api_key=args.qdrant_api_key,
                          max_batch=2 * args.batch_size, max_in_flight=1024)  # fmt: skip
    target = LocalTarget(config, args.alias)
    try:
        result = reindex(
            target, args.alias, new=args.new_collection, journal_dir=args.journal_dir,
            batch_size=args.batch_size, accept_rejects=args.accept_rejects,
            restart=args.restart, progress_bar=not args.no_progress,
        )  # fmt: skip
        for line in result.summary.lines():
            print(line)
        if not result.switched:
            print(f"clipserve reindex: {result.summary.progress.rejects} points could not be "
                  f"re-embedded (see the rejects file in {args.journal_dir}); alias "
                  f"{args.alias!r} still names {result.old!r}. Fix them and rerun, or pass "
                  "--accept-rejects.", file=sys.stderr)  # fmt: skip
            return 1
        print(f"alias {args.alias!r}: {result.old!r} -> {result.new!r}")
        if args.drop_old:
            target.index.drop_collection(result.old)
            print(f"dropped {result.old!r}")
        return 0
    finally:
        target.close()


if __name__ == "__main__":
    sys.exit(main())
