"""Test helpers shared by the serving tests: a real server on its own loop thread, and the one
test double, `ControlledBackend` (the real ONNX backend behind a gate, a failure switch and a
call log)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np

from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.serving.client import ClipServeClient
from clipserve.serving.config import ServerConfig
from clipserve.serving.server import _RUNNING, create_server, shutdown

T = TypeVar("T")


class BackgroundServer:
    """A server from `create_server` on its own event loop thread, with a sync client."""

    def __init__(self, config: ServerConfig, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.server, self.port = self.call(create_server(config, **kwargs))
        except BaseException:
            self._stop_loop()
            raise
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


class ControlledBackend:
    """Test double: the real ONNX backend, plus a gate that holds calls, a failure switch
    (`fail`: every call; `fail_next`: that many calls) and a log of every call's input."""

    def __init__(self, real: OnnxRuntimeBackend) -> None:
        self.real, self.info = real, real.info
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.fail = False
        self.fail_next = 0
        self.calls: list[tuple[str, np.ndarray]] = []  # (modality, input array) per call
        self._lock = threading.Lock()

    def _enter(self, modality: str, array: np.ndarray) -> None:
        with self._lock:
            self.calls.append((modality, array.copy()))
        self.entered.set()
        assert self.open.wait(30), "gate never opened"
        with self._lock:
            failing = self.fail or self.fail_next > 0
            self.fail_next = max(0, self.fail_next - 1)
        if failing:
            raise RuntimeError("secret internal detail /opt/model")

    def batch_sizes(self, modality: str) -> list[int]:
        with self._lock:
            return [len(a) for m, a in self.calls if m == modality]

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        self._enter("text", input_ids)
        return self.real.embed_texts(input_ids)

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        self._enter("image", pixel_values)
        return self.real.embed_images(pixel_values)

    def close(self) -> None:
        self.real.close()
