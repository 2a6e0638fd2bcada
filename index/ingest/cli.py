"""`clipserve index SOURCE`: bulk ingest of a manifest or an image folder, crash-safe.

    clipserve index photos/ --bundle work/bundle --index-path work/index --collection photos
    clipserve index data/train.jsonl --server 127.0.0.1:50051

Killed (even with SIGKILL) and run again with the same command, it resumes from its journal
and ends with exactly the expected points: none lost, none duplicated.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipserve.cli.connect import reports_errors
from clipserve.index.ingest.journal import Journal
from clipserve.index.ingest.pipeline import Pipeline
from clipserve.index.ingest.retry import RetryPolicy
from clipserve.index.ingest.sources import Source
from clipserve.index.ingest.targets import LocalTarget, ServerTarget, Target

VECTOR_SOURCES = ("content", "image", "text", "pooled")


def add_target_args(p: argparse.ArgumentParser) -> None:
    """--bundle with --index-path/--qdrant-url (in-process), or --server HOST:PORT."""
    p.add_argument("--bundle", type=Path, help="model bundle: embed in this process")
    p.add_argument(
        "--index-path", type=Path, help="embedded Qdrant index directory (with --bundle)"
    )
    p.add_argument("--qdrant-url", help="a Qdrant server (with --bundle)")
    p.add_argument("--qdrant-api-key", help="API key of the Qdrant server")
    p.add_argument("--server", help="a running clipserve server HOST:PORT instead of --bundle")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clipserve index",
        description="Embed and store every item of SOURCE (a JSONL/CSV manifest, or a folder of "
        "images with optional sidecar .txt captions). Resumable: rerun the same command after "
        "a crash.",
    )
    p.add_argument("source", type=Path, help="manifest file or image folder")
    add_target_args(p)
    p.add_argument("--collection", default="", help="target collection or alias (default: "
                   "the server's default, 'clipserve')")  # fmt: skip
    p.add_argument("--vector-source", choices=VECTOR_SOURCES, default=None,
                   help="for a new collection: store the image's, the caption's or their pooled "
                   "vector (default content: the item itself)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--writers", type=int, default=None,
                   help="concurrent writes (default 1 in-process, 2 to a server)")  # fmt: skip
    p.add_argument("--journal", type=Path, help="progress journal (default: in "
                   "~/.local/state/clipserve/ingest, named after source and collection)")  # fmt: skip
    p.add_argument(
        "--rejects", type=Path, help="rejected items, JSONL (default: beside the journal)"
    )
    p.add_argument("--restart", action="store_true", help="forget earlier progress")
    p.add_argument("--retries", type=int, default=8, help="attempts per call on transient errors")
    p.add_argument("--intra-op-threads", type=int, default=None,
                   help="ONNX Runtime threads (with --bundle); 1 is fastest on a busy machine")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def open_target(args: argparse.Namespace, collection: str, settings: Any = None,
                batch_size: int = 64) -> Target:  # fmt: skip
    if args.server:
        if args.bundle or args.index_path or args.qdrant_url:
            raise ValueError("give --server, or --bundle with --index-path/--qdrant-url, not both")
        return ServerTarget(args.server, collection, settings=settings)
    if not args.bundle:
        raise ValueError("give --bundle (with --index-path or --qdrant-url) or --server HOST:PORT")
    from clipserve.serving.config import ServerConfig

    config = ServerConfig(
        bundle=args.bundle, index_path=args.index_path, qdrant_url=args.qdrant_url,
        qdrant_api_key=args.qdrant_api_key, collection=collection or "clipserve",
        max_batch=2 * batch_size, max_in_flight=1024,
        intra_op_threads=getattr(args, "intra_op_threads", None),
    )  # fmt: skip
    return LocalTarget(config, config.collection, settings=settings)


@reports_errors("clipserve index")
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    source = Source(args.source)
    settings = None
    if args.vector_source:
        from clipserve.index.collections import CollectionSettings

        settings = CollectionSettings(vector_source=args.vector_source)
    target = open_target(args, args.collection, settings, args.batch_size)
    try:
        run = {"source": str(source.path), "fingerprint": source.fingerprint(),
               "target": args.server or args.qdrant_url or str(Path(args.index_path).resolve()),
               "collection": target.collection}  # fmt: skip
        journal_path = args.journal or _default_journal(run)
        rejects_path = args.rejects or journal_path.with_suffix(".rejects.jsonl")
        if args.restart:
            journal_path.unlink(missing_ok=True)
            rejects_path.unlink(missing_ok=True)
        journal = Journal(journal_path, rejects_path, run)
        try:
            if journal.progress.complete:
                print(f"already complete (journal {journal_path}); --restart to ingest again")
                return 0
            pipeline = Pipeline(
                target, journal, batch_size=args.batch_size,
                writers=args.writers or (2 if args.server else 1),
                retry=RetryPolicy(attempts=args.retries),
            )  # fmt: skip
            summary = pipeline.run(source.items(), len(source), not args.no_progress)
        finally:
            journal.close()
        for line in summary.lines():
            print(line)
        if summary.progress.rejects:
            print(f"rejected items and reasons: {rejects_path}")
        print(f"journal: {journal_path}")
        return 0
    finally:
        target.close()


def _default_journal(run: dict[str, Any]) -> Path:
    key = hashlib.sha256(
        f"{run['source']}|{run['target']}|{run['collection']}".encode()
    ).hexdigest()
    name = f"{Path(run['source']).name}-{run['collection']}-{key[:10]}.journal"
    return Path.home() / ".local" / "state" / "clipserve" / "ingest" / name


if __name__ == "__main__":
    sys.exit(main())
