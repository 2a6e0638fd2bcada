"""`BackgroundServer`: a real clipserve server from `create_server` on its own event-loop
thread, with the sync client: for tests of the backends (variants, Triton) that need a server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from clipserve.serving.client import ClipServeClient
from clipserve.serving.config import ServerConfig
from clipserve.serving.server import create_server, shutdown

T = TypeVar("T")


class BackgroundServer:
    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.server, self.port = self.call(create_server(config, **kwargs))
        except BaseException:
            self._stop_loop()
            raise
        self.client = ClipServeClient(f"127.0.0.1:{self.port}", timeout_s=60)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace_s: float = 1.0) -> None:
        self.call(shutdown(self.server, grace_s))
        self.client.close()
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def start_server_error(config: ServerConfig) -> BaseException:
    """Run create_server(config) expecting it to fail; returns the exception."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(create_server(config))
    except BaseException as exc:  # noqa: BLE001 - the caller asserts on it
        return exc
    finally:
        loop.close()
    raise AssertionError("create_server succeeded but was expected to fail")
