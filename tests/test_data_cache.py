"""data.cache_dir: the on-disk cache of preprocessed images and guide features
(training/data/cache.py) returns exactly what it would compute, and a changed input is a new
entry, never a stale read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_train import make_fixture, micro_config

from clipserve.training.config import load_config
from clipserve.training.data import cache as cache_mod
from clipserve.training.data.manifest import ImageTextDataset, materialize, read_manifest
from clipserve.training.model import ModelSpec, create_model
from clipserve.training.train import train


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fixture(tmp_path_factory.mktemp("data"), per_class=2)


@pytest.fixture(scope="module")
def loaded():
    return create_model(ModelSpec("clipserve-micro"))


def _dataset(path: Path, loaded) -> ImageTextDataset:
    return ImageTextDataset(read_manifest(path), loaded.preprocess_val, loaded.tokenizer)


def test_images_read_back_bit_for_bit(manifest: Path, loaded, tmp_path: Path, monkeypatch) -> None:
    ds = _dataset(manifest, loaded)
    want_images, want_tokens = materialize(ds)
    images, tokens = cache_mod.materialize_cached(ds, tmp_path)
    assert torch.equal(images, want_images) and torch.equal(tokens, want_tokens)
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 1 and entries[0].startswith("images-")  # no temporary file left

    def no_decode(*_a, **_k):
        raise AssertionError("the second run decoded the images again")

    monkeypatch.setattr(cache_mod, "materialize", no_decode)
    again, _ = cache_mod.materialize_cached(_dataset(manifest, loaded), tmp_path)
    assert torch.equal(again, want_images)


def test_a_changed_image_or_transform_is_a_new_entry(
    loaded, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("changed")
    path = make_fixture(root, per_class=1)
    ds = _dataset(path, loaded)
    cache_dir = root / "cache"
    before, _ = cache_mod.materialize_cached(ds, cache_dir)
    # Repaint one image (new bytes, new size on disk, new mtime): the cache must not serve
    # the old pixels.
    first = ds.records[0].image_path
    assert first is not None
    Image.new("RGB", (32, 32), (0, 0, 0)).save(first)
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds2 = _dataset(path, loaded)
    after, _ = cache_mod.materialize_cached(ds2, cache_dir)
    assert torch.equal(after, materialize(ds2)[0])
    assert not torch.equal(after[0], before[0]) and torch.equal(after[1:], before[1:])
    assert len(list(cache_dir.glob("images-*.pt"))) == 2
    # A transform of another image size is another entry too.
    other = create_model(ModelSpec("clipserve-tiny-p16")).preprocess_val
    assert cache_mod.images_key(ds2.records, other) != cache_mod.images_key(
        ds2.records, ds2.transform
    )


def test_keys_do_not_depend_on_object_addresses(manifest: Path) -> None:
    records = read_manifest(manifest)

    def make():
        def convert(x):
            return x

        return [convert]  # a fresh function object: another address in its repr

    assert "0x" in repr(make())
    assert cache_mod.images_key(records, make()) == cache_mod.images_key(records, make())


def test_model_key_follows_the_weights(loaded) -> None:
    a = cache_mod.model_key(loaded.model)
    assert a == cache_mod.model_key(loaded.model)
    with torch.no_grad():
        p = next(loaded.model.parameters())
        p[0].add_(1e-3)
        b = cache_mod.model_key(loaded.model)
        p[0].sub_(1e-3)
    assert a != b


def test_training_with_a_cache_dir_trains_the_same(manifest: Path, tmp_path: Path) -> None:
    """A run that writes the cache, and one that reads it, end with the weights of a run
    without one; the train and val images are one entry each."""
    cache_dir = tmp_path / "cache"
    sections = {"data": {"val": str(manifest)}, "optim": {"max_steps": 4}}
    plain = train(micro_config(manifest, tmp_path / "plain", **sections))
    cached_cfg = {"data": {"val": str(manifest), "cache_dir": str(cache_dir)}}
    first = train(micro_config(manifest, tmp_path / "first", **(sections | cached_cfg)))
    assert len(list(cache_dir.glob("images-*.pt"))) == 1  # train and val: the same manifest
    second = train(micro_config(manifest, tmp_path / "second", **(sections | cached_cfg)))
    for result in (first, second):
        a = torch.load(plain.checkpoint, weights_only=False)["model"]
        b = torch.load(result.checkpoint, weights_only=False)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert result.eval_metrics == plain.eval_metrics


def test_cache_dir_is_a_path_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "sweep.toml"
    config.write_text('[data]\ntrain = "../data/train.jsonl"\ncache_dir = "../work/cache"\n')
    cfg = load_config(config)
    assert cfg.data.cache_dir is not None
    assert Path(cfg.data.cache_dir).resolve() == (tmp_path / "work" / "cache").resolve()
    assert load_config(None, ["data.train=x.jsonl"]).data.cache_dir is None
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="data.cache_dir .* is not a directory"):
        load_config(None, ["data.train=x.jsonl", f"data.cache_dir={tmp_path / 'afile'}"])
