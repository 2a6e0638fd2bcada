"""The `lexical` estimator and its mined inputs: visual words, caption word ids, the rule on a
hand example, and the whole idea on synthetic data with exact relevance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipserve.training.data import synth
from clipserve.training.data.manifest import read_manifest
from clipserve.training.losses import LossBatch, LossConfig
from clipserve.training.losses.estimators import ESTIMATORS, EstimatorInput, truth_matrices
from clipserve.training.losses.estimators.lexical import entails
from clipserve.training.mining.lexical import (
    caption_word_ids,
    lexical_inputs,
    word_ratios,
    words,
)
from clipserve.training.mining.neighbours import exact_neighbours
from clipserve.training.sampling.side_inputs import ItemTable, build_item_table


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _lexical(batch: LossBatch, n: int, **cfg) -> tuple[torch.Tensor, torch.Tensor]:
    fn = ESTIMATORS["lexical"](LossConfig(estimator="lexical", **cfg))
    cos = torch.zeros(n, n)
    return fn(EstimatorInput(cos, cos, 0, batch, 0))


def test_words_are_lower_cased_letter_and_digit_runs() -> None:
    assert words("A Red-circle, 2 of_them!") == ["a", "red", "circle", "2", "of", "them"]
    assert words("Ünïcode café") == ["ünïcode", "café"]


def test_visual_words_are_those_whose_images_gather() -> None:
    # 120 items in 6 classes; each caption names its class's colour inside template words
    # that every class uses ("a picture of"), or that half the items use at random ("nice").
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 6
    colours = ["red", "green", "blue", "cyan", "pink", "gold"]
    image = _unit(3 * np.eye(6)[labels] + 0.5 * rng.standard_normal((120, 6)))
    captions = [
        f"a picture of a {'nice ' if rng.random() < 0.5 else ''}{colours[c]} thing" for c in labels
    ]
    ratios = word_ratios(captions, image)
    for c in colours:
        assert ratios[c] > 2.0
    for w in ("a", "picture", "of", "thing", "nice"):
        assert ratios[w] < 1.5, (w, ratios[w])
    got = lexical_inputs(captions, image, neighbours=3, visual_ratio=1.5)
    assert set(got.vocabulary) == set(colours)
    ids = got.caption_words
    assert ids.shape == (120, 1)  # one visual word per caption
    assert [got.vocabulary[i] for i in ids[:6, 0]] == [colours[c] for c in labels[:6]]
    assert got.image_neighbours is not None
    assert got.image_neighbours.tolist() == exact_neighbours(image, 3).tolist()
    assert lexical_inputs(captions, image, 0, 1.5).image_neighbours is None
    # ratio 0 keeps every word.
    assert len(lexical_inputs(captions, image, 0, 0.0).vocabulary) == len(ratios)
    with pytest.raises(ValueError, match="3 captions but 120 images"):
        word_ratios(captions[:3], image)


def test_caption_word_ids_are_sorted_unique_and_padded() -> None:
    vocab = ["red", "circle", "large"]
    got = caption_word_ids(["a large red circle", "red red", "an object", "circle"], vocab)
    assert got.tolist() == [[0, 1, 2], [0, -1, -1], [-1, -1, -1], [1, -1, -1]]
    assert caption_word_ids(["none here"], vocab).tolist() == [[-1]]


def test_entails_is_word_containment() -> None:
    a = torch.tensor([[0, 1], [2, -1], [-1, -1]])
    b = torch.tensor([[0, 1, 2], [1, -1, -1], [7, -1, -1]])
    # A caption with no word entails nothing; padding never counts as a word.
    assert entails(a, b).tolist() == [[True, False, False], [True, False, False], [False] * 3]


# Visual-word ids: 0 red, 1 circle, 2 large, 3 blue. Caption 3 ("an object") has none.
WORDS = torch.tensor([[0, 1, -1], [0, 1, 2], [1, 3, -1], [-1, -1, -1]])


def test_lexical_rule_on_a_hand_example() -> None:
    i2t, t2i = _lexical(LossBatch(caption_words=WORDS), 4)
    # t2i[c, i]: image i's own caption holds every visual word of caption c.
    assert t2i.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert torch.equal(i2t, t2i.T)  # the same (caption, image) pairs from the image's side
    # Image 3 says nothing itself; its two neighbours' captions are "large red circle" and
    # "red circle". Images 0-2 have neighbours captioned as they are.
    near = torch.stack([WORDS[[0, 0]], WORDS[[1, 1]], WORDS[[2, 2]], WORDS[[1, 0]]])
    i2t, t2i = _lexical(LossBatch(caption_words=WORDS, neighbour_words=near), 4)
    assert t2i.tolist() == [[1, 1, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert torch.equal(i2t, t2i.T)
    # Local rows (local_loss): rows 2-3 of the same relation, both directions.
    fn = ESTIMATORS["lexical"](LossConfig(estimator="lexical"))
    cos = torch.zeros(2, 4)
    b = LossBatch(caption_words=WORDS, neighbour_words=near)
    local_i2t, local_t2i = fn(EstimatorInput(cos, cos, 2, b, 0))
    assert torch.equal(local_t2i, t2i[2:]) and torch.equal(local_i2t, i2t[2:])
    # "large red circle" has one of image 3's two votes: not a majority of 0.75.
    _, t2i = _lexical(LossBatch(caption_words=WORDS, neighbour_words=near), 4, lexical_votes=0.75)
    assert t2i[:, 3].tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="caption_words"):
        _lexical(LossBatch(), 4)
    with pytest.raises(ValueError, match="lexical_votes must be in"):
        LossConfig(estimator="lexical", lexical_votes=0.0)


def test_item_table_gives_each_image_its_neighbours_caption_words() -> None:
    table = ItemTable(n=4, caption_words=WORDS, image_neighbours=torch.tensor([[1], [0], [3], [2]]))
    batch = table.batch(torch.tensor([2, 0]))
    assert torch.equal(batch.caption_words, WORDS[[2, 0]])
    assert torch.equal(batch.neighbour_words, WORDS[torch.tensor([[3], [1]])])


def test_lexical_finds_the_matches_of_partial_captions() -> None:
    """Synthetic items (20 tuples, half the captions naming 1-3 attributes), images embedded
    by their attributes plus noise (what a guide that sees the attributes gives): the rule
    recovers the exact relevance with few mistakes, and the words it kept are the attribute
    words, none of the template's."""
    import tempfile
    from pathlib import Path

    cfg = synth.SynthConfig(n=400, seed=5, n_tuples=20, holdout=0.0, partial_captions=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        paths = synth.generate(cfg, Path(tmp), progress=False, workers=1).paths
        records = read_manifest(paths.train)
    tags = [r.labels.split("|") for r in records]  # "colour=red|position=top-left|..."
    column = {t: i for i, t in enumerate(sorted({t for row in tags for t in row}))}
    onehot = np.zeros((len(records), len(column)))
    for i, row in enumerate(tags):
        onehot[i, [column[t] for t in row]] = 1.0
    rng = np.random.default_rng(1)
    image = _unit(onehot + 0.15 * rng.standard_normal(onehot.shape))
    got = lexical_inputs([r.caption for r in records], image, neighbours=10, visual_ratio=1.5)
    attribute_words = {w for t in column for w in words(t.split("=")[1])}
    assert set(got.vocabulary) <= attribute_words
    assert {"picture", "image", "there", "shape", "object", "the", "a"}.isdisjoint(got.vocabulary)
    table = build_item_table(records).replace(
        caption_words=torch.from_numpy(got.caption_words),
        image_neighbours=torch.from_numpy(got.image_neighbours),
    )
    rows = torch.arange(len(records))
    batch = table.batch(rows)
    _, t2i = _lexical(batch, len(records))
    truth = truth_matrices(batch, slice(0, len(records)))[1]
    off = ~torch.eye(len(records), dtype=torch.bool)
    pred, true = t2i.bool()[off], truth[off]
    tp = (pred & true).sum().item()
    precision, recall = tp / pred.sum().item(), tp / true.sum().item()
    assert precision > 0.9 and recall > 0.9, (precision, recall)
