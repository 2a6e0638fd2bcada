"""False-negative estimators, policies and the duplicate keys, one behaviour at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipserve.training.losses import LossBatch, LossConfig, build_loss
from clipserve.training.losses.estimators import ESTIMATORS, EstimatorInput, em_flips
from clipserve.training.losses.keys import caption_key, dhash, hamming_matrix, normalize_caption
from clipserve.training.losses.policy import apply_policy, positive_mask


def est(name: str, cos: torch.Tensor, batch: LossBatch | None = None, step: int = 0, **cfg):
    fn = ESTIMATORS[name](LossConfig(estimator=name, **cfg))
    return fn(EstimatorInput(cos, cos.T.contiguous(), 0, batch or LossBatch(), step))


COS = torch.tensor(
    [
        [0.50, 0.58, 0.45, 0.10],
        [0.20, 0.80, 0.79, 0.00],
        [0.30, 0.10, 0.40, 0.39],
        [-0.2, -0.1, 0.00, -0.10],
    ]
)


def off(m: torch.Tensor) -> list:
    """The matrix with its positive (diagonal) column zeroed: estimators may score it."""
    return m.masked_fill(torch.eye(m.shape[0], dtype=torch.bool), 0).tolist()


def test_margin_absolute_and_relative_thresholds() -> None:
    # UniME: drop if S_ak > S_aa + 0.1  (margin = -0.1)
    i2t, t2i = est("margin", COS, margin_mode="absolute", margin=-0.1)
    assert off(i2t) == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # MarginPos: drop if S_ak > S_aa - 0.05
    i2t, _ = est("margin", COS, margin_mode="absolute", margin=0.05)
    assert off(i2t) == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0]]
    # PercPos 95%: drop if S_ak > S_aa - |S_aa| * 0.05 ; row 2: 0.39 > 0.38
    i2t, _ = est("margin", COS, margin_mode="relative", margin=0.05)
    assert off(i2t) == [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0]]
    assert t2i.shape == COS.shape


def test_guide_reads_guide_features_not_the_model() -> None:
    gi = torch.eye(4, 8)
    gt = gi.clone()
    gt[1] = F.normalize(gi[0] + 0.1 * gi[1], dim=0)  # the guide: text 1 describes image 0
    batch = LossBatch(guide_image_features=3 * gi, guide_text_features=gt)
    i2t, t2i = est("guide", torch.zeros(4, 4), batch, margin=0.01)
    assert i2t[0, 1] == 1 and t2i[1, 0] == 1
    assert sum(map(sum, off(i2t))) == 1 and sum(map(sum, off(t2i))) == 1


def test_guide_text_anchor_decides_each_pair_once_against_the_caption() -> None:
    torch.manual_seed(0)
    gi, gt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    gt[2] = F.normalize(gi[2] + 1.2 * gi[4], dim=0)  # partial: image 4 matches it too
    batch = LossBatch(guide_image_features=gi, guide_text_features=gt)
    i2t, t2i = est("guide", torch.zeros(6, 6), batch, guide_anchor="text")
    g = gt @ gi.T  # caption rows x image columns
    expect = (g > g.diag()[:, None]).float()  # GIST, margin 0, against the caption's positive
    assert torch.equal(t2i, expect) and torch.equal(i2t, expect.T)
    assert t2i[2, 4] == 1 and i2t[4, 2] == 1
    # "row" compares the image row against its own positive instead: the two can disagree.
    row_i2t, row_t2i = est("guide", torch.zeros(6, 6), batch)
    assert torch.equal(row_t2i, t2i) and torch.equal(row_i2t, (g.diag()[:, None] < g.T).float())
    assert not torch.equal(row_i2t, i2t)
    # Local rows (a rank's slice of the global batch) read the same decisions.
    fn = ESTIMATORS["guide"](LossConfig(estimator="guide", guide_anchor="text"))
    li2t, lt2i = fn(EstimatorInput(torch.zeros(2, 6), torch.zeros(2, 6), 2, batch, 0))
    assert torch.equal(li2t, i2t[2:4]) and torch.equal(lt2i, t2i[2:4])
    with pytest.raises(ValueError, match="guide_anchor"):
        LossConfig(guide_anchor="image")


def test_duplicate_caption_keys_and_image_hashes() -> None:
    caps = ["A red circle.", "a RED   circle", "a blue square", "a green star"]
    keys = torch.tensor([caption_key(c) for c in caps])
    hashes = torch.tensor([0b1010, 0b1011, 0b0101, 0b1010], dtype=torch.int64)
    i2t, t2i = est("duplicate", torch.zeros(4, 4), LossBatch(caption_keys=keys))
    assert torch.equal(i2t, t2i) and i2t[0, 1] == 1 and i2t[1, 0] == 1 and i2t.sum() == 6  # 4 diag
    i2t, _ = est("duplicate", torch.zeros(4, 4), LossBatch(image_keys=hashes))
    assert i2t[0, 3] == 1 and i2t[0, 1] == 0
    i2t, _ = est("duplicate", torch.zeros(4, 4), LossBatch(image_keys=hashes), hash_max_distance=1)
    assert i2t[0, 1] == 1 and i2t[0, 2] == 0
    with pytest.raises(ValueError, match="caption_keys"):
        est("duplicate", torch.zeros(4, 4))


def test_cluster_shared_nearest_centres() -> None:
    i2t, _ = est("cluster", torch.zeros(3, 3), LossBatch(cluster_ids=torch.tensor([4, 4, 7])))
    assert i2t.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    ids = torch.tensor([[1, 2], [2, 3], [5, 6]])
    i2t, _ = est("cluster", torch.zeros(3, 3), LossBatch(cluster_ids=ids))
    assert i2t[0, 1] == 0.5 and i2t[0, 2] == 0 and i2t[2, 2] == 1


def test_cluster_caption_cells_reach_the_cells_of_neighbouring_captions() -> None:
    # Images 0..3 lie in cells 4, 4, 7, 9. Caption 0's cells are its own image's (4) and,
    # through its nearest caption, 9; caption 2 has only its own (7); captions 1 and 3 also 7.
    ids = torch.tensor([4, 4, 7, 9])
    cells = torch.tensor([[4, 9], [4, 7], [7, 7], [9, 7]])
    i2t, t2i = est("cluster", torch.zeros(4, 4), LossBatch(cluster_ids=ids, caption_cells=cells))
    # t2i[c, i]: image i's cell is one of caption c's cells.
    assert t2i.tolist() == [[1, 1, 0, 1], [1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    # i2t[i, c] reads the same (caption, image) pairs from the image's side.
    assert torch.equal(i2t, t2i.T)
    # One column per item: cells of a single entry are exactly the shared-centre rule.
    plain, _ = est("cluster", torch.zeros(4, 4), LossBatch(cluster_ids=ids))
    same, _ = est(
        "cluster", torch.zeros(4, 4), LossBatch(cluster_ids=ids, caption_cells=ids[:, None])
    )
    assert torch.equal(plain, same)


def test_em_soft_estep_and_seeded_flips() -> None:
    cos = torch.tensor([[0.9, 0.1, 0.2], [0.0, 0.8, 0.7], [0.3, 0.3, 0.6]])
    i2t, t2i = est("em", cos, em_flip_prob=0.0)
    torch.testing.assert_close(i2t, torch.softmax(1.2 * cos, 1))
    torch.testing.assert_close(t2i, torch.softmax(1.2 * cos.T, 1))
    a = em_flips(0, 5, 64, 0.1)
    b = em_flips(0, 5, 64, 0.1)
    c = em_flips(0, 6, 64, 0.1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], a[1])
    assert 0.07 < float(a[0].float().mean()) < 0.13
    i2t, _ = est("em", torch.zeros(64, 64), step=5, em_flip_prob=0.1)
    assert torch.equal(i2t == 1, a[0])  # flipped pairs become positives


def test_em_flips_identical_across_accumulation_micro_steps() -> None:
    """open_clip's accumulation: cached features, the loss called once per micro-batch with only
    that chunk carrying gradient. Same optimizer step -> same flips -> same loss value and
    the same suspected set; the next step draws new flips."""
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(16, 8, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(16, 8, generator=g, dtype=torch.float64), dim=-1)
    cfg = LossConfig(estimator="em", policy="drop", em_flip_prob=0.2)
    loss_fn = build_loss(cfg)
    values, masks = [], []
    for chunk in range(4):  # accum_freq = 4 micro-batches of 4
        xs, ys = list(x.split(4)), list(y.split(4))
        xs[chunk] = xs[chunk].clone().requires_grad_(True)
        ys[chunk] = ys[chunk].clone().requires_grad_(True)
        loss = loss_fn(torch.cat(xs), torch.cat(ys), torch.tensor(10.0), batch=LossBatch(step=7))
        loss.backward()
        values.append(float(loss.detach()))
        masks.append(loss_fn.last_stats["fn_mask_rate"])
    assert len(set(values)) == 1 and len(set(masks)) == 1 and masks[0] > 0
    other = float(loss_fn(x, y, torch.tensor(10.0), batch=LossBatch(step=8)))
    assert other != values[0]
    # Without a step the loss counts its calls: documented fallback, flips change per call.
    a = float(loss_fn(x, y, torch.tensor(10.0)))
    b = float(loss_fn(x, y, torch.tensor(10.0)))
    assert a != b


def test_oracle_reads_labels() -> None:
    labels = torch.tensor([3, 1, 3])
    i2t, t2i = est("oracle", torch.zeros(3, 3), LossBatch(labels=labels))
    assert i2t.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]] and torch.equal(i2t, t2i)


def test_policies_turn_scores_into_weights_and_targets() -> None:
    score = torch.tensor([[0.9, 0.6, 0.2], [0.1, 0.3, 0.7], [1.0, 1.0, 1.0]])
    pos = positive_mask(3, 3, 0, score.device)
    drop = apply_policy(score, pos, "drop", 0.5)
    assert drop.weight.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    down = apply_policy(score, pos, "downweight", 0.5)
    torch.testing.assert_close(down.weight, torch.tensor([[1, 0.4, 0.8], [0.9, 1, 0.3], [0, 0, 1]]))
    posi = apply_policy(score, pos, "positive", 0.5)
    assert torch.equal(posi.weight, torch.ones(3, 3))
    torch.testing.assert_close(posi.soft_targets()[2], torch.tensor([1 / 3, 1 / 3, 1 / 3]))
    for plan in (drop, down, posi):  # the true positive always survives
        assert bool((plan.weight[pos] == 1).all() and (plan.target[pos] == 1).all())
        assert not bool(plan.suspected[pos].any())
    # a row offset (local_loss on rank 1): the positive of row r is column 3 + r
    pos1 = positive_mask(3, 6, 3, score.device)
    assert pos1.nonzero().tolist() == [[0, 3], [1, 4], [2, 5]]


def test_caption_normalisation_and_keys() -> None:
    assert normalize_caption("  A Red\tCircle, on grey! ") == "a red circle on grey"
    assert normalize_caption("ｆｕｌｌ width") == "full width"
    k = caption_key("A red circle.")
    assert k == caption_key("a red circle") and k != caption_key("a red square")
    assert -(2**63) <= k < 2**63 and isinstance(k, int)


def test_dhash_near_duplicates_are_close() -> None:
    rng = np.random.default_rng(0)
    base = (rng.random((64, 64)) * 255).astype(np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
    other = (rng.random((64, 64)) * 255).astype(np.uint8)
    h = torch.tensor([dhash(base), dhash(Image.fromarray(noisy)), dhash(other)])
    d = hamming_matrix(h, h)
    assert d[0, 0] == 0 and d[0, 1] <= 4 and d[0, 2] > 16
    a = torch.tensor([-1, 0, 5], dtype=torch.int64)
    want = [[bin((x ^ y) & (2**64 - 1)).count("1") for y in a.tolist()] for x in a.tolist()]
    assert hamming_matrix(a, a).tolist() == want
