"""`EmbeddingBackend`: the one interface the service calls for inference.

Implementations: `OnnxRuntimeBackend` (serving/onnx_backend.py; CPU, CUDA or TensorRT
providers). A Triton backend slots in behind the same interface later. Inputs arrive already
preprocessed: pixel arrays and token ids, so every backend computes exactly the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class BackendInfo:
    name: str  # e.g. "onnxruntime"
    device: str  # e.g. "cpu", "cuda"
    providers: tuple[str, ...]


@runtime_checkable
class EmbeddingBackend(Protocol):
    info: BackendInfo

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] (normalised) -> float32 [N,D], rows L2-normalised."""

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [N,L], L <= context_length, zero-padded after EOT -> float32 [N,D]."""

    def close(self) -> None: ...
