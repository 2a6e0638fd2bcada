"""Image-caption manifests and the torch Dataset that trains on them.

Manifest contract (JSONL, one object a line, or CSV with a header row)::

    {"id": "000123", "image": "images/000123.png", "caption": "a small red circle ...",
     "labels": "colour=red|position=top-left|shape=circle|size=small"}

- ``image`` is relative to the manifest's directory (absolute paths are kept). JSONL rows may
  carry ``image_b64`` (base64-encoded image bytes) instead of ``image``.
- ``id`` defaults to the row's 0-based index; duplicate ids are rejected.
- ``labels`` is optional: a string, or (JSONL) a list of strings that is canonicalised to the
  sorted, "|"-joined form. Items with equal labels are semantically the same (true matches).
- ``caption_labels`` is optional, same forms: what the caption names when it names less than
  the image shows ("a red shape"). When a manifest has it, caption k is relevant to image a
  iff every "|"-separated part of caption_labels[k] is in labels[a] (missing on a row: the
  row's own labels). Without it relevance is equality of labels.
- CSV columns: image, caption, optional id, labels, caption_labels.
- Other keys are ignored with a warning that names them (a misspelt ``label`` would
  otherwise silently lose the semantic metrics); ``attributes`` (written by `synth`) is
  known and ignored.
"""

from __future__ import annotations

import base64
import binascii
import csv
import difflib
import io
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Record:
    """One image-caption pair. Exactly one of `image_path` / `image_bytes` is set."""

    id: str
    caption: str
    image_path: Path | None = None
    image_bytes: bytes | None = None
    labels: str | None = None
    caption_labels: str | None = None

    def __post_init__(self) -> None:
        if (self.image_path is None) == (self.image_bytes is None):
            raise ValueError(f"record {self.id!r} needs exactly one of image_path, image_bytes")

    def open_image(self) -> Image.Image:
        """Decode the image as RGB (PIL)."""
        if self.image_bytes is not None:
            with Image.open(io.BytesIO(self.image_bytes)) as img:
                return img.convert("RGB")
        assert self.image_path is not None
        with Image.open(self.image_path) as img:
            return img.convert("RGB")


def canonical_labels(value: Any) -> str | None:
    """None/"" -> None; a list of strings -> sorted "|"-joined; a string is kept as given."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return "|".join(sorted(value)) or None
    raise ValueError(f"labels must be a string or a list of strings, got {value!r}")


def _record_from_row(row: dict[str, Any], index: int, base: Path, allow_b64: bool) -> Record:
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("missing or empty 'caption'")
    rid = row.get("id")
    rid = str(index) if rid is None or rid == "" else str(rid)
    labels = canonical_labels(row.get("labels"))
    caption_labels = canonical_labels(row.get("caption_labels"))
    image = row.get("image")
    b64 = row.get("image_b64") if allow_b64 else None
    if image and b64:
        raise ValueError("give either 'image' or 'image_b64', not both")
    if b64:
        if not isinstance(b64, str):
            raise ValueError("'image_b64' must be a base64 string")
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"'image_b64' is not valid base64 ({exc})") from None
        return Record(rid, caption, image_bytes=data, labels=labels, caption_labels=caption_labels)
    if not isinstance(image, str) or not image:
        need = "'image' or 'image_b64'" if allow_b64 else "'image'"
        raise ValueError(f"missing {need}")
    path = Path(image).expanduser()
    return Record(
        rid,
        caption,
        image_path=path if path.is_absolute() else base / path,
        labels=labels,
        caption_labels=caption_labels,
    )


KNOWN_KEYS = ("id", "image", "image_b64", "caption", "labels", "caption_labels", "attributes")


def _warn_unknown(path: Path, unknown: dict[str, int]) -> None:
    """One warning per manifest naming every key the reader ignores (first line of each)."""
    if not unknown:
        return
    parts = []
    for key, lineno in sorted(unknown.items(), key=lambda kv: kv[1]):
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
        hint = f", did you mean {close[0]!r}?" if close else ""
        parts.append(f"{key!r} (line {lineno}{hint})")
    warnings.warn(
        f"{path}: ignoring unknown key(s) {', '.join(parts)}; known keys: {', '.join(KNOWN_KEYS)}",
        UserWarning,
        stacklevel=3,
    )


def _rows(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Yield (record index, 1-based file line, row) for JSONL or CSV."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"image", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: CSV header must include 'image' and 'caption'")
            for index, row in enumerate(reader):
                yield index, reader.line_num, row
        return
    with path.open(encoding="utf-8") as f:
        index = 0
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield index, lineno, row
            index += 1


def read_manifest(path: str | Path) -> list[Record]:
    """Read a JSONL (any suffix but .csv) or CSV manifest.

    Raises FileNotFoundError when the file is missing and ValueError naming the file and line
    for a bad row, a duplicate id or an empty manifest. Image files are not opened here.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    base = path.parent
    allow_b64 = path.suffix.lower() != ".csv"
    records: list[Record] = []
    seen: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for index, lineno, row in _rows(path):
        for key in row:
            if key not in KNOWN_KEYS and key is not None:
                unknown.setdefault(str(key), lineno)
        try:
            rec = _record_from_row(row, index, base, allow_b64)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
        if rec.id in seen:
            raise ValueError(
                f"{path}:{lineno}: duplicate id {rec.id!r} (first on line {seen[rec.id]})"
            )
        seen[rec.id] = lineno
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: manifest has no records")
    _warn_unknown(path, unknown)
    return records


class ImageTextDataset(Dataset):
    """(image tensor, token ids [context_length], index) per record.

    `transform` is an open_clip preprocess (PIL -> float tensor [3, H, W]); `tokenizer` is the
    open_clip tokenizer. Captions are tokenised once up front (cheap, and batched).
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.tokens = tokenizer([r.caption for r in self.records])  # [N, ctx] long

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = self.transform(self.records[index].open_image())
        return image, self.tokens[index], index


def materialize(dataset: ImageTextDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and transform every image once: (images [N, 3, H, W] float32, tokens [N, ctx]).

    Only valid for a deterministic transform (open_clip's preprocess_val); the result equals
    ``dataset[i]`` exactly, so the cached training path keeps eval/serving parity.
    """
    images = torch.stack([dataset.transform(r.open_image()) for r in dataset.records])
    return images, dataset.tokens
