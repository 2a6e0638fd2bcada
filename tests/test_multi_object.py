"""Several objects per image (`SynthConfig.objects`): the scenes, their pictures, and exact
relevance with attributes bound to their object, checked against the rule in words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipserve.training.data import synth
from clipserve.training.data.manifest import read_manifest
from clipserve.training.evaluate import relevance, relevance_labels
from clipserve.training.losses.estimators.oracle import truth_matrices
from clipserve.training.sampling.side_inputs import build_item_table


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[synth.SynthConfig, Path]:
    config = synth.SynthConfig(n=300, seed=4, n_tuples=60, holdout=0.2, partial_captions=0.6,
                               objects=2)  # fmt: skip
    root = tmp_path_factory.mktemp("scenes")
    synth.generate(config, root, progress=False, workers=1)
    return config, root


def _phrases(caption_labels: str) -> list[dict[str, str]]:
    return [dict(a.split("=") for a in tag.split("&")) for tag in caption_labels.split("|")]


def _matches(phrases: list[dict[str, str]], objects: list[dict[str, str]]) -> bool:
    """The rule in words: every object the caption describes is one of the image's."""
    return all(any(all(o[k] == v for k, v in p.items()) for o in objects) for p in phrases)


def test_scenes_are_distinct_objects_in_distinct_quadrants(scenes) -> None:
    config, root = scenes
    drawn = synth.draw_scenes(config)
    assert len(drawn) == config.n_tuples
    assert len({json.dumps(s, sort_keys=True) for s in drawn}) == len(drawn)
    for scene in drawn:
        where = [o["position"] for o in scene]
        assert len(scene) == 2 and len(set(where)) == 2
        assert set(where) <= set(synth.SCENE_POSITIONS)
    rows = _read(root / "train.jsonl") + _read(root / "test.jsonl")
    assert {json.dumps(r["attributes"], sort_keys=True) for r in rows} == {
        json.dumps(list(s), sort_keys=True) for s in drawn
    }


def test_captions_describe_their_own_image_and_name_what_they_say(scenes) -> None:
    _, root = scenes
    rows = _read(root / "train.jsonl") + _read(root / "test.jsonl")
    partial = 0
    for row in rows:
        phrases = _phrases(row["caption_labels"])
        assert _matches(phrases, row["attributes"])  # true of its own image
        for p in phrases:
            for k, v in p.items():
                assert v.replace("-", " ") in row["caption"], (row["caption"], k, v)
        partial += sum(len(p) for p in phrases) < 4 * len(row["attributes"])
    assert 0.4 * len(rows) < partial < 0.8 * len(rows)


def test_relevance_binds_attributes_to_their_object(scenes) -> None:
    _, root = scenes
    records = read_manifest(root / "test.jsonl")
    rows = _read(root / "test.jsonl")
    text_keys, image_keys, match = relevance_labels(records)
    rel = relevance(text_keys, image_keys, match)
    expect = np.array(
        [[_matches(_phrases(t["caption_labels"]), i["attributes"]) for i in rows] for t in rows]
    )
    np.testing.assert_array_equal(rel, expect)
    assert expect.sum() > len(rows)  # there are false negatives to find

    # The oracle estimator of training reads the same truth.
    table = build_item_table(records)
    n = len(records)
    _, t2i = truth_matrices(table.batch(torch.arange(n), 0), slice(0, n))
    np.testing.assert_array_equal(t2i.numpy(), expect)


def test_a_red_circle_is_not_a_red_square_beside_a_blue_circle() -> None:
    scene = (
        {"shape": "square", "colour": "red", "size": "small", "position": "top-left"},
        {"shape": "circle", "colour": "blue", "size": "large", "position": "bottom-right"},
    )
    labels = set(synth.scene_labels(scene).split("|"))
    assert "colour=red&shape=circle" not in labels
    assert {"colour=red&shape=square", "colour=blue&shape=circle", "size=large"} <= labels
    assert len(labels) == 2 * 15  # every non-empty combination of each object's attributes
    assert synth.scene_labels(scene[:1]) == synth.labels_key(scene[0])  # one object: as before


def test_every_object_is_drawn_in_its_quadrant_and_colour(scenes) -> None:
    config, root = scenes
    palette = {name: np.array(rgb, dtype=np.float32) for name, rgb in synth.COLOURS.items()}
    half = config.image_size // 2
    for row in _read(root / "train.jsonl")[:80]:
        with Image.open(root / row["image"]) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
        mask = pixels.max(axis=2) - pixels.min(axis=2) > 60
        occupied = {o["position"]: o for o in row["attributes"]}
        for position in synth.SCENE_POSITIONS:
            vertical, horizontal = position.split("-")
            ys = slice(0, half) if vertical == "top" else slice(half, None)
            xs = slice(0, half) if horizontal == "left" else slice(half, None)
            quadrant = mask[ys, xs]
            if position not in occupied:
                assert quadrant.sum() == 0, (row["id"], position)
                continue
            assert quadrant.sum() > 10
            mean = pixels[ys, xs][quadrant].mean(axis=0)
            nearest = min(palette, key=lambda c: float(np.linalg.norm(palette[c] - mean)))
            assert nearest == occupied[position]["colour"], (row["id"], position)


def test_one_object_sets_are_unchanged_and_the_option_is_checked(tmp_path: Path) -> None:
    config = synth.SynthConfig(n=40, seed=2, n_tuples=10, partial_captions=0.5)
    assert "objects" not in config.to_dict()
    assert synth.draw_scenes(config) == [(t,) for t in synth.draw_tuples(config)]
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    t = synth.draw_tuples(config)[0]
    a = synth.render(t, 64, rng_a)
    assert a.tobytes() == synth.render_scene((t,), 64, rng_b).tobytes()
    with pytest.raises(ValueError, match="from 1 to 4"):
        synth.SynthConfig(n=40, n_tuples=10, objects=5)
    with pytest.raises(ValueError, match="from 1 to 4"):
        synth.SynthConfig(n=40, n_tuples=10, objects=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="give n_tuples"):
        synth.SynthConfig(n=40, n_tuples=None, objects=2)
    assert synth.scene_count(2) == 6 * 72**2  # 6 pairs of quadrants, 72 kinds of object each
    synth.SynthConfig(n=400, n_tuples=361, objects=2)  # more scenes than one-object tuples
    with pytest.raises(ValueError, match="between 1 and 360 "):
        synth.SynthConfig(n=400, n_tuples=361)
    with pytest.raises(ValueError, match="distinct positions"):
        synth.render_scene((t, t), 64, rng_a)
