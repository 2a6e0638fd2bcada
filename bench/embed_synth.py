"""Real embeddings for the index benchmark: synthetic images and captions through a bundle.

    python bench/embed_synth.py --bundle work/bundle --n 100000 --queries 200 --out emb.npz

Renders `--n` synthetic images (the demo's shapes, every attribute tuple of the full product,
nuisance variation per item, the same renderer as `clipserve data synth`) in memory, embeds
them with the bundle's image tower through ONNX Runtime as the server does (same
preprocessing), and embeds `--queries` captions of random tuples with the text tower: the
text->image searches a user of the demo model would run. Writes an .npz with `data` [n, D] and
`queries` [q, D] (float32, unit norm) and `model_version`; `bench/bench_index_scale.py
--embeddings FILE` uses it instead of its clustered random vectors.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.serving.bundle import BundleError, load_manifest
from clipserve.serving.embedding.preprocess import preprocess
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.training.data.synth import SynthConfig, assign_tuples, draw_tuples, item_rng
from clipserve.training.data.synth_captions import TEMPLATES, caption
from clipserve.training.data.synth_render import render


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="a clipserve bundle (e.g. the demo's)")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.n < 1 or args.queries < 1 or args.batch < 1:
        ap.error("--n, --queries and --batch must be at least 1")
    try:
        manifest = load_manifest(args.bundle)
    except BundleError as exc:
        ap.error(f"--bundle: {exc}")
    backend = OnnxRuntimeBackend(args.bundle, manifest, providers="CPUExecutionProvider")
    try:  # every tuple of the full product at least once, at the bundle's image size
        config = SynthConfig(
            n=args.n, seed=args.seed, n_tuples=None, image_size=manifest.image_size[0]
        )
    except ValueError as exc:
        ap.error(str(exc))
    tuples = draw_tuples(config)
    assignment = assign_tuples(config)
    data = np.empty((args.n, manifest.embed_dim), dtype=np.float32)
    start = time.perf_counter()
    with tqdm(total=args.n, desc="embed images", unit="img") as bar:
        for s in range(0, args.n, args.batch):
            idx = range(s, min(s + args.batch, args.n))
            images = [
                render(tuples[assignment[i]], config.image_size, item_rng(args.seed, i))
                for i in idx
            ]
            data[s : s + len(idx)] = backend.embed_images(preprocess(images, manifest))
            bar.update(len(idx))
    image_s = time.perf_counter() - start

    rng = np.random.default_rng((args.seed, 1))
    texts = [
        caption(tuples[int(rng.integers(len(tuples)))], int(rng.integers(len(TEMPLATES))))
        for _ in range(args.queries)
    ]
    tokenizer = ClipTokenizer.from_bundle(args.bundle, manifest)
    queries = backend.embed_texts(tokenizer.pad(tokenizer.encode(texts)))
    np.savez(args.out, data=data, queries=queries, model_version=manifest.version)
    print(
        f"wrote {args.out}: {args.n:,} image embeddings (dim {manifest.embed_dim}, "
        f"{args.n / image_s:,.0f} images/s rendered+embedded) and {args.queries} caption queries "
        f"of model {manifest.model_name} version {manifest.version[:12]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
