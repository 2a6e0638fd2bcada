"""Cost of false-negative filtering: training-step time relative to plain open_clip.ClipLoss.

    .venv/bin/python bench/bench_loss.py [--batch 128] [--reps 30] [--model-reps 8]
                                         [--model clipserve-tiny-p16] [--threads 2]

Two measurements, configurations interleaved round-robin in one process so a busy machine
slows them alike; medians over repetitions:

1. loss only: forward + backward of the loss on (B, D) features that require grad;
2. model step: clipserve-tiny-p16 forward, loss, backward and AdamW step at batch B on
   random 64x64 images and tokens (the demo's model and batch).

Ratios are against open_clip.ClipLoss (SigLIP rows: against open_clip's SigLipLoss). The
`guide` estimator's features are taken as precomputed (a frozen guide on un-augmented data
is embedded once); the cost of running the guide online, a no-grad forward of a model of
the same size, is printed separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from clipserve.training.losses import LossBatch, LossConfig, build_loss
from clipserve.training.model import ModelSpec, create_model

ESTIMATORS = ("em", "margin", "guide", "duplicate", "cluster", "oracle")
POLICIES = ("drop", "downweight", "positive")
EXTRA_OPTS: dict[str, dict[str, Any]] = {
    "em": {"em_flip_prob": 1e-4},
    "margin": {"margin": 0.05},
    "guide": {"margin": 0.05},
}


def configs() -> dict[str, tuple[str, Any]]:
    """name -> (baseline name, loss module)."""
    out: dict[str, tuple[str, Any]] = {
        "open_clip.ClipLoss": ("open_clip.ClipLoss", ClipLoss()),
        "clip (ours, options off)": ("open_clip.ClipLoss", build_loss()),
    }
    for est in ESTIMATORS:
        for pol in POLICIES:
            cfg = LossConfig(estimator=est, policy=pol, **EXTRA_OPTS.get(est, {}))
            out[f"{est} + {pol}"] = ("open_clip.ClipLoss", build_loss(cfg))
    out["em + positive + bce (EMCRL)"] = (
        "open_clip.ClipLoss",
        build_loss(LossConfig(estimator="em", policy="positive", neg_bce_weight=1.0)),
    )
    out["hn-nce (beta 0.5)"] = (
        "open_clip.ClipLoss",
        build_loss(LossConfig(hardness="hn-nce", hard_beta=0.5)),
    )
    out["hcl (beta 0.5, tau+ 0.05) + margin drop"] = (
        "open_clip.ClipLoss",
        build_loss(
            LossConfig(
                hardness="hcl", hard_beta=0.5, tau_plus=0.05, estimator="margin", margin=0.05
            )
        ),
    )
    out["open_clip.SigLipLoss"] = ("open_clip.SigLipLoss", SigLipLoss())
    out["siglip + oracle + positive"] = (
        "open_clip.SigLipLoss",
        build_loss(LossConfig(name="siglip", estimator="oracle", policy="positive")),
    )
    out["siglip + margin + drop"] = (
        "open_clip.SigLipLoss",
        build_loss(LossConfig(name="siglip", estimator="margin", margin=0.05)),
    )
    return out


def side_inputs(b: int, d: int, step: int) -> LossBatch:
    g = torch.Generator().manual_seed(step)
    labels = torch.randint(0, b // 4, (b,), generator=g)  # ~4 items per label: real FNs
    return LossBatch(
        step=step,
        labels=labels,
        guide_image_features=torch.randn(b, d, generator=g),
        guide_text_features=torch.randn(b, d, generator=g),
        caption_keys=labels * 7919,
        image_keys=torch.randint(-(2**62), 2**62, (b,), generator=g),
        cluster_ids=torch.randint(0, 16, (b, 2), generator=g),
    )


def call(loss_fn: Any, out: dict[str, torch.Tensor], batch: LossBatch) -> torch.Tensor:
    if isinstance(loss_fn, SigLipLoss):
        return loss_fn(out["image_features"], out["text_features"], out["logit_scale"], out["bias"])
    if isinstance(loss_fn, ClipLoss):
        return loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    if loss_fn.config.name == "siglip":
        return loss_fn(
            out["image_features"],
            out["text_features"],
            out["logit_scale"],
            out["bias"],
            batch=batch,
        )
    return loss_fn(out["image_features"], out["text_features"], out["logit_scale"], batch=batch)


Times = dict[str, dict[str, list[float]]]  # clock ("wall" | "cpu") -> config -> per round


def interleaved(fns: dict[str, Callable[[], None]], reps: int, desc: str) -> Times:
    """Each round runs every configuration once; wall and process-CPU seconds per call (CPU
    time counts this process's threads only, so it is less swayed by other jobs)."""
    times: Times = {"wall": {k: [] for k in fns}, "cpu": {k: [] for k in fns}}
    for fn in fns.values():  # warm-up
        fn()
    for r in range(reps):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times["wall"][name].append(time.perf_counter() - t0)
            times["cpu"][name].append(time.process_time() - c0)
        print(f"\r{desc}: round {r + 1}/{reps}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return times


def paired_ratio(t: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of (config time / baseline time in the same round)."""
    return statistics.median(a / b for a, b in zip(t[name], t[base], strict=True))


def med(t: dict[str, list[float]], name: str) -> float:
    return statistics.median(t[name])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=30, help="loss-only repetitions")
    p.add_argument("--model-reps", type=int, default=8, help="model-step repetitions")
    p.add_argument("--model", default="clipserve-tiny-p16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b = args.batch
    losses = configs()

    # 1. loss only
    loaded = create_model(ModelSpec(args.model))
    model = loaded.model
    d = model.text_projection.shape[1]
    x0 = F.normalize(torch.randn(b, d), dim=-1)
    y0 = F.normalize(x0 + 0.5 * torch.randn(b, d), dim=-1)
    batch = side_inputs(b, d, 3)

    def loss_only(loss_fn: Any) -> Callable[[], None]:
        def run() -> None:
            x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
            s = torch.tensor(14.3, requires_grad=True)
            bias = torch.tensor(-10.0, requires_grad=True)
            out = {"image_features": x, "text_features": y, "logit_scale": s, "bias": bias}
            call(loss_fn, out, batch).backward()

        return run

    t_loss = interleaved({k: loss_only(v) for k, (_, v) in losses.items()}, args.reps, "loss")

    # 2. model step
    images = torch.randn(b, 3, 64, 64)
    tokens = torch.randint(1, 1000, (b, 32))
    bias_param = torch.nn.Parameter(torch.tensor(-10.0))
    opt = torch.optim.AdamW(list(model.parameters()) + [bias_param], lr=1e-5)
    model.train()

    def model_step(loss_fn: Any) -> Callable[[], None]:
        def run() -> None:
            out = model(image=images, text=tokens)
            out = {
                "image_features": out[0],
                "text_features": out[1],
                "logit_scale": out[2],
                "bias": bias_param,
            }
            loss = call(loss_fn, out, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    guide = create_model(ModelSpec(args.model)).model.eval()

    @torch.no_grad()
    def guide_forward() -> None:
        guide(image=images, text=tokens)

    step_fns = {k: model_step(v) for k, (_, v) in losses.items()}
    step_fns["(guide model forward, no grad)"] = guide_forward
    t_step = interleaved(step_fns, args.model_reps, "model step")

    rows = []
    print(
        f"\nbatch {b}, {args.threads} threads, model {args.model}; medians, ratios paired per round"
    )
    print(
        f"{'configuration':42s} {'loss ms':>8s} {'x':>6s} {'+ms':>6s} | {'step ms':>8s} "
        f"{'x wall':>7s} {'x cpu':>7s} {'x (delta)':>9s}"
    )
    lw, lc, sw, sc = t_loss["wall"], t_loss["cpu"], t_step["wall"], t_step["cpu"]
    for name, (base, _) in losses.items():
        delta = med(lc, name) - med(lc, base)  # added CPU seconds of the loss
        row = {
            "config": name,
            "baseline": base,
            "loss_ms": 1e3 * med(lw, name),
            "loss_ratio": paired_ratio(lw, name, base),
            "loss_added_cpu_ms": 1e3 * delta,
            "step_ms": 1e3 * med(sw, name),
            "step_ratio_wall": paired_ratio(sw, name, base),
            "step_ratio_cpu": paired_ratio(sc, name, base),
            # the added loss CPU time over the plain model step's CPU time
            "step_ratio_from_loss_delta": 1 + delta / med(sc, base),
        }
        rows.append(row)
        print(
            f"{name:42s} {row['loss_ms']:8.2f} {row['loss_ratio']:6.2f} {1e3 * delta:6.2f} | "
            f"{row['step_ms']:8.1f} {row['step_ratio_wall']:7.3f} {row['step_ratio_cpu']:7.3f} "
            f"{row['step_ratio_from_loss_delta']:9.3f}"
        )
    g = paired_ratio(sc, "(guide model forward, no grad)", "open_clip.ClipLoss")
    print(f"online guide forward: +{g:.2f} of a plain step (0 when guide features are cached)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "batch": b,
            "threads": args.threads,
            "model": args.model,
            "rows": rows,
            "guide_forward_step_fraction": g,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
