"""GPU throughput: ViT-B-32 image and text towers with ONNX Runtime on CUDA (fp32, fp16) and
TensorRT (when this onnxruntime build has it), at batch 1/8/64. Run by bench/gpu_check.sh.

    python bench/bench_gpu.py [--model ViT-B-32] [--batches 1 8 64] [--out FILE]

The model is random-initialised (speed does not depend on the weights), exported with
`clipserve export`'s own code plus the fp16 variant. Each configuration is checked against
CPU fp32 (min cosine) before it is timed, so a fast wrong answer cannot pass unnoticed.
Items/s are medians over >= 2 s of back-to-back calls after a warm-up (TensorRT builds its
engine for each new shape in the warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clipserve.serving.backends.backend import BackendStartupError
from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.training.export.variants import min_cosine, random_ids

CONFIGS = (  # (label, providers, variant)
    ("CUDA fp32", ["CUDAExecutionProvider", "CPUExecutionProvider"], "default"),
    ("CUDA fp16", ["CUDAExecutionProvider", "CPUExecutionProvider"], "fp16"),
    (
        "TensorRT fp32",
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "default",
    ),  # fmt: skip
    (
        "TensorRT fp16",
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "fp16",
    ),  # fmt: skip
)


def items_per_s(fn, n: int, min_time: float = 2.0) -> float:
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    import torch

    from clipserve.training.export.bundle import export_bundle
    from clipserve.training.model import ModelSpec, create_model

    lines = [f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}"]
    if torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        bundle = Path(tmp) / "bundle"
        export_bundle(create_model(ModelSpec(args.model)), bundle, variants=["fp16"])
        cpu = OnnxRuntimeBackend(bundle, providers="CPUExecutionProvider")
        m = cpu.manifest
        rng = np.random.default_rng(0)
        big = max(args.batches)
        pixels = rng.standard_normal((big, 3, *m.image_size), dtype=np.float32)
        ids = random_ids(m, big, rng)
        ref_img, ref_txt = cpu.embed_images(pixels[:8]), cpu.embed_texts(ids[:8])
        header = f"{'config':<14} {'tower':<6} {'cos':>8} " + " ".join(
            f"{'b' + str(b) + ' items/s':>14}" for b in args.batches
        )
        lines += [f"model {args.model}, text length {ids.shape[1]}", header]
        print("\n".join(lines), flush=True)
        for label, providers, variant in CONFIGS:
            if providers[0] not in ort.get_available_providers():
                lines.append(f"{label:<14} skipped: {providers[0]} not in this build")
                print(lines[-1], flush=True)
                continue
            try:
                gpu = OnnxRuntimeBackend(bundle, providers=providers, variant=variant)
            except BackendStartupError as exc:
                lines.append(f"{label:<14} failed to start: {exc}")
                print(lines[-1], flush=True)
                continue
            for tower, fn, x, ref in (("image", gpu.embed_images, pixels, ref_img),
                                      ("text", gpu.embed_texts, ids, ref_txt)):  # fmt: skip
                cos = min_cosine(fn(x[:8]), ref)
                rates = [items_per_s(lambda b=b, f=fn, x=x: f(x[:b]), b) for b in args.batches]
                lines.append(f"{label:<14} {tower:<6} {cos:>8.5f} "
                             + " ".join(f"{r:>14.1f}" for r in rates))  # fmt: skip
                print(lines[-1], flush=True)
            gpu.close()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
