"""Manifest reading (JSONL, CSV, base64 images, errors) and the image-text Dataset."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipserve.training.data.manifest import ImageTextDataset, Record, materialize, read_manifest
from clipserve.training.model import ModelSpec, create_model


def _png(colour: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / "images" / f"{name}.png").write_bytes(_png(colour))
    return tmp_path


def test_jsonl_paths_relative_to_manifest_and_labels_canonical(images_dir: Path) -> None:
    path = _write_jsonl(
        images_dir / "m.jsonl",
        [
            {"id": "a", "image": "images/red.png", "caption": "red", "labels": ["z=1", "a=2"]},
            {"image": "images/blue.png", "caption": "blue", "labels": "colour=blue"},
            {"image": "images/blue.png", "caption": "no labels"},
        ],
    )
    recs = read_manifest(path)
    assert [r.id for r in recs] == ["a", "1", "2"]  # ids default to the record index
    assert recs[0].image_path == images_dir / "images" / "red.png"
    assert recs[0].labels == "a=2|z=1"
    assert recs[1].labels == "colour=blue"
    assert recs[2].labels is None
    assert recs[0].open_image().getpixel((0, 0)) == (255, 0, 0)


def test_jsonl_image_b64_decodes_to_rgb(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 200).save(buf, format="PNG")  # greyscale: must come back as RGB
    row = {"image_b64": base64.b64encode(buf.getvalue()).decode(), "caption": "grey"}
    (rec,) = read_manifest(_write_jsonl(tmp_path / "m.jsonl", [row]))
    assert rec.image_path is None and rec.image_bytes is not None
    img = rec.open_image()
    assert img.mode == "RGB" and img.getpixel((3, 3)) == (200, 200, 200)


def test_csv_manifest(images_dir: Path) -> None:
    path = images_dir / "m.csv"
    path.write_text(
        "image,caption,labels,extra\n"
        "images/red.png,a red square,colour=red,x\n"
        'images/blue.png,"a blue, square",,y\n'
    )
    with pytest.warns(UserWarning, match="unknown key.*'extra'"):
        recs = read_manifest(path)
    assert [r.id for r in recs] == ["0", "1"]
    assert recs[1].caption == "a blue, square"
    assert recs[0].labels == "colour=red" and recs[1].labels is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"image": "a.png", "caption": "x"}', "{not json"], r"m.jsonl:2: invalid JSON"),
        (['{"image": "a.png"}'], r"m.jsonl:1: missing or empty 'caption'"),
        (['{"caption": "x"}'], r"m.jsonl:1: missing 'image' or 'image_b64'"),
        (['{"image_b64": "@@@", "caption": "x"}'], r"m.jsonl:1: 'image_b64' is not valid"),
        (['{"image": "a.png", "caption": "x", "labels": 3}'], r"m.jsonl:1: labels must be"),
        (["[1, 2]"], r"m.jsonl:1: expected a JSON object"),
        (
            [
                '{"id": 7, "image": "a.png", "caption": "x"}',
                "",
                '{"id": "7", "image": "b.png", "caption": "y"}',
            ],
            r"m.jsonl:3: duplicate id '7' \(first on line 1\)",
        ),
        ([""], r"no records"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        read_manifest(path)


def test_csv_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("img,caption\na.png,x\n")
    with pytest.raises(ValueError, match="header must include 'image' and 'caption'"):
        read_manifest(path)
    path.write_text("image,caption\na.png,x\nb.png,\n")
    with pytest.raises(ValueError, match=r"m.csv:3: missing or empty 'caption'"):
        read_manifest(path)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl")


def test_record_needs_exactly_one_image_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Record("x", "cap")
    with pytest.raises(ValueError, match="exactly one"):
        Record("x", "cap", image_path=Path("a"), image_bytes=b"b")


def test_dataset_items_and_cache_equal_open_clip_preprocess(images_dir: Path) -> None:
    loaded = create_model(ModelSpec("clipserve-micro"))
    recs = read_manifest(
        _write_jsonl(
            images_dir / "m.jsonl",
            [
                {"image": "images/red.png", "caption": "a red square"},
                {"image": "images/blue.png", "caption": "a blue square"},
            ],
        )
    )
    ds = ImageTextDataset(recs, loaded.preprocess_val, loaded.tokenizer)
    image, tokens, index = ds[1]
    assert index == 1 and image.shape == (3, 32, 32) and tokens.shape == (32,)
    ref = loaded.preprocess_val(Image.open(images_dir / "images" / "blue.png").convert("RGB"))
    assert torch.equal(image, ref)
    assert torch.equal(tokens, loaded.tokenizer(["a blue square"])[0])
    images, all_tokens = materialize(ds)
    assert torch.equal(images[1], ref) and torch.equal(all_tokens[0], ds[0][1])
