"""Retrieval metrics against hand-computed values and a brute-force reference; `clipserve eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipserve.cli.main import main as cli_main
from clipserve.training.config import config_from_dict
from clipserve.training.evaluate import format_table, retrieval_metrics
from clipserve.training.train import train


def test_hand_computed_example() -> None:
    # 3 captions, 3 images, 2-d embeddings (not normalised: only dot products matter).
    text = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    image = np.array([[0.9, 0.0], [1.0, 0.2], [0.0, 1.0]])
    # scores = text @ image.T:
    #   t0: [0.90, 1.00, 0.00] -> ranking 1, 0, 2 ; its image 0 at rank 2
    #   t1: [0.00, 0.20, 1.00] -> ranking 2, 1, 0 ; its image 1 at rank 2
    #   t2: [0.90, 1.02, 0.10] -> ranking 1, 0, 2 ; its image 2 at rank 3
    labels = ["a", "a", "b"]
    m = retrieval_metrics(text, image, labels, labels, ks=(1, 2))
    assert m["t2i_R@1"] == 0.0
    assert m["t2i_R@2"] == pytest.approx(2 / 3)
    assert m["t2i_median_rank"] == 2.0
    # Semantic t2i: t0 (a) top-1 is image 1 (a): hit; t1 (a) top-1 image 2 (b): miss, top-2
    # has image 1 (a): hit; t2 (b) top-1 image 1 (a), top-2 image 0 (a): miss at 1 and 2.
    assert m["t2i_semantic_R@1"] == pytest.approx(1 / 3)
    assert m["t2i_semantic_R@2"] == pytest.approx(2 / 3)
    # AP: t0 relevant {0,1} at ranks 1,2 -> 1; t1 relevant {0,1} at ranks 2,3 -> (1/2+2/3)/2;
    # t2 relevant {2} at rank 3 -> 1/3.
    assert m["t2i_semantic_mAP"] == pytest.approx((1 + (0.5 + 2 / 3) / 2 + 1 / 3) / 3)
    assert m["t2i_semantic_R@1_chance"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)
    # i2t uses scores.T: i0 [0.9, 0, 0.9] -> tie between t0 and t2, stable -> t0 first.
    # i1 [1.0, 0.2, 1.02] -> t2, t0, t1 ; i2 [0, 1, 0.1] -> t1, t2, t0.
    assert m["i2t_R@1"] == pytest.approx(1 / 3)  # only i0 (tie broken towards t0)
    assert m["i2t_semantic_R@1"] == pytest.approx(
        1 / 3
    )  # i0: t0 (a) hit; i1: t2 (b) miss; i2: t1 (a) miss
    assert m["n_text"] == 3 and m["n_image"] == 3


def _brute_force(scores: np.ndarray, q_lab: list[str], g_lab: list[str], k: int) -> tuple:
    inst, sem, aps = [], [], []
    for i, row in enumerate(scores):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        inst.append(i in order[:k])
        sem.append(any(g_lab[j] == q_lab[i] for j in order[:k]))
        hits, precs = 0, []
        for r, j in enumerate(order, start=1):
            if g_lab[j] == q_lab[i]:
                hits += 1
                precs.append(hits / r)
        aps.append(sum(precs) / len(precs))
    return np.mean(inst), np.mean(sem), np.mean(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d = 40, 6
    text = rng.normal(size=(n, d)).astype(np.float32)
    image = (text + rng.normal(scale=1.5, size=(n, d))).astype(np.float32)
    # Quantise so that ties occur and the stable tie-break is exercised.
    text, image = np.round(text), np.round(image)
    labels = [f"c{int(x)}" for x in rng.integers(0, 7, size=n)]
    m = retrieval_metrics(text, image, labels, labels, ks=(1, 3, 10))
    scores = text @ image.T
    for k in (1, 3, 10):
        inst, sem, ap = _brute_force(scores, labels, labels, k)
        assert m[f"t2i_R@{k}"] == pytest.approx(inst)
        assert m[f"t2i_semantic_R@{k}"] == pytest.approx(sem)
        inst, sem, ap_i = _brute_force(scores.T, labels, labels, k)
        assert m[f"i2t_R@{k}"] == pytest.approx(inst)
        assert m[f"i2t_semantic_R@{k}"] == pytest.approx(sem)
    assert m["t2i_semantic_mAP"] == pytest.approx(ap)
    assert m["i2t_semantic_mAP"] == pytest.approx(ap_i)


def test_perfect_and_unequal_sizes() -> None:
    e = np.eye(5, dtype=np.float32)
    m = retrieval_metrics(e, e, list("aabbc"), list("aabbc"))
    assert m["t2i_R@1"] == 1.0 and m["t2i_semantic_R@1"] == 1.0
    # Ties (score 0) keep index order: the b-items' mates land 4th -> AP (1 + 2/4) / 2 = 0.75.
    assert m["i2t_semantic_mAP"] == pytest.approx((1 + 1 + 0.75 + 0.75 + 1) / 5)
    by_label = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2]]  # same labels -> same embedding
    m = retrieval_metrics(by_label, by_label, list("aabbc"), list("aabbc"))
    assert m["t2i_semantic_mAP"] == 1.0 and m["i2t_semantic_mAP"] == 1.0
    assert m["t2i_R@1"] == pytest.approx(0.6)  # ties go to the lower index: items 1, 3 miss
    assert m["t2i_semantic_R@1_chance"] == pytest.approx((2 + 2 + 2 + 2 + 1) / 25)
    # Different gallery size: semantic metrics only, no instance metrics.
    m = retrieval_metrics(e[:3], e, list("abc"), list("abcab"))
    assert "t2i_R@1" not in m and m["t2i_semantic_R@1"] == 1.0
    with pytest.raises(ValueError, match="both text_labels and image_labels"):
        retrieval_metrics(e, e, list("aabbc"), None)
    with pytest.raises(ValueError, match="equal D"):
        retrieval_metrics(e, e[:, :3])
    assert "t2i_semantic_R@1" not in retrieval_metrics(e, e)
    assert "text->image" in format_table(m)


def test_clipserve_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_train import make_fixture

    manifest = make_fixture(tmp_path / "data")
    cfg = config_from_dict(
        {
            "model": {"name": "clipserve-micro"},
            "data": {"train": str(manifest), "batch_size": 16},
            "optim": {"max_steps": 2},
            "run": {"output_dir": str(tmp_path / "run"), "device": "cpu", "progress": False},
        }
    )
    ckpt = train(cfg).checkpoint
    out = tmp_path / "eval" / "metrics.json"
    rc = cli_main(["eval", "--checkpoint", str(ckpt), "--data", str(manifest), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "semantic_R@1" in printed and "48 captions, 48 images" in printed
    payload = json.loads(out.read_text())
    assert payload["model_name"] == "clipserve-micro" and payload["step"] == 2
    # 8 classes of 6 items each: chance for semantic R@1 is 6/48.
    assert payload["t2i_semantic_R@1_chance"] == pytest.approx(6 / 48)
    assert 0.0 <= payload["t2i_semantic_R@1"] <= 1.0
    assert (
        cli_main(["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(manifest)]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
