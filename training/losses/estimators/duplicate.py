"""`duplicate`: equal normalised captions or near-equal image hashes are the same item.

Keys come per item in `LossBatch.caption_keys` (hash of the normalised caption text) and
`LossBatch.image_keys` (64-bit perceptual hash); `clipserve.training.losses.keys` makes both.
Candidate k is suspected for anchor a when caption_key[k] == caption_key[a], or when the
Hamming distance of the image hashes is at most loss.hash_max_distance. Either key may be
missing, not both. Scores are 0/1 and the same in both directions.
"""

from __future__ import annotations

import torch

from clipserve.training.losses.config import LossConfig
from clipserve.training.losses.estimators.base import EstimatorInput, pairwise_equal
from clipserve.training.losses.keys import hamming_matrix


class DuplicateEstimator:
    def __init__(self, cfg: LossConfig) -> None:
        self.max_distance = cfg.hash_max_distance

    def __call__(self, x: EstimatorInput) -> tuple[torch.Tensor, torch.Tensor]:
        cap, img = x.batch.caption_keys, x.batch.image_keys
        if cap is None and img is None:
            raise ValueError(
                "loss.estimator = 'duplicate' needs LossBatch.caption_keys or "
                "LossBatch.image_keys, and this batch has neither."
            )
        dup = torch.zeros_like(x.cos_i2t, dtype=torch.bool)
        if cap is not None:
            dup |= pairwise_equal(cap.to(dup.device), x.rows)
        if img is not None:
            img = img.to(dup.device)
            dup |= hamming_matrix(img[x.rows], img) <= self.max_distance
        score = dup.to(x.cos_i2t.dtype)
        return score, score
