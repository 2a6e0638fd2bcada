"""False-negative detection quality: precision, recall and F1 of a suspected set vs the truth.

Pure helpers (the benchmark calls them too). Counts can be summed over batches with ``+``
before the ratios are taken, which is how a run-level F1 should be computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FNCounts:
    tp: int = 0  # suspected and truly a false negative
    fp: int = 0  # suspected, truly a negative
    fn: int = 0  # a true false negative that was not suspected
    pairs: int = 0  # candidate pairs considered (true positives excluded)

    def __add__(self, other: FNCounts) -> FNCounts:
        return FNCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.pairs + other.pairs
        )

    @property
    def precision(self) -> float:
        """tp / suspected; 1.0 when nothing was suspected and nothing was there to find."""
        n = self.tp + self.fp
        return self.tp / n if n else (1.0 if self.fn == 0 else 0.0)

    @property
    def recall(self) -> float:
        """tp / true false negatives; 1.0 when there were none."""
        n = self.tp + self.fn
        return self.tp / n if n else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def mask_rate(self) -> float:
        return (self.tp + self.fp) / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "fn_precision": self.precision,
            "fn_recall": self.recall,
            "fn_f1": self.f1,
            "fn_mask_rate": self.mask_rate,
            "fn_tp": float(self.tp),
            "fn_fp": float(self.fp),
            "fn_fn": float(self.fn),
        }


def fn_detection_counts(
    suspected: torch.Tensor, truth: torch.Tensor, exclude: torch.Tensor | None = None
) -> FNCounts:
    """Counts of a suspected-FN mask against the true-match mask (same shape, bool).

    `exclude` (bool, same shape) marks pairs left out, normally each row's true positive.
    """
    suspected, truth = torch.as_tensor(suspected).bool(), torch.as_tensor(truth).bool()
    if suspected.shape != truth.shape:
        raise ValueError(f"mask shape {tuple(suspected.shape)} != labels {tuple(truth.shape)}")
    keep = torch.ones_like(truth) if exclude is None else ~torch.as_tensor(exclude).bool()
    s, t = suspected & keep, truth & keep
    return FNCounts(
        tp=int((s & t).sum()),
        fp=int((s & ~t).sum()),
        fn=int((~s & t).sum()),
        pairs=int(keep.sum()),
    )


def fn_detection_metrics(
    suspected: torch.Tensor, truth: torch.Tensor, exclude: torch.Tensor | None = None
) -> dict[str, float]:
    """precision / recall / F1 / mask rate (and counts) of one mask; see `FNCounts`."""
    return fn_detection_counts(suspected, truth, exclude).as_dict()
