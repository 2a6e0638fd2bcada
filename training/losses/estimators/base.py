"""What every false-negative estimator receives and returns.

An estimator maps `EstimatorInput` to a pair of FN score matrices (image->text rows,
text->image rows), each (R, C): R rows of this rank's loss (local rows with local_loss, else
the whole global batch), C = global batch columns. A score in [0, 1] reads "probability (or
confidence) that candidate k is a false negative for anchor a". The score at the positive
column is ignored: the policy always keeps the true positive. Estimators run without
gradient and must be deterministic functions of their input (gradient accumulation calls the
loss several times per optimizer step on the same features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from clipserve.training.losses.batch import LossBatch


@dataclass(frozen=True)
class EstimatorInput:
    cos_i2t: torch.Tensor  # (R, C) detached cosines, image rows x text columns
    cos_t2i: torch.Tensor  # (R, C) detached cosines, text rows x image columns
    row_offset: int  # global index of row 0; the positive of row r is column row_offset + r
    batch: LossBatch  # side inputs of the global batch (already gathered), C rows each
    step: int  # optimizer step (or the loss's call count when the batch has none)

    @property
    def rows(self) -> slice:
        """The global items that are this loss's rows."""
        return slice(self.row_offset, self.row_offset + self.cos_i2t.shape[0])


class Estimator(Protocol):
    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]: ...


def pairwise_equal(keys: torch.Tensor, rows: slice) -> torch.Tensor:
    """(C,) keys -> (R, C) bool, key[row] == key[col]."""
    return keys[rows, None] == keys[None, :]
