"""False-negative estimators, chosen by ``loss.estimator``; see `base` for the contract."""

from __future__ import annotations

from collections.abc import Callable

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import Estimator, EstimatorInput
from clipserve.training.losses.estimators.cluster import ClusterEstimator
from clipserve.training.losses.estimators.duplicate import DuplicateEstimator
from clipserve.training.losses.estimators.em import EMEstimator, em_flips
from clipserve.training.losses.estimators.guide import GuideEstimator
from clipserve.training.losses.estimators.lexical import LexicalEstimator
from clipserve.training.losses.estimators.margin import MarginEstimator, threshold_mask
from clipserve.training.losses.estimators.oracle import OracleEstimator, truth_matrices

ESTIMATORS: dict[str, Callable[[LossConfig], Estimator]] = {
    "em": EMEstimator,
    "margin": MarginEstimator,
    "guide": GuideEstimator,
    "duplicate": DuplicateEstimator,
    "cluster": ClusterEstimator,
    "lexical": LexicalEstimator,
    "oracle": OracleEstimator,
}


def build_estimator(cfg: LossConfig) -> Estimator | None:
    """The estimator `cfg.estimator` names, or None for "none"."""
    if cfg.estimator == "none":
        return None
    return ESTIMATORS[cfg.estimator](cfg)


__all__ = [
    "ESTIMATORS",
    "Estimator",
    "EstimatorInput",
    "build_estimator",
    "em_flips",
    "threshold_mask",
    "truth_matrices",
]
