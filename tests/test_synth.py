"""The synthetic data set: deterministic, ground truth exact, rendering faithful to it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipserve.cli import main as cli_main
from clipserve.training.data import cli as data_cli
from clipserve.training.data import synth


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[synth.SynthConfig, Path]:
    config = synth.SynthConfig(n=360, seed=7, n_tuples=40, image_size=64, holdout=0.2)
    root = tmp_path_factory.mktemp("synth")
    synth.generate(config, root, progress=False, workers=1)
    return config, root


@pytest.fixture(scope="module")
def items(dataset: tuple[synth.SynthConfig, Path]) -> list[dict]:
    _, root = dataset
    return _read(root / "train.jsonl") + _read(root / "test.jsonl")


def test_same_config_is_byte_identical_for_any_worker_count(tmp_path: Path) -> None:
    # 600 items = 3 render chunks, so the two-worker run really splits the work.
    config = synth.SynthConfig(n=600, seed=3, n_tuples=50, image_size=32)
    synth.generate(config, tmp_path / "a", progress=False, workers=1)
    synth.generate(config, tmp_path / "b", progress=False, workers=2)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(a) == 600 + 3
    assert a == b


def test_different_seed_differs(tmp_path: Path) -> None:
    for seed in (0, 1):
        config = synth.SynthConfig(n=200, seed=seed, n_tuples=20, image_size=32)
        synth.generate(config, tmp_path / str(seed), progress=False)
    a, b = _tree(tmp_path / "0"), _tree(tmp_path / "1")
    assert a.keys() == b.keys()
    assert a["train.jsonl"] != b["train.jsonl"]
    assert sum(a[k] != b[k] for k in a if k.startswith("images")) > 190


def test_tuple_count_balance_and_split(dataset, items) -> None:
    config, root = dataset
    train, test = _read(root / "train.jsonl"), _read(root / "test.jsonl")
    counts = Counter(item["labels"] for item in items)
    assert len(counts) == config.n_tuples
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len(test) == round(config.holdout * config.n)
    assert {i["labels"] for i in test} <= {i["labels"] for i in train}
    assert len({i["id"] for i in items}) == config.n

    meta = json.loads((root / "synth.json").read_text())
    assert meta["config"] == config.to_dict()
    listed = [t["labels"] for t in meta["tuples"]]
    assert listed == [synth.labels_key(t) for t in synth.draw_tuples(config)]
    assert set(listed) == set(counts)
    assert sum(t["n_train"] for t in meta["tuples"]) == len(train)
    assert set(meta["expected_false_negatives_per_anchor"]) == {"64", "128", "256"}


def test_full_product_when_n_tuples_is_zero() -> None:
    config = synth.SynthConfig(n=synth.FULL_PRODUCT, n_tuples=0)
    tuples = synth.draw_tuples(config)
    assert len({synth.labels_key(t) for t in tuples}) == synth.FULL_PRODUCT
    assert np.bincount(synth.assign_tuples(config)).tolist() == [1] * synth.FULL_PRODUCT
    # Single-item tuples cannot give one up to test without leaving train.
    assert not synth.split_test(config, synth.assign_tuples(config)).any()


def test_manifest_lines_follow_the_contract(dataset, items) -> None:
    _, root = dataset
    line = (root / "train.jsonl").read_text().splitlines()[0]
    record = json.loads(line)
    assert line == json.dumps(record, sort_keys=True)
    assert set(record) == {"id", "image", "caption", "labels", "attributes"}
    for item in items:
        attrs = item["attributes"]
        assert set(attrs) == set(synth.ATTRIBUTES)
        assert all(attrs[k] in synth.ATTRIBUTES[k] for k in attrs)
        assert item["labels"] == "|".join(f"{k}={attrs[k]}" for k in sorted(attrs))
        assert item["image"] == f"images/{item['id']}.png"


def test_captions_name_every_attribute_and_vary(items) -> None:
    for item in items:
        a = item["attributes"]
        for word in (a["shape"], a["colour"], a["size"], a["position"].replace("-", " ")):
            assert word in item["caption"], (word, item["caption"])
    # Paraphrases: the same tuple gets different captions.
    by_tuple: dict[str, set[str]] = {}
    for item in items:
        by_tuple.setdefault(item["labels"], set()).add(item["caption"])
    assert min(len(c) for c in by_tuple.values()) >= 2
    assert len({c for cs in by_tuple.values() for c in cs}) > 6 * len(by_tuple) // 2


def _foreground(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [H, W, 3] and the mask [H, W] of saturated ones: the background is pure grey."""
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return pixels, spread > 60


def test_rendering_follows_ground_truth(dataset, items) -> None:
    config, root = dataset
    palette = {name: np.array(rgb, dtype=np.float32) for name, rgb in synth.COLOURS.items()}
    areas: dict[tuple[str, str], list[int]] = {}
    for item in items:
        with Image.open(root / item["image"]) as im:
            assert im.size == (config.image_size, config.image_size)
            assert im.mode == "RGB"
        pixels, mask = _foreground(root / item["image"])
        attrs = item["attributes"]
        assert mask.sum() > 10

        # Colour: the mean saturated pixel is nearest the tuple's palette colour.
        mean = pixels[mask].mean(axis=0)
        nearest = min(palette, key=lambda c: float(np.linalg.norm(palette[c] - mean)))
        assert nearest == attrs["colour"], item

        # Position: the shape's centroid sits in its region and never crosses a midline.
        ys, xs = np.nonzero(mask)
        cx, cy = xs.mean() / config.image_size, ys.mean() / config.image_size
        if attrs["position"] == "centre":
            assert abs(cx - 0.5) < 0.1 and abs(cy - 0.5) < 0.1, item
        else:
            vertical, horizontal = attrs["position"].split("-")
            assert (xs.max() < config.image_size / 2) == (horizontal == "left"), item
            assert (xs.min() >= config.image_size / 2) == (horizontal == "right"), item
            assert (ys.max() < config.image_size / 2) == (vertical == "top"), item
        areas.setdefault((attrs["shape"], attrs["size"]), []).append(int(mask.sum()))

    # Size: for every shape, the largest small instance is smaller than the smallest large one.
    for shape in synth.SHAPES:
        small, large = areas.get((shape, "small")), areas.get((shape, "large"))
        if small and large:
            assert max(small) < min(large), shape


def test_same_tuple_images_are_distinct(dataset, items) -> None:
    _, root = dataset
    by_tuple: dict[str, list[bytes]] = {}
    for item in items:
        by_tuple.setdefault(item["labels"], []).append((root / item["image"]).read_bytes())
    for images in by_tuple.values():
        assert len(set(images)) == len(images)


def test_cli_full_product(tmp_path: Path) -> None:
    argv = ["synth", "--out", str(tmp_path), "--n", "400", "--tuples", "0", "--quiet"]
    assert data_cli.main([*argv, "--image-size", "32", "--holdout", "0.1"]) == 0
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["n_tuples"] == synth.FULL_PRODUCT
    assert meta["config"]["n_tuples"] is None


def test_expected_false_negatives() -> None:
    # 1000 items in 100 tuples of 10: each of the 127 others matches with p = 9/999.
    fn = synth.expected_false_negatives_per_anchor(128, 1000, 100)
    assert fn == pytest.approx(127 * 9 / 999)
    assert synth.expected_false_negatives_per_anchor(128, 1000, 1000) == 0.0

    # Against sampling: uneven counts, batches drawn without replacement.
    counts = [1, 2, 5, 9, 13]
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(4000):
        batch = labels[rng.permutation(len(labels))[:8]]
        hits.append(((batch[:, None] == batch[None, :]).sum() - len(batch)) / len(batch))
    expected = synth.expected_false_negatives_from_counts(8, counts)
    assert np.mean(hits) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n_tuples": synth.FULL_PRODUCT + 1}, "n_tuples must be between"),
        ({"n": 10, "n_tuples": 20}, "cannot cover 20 tuples"),
        ({"image_size": 16}, "image_size"),
        ({"holdout": 0.6}, "holdout"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synth.SynthConfig(**kwargs)


def test_interrupted_run_leaves_no_manifest(tmp_path: Path, monkeypatch) -> None:
    config = synth.SynthConfig(n=300, n_tuples=30, image_size=32)
    synth.generate(config, tmp_path, progress=False, workers=1)
    assert synth.find_existing(config, tmp_path) is not None

    real = synth._render_chunk
    calls = []

    def flaky(args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(args)

    monkeypatch.setattr(synth, "_render_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(config, tmp_path, progress=False, workers=1)
    assert not (tmp_path / "train.jsonl").exists()
    assert not (tmp_path / "synth.json").exists()
    assert synth.find_existing(config, tmp_path) is None


def test_regenerating_smaller_set_drops_stale_images(tmp_path: Path) -> None:
    synth.generate(synth.SynthConfig(n=200, n_tuples=20, image_size=32), tmp_path, progress=False)
    smaller = synth.SynthConfig(n=120, n_tuples=20, image_size=32)
    synth.generate(smaller, tmp_path, progress=False)
    assert len(list((tmp_path / "images").iterdir())) == 120
    assert synth.find_existing(smaller, tmp_path) is not None


def test_refuses_a_directory_that_is_not_a_synth_set(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a synth data set"):
        synth.generate(synth.SynthConfig(n=50, n_tuples=5), tmp_path, progress=False)


def test_cli_generates_then_reuses_then_forces(tmp_path: Path, capsys) -> None:
    out = tmp_path / "data"
    argv = ["synth", "--out", str(out), "--n", "200", "--tuples", "20", "--image-size", "32"]
    assert data_cli.main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 180 train + 20 test items over 20 tuples" in printed
    assert "expected false negatives per anchor at batch 128" in printed
    manifest = out / "train.jsonl"
    stamp = manifest.stat().st_mtime_ns

    assert data_cli.main([*argv, "--quiet"]) == 0
    assert "reusing" in capsys.readouterr().out
    assert manifest.stat().st_mtime_ns == stamp

    before = _tree(out)
    assert data_cli.main([*argv, "--quiet", "--force"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert _tree(out) == before

    assert data_cli.main(["info", str(out)]) == 0
    assert "180 train + 20 test" in capsys.readouterr().out


def test_cli_errors_exit_2(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "d")
    with pytest.raises(ValueError, match="positive"):
        data_cli.main(["synth", "--out", out, "--n", "0"])
    # Through the dispatcher: ValueError becomes a sentence and exit code 2.
    assert cli_main.main(["data", "synth", "--out", out, "--n", "0"]) == 2
    assert "clipserve data: error: n must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        data_cli.main(["synth", "--out", out, "--n", "many"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        data_cli.main(["synth", "--n", "10"])  # --out is required
    assert exc.value.code == 2
