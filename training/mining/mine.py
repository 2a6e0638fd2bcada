"""Mining: neighbours -> clusters -> filtered negatives + hard-batch groups, and their files.

`mine` works on embeddings already computed (by `clipserve mine` from a checkpoint or bundle,
or by training with its current weights when it re-mines). `write_mined` / `read_mined` are
the on-disk contract (``DIR`` = the ``--out`` of ``clipserve mine``)::

    DIR/negatives.jsonl   one line per anchor: {"id", "negatives": [ids], "ranks": [int],
                          "scores": [cosine], "filtered": [ids removed as suspected FN]}
    DIR/batch_plan.json   {"format", "group_size", "n_items", "groups": [[ids], ...]}
    DIR/clusters.json     {"format", "top", "ids": [ids], "assign": [[centre ids]], "centres",
                          "caption_cells": [[cell ids]] (with cluster_text_neighbours > 0)}
                          (when clusters > 0)
    DIR/lexical.json      {"format", "ids", "vocabulary": [visual words],
                          "ratios": {word: ratio}, "caption_words": [[word ids]],
                          "image_neighbours": [[positions in ids]]} (when lexical)
    DIR/mine.json         the mining config, corpus size, timings and throughput, and, when
                          the manifest has labels, the filter's FN precision/recall/F1
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipserve.training.data.manifest import Record
from clipserve.training.losses.config import LossConfig
from clipserve.training.mining.filters import (
    OFFLINE_ESTIMATORS,
    suspected_false_negatives,
    true_false_negatives,
)
from clipserve.training.mining.kmeans import kmeans, nearest_centres
from clipserve.training.mining.lexical import lexical_inputs
from clipserve.training.mining.neighbours import exact_neighbours, nearest_neighbours
from clipserve.training.mining.options import MineConfig
from clipserve.training.mining.plan import (
    hard_batch_groups,
    rank_window,
    select_negatives,
)
from clipserve.training.sampling.side_inputs import ItemTable

PLAN_FORMAT = "clipserve-batch-plan/1"
CLUSTERS_FORMAT = "clipserve-clusters/1"
LEXICAL_FORMAT = "clipserve-lexical/1"


@dataclass
class Mined:
    """What mining found, as item rows of the mined manifest."""

    negatives: list[np.ndarray]  # per anchor, item rows of its mined negatives, rank order
    groups: list[list[int]]  # hard-batch neighbourhoods, every row exactly once
    cluster_ids: torch.Tensor | None = None  # (N, cluster_top) int64
    centres: np.ndarray | None = None  # [clusters, D]
    caption_cells: torch.Tensor | None = None  # (N, 1 + cluster_text_neighbours) int64
    caption_words: torch.Tensor | None = None  # (N, L) int64 visual-word ids, -1 padded
    image_neighbours: torch.Tensor | None = None  # (N, lexical_neighbours) int64 rows
    vocabulary: list[str] | None = None  # the visual words caption_words index
    word_ratios: dict[str, float] | None = None  # every word's concentration ratio
    # Details kept for negatives.jsonl and the report (None when read back from files).
    ranks: list[np.ndarray] | None = None
    scores: list[np.ndarray] | None = None
    filtered: list[np.ndarray] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def _fn_quality(suspected: np.ndarray, truth: np.ndarray | None) -> dict[str, float]:
    out = {"window_suspected_rate": float(suspected.mean()) if suspected.size else 0.0}
    if truth is None:
        return out
    tp = float((suspected & truth).sum())
    precision = tp / max(float(suspected.sum()), 1.0)
    recall = tp / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return out | {
        "window_true_fn_rate": float(truth.mean()) if truth.size else 0.0,
        "filter_precision": precision,
        "filter_recall": recall,
        "filter_f1": f1,
    }


def mine(
    text: np.ndarray,
    image: np.ndarray,
    table: ItemTable,
    cfg: MineConfig,
    filter_cfg: LossConfig,
    index_dir: str | os.PathLike[str],
    progress: bool = True,
    captions: Sequence[str] | None = None,
) -> tuple[Mined, ItemTable]:
    """Mine from L2-normalised text/image [N, D]; `filter_cfg.estimator` filters negatives
    with its thresholds. Returns what was mined and `table` with the cluster ids (and, with
    cfg.lexical, which needs the `captions`, the caption words and image neighbours) added."""
    if filter_cfg.estimator not in OFFLINE_ESTIMATORS:
        raise ValueError(
            f"filter {filter_cfg.estimator!r} has no offline form; choose one of "
            f"{', '.join(OFFLINE_ESTIMATORS)}"
        )
    t0 = time.perf_counter()
    neigh = nearest_neighbours(text, image, cfg.neighbours, index_dir, progress)
    centres = None
    if cfg.clusters:
        centres = kmeans(image, min(cfg.clusters, len(image)), seed=cfg.seed)
        ids = nearest_centres(image, centres, min(cfg.cluster_top, len(centres)))
        table = table.replace(cluster_ids=torch.from_numpy(ids), caption_cells=None)
        if cfg.cluster_text_neighbours:
            cells = caption_cells(text, ids, cfg.cluster_text_neighbours)
            table = table.replace(caption_cells=torch.from_numpy(cells))
    elif filter_cfg.estimator == "cluster" and table.cluster_ids is None:
        raise ValueError("the cluster filter needs k-means centres: set clusters > 0")
    lexical = None
    if cfg.lexical:
        if captions is None or len(captions) != len(image):
            raise ValueError("lexical mining needs the captions of the mined items")
        lexical = lexical_inputs(captions, image, cfg.lexical_neighbours, cfg.visual_ratio)
        near = lexical.image_neighbours
        table = table.replace(
            caption_words=torch.from_numpy(lexical.caption_words),
            image_neighbours=None if near is None else torch.from_numpy(near),
        )
    cands = rank_window(neigh.index, cfg.rank_start, cfg.rank_window)
    t1 = time.perf_counter()
    suspected = suspected_false_negatives(filter_cfg, text, image, table, cands)
    truth = true_false_negatives(table, text, image, cands)
    filter_s = time.perf_counter() - t1
    picks = select_negatives(cands, suspected, cfg.negatives)
    rows = np.arange(len(cands))
    mined = Mined(
        negatives=[cands[a, p] for a, p in zip(rows, picks, strict=True)],
        groups=hard_batch_groups(neigh.index, cfg.group_size, cfg.seed),
        cluster_ids=table.cluster_ids,
        centres=centres,
        caption_cells=table.caption_cells,
        caption_words=table.caption_words if lexical else None,
        image_neighbours=table.image_neighbours if lexical else None,
        vocabulary=lexical.vocabulary if lexical else None,
        word_ratios=lexical.ratios if lexical else None,
        ranks=[p + cfg.rank_start for p in picks],
        scores=[neigh.score[a, p + cfg.rank_start] for a, p in zip(rows, picks, strict=True)],
        filtered=[cands[a][suspected[a]] for a in rows],
    )
    short = sum(len(n) < cfg.negatives for n in mined.negatives)
    mined.stats = {
        "n_items": len(text),
        "neighbours_per_item": cfg.neighbours,
        "index_and_search_s": round(neigh.seconds, 3),
        "queries_per_s": round(neigh.queries_per_s, 1),
        "filter_s": round(filter_s, 3),
        "total_s": round(time.perf_counter() - t0, 3),
        "anchors_short_of_negatives": short,
        "filter": filter_cfg.estimator,
        **_fn_quality(suspected, truth),
    }
    if lexical:
        mined.stats["visual_words"] = len(lexical.vocabulary)
    return mined, table


def caption_cells(text: np.ndarray, cluster_ids: np.ndarray, m: int) -> np.ndarray:
    """[N, 1 + M] int64: the nearest cell of each item's own image, then those of the images
    of its caption's M nearest captions (M = m, at most N - 1; mining's
    cluster_text_neighbours). cluster_ids [N, top]: the items' nearest centres.

    What the `cluster` estimator reads: captions that read alike describe the images they are
    paired with, so an image in one of these cells is a suspected match of the caption (the
    FFF / MLCD idea through the training pairs themselves). It widens `cluster` to captions
    that name only some attributes, whose matches lie in several cells."""
    own = np.asarray(cluster_ids, dtype=np.int64)[:, 0]
    m = min(m, len(own) - 1)
    if m < 1:
        return own[:, None].copy()
    return np.concatenate([own[:, None], own[exact_neighbours(text, m)]], axis=1)


# ---------------------------------------------------------------------------- files


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_mined(
    out_dir: str | os.PathLike[str],
    records: Sequence[Record],
    mined: Mined,
    summary: dict[str, Any],
) -> Path:
    """Write the files of the module docstring (mine.json last); returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = [r.id for r in records]
    assert mined.ranks is not None and mined.scores is not None and mined.filtered is not None
    lines = []
    for a, negs in enumerate(mined.negatives):
        lines.append(
            json.dumps(
                {
                    "id": ids[a],
                    "negatives": [ids[i] for i in negs.tolist()],
                    "ranks": mined.ranks[a].tolist(),
                    "scores": [round(float(s), 6) for s in mined.scores[a]],
                    "filtered": [ids[i] for i in mined.filtered[a].tolist()],
                }
            )
        )
    _write(out / "negatives.jsonl", "".join(line + "\n" for line in lines))
    plan = {
        "format": PLAN_FORMAT,
        "group_size": max((len(g) for g in mined.groups), default=0),
        "n_items": len(ids),
        "groups": [[ids[i] for i in g] for g in mined.groups],
    }
    _write(out / "batch_plan.json", json.dumps(plan) + "\n")
    if mined.cluster_ids is not None and mined.centres is not None:
        clusters = {
            "format": CLUSTERS_FORMAT,
            "top": int(mined.cluster_ids.shape[1]),
            "ids": ids,
            "assign": mined.cluster_ids.tolist(),
            "centres": np.round(mined.centres, 6).tolist(),
        }
        if mined.caption_cells is not None:
            clusters["caption_cells"] = mined.caption_cells.tolist()
        _write(out / "clusters.json", json.dumps(clusters) + "\n")
    elif (out / "clusters.json").exists():
        (out / "clusters.json").unlink()  # stale centres from an earlier run
    if mined.caption_words is not None:
        near = mined.image_neighbours
        lexical = {
            "format": LEXICAL_FORMAT,
            "ids": ids,
            "vocabulary": mined.vocabulary,
            "ratios": {w: round(r, 4) for w, r in (mined.word_ratios or {}).items()},
            "caption_words": [[i for i in row if i >= 0] for row in mined.caption_words.tolist()],
            "image_neighbours": [] if near is None else near.tolist(),
        }
        _write(out / "lexical.json", json.dumps(lexical) + "\n")
    elif (out / "lexical.json").exists():
        (out / "lexical.json").unlink()
    _write(out / "mine.json", json.dumps(summary | mined.stats, indent=2) + "\n")
    return out


def read_mined(mined_dir: str | os.PathLike[str], records: Sequence[Record]) -> Mined:
    """Read `write_mined`'s files back as rows of `records` (the manifest training reads).

    Raises FileNotFoundError for a missing file and ValueError for ids the manifest lacks.
    """
    root = Path(mined_dir)
    if not (root / "mine.json").is_file():
        raise FileNotFoundError(f"{root} has no mine.json: not a `clipserve mine` output")
    row = {r.id: i for i, r in enumerate(records)}

    def rows_of(ids: Sequence[str], where: str) -> list[int]:
        try:
            return [row[i] for i in ids]
        except KeyError as exc:
            raise ValueError(
                f"{where} names item {exc.args[0]!r}, which the training manifest lacks; "
                "mine the same manifest you train on"
            ) from None

    negatives = [np.zeros(0, dtype=np.int64) for _ in records]
    with (root / "negatives.jsonl").open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            (a,) = rows_of([item["id"]], "negatives.jsonl")
            negatives[a] = np.array(rows_of(item["negatives"], "negatives.jsonl"), np.int64)
    plan = json.loads((root / "batch_plan.json").read_text(encoding="utf-8"))
    if plan.get("format") != PLAN_FORMAT:
        raise ValueError(f"{root}/batch_plan.json is not a {PLAN_FORMAT} file")
    groups = [rows_of(g, "batch_plan.json") for g in plan["groups"]]
    cluster_ids = centres = cells = None
    if (root / "clusters.json").is_file():
        cl = json.loads((root / "clusters.json").read_text(encoding="utf-8"))
        at = rows_of(cl["ids"], "clusters.json")
        assign = np.zeros((len(records), int(cl["top"])), dtype=np.int64)
        assign[at] = np.array(cl["assign"], dtype=np.int64)
        cluster_ids = torch.from_numpy(assign)
        centres = np.array(cl["centres"], dtype=np.float32)
        if "caption_cells" in cl:
            got = np.array(cl["caption_cells"], dtype=np.int64)
            filled = np.zeros((len(records), got.shape[1]), dtype=np.int64)
            filled[at] = got
            cells = torch.from_numpy(filled)
    stats = json.loads((root / "mine.json").read_text(encoding="utf-8"))
    mined = Mined(negatives, groups, cluster_ids, centres, cells, stats=stats)
    if (root / "lexical.json").is_file():
        _read_lexical(root / "lexical.json", mined, rows_of, len(records))
    return mined


def _read_lexical(path: Path, mined: Mined, rows_of: Any, n: int) -> None:
    """lexical.json into `mined`, as rows of the n-record manifest. An item the file lacks
    gets no words (it matches no caption) and itself as every neighbour."""
    lex = json.loads(path.read_text(encoding="utf-8"))
    if lex.get("format") != LEXICAL_FORMAT:
        raise ValueError(f"{path} is not a {LEXICAL_FORMAT} file")
    at = np.array(rows_of(lex["ids"], "lexical.json"), dtype=np.int64)
    width = max([1, *map(len, lex["caption_words"])])
    words = np.full((n, width), -1, dtype=np.int64)
    for row, ids in zip(at, lex["caption_words"], strict=True):
        words[row, : len(ids)] = ids
    mined.caption_words = torch.from_numpy(words)
    if lex["image_neighbours"]:
        got = at[np.array(lex["image_neighbours"], dtype=np.int64)]
        near = np.repeat(np.arange(n, dtype=np.int64)[:, None], got.shape[1], axis=1)
        near[at] = got
        mined.image_neighbours = torch.from_numpy(near)
    mined.vocabulary = list(lex["vocabulary"])
    mined.word_ratios = dict(lex["ratios"])


def config_summary(cfg: MineConfig, filter_cfg: LossConfig) -> dict[str, Any]:
    return {"mine": asdict(cfg), "filter_config": asdict(filter_cfg)}
