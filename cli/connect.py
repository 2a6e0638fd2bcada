"""A client for the index commands (`query`, `collections`, `dedup`): to a running server
(`--server HOST:PORT`), or to a server started in this process on a loopback port for the
duration of the command (`--bundle B --index-path P`), so both ways run the same code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from clipserve.serving.client import ClipServeClient


def add_connect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="a running clipserve server, HOST:PORT")
    p.add_argument("--bundle", type=Path, help="or: serve this bundle in-process ...")
    p.add_argument("--index-path", type=Path, help="... over this embedded index directory")
    p.add_argument("--qdrant-url", help="... or over this Qdrant server")


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[ClipServeClient]:
    if args.server:
        if args.bundle:
            raise ValueError("give --server or --bundle, not both")
        with ClipServeClient(args.server) as client:
            client.wait_ready(timeout_s=30)
            yield client
        return
    if not args.bundle:
        raise ValueError("give --server HOST:PORT, or --bundle with --index-path/--qdrant-url")
    from clipserve.serving.config import ServerConfig
    from clipserve.serving.server import create_server, shutdown

    config = ServerConfig(bundle=args.bundle, index_path=args.index_path,
                          qdrant_url=args.qdrant_url, port=0)  # fmt: skip
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        server, port = asyncio.run_coroutine_threadsafe(create_server(config), loop).result()
        try:
            with ClipServeClient(f"127.0.0.1:{port}") as client:
                yield client
        finally:
            asyncio.run_coroutine_threadsafe(shutdown(server, 5), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
