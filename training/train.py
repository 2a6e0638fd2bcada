"""`clipserve train`: contrastive fine-tuning of an open_clip model from a config file.

Usage: ``clipserve train --config configs/tiny-synth.toml [section.key=value ...]``.

- AdamW without weight decay on biases, gains, embeddings and logit_scale; per-step linear
  warm-up then cosine decay (open_clip's ``cosine_lr``); logit_scale clamped to [0, ln 100]
  after every optimizer step, as open_clip's train loop does (all in `optim`).
- Mixed precision on GPU (bf16 autocast where supported, else fp16 + GradScaler); fp32 on CPU.
- Deterministic on CPU: the same config gives bit-identical weights. Each epoch's shuffle comes
  from a generator seeded by (seed, epoch), so a resumed run can skip the batches it consumed.
- ``output_dir/checkpoints/latest.pt`` every ``run.save_every_steps`` and at the end. Rerunning
  the same command resumes from it and ends with the weights an uninterrupted run would have
  (exactly, for the in-memory cached path and for ``data.workers = 0``); a finished run is
  reported and left alone. What latest.pt holds and how resume works: `checkpointing`.
- ``output_dir/metrics.jsonl`` (training rows, plus eval rows when data.val is set) and
  ``output_dir/training_curve.png``.

This module is the loop and its setup; `lr_at` and `param_groups` are re-exported from `optim`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from clipserve.training.checkpointing import (
    Progress,
    read_run_state,
    restore_run_state,
    save_run_state,
    truncate_metrics,
)
from clipserve.training.config import TrainConfig, load_config
from clipserve.training.data.cache import materialize_cached
from clipserve.training.data.manifest import ImageTextDataset, read_manifest
from clipserve.training.distributed import (
    DistContext,
    init_distributed,
    launched_rank,
    mean_over_ranks,
    shard,
    shutdown,
    wrap_model,
)
from clipserve.training.evaluate import (
    embed_tensors,
    format_table,
    relevance_labels,
    retrieval_metrics,
)
from clipserve.training.losses import build_loss
from clipserve.training.model import LoadedModel, load_pretrained
from clipserve.training.optim import (
    build_optimizer,
    lr_at,
    optimizer_step,
    param_groups,
    set_lr,
)
from clipserve.training.plots import plot_training_curve
from clipserve.training.sampling.guide import guide_features, load_guide
from clipserve.training.sampling.side_inputs import NEEDS, build_item_table
from clipserve.training.sampling.state import TrainSampling
from clipserve.training.towers import TrainingForward

__all__ = [
    "TrainResult",
    "load_model",
    "lr_at",
    "main",
    "param_groups",
    "train",
]


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    checkpoint: Path
    step: int
    total_steps: int
    epoch: float
    final_loss: float | None
    train_seconds: float  # optimisation time over all sessions of this run
    resumed: bool
    already_finished: bool
    curve_png: Path | None
    eval_metrics: dict[str, float] | None


# ---------------------------------------------------------------------------- setup helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"run.device={name} but no CUDA device is available; use cpu or auto.")
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """None = fp32. CPU always trains in fp32 (CPU autocast is slower than fp32 for these)."""
    if precision == "fp32" or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_model(cfg: TrainConfig, device: torch.device) -> LoadedModel:
    """open_clip model; `pretrained` may be an open_clip tag, a local open_clip/state-dict file
    or a clipserve checkpoint (weights only; optimizer state is not carried over)."""
    return load_pretrained(cfg.model.name, cfg.model.pretrained, device)


def image_size(model: Any) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", 224)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ---------------------------------------------------------------------------- training


class _Batches:
    """Per-epoch batches (item rows from `sampling`) as tensors: from the in-memory cache, or
    a DataLoader over the Dataset. Yields (images, tokens, rows)."""

    def __init__(
        self,
        dataset: ImageTextDataset,
        cfg: TrainConfig,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        self.dataset, self.cfg, self.cache = dataset, cfg, cache

    def epoch(
        self, batches: list[np.ndarray], start_batch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        rows = [torch.from_numpy(b) for b in batches[start_batch:]]
        if self.cache is not None:
            images, tokens = self.cache
            for idx in rows:
                yield images[idx], tokens[idx], idx
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[b.tolist() for b in rows],
            num_workers=self.cfg.data.workers,
        )
        yield from loader


def _evaluate(model: Any, val: tuple[torch.Tensor, torch.Tensor, Any], device: Any):
    images, tokens, rel = val
    text, image = embed_tensors(model, images, tokens, device=device)
    if rel is None:
        return retrieval_metrics(text, image)
    return retrieval_metrics(text, image, rel[0], rel[1], match=rel[2])


class _StatsWindow:
    """Means of the loss's diagnostics (`last_stats`: fn_mask_rate, fn_precision, fn_tp, ...)
    over the steps since the last log row."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, stats: dict[str, float]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.n += 1

    def pop(self) -> dict[str, float]:
        out = {k: round(v / max(self.n, 1), 6) for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return out


def _sampling(
    cfg: TrainConfig,
    records: Sequence[Any],
    cache: tuple[torch.Tensor, torch.Tensor] | None,
    device: torch.device,
    out_dir: Path,
    ddp: DistContext,
) -> TrainSampling:
    """Batches and the loss's side inputs; loads the guide model and embeds the data once."""
    guide = None
    needed = {*NEEDS.get(cfg.loss.estimator, ()), *NEEDS.get(cfg.sampling.filter, ())}
    if "guide_image_features" in needed and not cfg.model.guide:
        raise ValueError(
            'the guide estimator needs a guide model: set model.guide = "start" (the '
            "starting weights) or a checkpoint / open_clip weights file."
        )
    if cfg.model.guide:
        loaded = load_guide(cfg.model, device)
        assert loaded is not None
        guide = guide_features(loaded, records, device, cache, cfg.data.cache_dir)
        del loaded
    table = build_item_table(records, image_keys="image_keys" in needed, guide=guide)
    return TrainSampling(
        cfg, records, table, cache, device, out_dir, cfg.run.progress and ddp.is_main, ddp.rank
    )


def train(cfg: TrainConfig, stop_after: int | None = None) -> TrainResult:
    """Train (or resume, or report a finished run) as `cfg` says.

    `stop_after`: stop once this many steps are done (checkpointing there) without finishing,
    which is how tests interrupt a run.
    """
    out_dir = Path(cfg.run.output_dir)
    ckpt_path = out_dir / "checkpoints" / "latest.pt"
    metrics_path = out_dir / "metrics.jsonl"
    curve_path = out_dir / "training_curve.png"
    device = resolve_device(cfg.run.device)
    ddp, device = init_distributed(device)  # torchrun: one process per rank
    if device.type == "cpu":
        torch.set_num_threads(cfg.run.threads or max(1, available_cores() // ddp.world_size))

    saved = read_run_state(ckpt_path, cfg)
    if saved is not None and saved.get("finished"):
        shutdown(ddp)
        print(
            f"clipserve train: run in {out_dir} already finished at step {saved['step']}; "
            "nothing to do (delete the checkpoint to train again).",
            file=sys.stderr,
        )
        return TrainResult(
            out_dir,
            ckpt_path,
            saved["step"],
            saved["total_steps"],
            saved["epoch"],
            saved.get("last_loss"),
            saved.get("elapsed", 0.0),
            resumed=False,
            already_finished=True,
            curve_png=curve_path if curve_path.exists() else None,
            eval_metrics=saved.get("eval"),
        )

    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    # Tiny values (e.g. AdamW's squared-gradient average of rarely used token embeddings)
    # become denormal, which x86 CPUs process far more slowly; flushing them to zero keeps
    # the run deterministic.
    torch.set_flush_denormal(True)
    try:
        return _train(cfg, device, saved, ckpt_path, metrics_path, curve_path, stop_after, ddp)
    finally:
        shutdown(ddp)
        torch.use_deterministic_algorithms(prev_det)
        torch.set_flush_denormal(False)


def _train(
    cfg: TrainConfig,
    device: torch.device,
    saved: dict[str, Any] | None,
    ckpt_path: Path,
    metrics_path: Path,
    curve_path: Path,
    stop_after: int | None,
    ddp: DistContext,
) -> TrainResult:
    out_dir = ckpt_path.parent.parent
    seed_everything(cfg.run.seed)
    loaded = load_model(cfg, device)
    model = loaded.model
    model.output_dict = True
    model.train()

    records = read_manifest(cfg.data.train)
    transform = loaded.preprocess_train if cfg.data.augment else loaded.preprocess_val
    dataset = ImageTextDataset(records, transform, loaded.tokenizer)
    h, w = image_size(model)
    cache_mib = len(records) * 3 * h * w * 4 / 2**20
    cached = not cfg.data.augment and cache_mib <= cfg.data.cache_max_mib
    cache = materialize_cached(dataset, cfg.data.cache_dir) if cached else None
    batches = _Batches(dataset, cfg, cache)
    sampling = _sampling(cfg, records, cache, device, out_dir, ddp)
    spe = sampling.steps_per_epoch
    if spe == 0:
        raise ValueError(
            f"{cfg.data.train} has {len(records)} records, fewer than data.batch_size="
            f"{cfg.data.batch_size}; lower the batch size."
        )
    total = cfg.optim.max_steps or cfg.optim.epochs * spe
    end = min(total, stop_after) if stop_after is not None else total

    val = None
    if cfg.data.val:
        vrec = read_manifest(cfg.data.val)
        vdata = ImageTextDataset(vrec, loaded.preprocess_val, loaded.tokenizer)
        vimg, vtok = materialize_cached(vdata, cfg.data.cache_dir)
        val = (vimg, vtok, relevance_labels(vrec))

    loss_fn = build_loss(cfg.loss, rank=ddp.rank, world_size=ddp.world_size)
    # open_clip's forward with the text trimmed to each batch's longest caption and the last
    # blocks at the pooled tokens (`towers`): same loss and gradients, fewer FLOPs. DDP wraps
    # it when distributed; `model` stays the module (parameters, logit_scale, state_dict).
    towers = TrainingForward(model)
    forward = wrap_model(towers, ddp, device)
    opt = build_optimizer(model, cfg.optim)
    amp_dtype = autocast_dtype(device, cfg.run.precision)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    progress = Progress()
    if saved is None and ddp.is_main:
        # A run stopped before its first checkpoint starts again from step 0: its rows go.
        metrics_path.unlink(missing_ok=True)
    if saved is not None:
        progress = restore_run_state(saved, model, opt, scaler)
        if ddp.is_main:
            truncate_metrics(metrics_path, progress.step)
        print(
            f"clipserve train: resuming {out_dir} from step {progress.step}/{total}",
            file=sys.stderr,
        )
    step, elapsed, cpu_s = progress.step, progress.elapsed, progress.cpu_s
    eval_metrics, last_loss = progress.eval_metrics, progress.last_loss
    resumed = saved is not None
    if ddp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    def checkpoint(last_loss: float | None) -> None:
        if not ddp.is_main:
            return
        save_run_state(
            ckpt_path,
            cfg=cfg,
            model=model,
            optimizer=opt,
            scaler=scaler,
            progress=Progress(step, elapsed, cpu_s, last_loss, eval_metrics),
            total_steps=total,
            steps_per_epoch=spe,
        )

    def log(row: dict[str, Any]) -> None:
        if not ddp.is_main:
            return
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    bar = tqdm(
        total=total,
        initial=step,
        disable=not (cfg.run.progress and ddp.is_main),
        desc="train",
        dynamic_ncols=True,
    )
    window_loss, window_n, window_t0 = 0.0, 0, time.perf_counter()
    stats = _StatsWindow()
    # Wall and CPU time of the training loop, summed over the sessions of a resumed run.
    base_elapsed, base_cpu = elapsed, cpu_s
    loop_t0, loop_c0 = time.perf_counter(), time.process_time()
    while step < end:
        epoch, start_batch = divmod(step, spe)
        for images, tokens, rows in batches.epoch(sampling.batches(epoch, model), start_batch):
            if step >= end:
                break
            lr = lr_at(step, cfg.optim.lr, cfg.optim.warmup_steps, total)
            set_lr(opt, lr)
            images = shard(images, ddp).to(device, non_blocking=True)
            tokens = towers.host_trim(shard(tokens, ddp)).to(device, non_blocking=True)
            with autocast:
                model_out = forward(image=images, text=tokens)
                side = sampling.loss_batch(shard(rows, ddp), step)  # this rank's items
                losses = loss_fn(**model_out, batch=side, output_dict=True)
                loss = sum(losses.values())
            stats.add(loss_fn.last_stats)
            optimizer_step(model, opt, loss, scaler, cfg.optim.grad_clip_norm)
            step += 1
            elapsed = base_elapsed + time.perf_counter() - loop_t0
            cpu_s = base_cpu + time.process_time() - loop_c0
            last_loss = mean_over_ranks(float(loss.detach()), ddp, device)
            window_loss, window_n = window_loss + last_loss, window_n + 1
            bar.update(1)
            if cfg.run.log_every and (step % cfg.run.log_every == 0 or step == total):
                now = time.perf_counter()
                sps = window_n * cfg.data.batch_size / max(now - window_t0, 1e-9)
                row = {
                    "step": step,
                    "epoch": round(step / spe, 4),
                    "loss": window_loss / window_n,
                    "lr": lr,
                    "logit_scale": float(model.logit_scale.detach().exp()),
                    "samples_per_s": round(sps, 2),
                    "elapsed": round(elapsed, 3),
                    # CPU seconds of this process: a load-independent cost on shared machines.
                    "cpu_s": round(cpu_s, 3),
                    # FN-filter diagnostics (mask rate, FN precision/recall), means over
                    # the steps since the last row
                    **stats.pop(),
                }
                log(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}", sps=f"{sps:.0f}")
                window_loss, window_n, window_t0 = 0.0, 0, time.perf_counter()
            if (
                ddp.is_main
                and val is not None
                and cfg.run.eval_every
                and step % cfg.run.eval_every == 0
            ):
                eval_metrics = _evaluate(model, val, device)
                log({"step": step, "split": "val", **eval_metrics})
            if cfg.run.save_every_steps and step % cfg.run.save_every_steps == 0 and step < end:
                checkpoint(last_loss)
    bar.close()
    if (
        ddp.is_main
        and step >= total
        and val is not None
        and not (cfg.run.eval_every and step % cfg.run.eval_every == 0)
    ):
        eval_metrics = _evaluate(model, val, device)
        log({"step": step, "split": "val", **eval_metrics})
    checkpoint(last_loss)
    if ddp.is_main and eval_metrics is not None and step >= total:
        (out_dir / "eval.json").write_text(json.dumps(eval_metrics, indent=2) + "\n")
    curve = (
        plot_training_curve(metrics_path, curve_path)
        if ddp.is_main and metrics_path.exists()
        else None
    )
    return TrainResult(
        out_dir,
        ckpt_path,
        step,
        total,
        step / spe,
        last_loss,
        elapsed,
        resumed=resumed,
        already_finished=False,
        curve_png=curve,
        eval_metrics=eval_metrics,
    )


TRAIN_EPILOG = """\
config sections (every key can be overridden as section.key=value):
  [model]     name, pretrained (open_clip tag | open_clip weights file | clipserve checkpoint),
              guide ("start" = frozen starting weights, or a checkpoint/weights file)
  [data]      train, val (manifests), batch_size, augment, workers
  [optim]     lr, warmup_steps, epochs or max_steps, weight_decay, grad_clip_norm
  [loss]      name = clip | siglip; estimator = none | em | margin | guide | duplicate |
              cluster | lexical | oracle (false-negative detector); policy = drop |
              downweight | positive; hardness = none | hn-nce | hcl; margin, margin_mode,
              fn_threshold; guide_anchor = row | text (guide: per direction, or each pair
              once by caption); lexical_votes (lexical)
  [sampling]  mode = random | hard_batches | mined_negatives; mined (a `clipserve mine`
              output; unset = mine with the starting weights); remine_every_epochs;
              clusters, cluster_text_neighbours (for estimator = cluster);
              lexical_neighbours, visual_ratio (for estimator = lexical)
  [run]       output_dir, seed, device, precision, threads, eval_every, save_every_steps

which to pick (docs/results/fn_benchmark.md has the numbers):
  configs/finetune-random.toml           plain InfoNCE on random batches (the baseline)
  configs/finetune-hard-filtered.toml    hard batches + guide filter (drop)
  configs/finetune-mined-negatives.toml  mined negatives (clipserve mine) + guide filter
  configs/finetune-siglip-positive.toml  sigmoid loss, suspected FN as extra positives

examples:
  clipserve train --config configs/tiny-synth.toml
  clipserve train --config configs/finetune-hard-filtered.toml loss.policy=downweight
  torchrun --nproc_per_node 2 -m clipserve.cli.main train --config CONFIG   (DDP)
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="clipserve train",
        description="Contrastive fine-tuning from a TOML config; rerun the same command to resume.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="TOML config (e.g. configs/tiny-synth.toml)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override config values, e.g. optim.lr=2e-3 run.output_dir=work/run",
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if launched_rank() != 0:  # under torchrun, rank 0 reports
        return 0
    if not result.already_finished:
        print(
            f"trained {cfg.model.name}: {result.step} steps ({result.epoch:.2f} epochs) in "
            f"{result.train_seconds:.1f}s; final loss {result.final_loss:.4f}"
        )
    print(f"checkpoint: {result.checkpoint}")
    if result.curve_png:
        print(f"training curve: {result.curve_png}")
    if result.eval_metrics:
        print(format_table(result.eval_metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
