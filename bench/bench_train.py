"""False-negative-filtered hard-negative fine-tuning, measured: `make bench-train`.

    python bench/bench_train.py [--work work/bench-train] [--out docs/results] [--seeds 3]
                                [--steps 100] [--base-steps 2000] [--only NAME ...] [--extra]
                                [--settings high-fn low-fn] [--workers 2] [--merge JSON ...]

Protocol (everything synthetic, made here, deterministic):

1. A base model (clipserve-tiny-p16 from scratch) trains on a broad set: all 360 attribute
   tuples, full captions. It is cached (``WORK/base``) and shared by every run.
2. It is fine-tuned, same budget for every configuration (--steps at batch 128, same lr), on
   two target sets:
   - high-fn: 120 tuples (about 20 training items each) and half the captions naming only
     1-3 attributes, so that many in-batch candidates match an anchor's caption;
   - low-fn: all 360 tuples, full captions (about 7 items each): false negatives are rare.
3. Mining (neighbours, groups, k-means clusters; the offline filters) runs once per target set
   and filter with the base model; its files are shared by the seeds.
4. Each run is evaluated on the target set's held-out split: semantic (relevance = the image
   has every attribute the caption names) and instance R@1/5/10 both ways, semantic mAP. The
   loss's FN-detection precision/recall/F1 against the exact labels are averaged over training.
   The runs go to --workers processes (one torch thread each) that take them from one queue;
   a run's numbers do not depend on which worker ran it.
5. Step time: forward + loss + backward at batch 128 for each loss configuration, interleaved
   round-robin in one process, as a ratio to plain `open_clip.ClipLoss`.

OpenMP keeps its own wait policy here (threads spin between parallel regions), unlike the
`clipserve` command's PASSIVE: the benchmark expects the machine to itself, and the base's
2-thread steps take 0.305 s spinning against 0.47 s passive (2-core AMD EPYC, idle;
docs/benchmarks.md, thirteenth session). The workers run one thread each, so the policy does
not touch them. On a machine shared with other jobs, export OMP_WAIT_POLICY=PASSIVE first.

Writes OUT/fn_benchmark.json (one object per run), OUT/fn_benchmark.md, OUT/fn_benchmark.png,
OUT/fn_detection.json and OUT/fn_step_time.json. Finished runs are journalled in
WORK/results after every run, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipserve.training.config import config_from_dict
from clipserve.training.data import synth
from clipserve.training.data.manifest import read_manifest
from clipserve.training.losses import LossConfig
from clipserve.training.mining.embed import embed_with_checkpoint
from clipserve.training.mining.lexical import caption_word_ids, words
from clipserve.training.mining.mine import MineConfig, config_summary, mine, write_mined
from clipserve.training.sampling.side_inputs import build_item_table
from clipserve.training.sampling.state import MINED_ESTIMATORS
from clipserve.training.train import train

MODEL = "clipserve-tiny-p16"  # --model
BATCH = 128  # --batch
STEP_BATCH = 128  # step time is always measured at batch 128
KEY_METRICS = ("t2i_semantic_R@1", "t2i_semantic_R@10", "t2i_semantic_mAP", "i2t_semantic_R@1")

# Published defaults, not tuned here: GIST's guide margin 0 (absolute); NV-Retriever's
# TopK-PercPos 95% for the model's own margin (relative 0.05); EMCRL's gamma / flip.
GUIDE = {"estimator": "guide", "margin_mode": "absolute", "margin": 0.0}
# The same rule with each (caption, image) pair decided once, against the caption's positive.
GUIDE_TEXT = GUIDE | {"guide_anchor": "text"}
MARGIN = {"estimator": "margin", "margin_mode": "relative", "margin": 0.05}
# `cluster`: 64 k-means cells, and each caption also reaches the cells of the images of its 5
# nearest captions (partial captions match images in several cells). 5 was read off a
# labelled sweep of this data (docs/benchmarks.md, eleventh session): the one tuned value.
CLUSTER_TEXT_NEIGHBOURS = 5
# `lexical`: mining's defaults (visual words at ratio 1.5, 10 image neighbours, majority vote).
LEXICAL = {"estimator": "lexical"}


@dataclass(frozen=True)
class RunSpec:
    name: str
    mode: str = "random"  # sampling.mode
    loss: dict[str, Any] = field(default_factory=dict)
    mined_filter: str = "none"  # offline filter of the mined negatives
    baseline: bool = False
    extra: bool = False  # runs only with --extra (or when --only names it)

    @property
    def uses_guide(self) -> bool:
        return self.loss.get("estimator") == "guide" or self.mined_filter == "guide"


def high_fn_runs() -> list[RunSpec]:
    return [
        RunSpec("random", baseline=True),
        RunSpec("hard", "hard_batches"),
        RunSpec("mined", "mined_negatives"),
        RunSpec("hard+margin/drop", "hard_batches", MARGIN),
        RunSpec("hard+guide/drop", "hard_batches", GUIDE),
        # guide/downweight is not run: the guide's decisions are 0/1, so its weights 1 - p
        # are the drop mask and the runs were identical to hard+guide/drop (earlier results).
        RunSpec("hard+guide/positive", "hard_batches", GUIDE | {"policy": "positive"}),
        RunSpec("hard+duplicate/drop", "hard_batches", {"estimator": "duplicate"}),
        RunSpec("hard+cluster/drop", "hard_batches", {"estimator": "cluster"}),
        RunSpec("hard+lexical/drop", "hard_batches", LEXICAL),
        # Its precise suspects as extra positives (ALBEF-style) instead: --extra, one more
        # configuration than the 45-minute plan holds (docs/benchmarks.md has its numbers).
        RunSpec(
            "hard+lexical/positive", "hard_batches", LEXICAL | {"policy": "positive"}, extra=True
        ),
        RunSpec("hard+em/positive", "hard_batches", {"estimator": "em", "policy": "positive"}),
        RunSpec("hard+oracle/drop", "hard_batches", {"estimator": "oracle"}),
        RunSpec("mined+guide/drop", "mined_negatives", GUIDE, mined_filter="guide"),
        RunSpec("random+guide/drop", "random", GUIDE),
        # The guide deciding each pair once, against the caption (guide_anchor = "text"): more
        # precise, and it gained less R@1 here (docs/benchmarks.md, sixth session). --extra:
        # the default plan stays within 45 minutes.
        RunSpec("hard+guide-text/drop", "hard_batches", GUIDE_TEXT, extra=True),
        # The oracle reads the labels: one reference row (hard batches) is enough. The
        # mined and random oracle rows of earlier runs are in docs/benchmarks.md.
        RunSpec("siglip", "random", {"name": "siglip"}),
        RunSpec(
            "siglip+hard+guide/positive",
            "hard_batches",
            {"name": "siglip"} | GUIDE | {"policy": "positive"},
        ),  # fmt: skip
    ]


def low_fn_runs() -> list[RunSpec]:
    return [
        RunSpec("random", baseline=True),
        RunSpec("hard", "hard_batches"),
        RunSpec("hard+guide/drop", "hard_batches", GUIDE),
        RunSpec("random+guide/drop", "random", GUIDE),
        # The high-fn winner must show no harm here too, beside its unfiltered sampling.
        RunSpec("mined", "mined_negatives"),
        RunSpec("mined+guide/drop", "mined_negatives", GUIDE, mined_filter="guide"),
        # --extra, so that the default plan fits in 45 minutes: filters the README does not
        # recommend where false negatives are rare (docs/benchmarks.md has their numbers).
        RunSpec("hard+margin/drop", "hard_batches", MARGIN, extra=True),
        RunSpec("hard+lexical/drop", "hard_batches", LEXICAL, extra=True),
        RunSpec("hard+guide-text/drop", "hard_batches", GUIDE_TEXT, extra=True),
    ]


def multi_object_runs() -> list[RunSpec]:
    return [
        RunSpec("random", baseline=True),
        RunSpec("random+guide/drop", "random", GUIDE),
        RunSpec("random+oracle/drop", "random", {"estimator": "oracle"}),
    ]


SETTINGS = {
    # name: (SynthConfig of the target set, runs)
    "high-fn": (
        synth.SynthConfig(n=3000, seed=12, n_tuples=120, holdout=0.2, partial_captions=0.5),
        high_fn_runs,
    ),
    "low-fn": (synth.SynthConfig(n=3000, seed=13, n_tuples=None, holdout=0.2), low_fn_runs),
    # Not in the default plan (--settings multi-object): two objects per image, half the
    # captions partial. The base knows single objects only, and so does its guide.
    "multi-object": (
        synth.SynthConfig(
            n=3000, seed=14, n_tuples=120, holdout=0.2, partial_captions=0.5, objects=2
        ),
        multi_object_runs,
    ),  # fmt: skip
}
DEFAULT_SETTINGS = ("high-fn", "low-fn")
BASE_DATA = synth.SynthConfig(n=5000, seed=11, n_tuples=None, holdout=0.1)
# --base-captions coarse: the base learns the coarse attributes only, so that the fine ones
# (size, position) are what the fine-tuning has left to learn whatever the base's seed.
BASE_COARSE = ("colour", "shape")


# ---------------------------------------------------------------------------- pieces


def _config(
    train_path: Path, val: Path, out: Path, *, steps: int, lr: float, warmup: int,
    pretrained: str | None = None, seed: int = 0, loss: dict[str, Any] | None = None,
    sampling: dict[str, Any] | None = None, guide: bool = False, progress: bool = False,
    cache_dir: Path | None = None,
):  # fmt: skip
    model: dict[str, Any] = {"name": MODEL}
    if pretrained:
        model["pretrained"] = pretrained
    if guide:
        model["guide"] = "start"
    raw = {
        "model": model,
        "data": {
            "train": str(train_path),
            "val": str(val),
            "batch_size": BATCH,
            "cache_dir": str(cache_dir) if cache_dir else None,
        },
        "optim": {"lr": lr, "warmup_steps": warmup, "max_steps": steps, "epochs": 1},
        "loss": loss or {},
        "sampling": sampling or {},
        "run": {
            "output_dir": str(out),
            "seed": seed,
            "device": "cpu",
            # This process's threads: all cores for the base, 1 in a --workers child (run.threads
            # 0 would give each child every core, two workers oversubscribing two cores).
            "threads": torch.get_num_threads(),
            "save_every_steps": 0,
            "log_every": 10,
            "progress": progress,
        },
    }
    return config_from_dict(raw, source="bench")


def base_model(work: Path, steps: int, seed: int = 0, captions: str = "full") -> tuple[Path, bool]:
    """The base's checkpoint, and whether an earlier invocation had trained it. `seed` is
    the base run's own (initialisation and batch order; the data stay the same). `captions`
    "coarse": the base's captions name only BASE_COARSE (same images and tuples)."""
    data = BASE_DATA
    if captions == "coarse":
        data = replace(BASE_DATA, caption_attributes=BASE_COARSE)
    paths = synth.generate(data, work / "data" / "base", progress=False, reuse=True).paths
    cfg = _config(
        paths.train, paths.test, work / "base", steps=steps, lr=2e-3, warmup=40, seed=seed,
        progress=True,
    )  # fmt: skip  # the runs print a line each; the base's ten minutes get a progress bar
    t0 = time.perf_counter()
    result = train(cfg)
    note = "cached" if result.already_finished else f"{time.perf_counter() - t0:.0f} s"
    m = result.eval_metrics or {}
    print(
        f"base model: {steps} steps ({note}); broad held-out t2i semantic R@1 "
        f"{m.get('t2i_semantic_R@1', float('nan')):.3f}",
        flush=True,
    )
    return result.checkpoint, result.already_finished


def mine_target(work: Path, setting: str, data: Path, base: Path, filters: set[str]) -> dict[str, Path]:  # fmt: skip
    """Mine the target's train split once per offline filter with the base model."""
    records = read_manifest(data)
    out = {}
    text = image = table = None
    for flt in sorted(filters):
        d = work / "mined" / setting / flt
        out[flt] = d
        mcfg = MineConfig(
            clusters=64, cluster_text_neighbours=CLUSTER_TEXT_NEIGHBOURS, lexical=True
        )
        fcfg = LossConfig(**(GUIDE if flt == "guide" else {"estimator": flt}))
        if (d / "mine.json").is_file():
            done = json.loads((d / "mine.json").read_text())
            if {k: done.get(k) for k in ("mine", "filter_config")} == config_summary(mcfg, fcfg):
                continue  # mined with these options already (a changed option mines again)
        if text is None:
            # The guide is the starting (base) model, as model.guide = "start" in training.
            text, image = embed_with_checkpoint(base, records, progress=False)
            table = build_item_table(
                records, guide=(torch.from_numpy(image), torch.from_numpy(text))
            )
        captions = [r.caption for r in records]
        mined, _ = mine(text, image, table, mcfg, fcfg, work / "mined" / "index", False, captions)
        write_mined(d, records, mined, config_summary(mcfg, fcfg))
        s = mined.stats
        print(
            f"  mined {setting}/{flt}: {s['n_items']} items, {s['queries_per_s']:.0f} q/s, "
            f"filter F1 {s.get('filter_f1', float('nan')):.3f}",
            flush=True,
        )
    return out


def _pooled(tp: float, fp: float, fn: float) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"fn_precision": precision, "fn_recall": recall, "fn_f1": f1}


def _fn_stats(metrics_path: Path) -> dict[str, float]:
    """FN-detection precision/recall/F1 of the loss's estimator over the whole run (counts
    pooled over the training log rows) and its mean mask rate."""
    tp = fp = fn = 0.0
    masks: list[float] = []
    if not metrics_path.is_file():
        return {}
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        if row.get("split") == "val":
            continue
        # Rows written before the keys lost their "loss_" prefix read the same.
        row = {k.removeprefix("loss_"): v for k, v in row.items()}
        if "fn_tp" not in row:
            continue
        tp, fp, fn = tp + row["fn_tp"], fp + row["fn_fp"], fn + row["fn_fn"]
        masks.append(row.get("fn_mask_rate", float("nan")))
    if not masks:
        return {}
    return _pooled(tp, fp, fn) | {"fn_mask_rate": float(np.mean(masks))}


def run_dir(work: Path, setting: str, spec: RunSpec, seed: int) -> Path:
    return work / "runs" / setting / spec.name.replace("/", "_").replace("+", "-") / f"seed{seed}"


def claim(work: Path, setting: str, spec: RunSpec, seed: int) -> bool:
    """Take the run for this process (--workers children share one work queue);
    False when another process has taken it."""
    marker = run_dir(work, setting, spec, seed).with_suffix(".claim")
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        marker.mkdir()
    except FileExistsError:
        return False
    return True


def run_one(
    work: Path, setting: str, spec: RunSpec, seed: int, data: synth.SynthPaths,
    base: Path, mined: dict[str, Path], steps: int,
) -> dict[str, Any]:  # fmt: skip
    out = run_dir(work, setting, spec, seed)
    sampling: dict[str, Any] = {"mode": spec.mode}
    if spec.mode != "random" or spec.loss.get("estimator") in MINED_ESTIMATORS:
        sampling["mined"] = str(mined[spec.mined_filter])
    cfg = _config(
        data.train, data.test, out, steps=steps, lr=5e-4, warmup=20, pretrained=str(base),
        seed=seed, loss=spec.loss, sampling=sampling, guide=spec.uses_guide,
        cache_dir=work / "cache",  # the runs of a setting share its images and guide features
    )  # fmt: skip
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    metrics = dict(result.eval_metrics or {})
    metrics |= _fn_stats(out / "metrics.jsonl")
    return {
        "setting": setting,
        "config": spec.name,
        "baseline": spec.baseline,
        "seed": seed,
        "sampling": spec.mode,
        "loss": {"name": "clip", "estimator": "none", "policy": "drop"} | spec.loss,
        "mined_filter": spec.mined_filter,
        "steps": result.step,
        "train_seconds": round(result.train_seconds, 2),
        "wall_seconds": round(wall, 2),
        "metrics": metrics,
    }


DETECTORS: dict[str, dict[str, Any]] = {
    "em": {"estimator": "em", "policy": "positive"},
    "margin": MARGIN,
    "guide": GUIDE,
    "guide-text": GUIDE_TEXT,
    "duplicate": {"estimator": "duplicate"},
    "cluster": {"estimator": "cluster"},
    "lexical": LEXICAL,
    "oracle": {"estimator": "oracle"},
}


@torch.no_grad()
def pooled_detection(
    loss: Any, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
    table: Any, batches: Sequence[np.ndarray],
) -> dict[str, float]:  # fmt: skip
    """A filtered loss's FN precision/recall/F1 over `batches` (item rows of `table`),
    counts pooled over the batches, with its mean mask rate and true FN rate."""
    tp = fp = fn = 0.0
    mask, true_rate = [], []
    for step, idx in enumerate(batches):
        rows = torch.from_numpy(idx)
        loss(
            image_features=image[rows], text_features=text[rows], logit_scale=scale,
            batch=table.batch(rows, step), output_dict=True,
        )  # fmt: skip
        st = loss.last_stats
        tp, fp, fn = tp + st["fn_tp"], fp + st["fn_fp"], fn + st["fn_fn"]
        mask.append(st["fn_mask_rate"])
        true_rate.append(st.get("fn_true_rate", float("nan")))
    return _pooled(tp, fp, fn) | {
        "mask_rate": float(np.mean(mask)),
        "true_fn_rate": float(np.mean(true_rate)),
    }


@torch.no_grad()
def fn_detection(
    setting: str, base: Path, train_path: Path, mined_dir: Path, n_batches: int
) -> list[dict[str, Any]]:
    """Every estimator's FN precision/recall/F1 against the exact labels on the base model's
    features (the guide is the base, as in training), over the first n_batches random and
    hard batches of the target's training set. Counts are pooled over the batches."""
    from clipserve.training.data.manifest import ImageTextDataset, materialize
    from clipserve.training.evaluate import embed_tensors
    from clipserve.training.losses import build_loss
    from clipserve.training.mining.mine import read_mined
    from clipserve.training.model import load_pretrained
    from clipserve.training.sampling.batches import HardBatches, RandomBatches

    loaded = load_pretrained(MODEL, str(base))
    records = read_manifest(train_path)
    images, tokens = materialize(ImageTextDataset(records, loaded.preprocess_val, loaded.tokenizer))
    text, image = embed_tensors(loaded.model, images, tokens)
    t, i = torch.from_numpy(text), torch.from_numpy(image)
    mined = read_mined(mined_dir, records)
    table = build_item_table(records, image_keys=True, cluster_ids=mined.cluster_ids, guide=(i, t))
    table = table.replace(
        caption_cells=mined.caption_cells,
        caption_words=mined.caption_words,
        image_neighbours=mined.image_neighbours,
    )
    scale = loaded.model.logit_scale.exp()
    samplers = {
        "random": RandomBatches(len(records), BATCH, 0),
        "hard_batches": HardBatches(mined.groups, BATCH, 0),
    }
    rows = []
    for sampling, sampler in samplers.items():
        batches = sampler.epoch(0)[:n_batches]
        for name, extra in DETECTORS.items():
            loss = build_loss(LossConfig(**extra))
            rows.append(
                {"setting": setting, "sampling": sampling, "estimator": name}
                | pooled_detection(loss, i, t, scale, table, batches)
            )
            r = rows[-1]
            print(
                f"  FN detection {setting}/{sampling}/{name}: precision {r['fn_precision']:.3f} "
                f"recall {r['fn_recall']:.3f} F1 {r['fn_f1']:.3f} (true FN rate "
                f"{r['true_fn_rate']:.3f}, mask rate {r['mask_rate']:.3f})",
                flush=True,
            )
    return rows


def step_times(specs: Sequence[RunSpec], base: Path, data: Path, reps: int) -> dict[str, float]:
    """Seconds per forward+loss+backward at STEP_BATCH, median over interleaved repetitions."""
    import open_clip

    from clipserve.training.losses import build_loss
    from clipserve.training.model import load_pretrained
    from clipserve.training.towers import TrainingForward

    torch.manual_seed(0)
    loaded = load_pretrained(MODEL, str(base))
    model = loaded.model.train()
    model.output_dict = True
    forward = TrainingForward(model)  # the step `clipserve train` takes
    records = read_manifest(data)[:STEP_BATCH]
    images = torch.stack([loaded.preprocess_val(r.open_image()) for r in records])
    tokens = loaded.tokenizer([r.caption for r in records])
    table = build_item_table(records, image_keys=True)
    with torch.no_grad():
        dim = model(image=images[:2], text=tokens[:2])["image_features"].shape[1]
    guide = torch.nn.functional.normalize(torch.randn(STEP_BATCH, dim), dim=-1)
    table = table.replace(
        guide_image_features=guide, guide_text_features=guide,
        cluster_ids=torch.arange(STEP_BATCH)[:, None] % 16,
        caption_cells=torch.arange(STEP_BATCH * (1 + CLUSTER_TEXT_NEIGHBOURS)).view(STEP_BATCH, -1) % 16,
        # every word of every caption, and 10 neighbours each: the lexical estimator's full load
        caption_words=torch.from_numpy(caption_word_ids(
            [r.caption for r in records], sorted({w for r in records for w in words(r.caption)})
        )),
        image_neighbours=(torch.arange(STEP_BATCH)[:, None] + torch.arange(1, 11)) % STEP_BATCH,
    )  # fmt: skip
    side = table.batch(torch.arange(STEP_BATCH), step=0)
    losses: dict[str, Any] = {"ClipLoss (open_clip)": open_clip.ClipLoss()}
    for spec in specs:
        losses.setdefault(_loss_key(spec), build_loss(LossConfig(**spec.loss)))
    times: dict[str, list[float]] = {k: [] for k in losses}
    for rep in range(reps + 1):
        for name, fn in losses.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            out = forward(image=images, text=tokens)
            if name.startswith("ClipLoss"):
                loss = fn(**out, output_dict=True)["contrastive_loss"]
            else:
                loss = sum(fn(**out, batch=side, output_dict=True).values())
            loss.backward()
            if rep:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _loss_key(spec: RunSpec) -> str:
    loss = {"name": "clip", "estimator": "none", "policy": "drop"} | spec.loss
    if loss["estimator"] == "none":
        return loss["name"]
    estimator = loss["estimator"] + ("-text" if loss.get("guide_anchor") == "text" else "")
    return f"{loss['name']} {estimator}/{loss['policy']}"


# ---------------------------------------------------------------------------- reports


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["config"]), []).append(r)
    out = {}
    for key, runs in groups.items():
        names = sorted({k for r in runs for k in r["metrics"]})
        out[key] = {
            n: _mean_std([r["metrics"][n] for r in runs if n in r["metrics"]]) for n in names
        }
        out[key]["_seeds"] = (float(len(runs)), 0.0)
    return out


def markdown(
    rows: list[dict[str, Any]],
    step_ratio: dict[str, float],
    header: str,
    detect: list[dict[str, Any]],
) -> str:
    summary = summarise(rows)
    cols = [
        ("t2i sem R@1", "t2i_semantic_R@1"), ("t2i sem R@5", "t2i_semantic_R@5"),
        ("t2i sem R@10", "t2i_semantic_R@10"), ("t2i sem mAP", "t2i_semantic_mAP"),
        ("i2t sem R@1", "i2t_semantic_R@1"), ("i2t sem R@10", "i2t_semantic_R@10"),
        ("i2t sem mAP", "i2t_semantic_mAP"), ("t2i inst R@1", "t2i_R@1"),
        ("i2t inst R@1", "i2t_R@1"), ("t2i inst R@10", "t2i_R@10"),
        ("FN prec", "fn_precision"), ("FN rec", "fn_recall"), ("FN F1", "fn_f1"),
    ]  # fmt: skip
    lines = [header, ""]
    for setting in ("high-fn", "low-fn"):
        keys = [k for k in summary if k[0] == setting]
        if not keys:
            continue
        base = summary.get((setting, "random"), {}).get("t2i_semantic_R@1", (float("nan"), 0))
        lines += [f"### {setting}", ""]
        lines.append(
            "| config | seeds | " + " | ".join(c for c, _ in cols) + " | Δ t2i sem R@1 vs random |"
        )
        lines.append("|---" * (len(cols) + 3) + "|")
        for key in keys:
            s = summary[key]
            cells = []
            for _, m in cols:
                mean, std = s.get(m, (float("nan"), float("nan")))
                cells.append("–" if np.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
            d = s.get("t2i_semantic_R@1", (float("nan"), 0))[0] - base[0]
            lines.append(
                f"| {key[1]} | {int(s['_seeds'][0])} | " + " | ".join(cells) + f" | {d:+.3f} |"
            )
        lines.append("")
    if step_ratio:
        lines += [
            "### Step time at batch 128 (forward + loss + backward), relative to open_clip.ClipLoss",
            "",
        ]
        lines += ["| loss | × ClipLoss |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in step_ratio.items()]
        lines.append("")
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    settings = [s for s in SETTINGS if any(k[0] == s for k in summary)]
    widths = [sum(k[0] == s for k in summary) for s in settings]  # a bar group per config
    fig, axes = plt.subplots(1, len(settings), figsize=(4 + 0.6 * sum(widths), 6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})  # fmt: skip
    for ax, setting in zip(axes[0], settings, strict=True):
        keys = [k for k in summary if k[0] == setting]
        names = [k[1] for k in keys]
        x = np.arange(len(keys))
        for off, (metric, label) in enumerate(
            (("t2i_semantic_R@1", "t2i sem R@1"), ("t2i_semantic_mAP", "t2i sem mAP"))
        ):
            means = [summary[k].get(metric, (np.nan, 0))[0] for k in keys]
            stds = [summary[k].get(metric, (np.nan, 0))[1] for k in keys]
            ax.bar(x + (off - 0.5) * 0.4, means, 0.4, yerr=stds, capsize=2, label=label)
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{setting} (mean ± std over seeds)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(
    out: Path, rows: list[dict[str, Any]], ratios: dict[str, float], header: str,
    json_only: bool = False,
) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "fn_benchmark.json.tmp"
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(out / "fn_benchmark.json")
    if json_only:  # the journal and the workers' shards; the reports are written once, at the end
        return
    detect = []
    if (out / "fn_detection.json").is_file():
        detect = json.loads((out / "fn_detection.json").read_text())
    if ratios:
        (out / "fn_step_time.json").write_text(json.dumps(ratios, indent=1) + "\n")
    elif (out / "fn_step_time.json").is_file():
        ratios = json.loads((out / "fn_step_time.json").read_text())
    (out / "fn_benchmark.md").write_text(markdown(rows, ratios, header, detect))
    if rows:
        chart(rows, out / "fn_benchmark.png")


def run_workers(
    args: argparse.Namespace, work: Path, out: Path, rows: list[dict[str, Any]],
    todo: list[tuple[Any, ...]],
) -> list[dict[str, Any]]:  # fmt: skip
    """Run `todo` in args.workers child processes (one torch thread each) that take runs from
    a shared queue of run-directory claims; returns `rows` with theirs merged in.

    Each child writes its rows to OUT/shards/wK/fn_benchmark.json after every run, so an
    interrupted benchmark keeps what finished: the next start folds those in first."""
    import shutil
    import subprocess

    shards = out / "shards"
    rows = _merged(rows, sorted(shards.glob("*/fn_benchmark.json")))
    shutil.rmtree(shards, ignore_errors=True)
    # Claims left by an interrupted run would hide unfinished runs; finished ones are claimed
    # here so that no child repeats them.
    for marker in (work / "runs").rglob("*.claim"):
        marker.rmdir()
    done = {(r["setting"], r["config"], r["seed"]) for r in rows}
    left = 0
    for seed, setting, spec, _, _ in todo:
        if (setting, spec.name, seed) in done:
            claim(work, setting, spec, seed)
        else:
            left += 1
    if not left:
        return rows
    n = min(args.workers, left)
    print(f"{left} runs in {n} worker processes, 1 thread each", flush=True)
    common = [
        "--work", str(work), "--seeds", str(args.seeds), "--steps", str(args.steps),
        "--base-steps", str(args.base_steps), "--base-seed", str(args.base_seed),
        "--base-captions", args.base_captions,
        "--settings", *args.settings,
        "--model", args.model, "--batch", str(args.batch), "--data-scale", str(args.data_scale),
        "--step-reps", "0", "--detect-batches", "0", "--threads", "1", "--workers", "1",
        "--worker",
    ]  # fmt: skip
    if args.only:
        common += ["--only", *args.only]
    if args.extra:
        common += ["--extra"]
    script = str(Path(__file__).resolve())
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, script, *common, "--out", str(shards / f"w{k}")], env=env)
        for k in range(n)
    ]
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
    rows = _merged(rows, sorted(shards.glob("*/fn_benchmark.json")))
    order = {(setting, spec.name, seed): i for i, (seed, setting, spec, _, _) in enumerate(todo)}
    rows.sort(key=lambda r: order.get((r["setting"], r["config"], r["seed"]), -1))
    write_reports(out, rows, {}, "", json_only=True)
    shutil.rmtree(shards, ignore_errors=True)
    if any(codes):
        raise SystemExit(f"a benchmark worker failed (exit codes {codes}); rerun to resume")
    return rows


def _merged(rows: list[dict[str, Any]], paths: Sequence[Path]) -> list[dict[str, Any]]:
    """`rows` plus the rows of these fn_benchmark.json files, each (setting, config, seed)
    once (the first seen wins)."""
    seen = {(r["setting"], r["config"], r["seed"]) for r in rows}
    out = list(rows)
    for path in paths:
        for r in json.loads(path.read_text()):
            key = (r["setting"], r["config"], r["seed"])
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


# ---------------------------------------------------------------------------- main


def _scaled(cfg: synth.SynthConfig, scale: float) -> synth.SynthConfig:
    if scale == 1.0:
        return cfg
    n = max(int(cfg.n * scale), cfg.tuple_count * 2)
    return replace(cfg, n=n)


def main(argv: Sequence[str] | None = None) -> int:
    global MODEL, BATCH, BASE_DATA
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="work/bench-train", help="data, base model, runs (cached)")
    p.add_argument("--out", default="docs/results", help="where the results go")
    p.add_argument("--seeds", type=int, default=3)
    # 63 runs x 100 steps in 2 worker processes + a 2000-step base: about 43 min on a 2-core
    # AVX2 CPU (the base 12 min, a run 48-75 s in each worker; docs/benchmarks.md, ninth
    # session). A short base is too weak for fine distinctions to be what is left to
    # learn (broad held-out R@1 0.05 after 400 steps at batch 64), the regime the issue's
    # probe warned about; see docs/benchmarks.md.
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps per run")
    p.add_argument("--base-steps", type=int, default=2000)
    p.add_argument("--base-seed", type=int, default=0,
                   help="the base run's seed: where a from-scratch base lands decides how much "
                   "is left to learn (use its own --work per base)")  # fmt: skip
    p.add_argument("--base-captions", choices=("full", "coarse"), default="full",
                   help="coarse: the base's captions name only colour and shape, so size and "
                   "position are left to the fine-tuning (use its own --work)")  # fmt: skip
    p.add_argument("--step-reps", type=int, default=10, help="step-time repetitions per loss")
    p.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=list(SETTINGS))
    p.add_argument("--only", nargs="*", help="only these config names")
    p.add_argument("--extra", action="store_true",
                   help="also the configurations outside the default plan (hard+guide-text/drop)")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--model", default=MODEL, help="(smoke tests: clipserve-micro)")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--data-scale", type=float, default=1.0, help="scale every data set's size")
    p.add_argument("--prepare-only", action="store_true",
                   help="data, base model, mining and FN detection only")  # fmt: skip
    p.add_argument("--detect-batches", type=int, default=8, help="batches per FN-detection row")
    p.add_argument("--workers", type=int, default=2,
                   help="processes for the runs, one torch thread each, taking runs from a "
                   "shared queue (2 cores: 1.28x the steps/s of one 2-thread process); 1 = "
                   "run them in this process")  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a --workers child
    p.add_argument("--note", help="with --merge: the text above the tables (commands, machine)")
    p.add_argument("--merge", nargs="*", metavar="JSON",
                   help="only write the reports from these fn_benchmark.json files")  # fmt: skip
    args = p.parse_args(argv)
    if args.merge:
        found = [Path(x) for x in args.merge if Path(x).is_file()]
        for missing in sorted(set(map(Path, args.merge)) - set(found)):
            print(f"warning: {missing} does not exist (a shard that finished nothing?)")
        merged = _merged([], found)
        for path in args.merge:  # detection and step time come from the shard that made them
            for name in ("fn_detection.json", "fn_step_time.json"):
                src = Path(path).parent / name
                if src.is_file() and src.resolve() != (Path(args.out) / name).resolve():
                    Path(args.out).mkdir(parents=True, exist_ok=True)
                    (Path(args.out) / name).write_text(src.read_text())
        header_note = (
            "Command: `python bench/bench_train.py "
            + " ".join(argv if argv is not None else sys.argv[1:])
            + "`"
        )
        prior = Path(args.out) / "fn_benchmark.md"
        first = prior.read_text().splitlines()[0] if prior.is_file() else header_note
        write_reports(Path(args.out), merged, {}, first)
        print(f"merged {len(merged)} runs into {args.out}")
        return 0
    MODEL, BATCH = args.model, args.batch
    BASE_DATA = _scaled(BASE_DATA, args.data_scale)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    work, out = Path(args.work), Path(args.out)
    t_start = time.perf_counter()
    header = (
        f"Command: `python bench/bench_train.py {' '.join(argv if argv is not None else sys.argv[1:])}` on {platform.machine()}, {os.cpu_count()} CPUs, no "
        f"GPU, Python {platform.python_version()}; model {MODEL}, batch {BATCH}; "
        f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}."
    )
    base, base_cached = base_model(work, args.base_steps, args.base_seed, args.base_captions)
    # Finished runs are journalled in the work directory (resume from there), never read
    # back from OUT: a fresh clone's committed docs/results must not count as done.
    journal = out if args.worker else work / "results"
    results_path = journal / "fn_benchmark.json"
    rows: list[dict[str, Any]] = (
        json.loads(results_path.read_text()) if results_path.is_file() else []
    )
    done = {(r["setting"], r["config"], r["seed"]) for r in rows}
    plan = []
    for setting in args.settings:
        data_cfg, runs = SETTINGS[setting]
        data_cfg = _scaled(data_cfg, args.data_scale)
        specs = [
            s for s in runs() if (s.name in args.only if args.only else args.extra or not s.extra)
        ]
        paths = synth.generate(data_cfg, work / "data" / setting, progress=False, reuse=True).paths
        filters = {s.mined_filter for s in specs if s.mode != "random" or s.loss.get("estimator") in MINED_ESTIMATORS}  # fmt: skip
        filters.add("none")  # the groups and clusters FN detection runs on
        mined = mine_target(work, setting, paths.train, base, filters)
        plan.append((setting, specs, paths, mined))
    detect_path = journal / "fn_detection.json"
    if not args.worker and not detect_path.is_file() and args.detect_batches:
        detection = [
            row
            for setting, _, paths, mined in plan
            for row in fn_detection(setting, base, paths.train, mined["none"], args.detect_batches)
        ]
        journal.mkdir(parents=True, exist_ok=True)
        detect_path.write_text(json.dumps(detection, indent=1) + "\n")
    if args.prepare_only:
        return 0
    # Seed-major order: every configuration's first seed finishes before any second seed.
    ratios: dict[str, float] = {}
    todo = [
        (seed, setting, spec, paths, mined)
        for seed in range(args.seeds)
        for setting, specs, paths, mined in plan
        for spec in specs
    ]
    if args.workers > 1 and not args.worker:
        rows = run_workers(args, work, journal, rows, todo)
        todo = []
    for seed, setting, spec, paths, mined in todo:
        if (setting, spec.name, seed) in done:
            continue
        if args.worker and not claim(work, setting, spec, seed):
            continue
        row = run_one(work, setting, spec, seed, paths, base, mined, args.steps)
        rows.append(row)
        m = row["metrics"]
        print(
            f"[{time.perf_counter() - t_start:6.0f}s] {setting:7s} {spec.name:28s} "
            f"seed {seed}: t2i sem R@1 {m.get('t2i_semantic_R@1', float('nan')):.3f} "
            f"R@10 {m.get('t2i_semantic_R@10', float('nan')):.3f} mAP "
            f"{m.get('t2i_semantic_mAP', float('nan')):.3f} FN F1 "
            f"{m.get('fn_f1', float('nan')):.3f} ({row['wall_seconds']:.0f} s)",
            flush=True,
        )
        write_reports(journal, rows, ratios, header, json_only=True)
    if args.worker:
        return 0
    # The reports show this plan's runs (the journal may hold others: --extra, --only).
    planned = {(setting, spec.name) for setting, specs, _, _ in plan for spec in specs}
    rows = [r for r in rows if (r["setting"], r["config"]) in planned]
    resumed = sum((r["setting"], r["config"], r["seed"]) in done for r in rows)
    specs_all = [s for _, specs, _, _ in plan for s in specs]
    if args.step_reps and plan:
        secs = step_times(specs_all, base, plan[0][2].train, args.step_reps)
        ref = secs["ClipLoss (open_clip)"]
        ratios = {k: v / ref for k, v in secs.items()}
        print("step time vs ClipLoss: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    out.mkdir(parents=True, exist_ok=True)
    if detect_path.is_file():
        (out / "fn_detection.json").write_text(detect_path.read_text())
    total = f" Total {time.perf_counter() - t_start:.0f} s"
    if resumed:  # say so: the total then covers only what this invocation ran
        total += f" ({resumed} of the {len(rows)} runs were done by an earlier invocation)"
    if base_cached:
        total += " (the base model was trained by an earlier invocation)"
    write_reports(out, rows, ratios, header + total + ".")
    print(f"wrote {out}/fn_benchmark.json, .md, .png in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
