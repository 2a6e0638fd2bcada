"""The training step `clipserve train` takes against open_clip's own forward.

    .venv/bin/python bench/bench_train_step.py [--models clipserve-tiny-p16 clipserve-micro]
                                               [--batch 128] [--reps 20] [--threads 2]

`clipserve train` calls `towers.TrainingForward`: open_clip's ``CLIP.forward`` with each text
batch trimmed after its last EOT and the last block of each tower at its pooled token only.
For each model this times one full step (forward, ClipLoss, backward, fused AdamW) both ways
on the same batch (random images, captions from the synthetic set's templates, half of them
partial as in the high-FN benchmark), interleaved round-robin so a busy machine slows both
alike, and prints the median seconds per step and the ratio. It also checks that the two
losses agree, so the speed is not bought with a different function.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import open_clip
import torch

from clipserve.training.data import synth
from clipserve.training.data.synth_captions import caption, partial_caption
from clipserve.training.model import ModelSpec, create_model
from clipserve.training.towers import TrainingForward


def captions(n: int, seed: int = 0) -> list[str]:
    """n captions drawn as the high-FN target set draws them (120 tuples, half the captions
    naming only 1-3 attributes)."""
    cfg = synth.SynthConfig(n=n, seed=seed, n_tuples=min(n, 120), partial_captions=0.5)
    tuples = synth.draw_tuples(cfg)
    out = []
    for i in range(n):
        attrs = tuples[i % len(tuples)]
        named = set(synth.named_attributes(cfg, i))
        if len(named) == len(attrs):
            out.append(caption(attrs, i))
        else:
            out.append(partial_caption(attrs, named, i, i))
    return out


def bench(name: str, batch: int, reps: int) -> tuple[float, float, int]:
    torch.manual_seed(0)
    loaded = create_model(ModelSpec(name))
    model = loaded.model.train()
    model.output_dict = True
    size = model.visual.image_size
    images = torch.randn(batch, 3, *size)
    tokens = loaded.tokenizer(captions(batch))
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    ways = {"open_clip": model, "clipserve": TrainingForward(model)}
    with torch.no_grad():
        a, b = (float(loss_fn(**f(image=images, text=tokens))) for f in ways.values())
    if abs(a - b) > 1e-4 * max(1.0, abs(a)):
        raise SystemExit(f"{name}: losses differ ({a} vs {b})")
    times: dict[str, list[float]] = {k: [] for k in ways}
    for rep in range(reps + 1):
        for key, forward in ways.items():
            t0 = time.perf_counter()
            loss = loss_fn(**forward(image=images, text=tokens))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if rep:  # the first round warms up
                times[key].append(time.perf_counter() - t0)
    ref, ours = (statistics.median(times[k]) for k in ways)
    return ref, ours, int(tokens.argmax(dim=-1).max()) + 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["clipserve-tiny-p16", "clipserve-micro"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = every core)")
    args = p.parse_args(argv)
    if args.batch < 2 or args.reps < 1:
        p.error(f"--batch must be 2 or more and --reps 1 or more (got {args.batch}, {args.reps})")
    unknown = [m for m in args.models if m not in open_clip.list_models()]
    if unknown:
        p.error(f"unknown model(s) {unknown}: see open_clip.list_models()")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, median of {args.reps} interleaved steps"
    )
    print("| model | open_clip forward s/step | clipserve s/step | speed-up | text positions |")
    print("|---|---|---|---|---|")
    for name in args.models:
        ref, ours, length = bench(name, args.batch, args.reps)
        print(f"| {name} | {ref:.3f} | {ours:.3f} | {ref / ours:.2f}x | {length} of 32 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
