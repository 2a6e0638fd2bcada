"""How far can a similarity threshold detect false negatives on the benchmark's data? The
ceiling, with the threshold chosen by looking at the labels.

    python bench/fn_ceiling.py [--work work/bench-train] [--out docs/results]
                               [--guide CKPT ...] [--batches 20] [--train-guide STEPS]

Every estimator clipserve has that is not `oracle` or `duplicate` thresholds a similarity:
`guide` the guide model's cosine against the row's own positive (GISTEmbed), `margin` the
model's own (UniME, NV-Retriever), `cluster` the k-means cells of the same embeddings. This
script asks what the best possible threshold would give. For each guide checkpoint, on the
first --batches random and hard batches of each target set of `make bench-train` (run that
first: it leaves the base model, the data and the mined groups in --work), it scores every
in-batch pair (anchor row, other column) three ways:

- ``cosine``: the guide's cross-modal cosine (an absolute threshold);
- ``cosine - positive``: the same minus the row's cosine to its own positive (GIST's
  positive-aware rule, and `margin`'s);
- ``same-modality``: the cosine between the two anchors in the row's own modality (what
  `cluster` and duplicate detection look at);

and sweeps every threshold against the exact labels (caption k matches image a iff every
attribute k names is in a), keeping the best F1 with its precision, recall and threshold.
Choosing the threshold from the labels is what no estimator can do, so these F1s bound from
above what any rule on these scores reaches.

Thresholds see one score at a time. ``fitted on the labels`` combines them all: a logistic
regression on the pair's six similarities (the three above in both directions), their
squares and products, fitted on the same labels it is scored on, then the best threshold.
Row ``all guides`` fits one on every guide's similarities together. These bound any smooth
rule on the embeddings, even one learnt from labelled target data. Writes
OUT/fn_ceiling.json and prints a table.

``cluster cells`` rows: the `cluster` estimator itself (the loss's own FN diagnostics, as
`make bench-train` counts them), on the base model's k-means cells, with each caption's cells
widened to the images of its M nearest captions for M in CELL_NEIGHBOURS (M = 0: its own
image's cell only). The benchmark's `cluster_text_neighbours` was read off these rows.

--train-guide STEPS adds a better-informed guide: the base trained STEPS more steps on a
broad set (all tuples) where half the captions name only some attributes, as web captions
do, so it has seen under-specified captions without seeing the target sets (cached in
WORK/guide-partial; 400 steps take about 4 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train as bt  # noqa: E402

from clipserve.training.data import synth  # noqa: E402
from clipserve.training.data.manifest import (  # noqa: E402
    ImageTextDataset,
    materialize,
    read_manifest,
)
from clipserve.training.evaluate import embed_tensors  # noqa: E402
from clipserve.training.losses import LossConfig, build_loss  # noqa: E402
from clipserve.training.losses.estimators.oracle import truth_matrices  # noqa: E402
from clipserve.training.mining.mine import caption_cells, read_mined  # noqa: E402
from clipserve.training.model import load_pretrained  # noqa: E402
from clipserve.training.sampling.batches import HardBatches, RandomBatches  # noqa: E402
from clipserve.training.sampling.side_inputs import build_item_table  # noqa: E402
from clipserve.training.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = ("cosine", "cosine - positive", "same-modality")
FITTED = "fitted on the labels"  # every similarity of the pair, combined (`fitted_f1`)
ALL_GUIDES = "all guides"


def best_f1(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The threshold on `scores` (flag score >= threshold) with the best F1 against `truth`."""
    order = np.argsort(-scores, kind="stable")
    hits = truth[order]
    tp = np.cumsum(hits)
    flagged = np.arange(1, len(hits) + 1)
    precision = tp / flagged
    recall = tp / max(int(truth.sum()), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    # Only cut between distinct scores: equal scores are flagged together or not at all.
    distinct = np.r_[scores[order][1:] != scores[order][:-1], True]
    f1 = np.where(distinct, f1, -1.0)
    j = int(f1.argmax())
    return {
        "f1": float(f1[j]),
        "precision": float(precision[j]),
        "recall": float(recall[j]),
        "threshold": float(scores[order][j]),
    }


def _signals(image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per direction, the (n, n, len(SIGNALS)) scores of every (row, column) pair."""
    out = {}
    for direction, cross, same in (
        ("i2t", image @ text.T, image @ image.T),
        ("t2i", text @ image.T, text @ text.T),
    ):
        out[direction] = torch.stack([cross, cross - cross.diag()[:, None], same], dim=-1)
    return out


def pair_scores(
    image: torch.Tensor, text: torch.Tensor, batch: Any
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per direction over the off-diagonal pairs: (scores [pairs, len(SIGNALS)], truth
    [pairs], features [pairs, 2 * len(SIGNALS)]). The features are the pair's own scores and
    the other direction's scores of the same (image, caption) pair, i.e. every similarity
    this model has of the two items, for the fitted ceiling."""
    n = image.shape[0]
    truth_i2t, truth_t2i = truth_matrices(batch, slice(0, n))
    off = ~torch.eye(n, dtype=torch.bool)
    sig = _signals(image, text)
    out = {}
    for direction, other, truth in (("i2t", "t2i", truth_i2t), ("t2i", "i2t", truth_t2i)):
        own = sig[direction][off]
        mirrored = sig[other].transpose(0, 1)[off]  # (row a, column k) -> the other's (k, a)
        out[direction] = (own.numpy(), truth[off].numpy(), torch.cat([own, mirrored], 1).numpy())
    return out


def fitted_f1(features: np.ndarray, truth: np.ndarray, iters: int = 200) -> dict[str, float]:
    """Best F1 of a logistic regression on the features, their squares and pairwise products,
    fitted on `truth` itself (in-sample): the best any smooth rule on these similarities
    reaches, even one that knew the labels."""
    x = torch.from_numpy(features).double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    i, j = torch.triu_indices(x.shape[1], x.shape[1])
    x = torch.cat([x, x[:, i] * x[:, j]], 1).float()
    y = torch.from_numpy(truth.astype(np.float32))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        loss = loss + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[arg-type]
    return best_f1((x @ w + b).detach().numpy(), truth)


@torch.no_grad()
def _embedded(
    ckpt: Path, work: Path, setting: str
) -> tuple[Any, list[Any], np.ndarray, np.ndarray]:
    """The model of `ckpt`, the target's training records and their (text, image) features."""
    loaded = load_pretrained(bt.MODEL, str(ckpt))
    records = read_manifest(work / "data" / setting / "train.jsonl")
    dataset = ImageTextDataset(records, loaded.preprocess_val, loaded.tokenizer)
    images, tokens = materialize(dataset)
    text, image = embed_tensors(loaded.model, images, tokens)
    return loaded, records, text, image


@torch.no_grad()
def ceiling(guide: Path, work: Path, setting: str, n_batches: int) -> list[dict[str, Any]]:
    _, records, text_np, image_np = _embedded(guide, work, setting)
    text, image = torch.from_numpy(text_np), torch.from_numpy(image_np)
    mined = read_mined(work / "mined" / setting / "none", records)
    table = build_item_table(records, image_keys=True, cluster_ids=mined.cluster_ids)
    samplers = {
        "random": RandomBatches(len(records), bt.BATCH, 0),
        "hard_batches": HardBatches(mined.groups, bt.BATCH, 0),
    }
    rows = []
    for sampling, sampler in samplers.items():
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"i2t": [], "t2i": []}
        for step, idx in enumerate(sampler.epoch(0)[:n_batches]):
            rows_t = torch.from_numpy(idx)
            got = pair_scores(image[rows_t], text[rows_t], table.batch(rows_t, step))
            for direction, pair in got.items():
                parts[direction].append(pair)
        for direction, chunks in parts.items():
            scores = np.concatenate([c[0] for c in chunks])
            truth = np.concatenate([c[1] for c in chunks]).astype(bool)
            features = np.concatenate([c[2] for c in chunks])
            row = {
                "guide": str(guide),
                "setting": setting,
                "sampling": sampling,
                "direction": direction,
                "true_fn_rate": float(truth.mean()),
            }
            for k, signal in enumerate(SIGNALS):
                row[signal] = best_f1(scores[:, k], truth)
            row[FITTED] = fitted_f1(features, truth)
            rows.append(row | {"_features": features, "_truth": truth})
    return rows


CELL_NEIGHBOURS = (0, 5, 10, 15)


@torch.no_grad()
def cluster_cells(base: Path, work: Path, setting: str, n_batches: int) -> list[dict[str, Any]]:
    """The `cluster` estimator's pooled FN precision/recall/F1 for each M in CELL_NEIGHBOURS,
    on the cells mined with the base (WORK/mined/SETTING/none), counted by the loss itself."""
    loaded, records, text_np, image_np = _embedded(base, work, setting)
    text, image = torch.from_numpy(text_np), torch.from_numpy(image_np)
    mined = read_mined(work / "mined" / setting / "none", records)
    if mined.cluster_ids is None:
        raise RuntimeError(f"{work}/mined/{setting}/none has no clusters: rerun make bench-train")
    table = build_item_table(records, cluster_ids=mined.cluster_ids)
    loss = build_loss(LossConfig(estimator="cluster"))
    scale = loaded.model.logit_scale.exp()
    samplers = {
        "random": RandomBatches(len(records), bt.BATCH, 0),
        "hard_batches": HardBatches(mined.groups, bt.BATCH, 0),
    }
    rows = []
    for m in CELL_NEIGHBOURS:
        cells = caption_cells(text_np, mined.cluster_ids.numpy(), m)
        with_cells = table.replace(caption_cells=torch.from_numpy(cells))
        for sampling, sampler in samplers.items():
            batches = sampler.epoch(0)[:n_batches]
            # Counted as fn_detection.json counts them.
            got = bt.pooled_detection(loss, image, text, scale, with_cells, batches)
            rows.append({
                "guide_name": "cluster cells", "setting": setting, "sampling": sampling,
                "caption_neighbours": m,
            } | got)  # fmt: skip
            print(
                f"cluster cells, {m:2d} caption neighbours, {setting}/{sampling}: precision "
                f"{got['fn_precision']:.3f} recall {got['fn_recall']:.3f} F1 {got['fn_f1']:.3f}",
                flush=True,
            )
    return rows


# The broad set of --train-guide: the base's tuples and size, its own seed, half the
# captions partial (as the high-FN target's).
GUIDE_DATA = synth.SynthConfig(n=5000, seed=21, n_tuples=None, holdout=0.1, partial_captions=0.5)


def train_guide(work: Path, base: Path, steps: int) -> Path:
    """The base, `steps` more steps on GUIDE_DATA at the fine-tuning learning rate (cached)."""
    data = synth.generate(GUIDE_DATA, work / "data" / "guide-partial", progress=False, reuse=True)
    paths = data.paths
    cfg = bt._config(
        paths.train, paths.test, work / "guide-partial", steps=steps, lr=5e-4, warmup=20,
        pretrained=str(base), progress=True,
    )  # fmt: skip
    result = train(cfg)
    m = result.eval_metrics or {}
    print(
        f"guide-partial: base + {steps} steps on under-specified captions; its held-out t2i "
        f"semantic R@1 {m.get('t2i_semantic_R@1', float('nan')):.3f}, mAP "
        f"{m.get('t2i_semantic_mAP', float('nan')):.3f}",
        flush=True,
    )
    return result.checkpoint


def table(rows: Sequence[dict[str, Any]]) -> str:
    columns = (*SIGNALS, FITTED)
    head = "| guide | setting | sampling | direction | true FN rate | " + " | ".join(
        f"best F1 on {s} (P / R)" if s in SIGNALS else f"F1 {s} (P / R)" for s in columns
    )
    lines = [head + " |", "|" + "---|" * (5 + len(columns))]
    for r in rows:
        cells = [
            f"{r[s]['f1']:.3f} ({r[s]['precision']:.2f} / {r[s]['recall']:.2f})" if s in r else "-"
            for s in columns
        ]
        lines.append(
            f"| {r['guide_name']} | {r['setting']} | {r['sampling']} | {r['direction']} | "
            f"{r['true_fn_rate']:.3f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def all_guides_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, sampling, direction): the fitted ceiling over the features of
    every guide together (the same pairs in the same order: the batches are seeded)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["sampling"], r["direction"]), []).append(r)
    out = []
    for (setting, sampling, direction), group in groups.items():
        truth = group[0]["_truth"]
        if any(not np.array_equal(g["_truth"], truth) for g in group):
            raise RuntimeError(f"{setting}/{sampling}: the guides were scored on different pairs")
        features = np.concatenate([g["_features"] for g in group], axis=1)
        out.append({
            "guide": ", ".join(g["guide_name"] for g in group), "guide_name": ALL_GUIDES,
            "setting": setting, "sampling": sampling, "direction": direction,
            "true_fn_rate": float(truth.mean()), FITTED: fitted_f1(features, truth),
        })  # fmt: skip
    return out


def _guide_name(guide: Path, work: Path) -> str:
    for root in (work / "runs", work):
        try:
            return str(guide.relative_to(root)).removesuffix("/checkpoints/latest.pt")
        except ValueError:
            continue
    return str(guide)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / "work" / "bench-train")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    p.add_argument(
        "--guide",
        type=Path,
        nargs="+",
        help="checkpoints to score with (default: the base model, and the high-fn 'random' "
        "and 'hard+guide/drop' fine-tunes of seed 0 when present)",
    )
    p.add_argument("--settings", nargs="+", default=list(bt.DEFAULT_SETTINGS))
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--train-guide", type=int, default=0, metavar="STEPS",
                   help="also score with the base trained STEPS more steps on under-specified "
                   "captions of every tuple (see above)")  # fmt: skip
    args = p.parse_args(argv)
    if args.train_guide < 0:
        p.error(f"--train-guide takes a number of steps, 0 or more; got {args.train_guide}")
    base = args.work / "base" / "checkpoints" / "latest.pt"
    guides = args.guide or [
        g
        for g in (
            base,
            bt.run_dir(args.work, "high-fn", bt.RunSpec("random"), 0),
            bt.run_dir(args.work, "high-fn", bt.RunSpec("hard+guide/drop"), 0),
        )
        if g == base or (g / "checkpoints" / "latest.pt").is_file()
    ]
    if not base.is_file():
        print(f"error: {base} is missing: run `make bench-train` first", file=sys.stderr)
        return 2
    if args.train_guide:
        guides.append(train_guide(args.work, base, args.train_guide))
    rows = []
    for guide in guides:
        ckpt = guide if guide.suffix == ".pt" else guide / "checkpoints" / "latest.pt"
        name = "base" if ckpt == base else _guide_name(guide, args.work)
        for setting in args.settings:
            for row in ceiling(ckpt, args.work, setting, args.batches):
                rows.append(row | {"guide_name": name})
                print(table([rows[-1]]).splitlines()[-1], flush=True)
    if len(guides) > 1:
        for row in all_guides_rows(rows):
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    for setting in args.settings:
        rows += cluster_cells(base, args.work, setting, args.batches)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fn_ceiling.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n" + table([r for r in rows if "caption_neighbours" not in r]))
    print(f"\nwrote {args.out / 'fn_ceiling.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
