"""The offline false-negative filter of mined candidates, reusing the loss's estimators.

A mined candidate k of anchor a is suspected to be a false negative when the estimator
`cfg.estimator` (margin / guide / duplicate / cluster / lexical / oracle, the same code and
thresholds the in-batch loss uses: `clipserve.training.losses.estimators`) scores the pair at
least `cfg.fn_threshold` in either direction (caption a vs image k, or image a vs caption k: a
mined item enters the batch as a whole pair). `em` needs the training batch's softmax and has no
offline form.
"""

from __future__ import annotations

import numpy as np
import torch

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators import EstimatorInput, build_estimator, truth_matrices
from clipserve.training.sampling.side_inputs import ItemTable

OFFLINE_ESTIMATORS = ("none", "margin", "guide", "duplicate", "cluster", "lexical", "oracle")


def check_offline(cfg: LossConfig, table: ItemTable) -> None:
    """Raise ValueError when `cfg.estimator` cannot filter offline with what `table` has."""
    if cfg.estimator not in OFFLINE_ESTIMATORS:
        raise ValueError(
            f"estimator {cfg.estimator!r} cannot filter mined candidates (it needs a training "
            f"batch); choose one of {', '.join(OFFLINE_ESTIMATORS)}"
        )
    missing = table.missing(cfg.estimator)
    if missing:
        raise ValueError(
            f"estimator {cfg.estimator!r} needs {', '.join(missing)}, which mining lacks"
            + (" (give a guide model)" if cfg.estimator == "guide" else "")
        )


def _blocks(candidates: np.ndarray, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Anchors in chunks: (anchor rows [A], their candidates [A, m])."""
    rows = np.arange(len(candidates))
    return [(rows[s : s + chunk], candidates[s : s + chunk]) for s in range(0, len(rows), chunk)]


def _pair_scores(
    fn: object,
    text: np.ndarray,
    image: np.ndarray,
    table: ItemTable,
    candidates: np.ndarray,
    chunk: int,
) -> np.ndarray:
    """[N, m] max over both directions of fn(EstimatorInput) at each (anchor, candidate)."""
    n, m = candidates.shape
    out = np.zeros((n, m), dtype=np.float32)
    t_all, i_all = torch.from_numpy(text), torch.from_numpy(image)
    for rows, cands in _blocks(candidates, chunk):
        a = len(rows)
        items = np.concatenate([rows, np.where(cands < 0, rows[:, None], cands).reshape(-1)])
        idx = torch.from_numpy(items)
        t, i = t_all[idx], i_all[idx]
        x = EstimatorInput(
            cos_i2t=i[:a] @ t.T,
            cos_t2i=t[:a] @ i.T,
            row_offset=0,
            batch=table.batch(idx),
            step=0,
        )
        s_i2t, s_t2i = fn(x)  # type: ignore[operator]
        cols = torch.arange(m)[None, :] + a + m * torch.arange(a)[:, None]  # [A, m]
        both = torch.maximum(
            torch.gather(s_i2t.float(), 1, cols), torch.gather(s_t2i.float(), 1, cols)
        )
        out[rows] = both.numpy()
    out[candidates < 0] = 0.0
    return out


def suspected_false_negatives(
    cfg: LossConfig,
    text: np.ndarray,
    image: np.ndarray,
    table: ItemTable,
    candidates: np.ndarray,
    chunk: int = 128,
) -> np.ndarray:
    """[N, m] bool: is candidates[a, j] (an item row, -1 = none) a suspected FN of anchor a?

    text/image [N, D] are the mining model's features (what `margin` thresholds).
    """
    check_offline(cfg, table)
    estimator = build_estimator(cfg)
    if estimator is None:
        return np.zeros(candidates.shape, dtype=bool)
    scores = _pair_scores(estimator, text, image, table, candidates, chunk)
    return (scores >= cfg.fn_threshold) & (candidates >= 0)


def true_false_negatives(
    table: ItemTable, text: np.ndarray, image: np.ndarray, candidates: np.ndarray
) -> np.ndarray | None:
    """[N, m] bool ground truth (either direction relevant), or None without labels."""
    if table.labels is None and table.image_tags is None:
        return None

    def oracle(x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        truth = truth_matrices(x.batch, x.rows)
        assert truth is not None
        return truth[0].float(), truth[1].float()

    return (_pair_scores(oracle, text, image, table, candidates, 128) > 0) & (candidates >= 0)
