"""Helpers shared by the index tests: small distinct PNGs, and a real gRPC server on port 0
running on its own event loop thread (as `clipserve serve` would, in-process)."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from clipserve.serving.client import ClipServeClient
from clipserve.serving.config import ServerConfig
from clipserve.serving.server import _RUNNING, create_server, shutdown

T = TypeVar("T")
DIM = 128  # the tiny bundle's embedding dimension


def png(seed: int, size: int = 24) -> bytes:
    """A distinct small PNG per seed (random blocks, so near-duplicates are rare)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def write_folder(root: Path, n: int, captions: bool = True, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = root / f"sub{i % 3}" / f"img{i:05d}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(png(i))
        if captions and i % 2 == 0:
            p.with_suffix(".txt").write_text(f"picture number {i}\n")
        paths.append(p)
    return paths


class BackgroundServer:
    """A server from `create_server` on its own event loop thread, with a sync client."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = self.call(create_server(config, **kwargs))
        self.address = f"127.0.0.1:{self.port}"
        self.client = ClipServeClient(self.address, timeout_s=60)

    @property
    def index(self) -> Any:
        return _RUNNING[self.server].service.index

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace_s: float = 1.0) -> None:
        self.call(shutdown(self.server, grace_s))
        self.client.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
