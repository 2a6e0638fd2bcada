"""The loss family against open_clip's ClipLoss / SigLipLoss, and its invariants."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from clipserve.training.losses import LossBatch, LossConfig, build_loss, fn_detection_metrics
from clipserve.training.losses.hardness import hard_log_weights, hcl_rows, hn_nce_rows
from clipserve.training.losses.policy import positive_mask

TOL = {"rtol": 1e-5, "atol": 1e-6}


def feats(b: int = 12, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(x + 0.8 * torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    return x, y


def run(loss_fn, x, y, scale=14.3, bias=None, **kw):
    """Loss value and gradients w.r.t. features, scale and bias."""
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    s = torch.tensor(scale, dtype=x.dtype, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, dtype=x.dtype, requires_grad=True)
    loss = loss_fn(x, y, s, b, **kw)
    leaves = [x, y, s] + ([b] if b is not None else [])
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), [g.detach() for g in grads]


@pytest.mark.parametrize("bias", [None, -2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_clip_equals_open_clip_exactly(bias, dtype) -> None:
    x, y = (t.to(dtype) for t in feats())
    ref = run(open_clip.ClipLoss(), x, y, bias=bias)
    for local_loss in (False, True):
        ours = run(build_loss(LossConfig(local_loss=local_loss)), x, y, bias=bias)
        assert torch.equal(ours[0], ref[0])
        for a, b in zip(ours[1], ref[1], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("bias", [None, -2.5])
def test_plain_siglip_equals_open_clip_exactly(bias) -> None:
    x, y = feats()
    ref_fn = SigLipLoss()
    ref = run(lambda *a: ref_fn(*a), x, y, scale=10.0, bias=bias)
    ours = run(build_loss(LossConfig(name="siglip")), x, y, scale=10.0, bias=bias)
    assert torch.equal(ours[0], ref[0])
    for a, b in zip(ours[1], ref[1], strict=True):
        assert torch.equal(a, b)


# Configurations whose general (weighted) code path must still equal plain ClipLoss.
NEUTRAL_CLIP = [
    {"estimator": "margin", "margin": -5.0},  # thr = pos + 5, above any cosine: nothing suspected
    {"estimator": "em", "em_flip_prob": 0.0, "policy": "drop"},  # q < 0.5: nothing dropped
    {"estimator": "oracle", "policy": "positive"},  # labels all distinct
    {"estimator": "duplicate", "policy": "downweight"},  # keys all distinct
    {"hardness": "hn-nce"},
    {"hardness": "hcl"},
    {"hardness": "hcl", "estimator": "margin", "margin": -5.0},
]


@pytest.mark.parametrize("bias", [None, -2.5])
@pytest.mark.parametrize("opts", NEUTRAL_CLIP, ids=lambda o: "-".join(map(str, o.values())))
def test_general_path_with_neutral_options_equals_clip_loss(opts, bias) -> None:
    x, y = feats()
    n = x.shape[0]
    batch = LossBatch(labels=torch.arange(n), caption_keys=torch.arange(n) * 7)
    ref = run(open_clip.ClipLoss(), x, y, bias=bias)
    ours = run(build_loss(LossConfig(**opts)), x, y, bias=bias, batch=batch)
    torch.testing.assert_close(ours[0], ref[0], **TOL)
    for a, b in zip(ours[1], ref[1], strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("bias", [None, -10.0])
def test_general_siglip_with_neutral_options_equals_siglip_loss(bias) -> None:
    x, y = feats()
    ref_fn = SigLipLoss()
    ref = run(lambda *a: ref_fn(*a), x, y, scale=10.0, bias=bias)
    for opts in ({"estimator": "margin", "margin": -5.0}, {"estimator": "oracle"}):
        batch = LossBatch(labels=torch.arange(x.shape[0]))
        ours = run(build_loss(LossConfig(name="siglip", **opts)), x, y, 10.0, bias, batch=batch)
        torch.testing.assert_close(ours[0], ref[0], **TOL)
        for a, b in zip(ours[1], ref[1], strict=True):
            torch.testing.assert_close(a, b, **TOL)


def naive_weighted(li, lt, wi, wt):
    """Direct formula of ALGORITHMS.md §0, one row at a time."""
    total = 0.0
    for logits, w in ((li, wi), (lt, wt)):
        for a in range(logits.shape[0]):
            den = math.exp(logits[a, a])
            for k in range(logits.shape[1]):
                if k != a:
                    den += float(w[a, k]) * math.exp(logits[a, k])
            total += (-float(logits[a, a]) + math.log(den)) / logits.shape[0]
    return total / 2


def test_drop_and_downweight_match_the_direct_formula() -> None:
    x, y = feats(8)
    s = 10.0
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    same = (labels[:, None] == labels[None, :]).double()
    li, lt = s * x @ y.T, s * y @ x.T
    drop = build_loss(LossConfig(estimator="oracle", policy="drop"))
    got = drop(x, y, torch.tensor(s), batch=LossBatch(labels=labels))
    assert float(got) == pytest.approx(naive_weighted(li, lt, 1 - same, 1 - same), rel=1e-10)
    assert drop.last_stats["fn_masked_positives"] == 0
    assert drop.last_stats["fn_f1"] == 1.0
    # downweight with the em estimator: weights 1 - q, q = softmax(gamma * cos) (no flips)
    em = build_loss(LossConfig(estimator="em", policy="downweight", em_flip_prob=0))
    got = em(x, y, torch.tensor(s), batch=LossBatch(step=3))
    qi = torch.softmax(1.2 * (x @ y.T), 1)
    qt = torch.softmax(1.2 * (y @ x.T), 1)
    assert float(got) == pytest.approx(naive_weighted(li, lt, 1 - qi, 1 - qt), rel=1e-10)


def test_positive_policy_is_albef_soft_targets() -> None:
    x, y = feats(8)
    s = 10.0
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    pos = (labels[:, None] == labels[None, :]).double()
    targets = pos / pos.sum(1, keepdim=True)
    li, lt = s * x @ y.T, s * y @ x.T
    want = 0.5 * sum(float(-(targets * torch.log_softmax(lg, 1)).sum(1).mean()) for lg in (li, lt))
    loss = build_loss(LossConfig(estimator="oracle", policy="positive"))
    assert float(loss(x, y, torch.tensor(s), batch=LossBatch(labels=labels))) == pytest.approx(
        want, rel=1e-10
    )


def test_siglip_multi_positive_labels() -> None:
    x, y = feats(8)
    s, b = 10.0, -5.0
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    z = 2 * (labels[:, None] == labels[None, :]).double() - 1
    want = float(-F.logsigmoid(z * (s * x @ y.T + b)).sum() / 8)
    loss = build_loss(LossConfig(name="siglip", estimator="oracle", policy="positive"))
    got = loss(x, y, torch.tensor(s), torch.tensor(b), batch=LossBatch(labels=labels))
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_all_negatives_removed_stays_finite_and_positive_kept() -> None:
    x, y = feats(6)
    labels = torch.zeros(6, dtype=torch.long)  # every pair "matches": all negatives dropped
    for opts in (
        {},
        {"hardness": "hn-nce", "hard_beta": 1.0},
        {"hardness": "hcl", "hard_beta": 1.0, "tau_plus": 0.1},
        {"neg_bce_weight": 1.0},
    ):
        loss_fn = build_loss(LossConfig(estimator="oracle", policy="drop", **opts))
        loss, grads = run(loss_fn, x, y, batch=LossBatch(labels=labels))
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads), opts
        assert float(loss) == pytest.approx(0.0, abs=1e-12)
        assert loss_fn.last_stats["fn_masked_positives"] == 0
        assert loss_fn.last_stats["fn_mask_rate"] == 1.0
    # one row fully removed, the others untouched: finite, positive loss
    labels = torch.tensor([0, 0, 0, 0, 0, 1])
    loss_fn = build_loss(LossConfig(estimator="oracle", hardness="hcl", tau_plus=0.05))
    loss, grads = run(loss_fn, x, y, batch=LossBatch(labels=labels))
    assert torch.isfinite(loss) and float(loss) > 0
    assert all(torch.isfinite(g).all() for g in grads)


def test_margin_never_masks_the_positive_even_with_a_negative_margin() -> None:
    x, y = feats(10)
    loss_fn = build_loss(LossConfig(estimator="margin", margin=-2.0))  # thr = pos + 2
    loss_fn(x, y, torch.tensor(10.0))
    assert loss_fn.last_stats["fn_mask_rate"] == 0.0
    loss_fn = build_loss(LossConfig(estimator="margin", margin=3.0))  # thr = pos - 3: all
    loss, grads = run(loss_fn, x, y)
    assert loss_fn.last_stats["fn_mask_rate"] == 1.0
    assert loss_fn.last_stats["fn_masked_positives"] == 0
    assert float(loss) == pytest.approx(0.0, abs=1e-12)


def naive_hn_nce(logits, beta, alpha):
    n, lg = logits.shape[0], logits.numpy()
    out = 0.0
    for i in range(n):
        neg = [k for k in range(n) if k != i]
        z = sum(math.exp(beta * lg[i, k]) for k in neg)
        den = alpha * math.exp(lg[i, i]) + sum(
            (n - 1) * math.exp(beta * lg[i, k]) / z * math.exp(lg[i, k]) for k in neg
        )
        out += (math.log(den) - lg[i, i]) / n
    return out


def naive_hcl(logits, beta, tau, s):
    """HCL (Robinson et al.) official formula, per row, with CLIP logits."""
    n, lg = logits.shape[0], logits.numpy()
    out = 0.0
    for i in range(n):
        neg = [k for k in range(n) if k != i]
        big_n = len(neg)
        imp = [math.exp(beta * lg[i, k]) for k in neg]
        reweight = (
            big_n * sum(w * math.exp(lg[i, k]) for w, k in zip(imp, neg, strict=True)) / sum(imp)
        )
        pos = math.exp(lg[i, i])
        ng = max((reweight - tau * big_n * pos) / (1 - tau), big_n * math.exp(-s))
        out += -math.log(pos / (pos + ng)) / n
    return out


@pytest.mark.parametrize("beta_hcl", [0.0, 0.5, 1.0])
def test_hard_negative_forms_match_their_direct_formulas(beta_hcl) -> None:
    x, y = feats(8)
    s = 20.0
    beta_clip = 2 * beta_hcl / s
    li, lt = s * x @ y.T, s * y @ x.T
    hn = build_loss(LossConfig(hardness="hn-nce", hard_beta=beta_hcl, hard_alpha=0.7))
    want = 0.5 * (naive_hn_nce(li, beta_clip, 0.7) + naive_hn_nce(lt, beta_clip, 0.7))
    s64 = torch.tensor(s, dtype=torch.float64)
    assert float(hn(x, y, s64)) == pytest.approx(want, rel=1e-10)
    for tau in (0.0, 0.1):
        hcl = build_loss(LossConfig(hardness="hcl", hard_beta=beta_hcl, tau_plus=tau))
        want = 0.5 * (naive_hcl(li, beta_clip, tau, s) + naive_hcl(lt, beta_clip, tau, s))
        assert float(hcl(x, y, s64)) == pytest.approx(want, rel=1e-10)


def test_hcl_floor_binds_without_nan() -> None:
    # tau+ close to 1 makes the debiased sum negative: the floor N e^{-s} must take over.
    logits = torch.tensor([[5.0, 4.0, 4.5], [1.0, 6.0, 2.0], [3.0, 3.0, 3.0]], requires_grad=True)
    pos = positive_mask(3, 3, 0, logits.device)
    neg_log_w, n_neg = hard_log_weights(logits, pos, torch.zeros(3, 3), 0.1)
    rows = hcl_rows(logits, pos, neg_log_w, n_neg, 0.9, -10.0)
    rows.sum().backward()
    assert torch.isfinite(rows).all() and torch.isfinite(logits.grad).all()
    assert hn_nce_rows(logits, pos, neg_log_w, 1.0).isfinite().all()


@pytest.mark.parametrize("normalize", [True, False])
def test_em_bce_term_reduces_to_emcrl_objective(normalize) -> None:
    """EMCRL with T = clip(I + Q, 0, 1): -sum T log P - sum (1 - T) log(1 - P) (no flips);
    normalize_targets = False is the released code's raw T, True row-normalises the CE term."""
    x, y = feats(8)
    s = 10.0
    cfg = LossConfig(
        estimator="em",
        policy="positive",
        neg_bce_weight=1.0,
        em_flip_prob=0,
        normalize_targets=normalize,
    )
    got = float(build_loss(cfg)(x, y, torch.tensor(s, dtype=x.dtype), batch=LossBatch(step=0)))
    want = 0.0
    for cos in (x @ y.T, y @ x.T):
        t = (torch.eye(8, dtype=cos.dtype) + torch.softmax(1.2 * cos, 1)).clamp(0, 1)
        logp = torch.log_softmax(s * cos, 1)
        ce = -((t / t.sum(1, keepdim=True) if normalize else t) * logp).sum(1)
        bce = -((1 - t) * torch.log1p(-logp.exp())).sum(1)
        want += 0.5 * float((ce + bce).mean())
    assert got == pytest.approx(want, rel=1e-9)


def test_stats_against_labels_and_helper() -> None:
    x, y = feats(8)
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 4, 5])
    loss_fn = build_loss(LossConfig(estimator="duplicate"))
    keys = torch.tensor([9, 9, 1, 2, 3, 4, 3, 5])  # 0/1 right, 4/6 wrong, 2/3 missed
    loss = loss_fn(x, y, torch.tensor(10.0), batch=LossBatch(labels=labels, caption_keys=keys))
    st = loss_fn.last_stats
    assert st["fn_tp"] == 4 and st["fn_fp"] == 4 and st["fn_fn"] == 4  # both directions
    assert st["fn_precision"] == 0.5 and st["fn_recall"] == 0.5 and st["fn_f1"] == 0.5
    assert "fn_f1" not in {"contrastive_loss"} and loss.ndim == 0
    m = fn_detection_metrics(
        torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0, 1], [0, 0]]), torch.eye(2).bool()
    )
    assert (m["fn_precision"], m["fn_recall"], m["fn_f1"]) == (0.5, 1.0, pytest.approx(2 / 3))


def test_partial_caption_tags_are_directional() -> None:
    x, y = feats(3)
    img = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    txt = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=torch.bool)  # caption 1: "a"
    loss_fn = build_loss(LossConfig(estimator="oracle"))
    loss_fn(x, y, torch.tensor(10.0), batch=LossBatch(image_tags=img, text_tags=txt))
    # caption 1 names only attribute 0, which image 0 also has: FN for image row 0 (i2t) and
    # for text row 1 against image 0 (t2i): 2 of 12 off-diagonal pairs.
    assert loss_fn.last_stats["fn_mask_rate"] == pytest.approx(1 / 6)


def test_config_validation() -> None:
    for bad in (
        {"name": "nope"},
        {"estimator": "x"},
        {"policy": "x"},
        {"fn_threshold": 0.0},
        {"tau_plus": 1.0},
        {"name": "siglip", "hardness": "hcl"},
        {"hardness": "hcl", "policy": "positive", "estimator": "oracle"},
        {"em_flip_prob": 2.0},
    ):
        with pytest.raises(ValueError, match="loss"):
            LossConfig(**bad)


def test_missing_side_input_is_a_clear_error() -> None:
    x, y = feats(4)
    for est, field in (("guide", "guide_image_features"), ("cluster", "cluster_ids")):
        with pytest.raises(ValueError, match=field):
            build_loss(LossConfig(estimator=est))(x, y, torch.tensor(10.0))
    with pytest.raises(ValueError, match="needs 4 rows"):
        build_loss()(x, y, torch.tensor(10.0), batch=LossBatch(labels=torch.arange(3)))


def test_loss_section_of_a_training_config(tmp_path) -> None:
    from clipserve.training.config import load_config

    cfg = load_config(
        None,
        [
            f"data.train={tmp_path / 't.jsonl'}",
            "loss.estimator=margin",
            "loss.margin=0.05",
            "loss.local_loss=true",
            "loss.hardness=hcl",
            "loss.tau_plus=0.05",
        ],
    )
    assert cfg.loss == LossConfig(
        estimator="margin", margin=0.05, local_loss=True, hardness="hcl", tau_plus=0.05
    )
    assert load_config(None, [f"data.train={tmp_path / 't.jsonl'}"]).loss.is_plain
    with pytest.raises(ValueError, match="unknown loss.policy 'keep'"):
        load_config(None, [f"data.train={tmp_path / 't.jsonl'}", "loss.policy=keep"])
