"""A client for the index commands (`query`, `collections`, `dedup`): to a running server
(`--server HOST:PORT`), or to a server started in this process on a loopback port for the
duration of the command (`--bundle B --index-path P`), so both ways run the same code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc

from clipserve.index.errors import IndexError_
from clipserve.serving.client import ClipServeClient
from clipserve.serving.errors import ServingError


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


Main = Callable[[Sequence[str] | None], int]


def reports_errors(prog: str) -> Callable[[Main], Main]:
    """Failures a user can act on (a refused RPC, a missing collection, another model's
    collection) end the command with one sentence and exit status 1, not a traceback."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            try:
                return int(main(argv))
            except grpc.RpcError as exc:
                print(f"{prog}: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            except (ServingError, IndexError_) as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
            return 1

        return wrapper

    return wrap
