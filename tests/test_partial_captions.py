"""Under-specified captions: exact relevance ground truth, evaluation that uses it, and the
manifest reader's warning for keys it does not know."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipserve.training.data import synth
from clipserve.training.data.manifest import read_manifest
from clipserve.training.evaluate import relevance, relevance_labels, retrieval_metrics


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def partial_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[synth.SynthConfig, Path]:
    config = synth.SynthConfig(n=240, seed=3, n_tuples=60, holdout=0.2, partial_captions=0.6)
    root = tmp_path_factory.mktemp("partial")
    synth.generate(config, root, progress=False, workers=1)
    return config, root


def test_partial_captions_name_exactly_their_caption_labels(partial_set) -> None:
    _, root = partial_set
    items = _read(root / "train.jsonl") + _read(root / "test.jsonl")
    n_partial = 0
    vocab = {k: set(v) for k, v in synth.ATTRIBUTES.items()}
    for item in items:
        named = dict(part.split("=") for part in item["caption_labels"].split("|"))
        # Every named attribute is the image's own, so the caption is true of its image.
        assert all(item["attributes"][k] == v for k, v in named.items())
        words = set(item["caption"].replace(",", " ").replace("(", " ").replace(")", " ").split())
        for key, values in vocab.items():
            for value in values:
                mentioned = all(w in words for w in value.split("-"))
                if key == "position":  # "top left" etc.: only a named position is mentioned
                    mentioned = " ".join(value.split("-")) in item["caption"]
                if key in named and value == named[key]:
                    assert mentioned, (item["caption"], key)
                elif mentioned and key != "position":
                    # An unnamed attribute's words never appear (the noun is shape/object).
                    assert key in named, (item["caption"], key, value)
        n_partial += len(named) < len(synth.ATTRIBUTES)
    assert 0.4 * len(items) < n_partial < 0.8 * len(items)


def test_full_captions_unchanged_and_without_caption_labels(tmp_path: Path) -> None:
    base = synth.SynthConfig(n=60, seed=1, n_tuples=20)
    synth.generate(base, tmp_path / "a", progress=False, workers=1)
    assert all("caption_labels" not in row for row in _read(tmp_path / "a" / "train.jsonl"))
    assert (
        "partial_captions" not in json.loads((tmp_path / "a" / "synth.json").read_text())["config"]
    )
    # Images are the same whether or not captions are partial: separate random streams.
    part = synth.SynthConfig(n=60, seed=1, n_tuples=20, partial_captions=1.0)
    synth.generate(part, tmp_path / "b", progress=False, workers=1)
    for name in ("000000.png", "000037.png"):
        a = (tmp_path / "a" / "images" / name).read_bytes()
        assert a == (tmp_path / "b" / "images" / name).read_bytes()


def test_relevance_is_subset_of_image_attributes(partial_set) -> None:
    _, root = partial_set
    records = read_manifest(root / "test.jsonl")
    text_keys, image_keys, match = relevance_labels(records)
    assert match == "subset"
    rel = relevance(text_keys, image_keys, match)
    rows = _read(root / "test.jsonl")
    for t, row in enumerate(rows):
        named = dict(p.split("=") for p in row["caption_labels"].split("|"))
        expect = [all(o["attributes"][k] == v for k, v in named.items()) for o in rows]
        assert rel[t].tolist() == expect
        assert rel[t, t]  # a caption is always relevant to its own image


def test_semantic_metrics_use_subset_relevance() -> None:
    # Two images: red circle (0), blue circle (1). Caption 0 says "a circle" (matches both),
    # caption 1 says "a blue circle". Embeddings rank image 1 first for both captions.
    labels = ["colour=red|shape=circle", "colour=blue|shape=circle"]
    caps = ["shape=circle", "colour=blue|shape=circle"]
    text = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    image = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    m = retrieval_metrics(text, image, caps, labels, match="subset")
    assert m["t2i_R@1"] == 0.5  # instance: caption 0 found image 1, not its own
    assert m["t2i_semantic_R@1"] == 1.0  # but image 1 is a circle too
    assert m["t2i_semantic_R@1_chance"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    eq = retrieval_metrics(text, image, labels, labels)
    assert eq["t2i_semantic_R@1"] == 0.5
    with pytest.raises(ValueError, match="match"):
        relevance(caps, labels, "fuzzy")


def test_unknown_manifest_key_is_named_in_a_warning(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"not read here")
    path = tmp_path / "m.jsonl"
    rows = [
        {"image": "a.png", "caption": "x", "label": "colour=red"},
        {"image": "a.png", "caption": "y", "labels": "colour=red", "attributes": {}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match=r"'label' \(line 1, did you mean 'labels'\?\)"):
        records = read_manifest(path)
    assert records[0].labels is None and records[1].labels == "colour=red"


def test_known_keys_do_not_warn(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    path = tmp_path / "m.jsonl"
    row = {"id": "1", "image": "a.png", "caption": "x", "labels": "a", "caption_labels": "a"}
    path.write_text(json.dumps(row) + "\n")
    assert read_manifest(path)[0].caption_labels == "a"
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_coarse_captions_name_exactly_the_chosen_attributes(tmp_path: Path) -> None:
    coarse = synth.SynthConfig(n=80, seed=1, n_tuples=20, caption_attributes=("colour", "shape"))
    assert coarse.caption_attributes == ("shape", "colour")  # in ATTRIBUTES order
    synth.generate(coarse, tmp_path / "c", progress=False, workers=1)
    full = synth.SynthConfig(n=80, seed=1, n_tuples=20)
    synth.generate(full, tmp_path / "f", progress=False, workers=1)
    rows, plain = _read(tmp_path / "c" / "train.jsonl"), _read(tmp_path / "f" / "train.jsonl")
    for row, other in zip(rows, plain, strict=True):
        a = row["attributes"]
        assert row["caption_labels"] == f"colour={a['colour']}|shape={a['shape']}"
        assert a["colour"] in row["caption"] and a["shape"] in row["caption"]
        assert (
            a["size"] not in row["caption"]
            and " ".join(a["position"].split("-")) not in row["caption"]
        )
        # Same images, tuples and split: only the captions differ.
        drop = ("caption", "caption_labels")
        assert {k: v for k, v in row.items() if k not in drop} == {
            k: v for k, v in other.items() if k not in drop
        }
    meta = json.loads((tmp_path / "c" / "synth.json").read_text())
    assert meta["config"]["caption_attributes"] == ["shape", "colour"]
    assert synth.find_existing(coarse, tmp_path / "c") is not None  # reusable as written
    for bad, match in (
        ({"caption_attributes": ("colour", "hue")}, "distinct names"),
        ({"caption_attributes": tuple(synth.ATTRIBUTES)}, "fewer than all"),
        ({"caption_attributes": ("colour",), "partial_captions": 0.5}, "does not combine"),
    ):
        with pytest.raises(ValueError, match=match):
            synth.SynthConfig(n=80, n_tuples=20, **bad)
