"""OnnxRuntimeBackend: batching invariance, agreement with torch, validation, no torch import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clipserve.serving.backends.backend import EmbeddingBackend
from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend, choose_providers
from clipserve.serving.embedding.tokenizer import ClipTokenizer

TEXTS = ["a photo of a cat", "a dog", "", "a red double-decker bus on a rainy london street"]


@pytest.fixture(scope="module")
def backend(tiny_bundle: Path):
    b = OnnxRuntimeBackend(tiny_bundle, intra_op_threads=1)
    yield b
    b.close()


@pytest.fixture(scope="module")
def tokenizer(tiny_bundle: Path) -> ClipTokenizer:
    return ClipTokenizer.from_bundle(tiny_bundle)


def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64), dtype=np.float32)


def test_is_an_embedding_backend(backend: OnnxRuntimeBackend) -> None:
    assert isinstance(backend, EmbeddingBackend)
    assert backend.info.name == "onnxruntime"
    assert backend.info.device == "cpu"
    assert backend.info.providers[-1] == "CPUExecutionProvider"


def test_batched_equals_one_at_a_time(backend: OnnxRuntimeBackend, tokenizer) -> None:
    pixels = _pixels(5)
    batched = backend.embed_images(pixels)
    single = np.concatenate([backend.embed_images(pixels[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)

    ids = tokenizer.encode(TEXTS)
    batched_t = backend.embed_texts(tokenizer.pad(ids))  # trimmed to the longest
    single_t = np.concatenate([backend.embed_texts(tokenizer.pad([row])) for row in ids])
    np.testing.assert_allclose(batched_t, single_t, atol=1e-5, rtol=0)
    assert batched.shape == (5, 128) and batched_t.shape == (4, 128)
    np.testing.assert_allclose(np.linalg.norm(batched_t, axis=1), 1.0, atol=1e-5)


def test_matches_torch_model(backend: OnnxRuntimeBackend, tokenizer, tiny_checkpoint) -> None:
    import torch

    from clipserve.training.model import load_checkpoint

    loaded, _ = load_checkpoint(tiny_checkpoint)
    pixels = _pixels(3, seed=1)
    with torch.no_grad():
        ref_img = loaded.model.encode_image(torch.from_numpy(pixels), normalize=True).numpy()
        ref_txt = loaded.model.encode_text(loaded.tokenizer(TEXTS), normalize=True).numpy()
    np.testing.assert_allclose(backend.embed_images(pixels), ref_img, atol=1e-4, rtol=0)
    got_txt = backend.embed_texts(tokenizer.pad(tokenizer.encode(TEXTS)))
    np.testing.assert_allclose(got_txt, ref_txt, atol=1e-4, rtol=0)


def test_concurrent_calls_agree(backend: OnnxRuntimeBackend) -> None:
    pixels = _pixels(2, seed=2)
    want = backend.embed_images(pixels)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: backend.embed_images(pixels), range(16)))
    for got in results:
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((1, 3, 64, 64), np.float64),
        np.zeros((3, 64, 64), np.float32),
        np.zeros((1, 3, 32, 32), np.float32),
        np.zeros((0, 3, 64, 64), np.float32),
        [[0.0]],
    ],
)
def test_rejects_bad_pixels(backend: OnnxRuntimeBackend, pixels) -> None:
    with pytest.raises(ValueError, match="pixel_values"):
        backend.embed_images(pixels)


@pytest.mark.parametrize(
    "ids",
    [
        np.zeros((1, 5), np.int32),
        np.zeros((5,), np.int64),
        np.zeros((1, 33), np.int64),  # over context_length 32
        np.zeros((1, 1), np.int64),
        np.zeros((0, 5), np.int64),
    ],
)
def test_rejects_bad_ids(backend: OnnxRuntimeBackend, ids) -> None:
    with pytest.raises(ValueError, match="input_ids"):
        backend.embed_texts(ids)


def test_provider_choice() -> None:
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="not available"):
        choose_providers(["NoSuchExecutionProvider"])


def test_serving_modules_import_without_torch() -> None:
    code = textwrap.dedent(
        """
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith(("torch.", "torchvision", "open_clip")):
                    raise ImportError(f"blocked in this test: {name}")
        sys.meta_path.insert(0, BlockTorch())
        import clipserve.serving.bundle, clipserve.serving.embedding.tokenizer
        import clipserve.serving.embedding.preprocess, clipserve.serving.backends.onnx_backend
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
