"""OpenVINO vs ONNX Runtime on the same bundle, as `clipserve serve` runs them on a CPU.

    .venv/bin/python bench/bench_engines.py [--bundle DIR | --model ViT-B-32] [--rounds 4]
        [--batch 13] [--captions 48] [--tokens 14]

Both engines get the server's default configuration: `--inference-workers` concurrent callers
(2) with the usable CPUs split between them (1 thread each on 2 cores); ONNX Runtime as one
backend called from both threads, OpenVINO as one compiled model with a stream per worker.
For each tower the two engines are timed alternately, `--rounds` times (both see the same
minutes of a noisy machine), on the same inputs: random pixels at --batch, and --captions
captions of --tokens tokens. Printed per round: items/s of each and the ratio OpenVINO / ONNX
Runtime, then the median ratio. This is what `--backend auto`'s per-tower choice rests on
(docs/benchmarks.md); the served comparison is `bench_batching.py --backend B`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving_harness import random_bundle  # noqa: E402

from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend  # noqa: E402
from clipserve.serving.backends.openvino_backend import OpenVinoBackend  # noqa: E402
from clipserve.serving.bundle import BundleError, load_manifest  # noqa: E402
from clipserve.serving.config import usable_cpus  # noqa: E402


def items_per_s(fn: Callable[[], object], items: int, callers: int, reps: int) -> float:
    """`callers` threads each calling `fn` `reps` times at once; items per second overall."""
    fn()  # warm-up
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda: [fn() for _ in range(reps)]) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return callers * reps * items / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32", help="random-initialised, exported, cached")
    p.add_argument("--bundle", help="use this bundle instead of exporting --model")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch", type=int, default=13, help="images per call (the server's mean)")
    p.add_argument("--captions", type=int, default=48, help="captions per call")
    p.add_argument("--tokens", type=int, default=14, help="caption length, SOT and EOT included")
    p.add_argument("--inference-workers", type=int, default=2)
    args = p.parse_args(argv)
    bundle = Path(args.bundle) if args.bundle else random_bundle(args.model)
    try:
        manifest = load_manifest(bundle)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workers = args.inference_workers
    threads = max(1, usable_cpus() // workers)  # the server's rule
    ort_backend = OnnxRuntimeBackend(bundle, manifest, intra_op_threads=threads)
    ov_backend = OpenVinoBackend(bundle, manifest, streams=workers, threads_per_stream=threads)
    rng = np.random.default_rng(0)
    h, w = manifest.image_size
    pixels = rng.standard_normal((args.batch, 3, h, w)).astype(np.float32)
    ids = np.zeros((args.captions, args.tokens), np.int64)
    ids[:, 1:-1] = rng.integers(300, 40000, (args.captions, args.tokens - 2))
    ids[:, 0], ids[:, -1] = manifest.sot_token_id, manifest.eot_token_id
    print(f"{manifest.model_name}: {workers} callers x {threads} thread(s) per engine, "
          f"images at batch {args.batch}, {args.captions} captions of {args.tokens} tokens")  # fmt: skip
    towers: tuple[tuple[str, int, int, Callable[[Any], object]], ...] = (
        ("image", args.batch, 3, lambda b: b.embed_images(pixels)),
        ("text", args.captions, 8, lambda b: b.embed_texts(ids)),
    )
    try:
        for tower, items, reps, call in towers:
            ratios = []
            on_ort = partial(call, ort_backend)
            on_ov = partial(call, ov_backend)
            for k in range(args.rounds):
                ort_rate = items_per_s(on_ort, items, workers, reps)
                ov_rate = items_per_s(on_ov, items, workers, reps)
                ratios.append(ov_rate / ort_rate)
                print(f"{tower:<5} round {k + 1}: ONNX Runtime {ort_rate:7.1f}/s  "
                      f"OpenVINO {ov_rate:7.1f}/s  OpenVINO / ONNX Runtime {ratios[-1]:.3f}",
                      flush=True)  # fmt: skip
            print(f"{tower:<5} median OpenVINO / ONNX Runtime: {statistics.median(ratios):.3f}")
    finally:
        ort_backend.close()
        ov_backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
