"""The model bundle: the only contract between training and serving.

A bundle is a directory::

    manifest.json        this file's `Manifest`, as JSON
    image.onnx           image tower: pixel_values float32 [N,3,H,W] -> embeddings float32 [N,D]
    text.onnx            text tower:  input_ids int64 [N,L] (L <= context_length) -> [N,D]
    tokenizer/tokenizer.json   HF `tokenizers` file equivalent to open_clip's tokenizer
    image.int8.onnx ...  optional variants of the towers (see `Variant`), same inputs/outputs

Both towers output L2-normalised embeddings. This module has no torch dependency: training
writes the manifest with it and serving reads it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BUNDLE_FORMAT = "clipserve-bundle/1"
MANIFEST_NAME = "manifest.json"


class BundleError(Exception):
    """The bundle is missing, malformed, or its files do not match their hashes."""


@dataclass(frozen=True)
class TowerSpec:
    file: str  # relative to the bundle directory
    input_name: str
    output_name: str


DEFAULT_VARIANT = "default"
# Variant name -> numeric precision of its weights; "default" is the fp32 export itself.
VARIANT_PRECISION = {DEFAULT_VARIANT: "fp32", "fp16": "fp16", "int8": "int8"}


@dataclass(frozen=True)
class Variant:
    """Another build of the same two towers: same input/output names and dtypes (fp32 in and
    out for every variant), different weights precision. `device` says where it is meant to
    run: "gpu" (fp16: ONNX Runtime's CPU kernels do not cover it) or "any"."""

    image_file: str
    text_file: str
    precision: str  # "fp16" | "int8"
    device: str = "any"  # "any" | "gpu"
    note: str = ""  # how it was made and what was measured, informational


@dataclass(frozen=True)
class Manifest:
    model_name: str  # open_clip model name
    version: str  # content hash of the ONNX files; identifies the model everywhere
    embed_dim: int
    image_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str  # open_clip's eval transform: "shortest" (resize shortest side, center crop)
    interpolation: str  # "bicubic" | "bilinear"
    context_length: int  # max tokens including start/end tokens
    tokenizer_file: str  # relative path of the HF tokenizers JSON
    sot_token_id: int
    eot_token_id: int
    pad_token_id: int
    opset: int
    image: TowerSpec
    text: TowerSpec
    files: dict[str, str]  # relative path -> sha256 hex
    pretrained: str | None = None
    created_at: str = ""
    training: dict[str, Any] = field(default_factory=dict)  # config + metrics, informational
    format: str = BUNDLE_FORMAT
    variants: dict[str, Variant] = field(default_factory=dict)  # name -> variant (not "default")

    def variant_names(self) -> tuple[str, ...]:
        return (DEFAULT_VARIANT, *sorted(self.variants))

    def tower_files(self, variant: str = DEFAULT_VARIANT) -> tuple[str, str, str]:
        """(image file, text file, precision) of `variant`; BundleError naming the ones there."""
        if variant == DEFAULT_VARIANT:
            return self.image.file, self.text.file, VARIANT_PRECISION[DEFAULT_VARIANT]
        v = self.variants.get(variant)
        if v is None:
            raise BundleError(
                f"bundle has no {variant!r} variant; it has {', '.join(self.variant_names())} "
                f"(add one with `clipserve export --{variant}`)"
            )
        return v.image_file, v.text_file, v.precision

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != BUNDLE_FORMAT:
            raise BundleError(
                f"unsupported bundle format {data.get('format')!r}; expected {BUNDLE_FORMAT}"
            )
        try:
            data = dict(data)
            data["image"] = TowerSpec(**data["image"])
            data["text"] = TowerSpec(**data["text"])
            data["image_size"] = tuple(data["image_size"])
            data["mean"] = tuple(data["mean"])
            data["std"] = tuple(data["std"])
            data["variants"] = {k: Variant(**v) for k, v in data.get("variants", {}).items()}
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"malformed manifest: {exc}") from exc


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and (optionally) hash-check a bundle. Raises BundleError with what is wrong."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a model bundle: {MANIFEST_NAME} not found")
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: invalid JSON ({exc})") from exc
    if verify:
        for rel, digest in manifest.files.items():
            f = bundle_dir / rel
            if not f.is_file():
                raise BundleError(f"bundle file missing: {f}")
            if sha256_file(f) != digest:
                raise BundleError(f"bundle file {f} does not match its sha256 in the manifest")
    return manifest
