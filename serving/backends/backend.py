"""`EmbeddingBackend`: the one interface the service calls for inference.

Implementations: `OnnxRuntimeBackend` (serving/backends/onnx_backend.py; CPU, CUDA or TensorRT
providers) and `TritonBackend` (serving/backends/triton_backend.py; a Triton Inference Server over
gRPC); `make_backend` (serving/backends/backend_factory.py) builds the one a `ServerConfig` names. Inputs arrive already
preprocessed: pixel arrays and token ids, so every backend computes exactly the same function.

Every backend has the synchronous methods (the embedding path runs them on its inference
worker threads). A backend whose work happens elsewhere (Triton: a remote call) may also have
the `AsyncEmbeddingBackend` methods; `is_async_backend` tells, and the embedding path then
awaits them on the event loop instead, so batches in flight are not bounded by local threads.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeGuard, runtime_checkable

import numpy as np

from clipserve.serving.bundle import Manifest


class BackendStartupError(RuntimeError):
    """The backend cannot start as configured: a requested GPU provider is missing or fell
    back to CPU, a bundle variant does not suit the device, Triton is unreachable or its
    models do not match the bundle. The message says what to change."""


@dataclass(frozen=True)
class BackendInfo:
    name: str  # e.g. "onnxruntime", "triton"
    device: str  # e.g. "cpu", "cuda"
    providers: tuple[str, ...]  # what actually runs the model, in priority order
    precision: str = "fp32"  # of the weights: "fp32" | "fp16" | "int8"
    model_variant: str = "default"  # the bundle variant in use


@runtime_checkable
class EmbeddingBackend(Protocol):
    info: BackendInfo

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] (normalised) -> float32 [N,D], rows L2-normalised."""

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [N,L], L <= context_length, zero-padded after EOT -> float32 [N,D]."""

    def close(self) -> None: ...


class AsyncEmbeddingBackend(EmbeddingBackend, Protocol):
    """An `EmbeddingBackend` that can also be awaited. The async methods belong to one event
    loop (the serving loop): call them, and `aclose()`, only there. Same shapes, same errors
    as the sync methods."""

    async def embed_images_async(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] (normalised) -> float32 [N,D], rows L2-normalised."""

    async def embed_texts_async(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [N,L], L <= context_length, zero-padded after EOT -> float32 [N,D]."""

    async def aclose(self) -> None:
        """Release what belongs to the loop (e.g. an asyncio gRPC channel); `close()` still
        releases the rest."""


_ASYNC_METHODS = ("embed_images_async", "embed_texts_async", "aclose")


def is_async_backend(backend: object) -> TypeGuard[AsyncEmbeddingBackend]:
    """Whether `backend` has the async interface: all three methods, as coroutine functions."""
    return all(inspect.iscoroutinefunction(getattr(backend, name, None)) for name in _ASYNC_METHODS)


TOWERS = ("image", "text")


def check_towers(towers: Sequence[str]) -> None:
    """A backend's `towers` argument: a non-empty subset of ("image", "text")."""
    if isinstance(towers, str) or not towers or any(t not in TOWERS for t in towers):
        raise ValueError(f"towers must be a non-empty subset of {TOWERS}, got {towers!r}")


def check_pixel_values(manifest: Manifest, pixel_values: object) -> np.ndarray:
    """`pixel_values` if it is float32 [N>=1,3,H,W] with the manifest's H, W; else ValueError."""
    h, w = manifest.image_size
    if not isinstance(pixel_values, np.ndarray) or pixel_values.dtype != np.float32:
        raise ValueError(f"pixel_values must be a float32 ndarray, got {_describe(pixel_values)}")
    if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, h, w) or not len(pixel_values):
        raise ValueError(f"pixel_values must be [N>=1,3,{h},{w}], got {pixel_values.shape}")
    return pixel_values


def check_input_ids(manifest: Manifest, input_ids: object) -> np.ndarray:
    """`input_ids` if it is int64 [N>=1, 2<=L<=context_length]; else ValueError."""
    ctx = manifest.context_length
    if not isinstance(input_ids, np.ndarray) or input_ids.dtype != np.int64:
        raise ValueError(f"input_ids must be an int64 ndarray, got {_describe(input_ids)}")
    if input_ids.ndim != 2 or not len(input_ids) or not 2 <= input_ids.shape[1] <= ctx:
        raise ValueError(f"input_ids must be [N>=1, 2<=L<={ctx}], got {input_ids.shape}")
    return input_ids


def _describe(value: object) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of {dtype}" if dtype is not None else type(value).__name__
