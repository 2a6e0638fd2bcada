"""GPU serving checks: the only tests skipped on a machine without CUDA (CI has none).

Install `.[gpu]` (onnxruntime-gpu) on a CUDA machine to run them; bench/gpu_check.sh does that
and runs them together with the GPU throughput benchmark.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="needs onnxruntime-gpu with a CUDA device",
    ),
]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
TRT = ["TensorrtExecutionProvider", *CUDA]
FP16_MIN_COSINE = 0.999  # measured on random-init clipserve-tiny; fp16 keeps ~3 digits


def _inputs(backend: OnnxRuntimeBackend) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    h, w = backend.manifest.image_size
    pixels = rng.standard_normal((4, 3, h, w)).astype(np.float32)
    ids = np.zeros((3, 8), dtype=np.int64)
    ids[:, 0] = backend.manifest.sot_token_id
    ids[:, 1:6] = rng.integers(1, 1000, size=(3, 5))
    ids[:, 6] = backend.manifest.eot_token_id
    return pixels, ids


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest per-row cosine similarity."""
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(cos.min())


@pytest.fixture(scope="module")
def fp16_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clipserve.training.export.variants import add_variants

    out = tmp_path_factory.mktemp("gpu") / "bundle"
    shutil.copytree(tiny_bundle, out)
    add_variants(out, ["fp16"])
    return out


def test_auto_providers_pick_cuda_and_match_cpu(tiny_bundle):
    gpu = OnnxRuntimeBackend(tiny_bundle)  # "auto": TensorRT/CUDA first
    cpu = OnnxRuntimeBackend(tiny_bundle, providers=["CPUExecutionProvider"])
    assert gpu.info.device == "cuda", gpu.info
    pixels, ids = _inputs(gpu)
    np.testing.assert_allclose(gpu.embed_images(pixels), cpu.embed_images(pixels), atol=1e-3)
    np.testing.assert_allclose(gpu.embed_texts(ids), cpu.embed_texts(ids), atol=1e-3)


def test_explicit_cuda_is_active_and_uses_io_binding(tiny_bundle):
    gpu = OnnxRuntimeBackend(tiny_bundle, providers=CUDA)  # raises if it fell back to CPU
    assert gpu.info.providers[0] == "CUDAExecutionProvider" and gpu._on_cuda
    cpu = OnnxRuntimeBackend(tiny_bundle, providers=["CPUExecutionProvider"])
    pixels, ids = _inputs(gpu)
    for n in (1, 3):  # I/O binding with several batch sizes on the same session
        np.testing.assert_allclose(gpu.embed_texts(ids[:n]), cpu.embed_texts(ids[:n]), atol=1e-3)
    np.testing.assert_allclose(gpu.embed_images(pixels), cpu.embed_images(pixels), atol=1e-3)


def test_fp16_variant_on_cuda_matches_fp32(fp16_bundle):
    half = OnnxRuntimeBackend(fp16_bundle, providers=CUDA, variant="fp16")
    assert (half.info.device, half.info.precision, half.info.model_variant) == (
        "cuda", "fp16", "fp16"
    )  # fmt: skip
    cpu = OnnxRuntimeBackend(fp16_bundle, providers=["CPUExecutionProvider"])
    pixels, ids = _inputs(half)
    got = half.embed_images(pixels)
    assert got.dtype == np.float32
    assert _min_cos(got, cpu.embed_images(pixels)) >= FP16_MIN_COSINE
    assert _min_cos(half.embed_texts(ids), cpu.embed_texts(ids)) >= FP16_MIN_COSINE


@pytest.mark.skipif(
    "TensorrtExecutionProvider" not in ort.get_available_providers(),
    reason="this onnxruntime build has no TensorRT provider",
)
@pytest.mark.parametrize("variant", ["default", "fp16"])
def test_tensorrt_matches_cpu(fp16_bundle, variant):
    trt = OnnxRuntimeBackend(fp16_bundle, providers=TRT, variant=variant)
    assert trt.info.providers[0] == "TensorrtExecutionProvider"
    cpu = OnnxRuntimeBackend(fp16_bundle, providers=["CPUExecutionProvider"])
    pixels, ids = _inputs(trt)
    assert _min_cos(trt.embed_images(pixels), cpu.embed_images(pixels)) >= FP16_MIN_COSINE
    assert _min_cos(trt.embed_texts(ids), cpu.embed_texts(ids)) >= FP16_MIN_COSINE
