"""Two exports of the same model, side by side: are the new towers faster, and still equal?

    python bench/bench_bundles.py OLD_BUNDLE NEW_BUNDLE [--batch 13] [--tokens 14]
                                  [--threads 1] [--reps 8]

For each tower, both ONNX files run in ONNX Runtime on the CPU with the server's session
options (``--threads`` intra-op threads; the server's default on 2 cores is 2 workers x 1),
on the same input: random pixels at --batch, and --batch captions of --tokens tokens. It
prints the largest difference between the two outputs, then times the two alternately (one
call of each per repetition, so both see the same minutes of a noisy machine) and prints the
median time of each and the median of the paired ratios new / old. Used for the export
changes in docs/benchmarks.md ("leaner towers"); the bundles must come from the same
weights, e.g. `bench_serve.py`'s seed-0 export made before and after a change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from clipserve.serving.bundle import BundleError, load_manifest


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--batch", type=int, default=13, help="the server's mean batch at 64 clients")
    p.add_argument("--tokens", type=int, default=14, help="caption length, SOT and EOT included")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=8, help="image repetitions (text: 4x as many)")
    args = p.parse_args(argv)
    try:
        old, new = load_manifest(args.old), load_manifest(args.new)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if (old.image.file, old.text.file) != (new.image.file, new.text.file):
        print("error: the two bundles name different tower files", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    h, w = new.image_size
    ids = rng.integers(300, 40000, (args.batch, args.tokens))
    ids[:, 0], ids[:, -1] = new.sot_token_id, new.eot_token_id
    towers = (
        (
            new.image.file,
            {new.image.input_name: rng.standard_normal((args.batch, 3, h, w), np.float32)},
        ),
        (new.text.file, {new.text.input_name: ids.astype(np.int64)}),
    )
    for file, feed in towers:
        a, b = session(args.old / file, args.threads), session(args.new / file, args.threads)
        diff = float(np.abs(a.run(None, feed)[0] - b.run(None, feed)[0]).max())
        t_old, t_new, ratio = [], [], []
        for _ in range(args.reps * (1 if file == new.image.file else 4)):
            t0 = time.perf_counter()
            a.run(None, feed)
            t1 = time.perf_counter()
            b.run(None, feed)
            t2 = time.perf_counter()
            t_old.append(t1 - t0)
            t_new.append(t2 - t1)
            ratio.append((t2 - t1) / (t1 - t0))
        print(
            f"{file}: max |new - old| {diff:.1e}; old {statistics.median(t_old) * 1e3:.1f} ms, "
            f"new {statistics.median(t_new) * 1e3:.1f} ms per call of {args.batch}; "
            f"median paired new / old {statistics.median(ratio):.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
