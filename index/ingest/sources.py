"""What `clipserve index SOURCE` reads: a manifest (JSONL or CSV, as training uses) or a
folder of images with optional sidecar captions.

Items come out in a fixed order (manifest order; folder paths sorted), numbered from 0: the
ingest journal records progress as "the first N items are done", so the order must not change
between runs. `fingerprint()` detects a source that changed under a journal.

Manifest rows (see `clipserve.training.data`): ``image`` (a path relative to the manifest) or
``image_b64`` (JSONL only), ``caption``, optional ``id`` and ``labels``. A row with a caption
and no image is a text item. Folder: every ``*.png|jpg|jpeg|webp|bmp|gif|tif|tiff`` below it;
``cat.jpg``'s caption is the text of ``cat.txt`` beside it, when present.

A row that cannot be parsed is still an item: it carries `error` and goes to the rejects file.
Nothing here opens images; that happens in the pipeline, where a failure is also a reject.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class SourceItem:
    position: int  # 0-based, in source order
    key: str  # names the item in messages and the rejects file
    image_path: Path | None = None
    image_bytes: bytes | None = None
    caption: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # unparseable: rejected with this reason
    point_id: str = ""  # re-indexing: keep this id


class Source:
    """A manifest file or an image folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise FileNotFoundError(f"source {path} does not exist")
        self.is_folder = self.path.is_dir()
        self._files: list[Path] | None = None

    def __len__(self) -> int:
        if self.is_folder:
            return len(self._images())
        with self.path.open("rb") as f:
            lines = sum(1 for line in f if line.strip())
        return lines - 1 if self.path.suffix.lower() == ".csv" else lines

    def fingerprint(self) -> str:
        """Changes when the items would: the manifest's bytes, or the folder's file list
        with sizes (and the sidecar captions' sizes)."""
        h = hashlib.sha256()
        if self.is_folder:
            for p in self._images():
                cap = p.with_suffix(".txt")
                cap_size = cap.stat().st_size if cap.is_file() else -1
                h.update(
                    f"{p.relative_to(self.path).as_posix()}\0{p.stat().st_size}\0{cap_size}\n".encode()
                )
        else:
            with self.path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:32]

    def items(self) -> Iterator[SourceItem]:
        if self.is_folder:
            yield from self._folder_items()
        elif self.path.suffix.lower() == ".csv":
            yield from self._csv_items()
        else:
            yield from self._jsonl_items()

    # -- folders ----------------------------------------------------------------------------

    def _images(self) -> list[Path]:
        if self._files is None:
            self._files = sorted(
                (
                    p
                    for p in self.path.rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                ),
                key=lambda p: p.relative_to(self.path).as_posix(),
            )
        return self._files

    def _folder_items(self) -> Iterator[SourceItem]:
        for pos, p in enumerate(self._images()):
            rel = p.relative_to(self.path).as_posix()
            caption, error = None, None
            sidecar = p.with_suffix(".txt")
            if sidecar.is_file():
                try:
                    caption = sidecar.read_text(encoding="utf-8").strip() or None
                except (OSError, UnicodeDecodeError) as exc:
                    error = f"caption file {sidecar.name} unreadable: {exc}"
            yield SourceItem(pos, rel, image_path=p, caption=caption, payload={"path": rel},
                             error=error)  # fmt: skip

    # -- manifests --------------------------------------------------------------------------

    def _jsonl_items(self) -> Iterator[SourceItem]:
        with self.path.open(encoding="utf-8", errors="replace") as f:
            pos = 0
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("expected a JSON object")
                except ValueError as exc:
                    yield SourceItem(pos, f"line {lineno}", error=f"invalid JSON row: {exc}")
                else:
                    yield self._row_item(pos, f"line {lineno}", row, allow_b64=True)
                pos += 1

    def _csv_items(self) -> Iterator[SourceItem]:
        with self.path.open(newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"image", "caption"} & set(reader.fieldnames):
                raise ValueError(f"{self.path}: CSV header must include 'image' and/or 'caption'")
            for pos, row in enumerate(reader):
                yield self._row_item(pos, f"line {reader.line_num}", row, allow_b64=False)

    def _row_item(self, pos: int, where: str, row: dict[str, Any], allow_b64: bool) -> SourceItem:
        rid = row.get("id")
        key = f"{where} (id {rid})" if rid not in (None, "") else where
        payload: dict[str, Any] = {}
        if rid not in (None, ""):
            payload["id"] = str(rid)
        labels = row.get("labels")
        if isinstance(labels, list):
            labels = "|".join(sorted(str(v) for v in labels))
        if labels:
            payload["labels"] = str(labels)
        caption = row.get("caption")
        if caption is not None and not isinstance(caption, str):
            return SourceItem(pos, key, error="'caption' must be a string")
        caption = (caption or "").strip() or None
        image, b64 = row.get("image"), row.get("image_b64") if allow_b64 else None
        if image and b64:
            return SourceItem(pos, key, error="give either 'image' or 'image_b64', not both")
        if b64:
            try:
                data = base64.b64decode(str(b64), validate=True)
            except (binascii.Error, ValueError) as exc:
                return SourceItem(pos, key, error=f"'image_b64' is not valid base64 ({exc})")
            return SourceItem(pos, key, image_bytes=data, caption=caption, payload=payload)
        if image:
            path = Path(str(image)).expanduser()
            path = path if path.is_absolute() else self.path.parent / path
            return SourceItem(pos, key, image_path=path, caption=caption, payload=payload)
        if caption:
            return SourceItem(pos, key, caption=caption, payload=payload)
        return SourceItem(pos, key, error="row has neither an image nor a caption")
