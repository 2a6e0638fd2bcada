"""`OnnxRuntimeBackend`: the bundle's two ONNX towers behind the `EmbeddingBackend` interface.

Provider choice (``providers="auto"``): TensorRT, then CUDA, when this onnxruntime build
offers them, always with CPU as the fallback; an explicit provider list is used as given.
`InferenceSession.run` is thread-safe, so one backend serves concurrent callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clipserve.serving.backend import BackendInfo
from clipserve.serving.bundle import Manifest, load_manifest

_AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DEVICE = {
    "TensorrtExecutionProvider": "cuda",
    "CUDAExecutionProvider": "cuda",
    "CPUExecutionProvider": "cpu",
}


def choose_providers(providers: str | Sequence[str] = "auto") -> list[str]:
    """Resolve ``"auto"`` against this build's providers; validate an explicit list."""
    available = ort.get_available_providers()
    if isinstance(providers, str):
        if providers != "auto":
            providers = [providers]
        else:
            return [p for p in _AUTO_ORDER if p in available] or ["CPUExecutionProvider"]
    chosen = list(providers)
    missing = [p for p in chosen if p not in available]
    if not chosen or missing:
        raise ValueError(f"providers {missing or chosen} not available; this build has {available}")
    return chosen


class OnnxRuntimeBackend:
    """Runs image.onnx and text.onnx from a bundle directory with ONNX Runtime."""

    def __init__(
        self,
        bundle_dir: str | Path,
        manifest: Manifest | None = None,
        *,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
    ) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest or load_manifest(self.bundle_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
            options.intra_op_num_threads = intra_op_threads
        requested = choose_providers(providers)
        m = self.manifest
        self._image = ort.InferenceSession(
            str(self.bundle_dir / m.image.file), options, providers=requested
        )
        self._text = ort.InferenceSession(
            str(self.bundle_dir / m.text.file), options, providers=requested
        )
        # What the session actually got (e.g. CUDA may fall back to CPU if its libs are missing).
        active = tuple(self._image.get_providers())
        self.info = BackendInfo(
            name="onnxruntime", device=_DEVICE.get(active[0], active[0]), providers=active
        )

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] (H, W from the manifest) -> float32 [N,D]."""
        h, w = self.manifest.image_size
        if not isinstance(pixel_values, np.ndarray) or pixel_values.dtype != np.float32:
            raise ValueError(
                f"pixel_values must be a float32 ndarray, got {_describe(pixel_values)}"
            )
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, h, w) or not len(pixel_values):
            raise ValueError(f"pixel_values must be [N>=1,3,{h},{w}], got {pixel_values.shape}")
        spec = self.manifest.image
        (out,) = self._image.run(
            [spec.output_name], {spec.input_name: np.ascontiguousarray(pixel_values)}
        )
        return out

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [N,L], 2 <= L <= context_length, zero-padded -> float32 [N,D]."""
        ctx = self.manifest.context_length
        if not isinstance(input_ids, np.ndarray) or input_ids.dtype != np.int64:
            raise ValueError(f"input_ids must be an int64 ndarray, got {_describe(input_ids)}")
        if input_ids.ndim != 2 or not len(input_ids) or not 2 <= input_ids.shape[1] <= ctx:
            raise ValueError(f"input_ids must be [N>=1, 2<=L<={ctx}], got {input_ids.shape}")
        spec = self.manifest.text
        (out,) = self._text.run(
            [spec.output_name], {spec.input_name: np.ascontiguousarray(input_ids)}
        )
        return out

    def close(self) -> None:
        # ORT frees a session when its last reference goes; drop ours.
        self._image = None  # type: ignore[assignment]
        self._text = None  # type: ignore[assignment]


def _describe(value: object) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of {dtype}" if dtype is not None else type(value).__name__
