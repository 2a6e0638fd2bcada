"""bench/fn_ceiling.py: the best-threshold F1 equals a brute-force search, and pair scoring
lines the three signals up with the exact labels."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fn_ceiling import all_guides_rows, best_f1, fitted_f1, pair_scores  # noqa: E402

from clipserve.training.losses.batch import LossBatch  # noqa: E402


def _brute_force(scores: np.ndarray, truth: np.ndarray) -> float:
    best = 0.0
    for thr in np.unique(scores):
        flagged = scores >= thr
        tp = float((flagged & truth).sum())
        if tp:
            p, r = tp / flagged.sum(), tp / truth.sum()
            best = max(best, 2 * p * r / (p + r))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_best_f1_matches_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 12, size=200).astype(float)  # many ties
    truth = rng.random(200) < 0.2 + 0.05 * scores / 12
    got = best_f1(scores, truth)
    assert got["f1"] == pytest.approx(_brute_force(scores, truth))
    flagged = scores >= got["threshold"]
    assert got["precision"] == pytest.approx((flagged & truth).sum() / flagged.sum())


def test_pair_scores_follow_the_labels_and_the_positive() -> None:
    # 3 items; attribute tags: caption 1 names a subset of image 0's tags (a false negative
    # for text->image row 1, column 0 and for image->text row 0, column 1).
    image_tags = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    text_tags = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    batch = LossBatch(image_tags=image_tags, text_tags=text_tags)
    image = torch.nn.functional.normalize(
        torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    text = torch.nn.functional.normalize(
        torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    got = pair_scores(image, text, batch)
    # Off-diagonal pairs in row-major order: (0,1) (0,2) (1,0) (1,2) (2,0) (2,1).
    np.testing.assert_array_equal(got["t2i"][1], [False, False, True, False, False, False])
    np.testing.assert_array_equal(got["i2t"][1], [True, False, False, False, False, False])
    cross = (text @ image.T).numpy()
    scores = got["t2i"][0]
    assert scores[2, 0] == pytest.approx(cross[1, 0])
    assert scores[2, 1] == pytest.approx(cross[1, 0] - cross[1, 1])
    assert scores[2, 2] == pytest.approx(float(text[1] @ text[0]))
    # The features add the other direction's scores of the same pair: t2i (caption 1,
    # image 0) is i2t (image 0, caption 1), the first off-diagonal pair of i2t.
    features = got["t2i"][2]
    np.testing.assert_allclose(features[2, :3], scores[2])
    np.testing.assert_allclose(features[2, 3:], got["i2t"][0][0], rtol=1e-6)
    assert features.shape == (6, 6)


def test_fitted_ceiling_finds_a_rule_no_single_threshold_can() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2)).astype(np.float32)
    truth = x[:, 0] * x[:, 1] > 0.3  # a product: no threshold on either score separates it
    assert max(best_f1(x[:, k], truth)["f1"] for k in range(2)) < 0.6
    assert fitted_f1(x, truth)["f1"] > 0.95


def test_all_guides_row_needs_the_same_pairs() -> None:
    truth = np.array([True, False, True])
    rows = [
        {"guide_name": g, "setting": "s", "sampling": "random", "direction": "t2i",
         "_truth": truth, "_features": np.eye(3, 2, k, dtype=np.float32)}
        for k, g in enumerate(("a", "b"))
    ]  # fmt: skip
    (row,) = all_guides_rows(rows)
    assert row["guide"] == "a, b" and row["true_fn_rate"] == pytest.approx(2 / 3)
    rows[1]["_truth"] = ~truth
    with pytest.raises(RuntimeError, match="different pairs"):
        all_guides_rows(rows)


def test_the_better_informed_guide_never_sees_a_target_set() -> None:
    import bench_train as bt
    from fn_ceiling import GUIDE_DATA, _guide_name

    # Its own seed, every tuple, and the partial captions it is there to have seen.
    target_seeds = {cfg.seed for cfg, _ in bt.SETTINGS.values()} | {bt.BASE_DATA.seed}
    assert GUIDE_DATA.seed not in target_seeds
    assert GUIDE_DATA.n_tuples is None and GUIDE_DATA.partial_captions > 0
    work = Path("w")
    assert _guide_name(work / "runs" / "high-fn" / "random" / "seed0", work) == (
        "high-fn/random/seed0"
    )
    assert _guide_name(work / "guide-partial" / "checkpoints" / "latest.pt", work) == (
        "guide-partial"
    )
