"""GPU serving checks: the only tests skipped on a machine without CUDA (CI has none).

Install `.[gpu]` (onnxruntime-gpu) on a CUDA machine to run them.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from clipserve.serving.onnx_backend import OnnxRuntimeBackend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="needs onnxruntime-gpu with a CUDA device",
    ),
]


def test_auto_providers_pick_cuda_and_match_cpu(tiny_bundle):
    gpu = OnnxRuntimeBackend(tiny_bundle)  # "auto": TensorRT/CUDA first
    cpu = OnnxRuntimeBackend(tiny_bundle, providers=["CPUExecutionProvider"])
    assert gpu.info.device == "cuda", gpu.info
    rng = np.random.default_rng(0)
    h, w = gpu.manifest.image_size
    pixels = rng.standard_normal((4, 3, h, w)).astype(np.float32)
    ids = np.zeros((3, 8), dtype=np.int64)
    ids[:, 0] = gpu.manifest.sot_token_id
    ids[:, 1:6] = rng.integers(1, 1000, size=(3, 5))
    ids[:, 6] = gpu.manifest.eot_token_id
    np.testing.assert_allclose(gpu.embed_images(pixels), cpu.embed_images(pixels), atol=1e-3)
    np.testing.assert_allclose(gpu.embed_texts(ids), cpu.embed_texts(ids), atol=1e-3)
