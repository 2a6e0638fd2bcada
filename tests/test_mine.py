"""Hard-negative mining through the embedded Qdrant index, the batch samplers built on it,
`clipserve mine`, and a short fine-tune that consumes mined negatives with a filter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipserve.training.data import synth
from clipserve.training.data.manifest import read_manifest
from clipserve.training.losses import LossConfig
from clipserve.training.mining.kmeans import kmeans, nearest_centres
from clipserve.training.mining.mine import MineConfig, mine, read_mined, write_mined
from clipserve.training.mining.neighbours import exact_neighbours, nearest_neighbours
from clipserve.training.mining.plan import hard_batch_groups, rank_window, select_negatives
from clipserve.training.sampling.batches import HardBatches, MinedNegativeBatches, RandomBatches
from clipserve.training.sampling.side_inputs import ItemTable


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def embeddings() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 items in 6 classes: images near their class centre, captions near their image."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 6
    centres = _unit(rng.standard_normal((6, 16)))
    image = _unit(centres[labels] + 0.35 * rng.standard_normal((60, 16)))
    text = _unit(image + 0.2 * rng.standard_normal((60, 16)))
    return text, image, labels


def _table(labels: np.ndarray) -> ItemTable:
    return ItemTable(n=len(labels), labels=torch.from_numpy(labels.astype(np.int64)))


def test_neighbours_are_exact_rank_order_without_the_anchor(embeddings, tmp_path: Path) -> None:
    text, image, _ = embeddings
    neigh = nearest_neighbours(text, image, 12, tmp_path / "index", progress=False)
    scores = text @ image.T
    for a in range(len(text)):
        order = [int(i) for i in np.argsort(-scores[a], kind="stable") if i != a][:12]
        assert a not in neigh.index[a]
        assert neigh.index[a].tolist() == order
        np.testing.assert_allclose(neigh.score[a], scores[a, order], atol=1e-5)
    np.testing.assert_allclose(neigh.positive, np.diag(scores), atol=1e-6)


def test_negatives_come_from_the_rank_window(embeddings, tmp_path: Path) -> None:
    text, image, labels = embeddings
    cfg = MineConfig(rank_start=2, rank_window=5, negatives=3, group_size=6)
    mined, _ = mine(text, image, _table(labels), cfg, LossConfig(), tmp_path / "i", False)
    neigh = nearest_neighbours(text, image, 7, tmp_path / "j", progress=False)
    for a, negs in enumerate(mined.negatives):
        # No filter: the first three of ranks [2, 7), i.e. neighbours 2, 3, 4.
        assert negs.tolist() == neigh.index[a, 2:5].tolist()
        assert mined.ranks is not None and mined.ranks[a].tolist() == [2, 3, 4]
        assert a not in negs


def test_oracle_filter_removes_every_known_false_negative(embeddings, tmp_path: Path) -> None:
    text, image, labels = embeddings
    cfg = MineConfig(rank_start=0, rank_window=20, negatives=5)
    flt = LossConfig(estimator="oracle")
    mined, _ = mine(text, image, _table(labels), cfg, flt, tmp_path / "i", False)
    unfiltered, _ = mine(text, image, _table(labels), cfg, LossConfig(), tmp_path / "i", False)
    assert mined.filtered is not None
    for a in range(len(labels)):
        assert len(mined.negatives[a]) == 5
        assert not (labels[mined.negatives[a]] == labels[a]).any()
        assert (labels[mined.filtered[a]] == labels[a]).all()
    # Without a filter the nearest candidates are mostly the anchor's own class.
    same = np.mean([(labels[n] == labels[a]).mean() for a, n in enumerate(unfiltered.negatives)])
    assert same > 0.5
    assert mined.stats["filter_precision"] == 1.0 and mined.stats["filter_recall"] == 1.0


def test_margin_filter_removes_candidates_scoring_near_the_positive(
    embeddings, tmp_path: Path
) -> None:
    text, image, labels = embeddings
    cfg = MineConfig(rank_start=0, rank_window=10, negatives=2)
    flt = LossConfig(estimator="margin", margin=0.1)
    mined, _ = mine(text, image, _table(labels), cfg, flt, tmp_path / "i", False)
    pos = np.einsum("nd,nd->n", text, image)
    assert mined.filtered is not None
    for a in range(len(text)):
        kept = text[a] @ image[mined.negatives[a]].T
        assert (kept <= pos[a] - 0.1 + 1e-6).all()
        if len(mined.filtered[a]):
            cos_t2i = text[a] @ image[mined.filtered[a]].T
            cos_i2t = image[a] @ text[mined.filtered[a]].T
            # Suspected in either direction, against that direction's own positive.
            assert (np.maximum(cos_t2i, cos_i2t) > pos[a] - 0.1 - 1e-6).all()


def test_select_negatives_skips_suspected_and_missing() -> None:
    cands = np.array([[5, 6, 7, 8], [9, -1, -1, -1]])
    suspected = np.array([[True, False, True, False], [False, False, False, False]])
    picks = select_negatives(cands, suspected, 2)
    assert picks[0].tolist() == [1, 3] and picks[1].tolist() == [0]
    assert rank_window(np.array([[1, 2, 3]]), 2, 3).tolist() == [[3, -1, -1]]


def test_batch_plan_covers_every_item_exactly_once_per_epoch(embeddings) -> None:
    _, _, labels = embeddings
    n = 64
    rng = np.random.default_rng(1)
    neigh = np.stack([rng.permutation([j for j in range(n) if j != i])[:10] for i in range(n)])
    groups = hard_batch_groups(neigh, 8, seed=0)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(n))
    sampler = HardBatches(groups, batch_size=16, seed=3)
    assert sampler.steps_per_epoch == 4
    for epoch in range(3):
        batches = sampler.epoch(epoch)
        assert sorted(np.concatenate(batches).tolist()) == list(range(n))
        # Deterministic per (seed, epoch), different across epochs.
        assert all(np.array_equal(a, b) for a, b in zip(batches, sampler.epoch(epoch), strict=True))
    assert not np.array_equal(np.concatenate(sampler.epoch(0)), np.concatenate(sampler.epoch(1)))
    # A group's first item brought its nearest free neighbours along.
    first = groups[0]
    assert set(first[1:]) <= set(neigh[first[0]].tolist())


def test_mined_negative_batches_hold_anchors_with_their_negatives() -> None:
    n = 40
    negatives = [np.array([(i + 1) % n, (i + 2) % n]) for i in range(n)]
    sampler = MinedNegativeBatches(negatives, batch_size=12, seed=0)
    assert sampler.anchors_per_batch == 4 and sampler.steps_per_epoch == 10
    for batch in sampler.epoch(0):
        assert len(batch) == 12 and len(set(batch.tolist())) == 12
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0 * 1_000_003)).numpy()
    for s, batch in enumerate(sampler.epoch(0)):
        for a in order[s * 4 : (s + 1) * 4]:
            assert {a, *negatives[a].tolist()} <= set(batch.tolist())
    assert all(
        np.array_equal(a, b) for a, b in zip(sampler.epoch(2), sampler.epoch(2), strict=True)
    )
    with pytest.raises(ValueError, match="cannot hold"):
        MinedNegativeBatches(negatives, batch_size=2, seed=0)


def test_random_batches_match_the_original_shuffle() -> None:
    sampler = RandomBatches(50, 16, seed=4)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(4 * 1_000_003 + 2))
    got = np.concatenate(sampler.epoch(2))
    assert got.tolist() == perm[:48].tolist()


def test_kmeans_is_deterministic_and_finds_the_classes() -> None:
    rng = np.random.default_rng(2)
    labels = np.arange(60) % 6
    image = _unit(_unit(rng.standard_normal((6, 16)))[labels] + 0.1 * rng.standard_normal((60, 16)))
    c1, c2 = kmeans(image, 6, seed=0), kmeans(image, 6, seed=0)
    np.testing.assert_array_equal(c1, c2)
    ids = nearest_centres(image, c1, 2)
    assert ids.shape == (60, 2)
    # Items of one class mostly share their nearest centre.
    purity = np.mean([np.bincount(ids[labels == c, 0]).max() / 10 for c in range(6)])
    assert purity > 0.9


def test_mined_files_round_trip_and_are_deterministic(embeddings, tmp_path: Path) -> None:
    text, image, labels = embeddings
    records = [
        type("R", (), {"id": f"item{i}"})()  # write/read only use .id
        for i in range(len(labels))
    ]
    cfg = MineConfig(clusters=6, cluster_top=2, group_size=5)
    flt = LossConfig(estimator="cluster")
    mined, table = mine(text, image, _table(labels), cfg, flt, tmp_path / "i", False)
    assert table.cluster_ids is not None and table.cluster_ids.shape == (60, 2)
    write_mined(tmp_path / "a", records, mined, {"note": 1})
    again, _ = mine(text, image, _table(labels), cfg, flt, tmp_path / "i", False)
    write_mined(tmp_path / "b", records, again, {"note": 1})
    for name in ("negatives.jsonl", "batch_plan.json", "clusters.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    back = read_mined(tmp_path / "a", records)
    assert [x.tolist() for x in back.negatives] == [x.tolist() for x in mined.negatives]
    assert back.groups == mined.groups
    assert torch.equal(back.cluster_ids, mined.cluster_ids)
    with pytest.raises(ValueError, match="lacks"):
        read_mined(tmp_path / "a", records[:-1])


def test_exact_neighbours_are_exact_and_exclude_the_item() -> None:
    text, _, _ = _embeddings_small()
    got = exact_neighbours(text, 5, block=7)  # blocks that do not divide N
    sims = text @ text.T
    for a in range(len(text)):
        order = [int(i) for i in np.argsort(-sims[a], kind="stable") if i != a][:5]
        assert got[a].tolist() == order
    # Repeated captions tie: the tie goes to the lower rows, as a stable sort has it.
    same = np.repeat(text[:3], 4, axis=0)  # rows 0-3 equal, 4-7 equal, 8-11 equal
    got = exact_neighbours(same, 5)
    ref = np.argsort(-(same @ same.T - 3 * np.eye(12)), axis=1, kind="stable")[:, :5]
    assert got.tolist() == ref.tolist()
    with pytest.raises(ValueError, match="neighbours must be in"):
        exact_neighbours(text, len(text))


def _embeddings_small() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    image = _unit(rng.standard_normal((23, 8)))
    return _unit(image + 0.3 * rng.standard_normal((23, 8))), image, np.arange(23) % 4


def test_caption_cells_widen_the_cluster_filter(embeddings, tmp_path: Path) -> None:
    text, image, labels = embeddings
    flt = LossConfig(estimator="cluster")
    plain_cfg = MineConfig(clusters=6, group_size=5)
    wide_cfg = MineConfig(clusters=6, group_size=5, cluster_text_neighbours=4)
    plain, _ = mine(text, image, _table(labels), plain_cfg, flt, tmp_path / "i", False)
    wide, table = mine(text, image, _table(labels), wide_cfg, flt, tmp_path / "i", False)
    assert plain.caption_cells is None
    cells = table.caption_cells
    assert cells is not None and cells.shape == (60, 5)
    own = wide.cluster_ids[:, 0]
    nb = exact_neighbours(text, 4)
    assert torch.equal(cells[:, 0], own)
    assert torch.equal(cells[:, 1:], own[torch.from_numpy(nb)])
    # A caption suspects every image of its own cell and more: the filter only grows.
    for a in range(60):
        assert set(plain.filtered[a].tolist()) <= set(wide.filtered[a].tolist())
    assert sum(map(len, wide.filtered)) > sum(map(len, plain.filtered))
    # The cells travel through clusters.json.
    records = [type("R", (), {"id": f"item{i}"})() for i in range(60)]
    write_mined(tmp_path / "m", records, wide, {})
    assert torch.equal(read_mined(tmp_path / "m", records).caption_cells, cells)
    with pytest.raises(ValueError, match="cluster_text_neighbours needs clusters > 0"):
        MineConfig(cluster_text_neighbours=3)


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthPaths:
    config = synth.SynthConfig(n=160, seed=5, n_tuples=20, holdout=0.2, partial_captions=0.5)
    root = tmp_path_factory.mktemp("mine-data")
    return synth.generate(config, root, progress=False, workers=1).paths


@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clipserve.training.model import ModelSpec, create_model, save_checkpoint

    torch.manual_seed(0)
    loaded = create_model(ModelSpec("clipserve-micro"))
    path = tmp_path_factory.mktemp("ckpt") / "micro.pt"
    save_checkpoint(
        path,
        {
            "model": loaded.model.state_dict(),
            "model_name": "clipserve-micro",
            "pretrained": None,
            "step": 0,
        },
    )
    return path


def test_clipserve_mine_cli(tiny_data, micro_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from clipserve.cli.main import main as cli

    out = tmp_path / "mined"
    argv = ["mine", "--data", str(tiny_data.train), "--checkpoint", str(micro_checkpoint)]
    argv += ["--out", str(out), "--filter", "oracle", "--clusters", "4", "--quiet"]
    assert cli([*argv, "--cluster-text-neighbours", "2"]) == 0
    text = capsys.readouterr().out
    assert "mined 128 items" in text and "queries/s" in text and "F1 1.000" in text
    summary = json.loads((out / "mine.json").read_text())
    assert summary["n_items"] == 128 and summary["filter_precision"] == 1.0
    rows = [json.loads(x) for x in (out / "negatives.jsonl").read_text().splitlines()]
    assert len(rows) == 128 and all(len(r["negatives"]) == 3 for r in rows)
    assert all(r["id"] not in r["negatives"] for r in rows)
    assert np.array(json.loads((out / "clusters.json").read_text())["caption_cells"]).shape == (
        128,
        3,
    )
    # Rerun without the option: the cells go with it.
    assert cli(argv) == 0
    assert "caption_cells" not in json.loads((out / "clusters.json").read_text())
    # Errors are sentences with exit code 2.
    assert cli([*argv[:5], "--out", str(tmp_path / "x"), "--filter", "guide"]) == 2
    assert "--guide-checkpoint" in capsys.readouterr().err
    assert cli([*argv[:5], "--out", str(tmp_path / "y"), "--cluster-text-neighbours", "2"]) == 2
    assert "cluster_text_neighbours needs clusters > 0" in capsys.readouterr().err
    assert cli(["mine", "--data", "missing.jsonl", "--checkpoint", "x.pt", "--out", "o"]) == 2


def test_clipserve_mine_lexical(tiny_data, micro_checkpoint: Path, tmp_path: Path, capsys) -> None:
    from clipserve.cli.main import main as cli

    records = read_manifest(tiny_data.train)
    out = tmp_path / "mined"
    argv = ["mine", "--data", str(tiny_data.train), "--checkpoint", str(micro_checkpoint)]
    argv += ["--out", str(out), "--quiet"]
    assert cli([*argv, "--filter", "lexical", "--lexical-neighbours", "4"]) == 0
    assert "visual words" in capsys.readouterr().out
    lex = json.loads((out / "lexical.json").read_text())
    assert lex["format"] == "clipserve-lexical/1" and lex["ids"] == [r.id for r in records]
    assert set(lex["vocabulary"]) <= set(lex["ratios"])
    assert all(lex["ratios"][w] >= 1.5 for w in lex["vocabulary"])
    assert np.array(lex["image_neighbours"]).shape == (128, 4)
    back = read_mined(out, records)
    assert back.caption_words is not None and back.image_neighbours is not None
    assert back.image_neighbours.shape == (128, 4)
    for row, ids in zip(back.caption_words.tolist(), lex["caption_words"], strict=True):
        assert [i for i in row if i >= 0] == ids
    # --lexical writes the inputs without filtering with them; a plain rerun removes them.
    assert cli([*argv, "--lexical", "--lexical-neighbours", "0"]) == 0
    assert json.loads((out / "lexical.json").read_text())["image_neighbours"] == []
    assert read_mined(out, records).image_neighbours is None
    assert cli(argv) == 0
    assert not (out / "lexical.json").exists()
    assert cli([*argv, "--lexical", "--lexical-neighbours", "-1"]) == 2
    assert "lexical_neighbours must be 0 or more" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_with_the_lexical_estimator_mines_its_inputs(
    tiny_data, micro_checkpoint: Path, tmp_path: Path
) -> None:
    from clipserve.training.config import config_from_dict
    from clipserve.training.train import train

    def cfg(out: Path, **sampling):
        raw = {
            "model": {"name": "clipserve-micro", "pretrained": str(micro_checkpoint)},
            "data": {"train": str(tiny_data.train), "batch_size": 32},
            "optim": {"lr": 1e-3, "max_steps": 2},
            "loss": {"estimator": "lexical"},
            "sampling": {"lexical_neighbours": 4, **sampling},
            "run": {"output_dir": str(out), "device": "cpu", "progress": False,
                    "log_every": 1, "threads": 1},
        }  # fmt: skip
        return config_from_dict(raw)

    # Random batches: training mines the words with its starting weights, then counts.
    train(cfg(tmp_path / "r"))
    lex = json.loads((tmp_path / "r" / "mined" / "epoch_0000" / "lexical.json").read_text())
    assert np.array(lex["image_neighbours"]).shape == (128, 4)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert "fn_f1" in rows[0] and rows[0]["fn_masked_positives"] == 0
    # Mined files without the words: a sentence saying how to mine them.
    plain = tmp_path / "plain"
    from clipserve.cli.main import main as cli

    argv = ["mine", "--data", str(tiny_data.train), "--checkpoint", str(micro_checkpoint)]
    assert cli([*argv, "--out", str(plain), "--quiet"]) == 0
    with pytest.raises(ValueError, match="mine with --lexical"):
        train(cfg(tmp_path / "m", mined=str(plain)))


@pytest.mark.slow
def test_mine_with_an_onnx_bundle_matches_the_checkpoint(
    tiny_data, tiny_checkpoint: Path, tiny_bundle: Path
) -> None:
    from clipserve.training.mining.embed import embed_with_bundle, embed_with_checkpoint

    records = read_manifest(tiny_data.test)
    t1, i1 = embed_with_checkpoint(tiny_checkpoint, records, progress=False)
    t2, i2 = embed_with_bundle(tiny_bundle, records, progress=False)
    np.testing.assert_allclose(t1, t2, atol=2e-3)
    np.testing.assert_allclose(i1, i2, atol=2e-3)


def _train_cfg(data: synth.SynthPaths, ckpt: Path, out: Path, **sampling):
    from clipserve.training.config import config_from_dict

    raw = {
        "model": {"name": "clipserve-micro", "pretrained": str(ckpt)},
        "data": {"train": str(data.train), "val": str(data.test), "batch_size": 32},
        "optim": {"lr": 1e-3, "max_steps": 4},
        "loss": {"estimator": "margin", "margin": 0.05},
        "sampling": {"mode": "mined_negatives", "filter": "margin", **sampling},
        "run": {"output_dir": str(out), "device": "cpu", "progress": False, "log_every": 2,
                "save_every_steps": 2, "threads": 1},
    }  # fmt: skip
    return config_from_dict(raw)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # three short trainings; minutes when the machine is shared
def test_fine_tune_with_mined_negatives_and_a_filter_resumes_exactly(
    tiny_data, micro_checkpoint: Path, tmp_path: Path
) -> None:
    from clipserve.training.train import train

    cfg = _train_cfg(tiny_data, micro_checkpoint, tmp_path / "full", remine_every_epochs=1)
    full = train(cfg)
    assert full.step == 4 and full.eval_metrics is not None
    assert "t2i_semantic_R@1" in full.eval_metrics
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert "fn_f1" in rows[0] and rows[0]["fn_masked_positives"] == 0
    # 128 items, 8 anchors (+3 negatives each) per batch: 16 steps an epoch, so one mining.
    assert (tmp_path / "full" / "mined" / "epoch_0000" / "negatives.jsonl").is_file()

    cut = _train_cfg(tiny_data, micro_checkpoint, tmp_path / "cut", remine_every_epochs=1)
    train(cut, stop_after=2)
    resumed = train(cut)
    assert resumed.resumed and resumed.step == 4
    a = torch.load(full.checkpoint, weights_only=False)["model"]
    b = torch.load(resumed.checkpoint, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_remining_every_epoch_writes_one_mining_per_epoch(
    tiny_data, micro_checkpoint: Path, tmp_path: Path
) -> None:
    from clipserve.training.config import config_from_dict
    from clipserve.training.train import train

    raw = {
        "model": {"name": "clipserve-micro", "pretrained": str(micro_checkpoint)},
        "data": {"train": str(tiny_data.train), "batch_size": 32},
        "optim": {"lr": 1e-3, "max_steps": 5},  # 4 steps an epoch: epochs 0 and 1
        "loss": {"estimator": "cluster"},
        "sampling": {"mode": "hard_batches", "remine_every_epochs": 1, "clusters": 4,
                     "group_size": 8, "cluster_text_neighbours": 3},
        "run": {"output_dir": str(tmp_path / "r"), "device": "cpu", "progress": False,
                "threads": 1},
    }  # fmt: skip
    train(config_from_dict(raw))
    mined = sorted(p.name for p in (tmp_path / "r" / "mined").glob("epoch_*"))
    assert mined == ["epoch_0000", "epoch_0001"]
    plans = [
        json.loads((tmp_path / "r" / "mined" / m / "batch_plan.json").read_text())["groups"]
        for m in mined
    ]
    assert plans[0] != plans[1]  # the weights changed, so did the neighbourhoods
    for m in mined:  # each mining gave the captions their cells (1 own + 3 neighbours')
        cells = json.loads((tmp_path / "r" / "mined" / m / "clusters.json").read_text())
        assert np.array(cells["caption_cells"]).shape == (128, 4)


def test_guide_start_is_a_frozen_copy_of_the_starting_weights(
    tiny_data, micro_checkpoint: Path
) -> None:
    from clipserve.training.config import ModelConfig
    from clipserve.training.mining.embed import embed_with_checkpoint
    from clipserve.training.sampling.guide import guide_features, load_guide

    cfg = ModelConfig(name="clipserve-micro", pretrained=str(micro_checkpoint), guide="start")
    guide = load_guide(cfg, torch.device("cpu"))
    assert guide is not None
    assert not any(p.requires_grad for p in guide.model.parameters())
    records = read_manifest(tiny_data.test)[:8]
    gi, gt = guide_features(guide, records, torch.device("cpu"))
    text, image = embed_with_checkpoint(micro_checkpoint, records, progress=False)
    np.testing.assert_allclose(gi.numpy(), image, atol=1e-5)
    np.testing.assert_allclose(gt.numpy(), text, atol=1e-5)
    assert load_guide(ModelConfig(name="clipserve-micro"), torch.device("cpu")) is None


def test_guide_features_cache(
    tiny_data, micro_checkpoint: Path, tmp_path: Path, monkeypatch
) -> None:
    """data.cache_dir: the guide's features are read back exactly; other guide weights are
    another entry (the key follows the weights, not the file name)."""
    from clipserve.training.config import ModelConfig
    from clipserve.training.sampling import guide as guide_mod

    cfg = ModelConfig(name="clipserve-micro", pretrained=str(micro_checkpoint), guide="start")
    guide = guide_mod.load_guide(cfg, torch.device("cpu"))
    assert guide is not None
    records = read_manifest(tiny_data.test)[:8]
    want = guide_mod.guide_features(guide, records, torch.device("cpu"))
    got = guide_mod.guide_features(guide, records, torch.device("cpu"), cache_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert len(list(tmp_path.glob("guide-*.pt"))) == 1

    def no_embedding(*_a, **_k):
        raise AssertionError("the guide embedded the data again")

    monkeypatch.setattr(guide_mod, "embed_dataset", no_embedding)
    again = guide_mod.guide_features(guide, records, torch.device("cpu"), cache_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(want, again, strict=True))
    monkeypatch.undo()
    with torch.no_grad():
        guide.model.visual.conv1.weight.mul_(0.5)  # the image features change
    other = guide_mod.guide_features(guide, records, torch.device("cpu"), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("guide-*.pt"))) == 2
    assert not torch.equal(other[0], want[0])
