"""`OnnxRuntimeBackend`: the bundle's two ONNX towers behind the `EmbeddingBackend` interface.

Provider choice (``providers="auto"``): TensorRT, then CUDA, when this onnxruntime build
offers them, always with CPU as the fallback; an explicit provider list is used as given, and
then every GPU provider in it must really be active: ONNX Runtime quietly falls back to CPU
when a CUDA library or the device is missing, which this backend turns into a
`BackendStartupError` instead of a server that is ten times slower than its operator thinks.

`variant` picks a build of the towers from the bundle ("default" fp32, "fp16" for GPUs,
"int8" for CPUs; see clipserve.training.export.variants). On CUDA, inputs are copied to the device
once and outputs bound there (I/O binding), so ONNX Runtime does no staging copies of its own.
`InferenceSession.run` is thread-safe, so one backend serves concurrent callers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from clipserve.serving.backends.backend import (
    TOWERS,
    BackendInfo,
    BackendStartupError,
    check_input_ids,
    check_pixel_values,
    check_towers,
)
from clipserve.serving.bundle import DEFAULT_VARIANT, Manifest, TowerSpec, load_manifest

log = logging.getLogger(__name__)

_AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DEVICE = {
    "TensorrtExecutionProvider": "cuda",
    "CUDAExecutionProvider": "cuda",
    "CPUExecutionProvider": "cpu",
}
_GPU_PROVIDERS = frozenset(p for p, d in _DEVICE.items() if d == "cuda")


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


def _provider_options(providers: list[str], precision: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for p in providers:
        opts: dict[str, Any] = {}
        if p == "TensorrtExecutionProvider":
            cache = Path(
                os.environ.get("CLIPSERVE_TRT_CACHE", Path.home() / ".cache/clipserve/trt")
            )
            cache.mkdir(parents=True, exist_ok=True)
            opts = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                # An fp32 graph still gets fp16 kernels where TensorRT judges them safe only
                # when asked; the fp16 variant asks.
                "trt_fp16_enable": precision == "fp16",
            }
        out.append((p, opts))
    return out


class OnnxRuntimeBackend:
    """Runs a bundle's image and text towers (of one variant) with ONNX Runtime."""

    def __init__(
        self,
        bundle_dir: str | Path,
        manifest: Manifest | None = None,
        *,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
        variant: str = DEFAULT_VARIANT,
        towers: Sequence[str] = TOWERS,
    ) -> None:
        check_towers(towers)
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest or load_manifest(self.bundle_dir)
        m = self.manifest
        image_file, text_file, precision = m.tower_files(variant)  # BundleError if absent
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
            options.intra_op_num_threads = intra_op_threads
        explicit = providers != "auto"
        try:
            requested = choose_providers(providers)
        except ValueError as exc:
            raise BackendStartupError(
                f"{exc}. GPU providers need the onnxruntime-gpu build (pip install "
                "'clipserve[gpu]') and a CUDA device; use --providers CPUExecutionProvider "
                "to serve on CPU"
            ) from exc
        wants_gpu = any(p in _GPU_PROVIDERS for p in requested)
        if variant != DEFAULT_VARIANT and m.variants[variant].device == "gpu" and not wants_gpu:
            raise BackendStartupError(
                f"the {variant!r} variant is built for GPU providers, but the providers are "
                f"{requested}; serve it with CUDAExecutionProvider, or pick --model-variant "
                "default or int8 on CPU"
            )
        if wants_gpu and hasattr(ort, "preload_dlls"):
            # CUDA/cuDNN from the nvidia-*-cu12 wheels, when that is how they were installed.
            ort.preload_dlls()
        with_options = _provider_options(requested, precision)

        def session(file: str) -> ort.InferenceSession:
            return ort.InferenceSession(
                str(self.bundle_dir / file), options, providers=with_options
            )

        self._image = session(image_file) if "image" in towers else None
        self._text = session(text_file) if "text" in towers else None
        sessions = [s for s in (self._image, self._text) if s is not None]
        # What the sessions actually got: CUDA/TensorRT fall back to CPU, with only a log
        # line, when their libraries or the device are missing.
        active = tuple(sessions[0].get_providers())
        lost = [
            p for s in sessions for p in requested
            if p in _GPU_PROVIDERS and p not in s.get_providers()
        ]  # fmt: skip
        if lost and (explicit or variant != DEFAULT_VARIANT and precision == "fp16"):
            self.close()
            raise BackendStartupError(
                f"requested provider(s) {sorted(set(lost))} fell back to {list(active)}: "
                "ONNX Runtime could not load CUDA (check the CUDA/cuDNN libraries, "
                "CUDA_VISIBLE_DEVICES and the onnxruntime-gpu build)"
            )
        if lost:
            log.warning("providers %s unavailable at run time; running on %s", lost, active)
        self._on_cuda = active[0] in _GPU_PROVIDERS
        self.info = BackendInfo(
            name="onnxruntime",
            device=_DEVICE.get(active[0], active[0]),
            providers=active,
            precision=precision,
            model_variant=variant,
        )

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] (H, W from the manifest) -> float32 [N,D]."""
        check_pixel_values(self.manifest, pixel_values)
        if self._image is None:
            raise RuntimeError("this backend was built without the image tower")
        return self._run(self._image, self.manifest.image, pixel_values)

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [N,L], 2 <= L <= context_length, zero-padded -> float32 [N,D]."""
        check_input_ids(self.manifest, input_ids)
        if self._text is None:
            raise RuntimeError("this backend was built without the text tower")
        return self._run(self._text, self.manifest.text, input_ids)

    def _run(self, session: ort.InferenceSession, spec: TowerSpec, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        if not self._on_cuda:
            (out,) = session.run([spec.output_name], {spec.input_name: x})
            return out
        # One binding per call: bindings are not shared between threads.
        binding = session.io_binding()
        binding.bind_ortvalue_input(spec.input_name, ort.OrtValue.ortvalue_from_numpy(x, "cuda"))
        binding.bind_output(spec.output_name, "cuda")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def close(self) -> None:
        # ORT frees a session when its last reference goes; drop ours.
        self._image = None
        self._text = None
