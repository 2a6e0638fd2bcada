"""`LossConfig`: the `[loss]` section of a training config, one flat frozen dataclass.

Every default reproduces plain ``open_clip.ClipLoss`` (``name = "clip"``, no estimator, no
hard-negative emphasis). Fields are flat so each one is a ``loss.<field>=value`` override.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FORMS = ("clip", "siglip")
ESTIMATORS = ("none", "em", "margin", "guide", "duplicate", "cluster", "lexical", "oracle")
POLICIES = ("drop", "downweight", "positive")
HARDNESS = ("none", "hn-nce", "hcl")
MARGIN_MODES = ("absolute", "relative")
GUIDE_ANCHORS = ("row", "text")


@dataclass(frozen=True)
class LossConfig:
    # Loss form: "clip" = softmax InfoNCE (both directions, as open_clip.ClipLoss);
    # "siglip" = sigmoid loss (image rows against all texts, as open_clip.SigLipLoss).
    name: str = "clip"
    # How suspected false negatives (FN) are detected: none | em | margin | guide |
    # duplicate | cluster | lexical | oracle (oracle reads the ground-truth labels: for
    # measuring only).
    estimator: str = "none"
    # What to do with them: drop (weight 0 in the denominator) | downweight (weight 1 - p) |
    # positive (soft extra positive with target mass p, ALBEF-style).
    policy: str = "drop"
    # A pair is "suspected" (dropped by `drop`, counted in the diagnostics) when p >= this.
    fn_threshold: float = 0.5
    # margin/guide estimators: suspected when sim(a, k) > thr(sim(a, a)), with
    # absolute: thr(p) = p - margin (NV-Retriever MarginPos, GIST; UniME's "pos + 0.1" is
    # margin = -0.1) or relative: thr(p) = p - |p| * margin (NV-Retriever PercPos 95% = 0.05).
    margin_mode: str = "absolute"
    margin: float = 0.0
    # guide estimator: whose guide positive a pair is compared against. "row": each direction
    # its row's own (GISTEmbed's per-query rule; the image row and the text row of one pair
    # may disagree); "text": each (caption, image) pair is decided once, against the
    # caption's own positive, and both directions use that decision (the caption says what
    # is relevant; an image has no one "positive caption" when captions are partial).
    guide_anchor: str = "row"
    # em estimator (EMCRL): E-step sharpness gamma, random negative->positive flip probability,
    # and the seed of the per-step flip generator (seeded by em_seed and the optimizer step).
    em_gamma: float = 1.2
    em_flip_prob: float = 1e-4
    em_seed: int = 0
    # duplicate estimator: image hashes within this Hamming distance count as duplicates.
    hash_max_distance: int = 0
    # lexical estimator: an image matches a caption when its own caption holds every visual
    # word of the caption, or at least this fraction of its mined neighbours' captions do.
    lexical_votes: float = 0.5
    # policy "positive", softmax: row-normalised targets (ALBEF) or, when false, EMCRL's raw
    # T = clip(I + p, 0, 1) in -sum_k T_ak log P_ak.
    normalize_targets: bool = True
    # softmax only: EMCRL's push-down term  -lambda * sum_k (1 - t_ak) log(1 - P_ak).
    neg_bce_weight: float = 0.0
    # Hard-negative emphasis (softmax only): none | hn-nce (DiHT) | hcl (HCL; with
    # hard_beta = 0 and tau_plus > 0 it is DCL). hard_beta is in HCL's own units (exponent
    # beta * sim / 0.5 on the cosine); the loss uses beta_clip = 2 * hard_beta / s on logits.
    hardness: str = "none"
    hard_beta: float = 0.0
    # HN-NCE: weight of the positive in the denominator.
    hard_alpha: float = 1.0
    # HCL/DCL: class prior tau+ (probability that a random in-batch candidate matches).
    tau_plus: float = 0.0
    # Distributed (open_clip semantics): loss on local rows only, and all-gather with grad.
    local_loss: bool = False
    gather_with_grad: bool = False

    def __post_init__(self) -> None:
        def one_of(field: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise ValueError(f"unknown loss.{field} {value!r}; known: {', '.join(allowed)}.")

        one_of("name", self.name, FORMS)
        one_of("estimator", self.estimator, ESTIMATORS)
        one_of("policy", self.policy, POLICIES)
        one_of("hardness", self.hardness, HARDNESS)
        one_of("margin_mode", self.margin_mode, MARGIN_MODES)
        one_of("guide_anchor", self.guide_anchor, GUIDE_ANCHORS)
        if not 0.0 < self.fn_threshold <= 1.0:
            raise ValueError(f"loss.fn_threshold must be in (0, 1], got {self.fn_threshold}.")
        if not math.isfinite(self.margin):
            raise ValueError(f"loss.margin must be a finite number, got {self.margin}.")
        if not self.em_gamma >= 0:
            raise ValueError(f"loss.em_gamma must be 0 or more, got {self.em_gamma}.")
        if not 0.0 <= self.em_flip_prob <= 1.0:
            raise ValueError(f"loss.em_flip_prob must be in [0, 1], got {self.em_flip_prob}.")
        if not 0 <= self.hash_max_distance <= 64:
            raise ValueError(
                f"loss.hash_max_distance must be in [0, 64], got {self.hash_max_distance}."
            )
        if not 0.0 < self.lexical_votes <= 1.0:
            raise ValueError(f"loss.lexical_votes must be in (0, 1], got {self.lexical_votes}.")
        if not self.neg_bce_weight >= 0:
            raise ValueError(f"loss.neg_bce_weight must be 0 or more, got {self.neg_bce_weight}.")
        if not math.isfinite(self.hard_beta):
            raise ValueError(f"loss.hard_beta must be a finite number, got {self.hard_beta}.")
        if not self.hard_alpha > 0:
            raise ValueError(f"loss.hard_alpha must be positive, got {self.hard_alpha}.")
        if not 0.0 <= self.tau_plus < 1.0:
            raise ValueError(f"loss.tau_plus must be in [0, 1), got {self.tau_plus}.")
        if self.name == "siglip" and (self.hardness != "none" or self.neg_bce_weight):
            raise ValueError(
                "loss.hardness and loss.neg_bce_weight apply to the softmax form only "
                "(loss.name = 'clip'), not to 'siglip'."
            )
        if self.hardness == "hcl" and self.policy == "positive" and self.estimator != "none":
            raise ValueError(
                "loss.hardness = 'hcl' debiases a single-positive denominator; use policy "
                "drop or downweight with it, or hardness = 'hn-nce'."
            )

    @property
    def is_plain(self) -> bool:
        """True when the loss is exactly open_clip's ClipLoss / SigLipLoss."""
        return self.estimator == "none" and self.hardness == "none" and self.neg_bce_weight == 0.0
