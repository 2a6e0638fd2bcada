"""Inference speed: torch eager vs ONNX Runtime fp32, and trimmed vs context-padded text.

    .venv/bin/python bench/bench_inference.py [--models clipserve-tiny ViT-B-32] [--threads 2]

Each model is random-initialised, exported with `clipserve export`'s own code into a temp
bundle (parity-checked), and timed on the same inputs in one process so the numbers are
side by side. Text inputs are real captions tokenised by the bundle tokenizer; "trimmed"
feeds ids cut to the batch's longest caption (what serving does), "padded" pads them to
context_length (what open_clip does). Times are medians over repeated runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import CAPTIONS  # noqa: E402

from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend  # noqa: E402
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.training.export.bundle import export_bundle
from clipserve.training.model import ModelSpec, create_model


def median_ms(fn: Callable[[], object], min_time: float = 1.0, min_runs: int = 5) -> float:
    fn()  # warm-up (allocations, ORT graph caching)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_model(name: str, image_batch: int, text_batch: int, threads: int) -> list[str]:
    torch.manual_seed(0)
    loaded = create_model(ModelSpec(name))
    model = loaded.model.eval()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest, parity = export_bundle(loaded, Path(tmp) / "bundle")
        export_s = time.perf_counter() - t0
        worst = max(r.max_abs_diff for r in parity)
        backend = OnnxRuntimeBackend(Path(tmp) / "bundle", manifest, intra_op_threads=threads)
        tokenizer = ClipTokenizer.from_bundle(Path(tmp) / "bundle", manifest)

        rng = np.random.default_rng(0)
        h, w = manifest.image_size
        pixels = rng.standard_normal((image_batch, 3, h, w), dtype=np.float32)
        texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(text_batch)]
        ids = tokenizer.encode(texts)
        trimmed = tokenizer.pad(ids)
        padded = tokenizer.pad(ids, length=manifest.context_length)
        pixels_t, padded_t, trimmed_t = map(torch.from_numpy, (pixels, padded, trimmed))

        with torch.inference_mode():
            img_torch = median_ms(lambda: model.encode_image(pixels_t, normalize=True))
            txt_torch = median_ms(lambda: model.encode_text(padded_t, normalize=True))
        img_ort = median_ms(lambda: backend.embed_images(pixels))
        txt_ort_padded = median_ms(lambda: backend.embed_texts(padded))
        txt_ort_trim = median_ms(lambda: backend.embed_texts(trimmed))
        backend.close()

    rows.append(
        f"\n== {name}: export {export_s:.1f}s, parity max abs diff {worst:.2e}, "
        f"image batch {image_batch}, text batch {text_batch} "
        f"(trimmed L={trimmed.shape[1]}, padded L={padded.shape[1]}), {threads} threads"
    )
    rows.append(f"{'case':<34} {'ms/batch':>9} {'items/s':>9} {'speed-up':>9}")

    def line(case: str, ms: float, n: int, base: float) -> str:
        return f"{case:<34} {ms:>9.2f} {n / ms * 1000:>9.1f} {base / ms:>8.2f}x"

    rows.append(line("image  torch eager", img_torch, image_batch, img_torch))
    rows.append(line("image  ORT fp32", img_ort, image_batch, img_torch))
    rows.append(line("text   torch eager (padded)", txt_torch, text_batch, txt_torch))
    rows.append(line("text   ORT fp32 padded", txt_ort_padded, text_batch, txt_torch))
    rows.append(line("text   ORT fp32 trimmed", txt_ort_trim, text_batch, txt_torch))
    rows.append(f"text   trimmed vs padded (ORT): {txt_ort_padded / txt_ort_trim:.2f}x faster")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["clipserve-tiny", "ViT-B-32"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--image-batch", type=int, default=16)
    p.add_argument("--text-batch", type=int, default=32)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; CPU only")
    for name in args.models:
        for row in bench_model(name, args.image_batch, args.text_batch, args.threads):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
