"""`clipserve export`: turn a checkpoint (or an open_clip model) into a serving bundle.

    clipserve export CHECKPOINT --out BUNDLE [--opset 17] [--atol 1e-4]
    clipserve export --model ViT-B-32 [--pretrained TAG|PATH] --out BUNDLE
        [--int8] [--fp16] [--triton-repo DIR]

Both towers are exported with the dynamo exporter (``torch.onnx.export(..., dynamo=True,
dynamic_shapes=...)``). The TorchScript path (``dynamo=False``) still exists in torch 2.14
but bakes the traced sequence length into nn.MultiheadAttention's reshapes, so a text graph
traced at one length fails at any other. The text wrapper slices the positional embedding
and the causal mask to the input's length itself, because open_clip's ``CLIP.encode_text``
adds the full ``[context_length, D]`` tables. With a causal mask, padding after EOT cannot
change the EOT token's features, so serving may trim ids to the batch's longest text; the
parity check below proves it on every export by comparing trimmed ONNX runs against open_clip
on full-context input.

The bundle is written into a temporary sibling directory and renamed into place at the end,
so a failed export (including a failed parity check) never leaves a half bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip.tokenizer import SimpleTokenizer
from torch.export import Dim
from torchvision import transforms as T

from clipserve.serving.bundle import (
    MANIFEST_NAME,
    Manifest,
    TowerSpec,
    load_manifest,
    sha256_file,
)
from clipserve.training.export.attention import batch_first_attention
from clipserve.training.export.tokenizer import write_clip_tokenizer
from clipserve.training.export.variants import add_variants
from clipserve.training.model import LoadedModel, ModelSpec, create_model, load_checkpoint
from clipserve.training.towers import ImageTower, TextTower, text_parts

DEFAULT_OPSET = 18  # the dynamo exporter's native opset
MIN_OPSET = 18  # asked for less, the dynamo exporter silently writes 18 anyway
MAX_EXPORT_BATCH = 65536
DEFAULT_ATOL = 1e-4  # max abs difference allowed between ONNX and torch normalised embeddings
IMAGE_FILE, TEXT_FILE, TOKENIZER_FILE = "image.onnx", "text.onnx", "tokenizer/tokenizer.json"
IMAGE_INPUT, TEXT_INPUT, OUTPUT = "pixel_values", "input_ids", "embeddings"


@dataclass(frozen=True)
class Preprocess:
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str
    interpolation: str


def preprocess_config(preprocess_val: Any) -> Preprocess:
    """Read open_clip's eval transform (Resize shortest -> CenterCrop -> RGB -> ToTensor ->
    Normalize); ValueError for any other pipeline, which serving could not reproduce."""
    steps = list(getattr(preprocess_val, "transforms", []))
    resize = next((s for s in steps if isinstance(s, T.Resize)), None)
    crop = next((s for s in steps if isinstance(s, T.CenterCrop)), None)
    norm = next((s for s in steps if isinstance(s, T.Normalize)), None)
    if resize is None or crop is None or norm is None or not isinstance(resize.size, int | list):
        raise ValueError(f"unsupported eval transform (need Resize+CenterCrop): {preprocess_val}")
    size = resize.size if isinstance(resize.size, int) else resize.size[0]
    if isinstance(resize.size, list) and len(resize.size) != 1:
        raise ValueError(f"unsupported eval transform (squash resize): {preprocess_val}")
    modes = {T.InterpolationMode.BICUBIC: "bicubic", T.InterpolationMode.BILINEAR: "bilinear"}
    if resize.interpolation not in modes:
        raise ValueError(f"unsupported interpolation {resize.interpolation}")
    ch, cw = crop.size
    if (ch, cw) != (size, size):
        raise ValueError(f"unsupported eval transform (resize {size}, crop {crop.size})")
    return Preprocess(
        image_size=(int(ch), int(cw)),
        mean=tuple(float(m) for m in norm.mean),  # type: ignore[arg-type]
        std=tuple(float(s) for s in norm.std),  # type: ignore[arg-type]
        resize_mode="shortest",
        interpolation=modes[resize.interpolation],
    )


def export_towers(model: Any, out_dir: Path, image_size: tuple[int, int], opset: int) -> None:
    """Write image.onnx and text.onnx (dynamic batch; dynamic sequence for text)."""
    model.eval()
    ctx = int(
        model.context_length if hasattr(model, "context_length") else model.text.context_length
    )
    pixels = torch.randn(2, 3, *image_size)
    ids = torch.zeros(2, ctx, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, 320, 49407
    batch = Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    sequence = Dim("sequence", min=2, max=ctx)
    towers = (
        (ImageTower(model), pixels, IMAGE_FILE, IMAGE_INPUT, {0: batch}),
        (TextTower(model), ids, TEXT_FILE, TEXT_INPUT, {0: batch, 1: sequence}),
    )
    with batch_first_attention(model):  # swapped for both towers, put back after
        for tower, example, file, input_name, dims in towers:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    tower.eval(),
                    (example,),
                    dynamo=True,
                    input_names=[input_name],
                    output_names=[OUTPUT],
                    dynamic_shapes=(dims,),
                    opset_version=opset,
                    verbose=False,
                )
            if program is None:  # pragma: no cover - dynamo=True always returns a program
                raise RuntimeError("torch.onnx.export returned no program")
            # One self-contained file per tower (protobuf limit: 2 GiB, enough through ViT-L).
            program.save(str(out_dir / file), external_data=False)
    for file in (IMAGE_FILE, TEXT_FILE):
        fuse_tower(out_dir / file)


def fuse_tower(path: Path) -> None:
    """Rewrite a tower with ONNX Runtime's offline transformer fusions (bias + GELU, layer
    norm; attention is left as exported). ORT's own session-time optimisation does not find
    these in the exported graph; fused, the ViT-B-32 image tower runs ~20 % faster on one CPU
    thread and the text tower ~4 % (docs/benchmarks.md). The parity check of every export
    covers the rewritten graphs."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("vit")
    options.enable_attention = False  # the causal text mask is not a pattern it knows
    # Its symbolic shape inference fails on these graphs, as expected (the fusions used here
    # do not need it); it says so on stdout and through several module-level loggers.
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fused = optimize_model(
                str(path),
                model_type="vit",
                num_heads=0,
                hidden_size=0,
                opt_level=0,
                optimization_options=options,
            )
        fused.save_model_to_file(str(path))
    finally:
        logging.disable(previous)


@dataclass(frozen=True)
class ParityRow:
    tower: str
    batch: int
    seq_len: int | None  # text only: the trimmed length fed to ONNX
    max_abs_diff: float
    min_cosine: float


def _sample_ids(n: int, length: int, ctx: int, sot: int, eot: int, gen: torch.Generator):
    """n rows: SOT, random ids, EOT at position length-1, zeros after -> [n, ctx]."""
    ids = torch.zeros(n, ctx, dtype=torch.long)
    ids[:, 0] = sot
    ids[:, 1 : length - 1] = torch.randint(1, sot, (n, length - 2), generator=gen)
    ids[:, length - 1] = eot
    return ids


def check_parity(
    model: Any, bundle_dir: Path, manifest: Manifest, atol: float = DEFAULT_ATOL
) -> list[ParityRow]:
    """Compare ONNX Runtime (CPU) against open_clip in torch; ValueError beyond `atol`.

    Text runs feed ONNX ids trimmed to the batch's longest text and torch the full
    context-length padding, so trimming is verified together with the export.
    """
    import onnxruntime as ort

    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(bundle_dir / name), providers=["CPUExecutionProvider"])

    image_sess, text_sess = session(manifest.image.file), session(manifest.text.file)
    gen = torch.Generator().manual_seed(0)
    rows: list[ParityRow] = []

    def row(tower: str, batch: int, seq: int | None, ref: torch.Tensor, got: np.ndarray) -> None:
        r = ref.numpy()
        diff = float(np.abs(r - got).max())
        cos = float((r * got).sum(-1).min())  # both sides are unit vectors
        rows.append(ParityRow(tower, batch, seq, diff, cos))

    ctx, sot, eot = manifest.context_length, manifest.sot_token_id, manifest.eot_token_id
    with torch.no_grad():
        for batch in (1, 3, 8):
            pixels = torch.randn(batch, 3, *manifest.image_size, generator=gen)
            ref = model.encode_image(pixels, normalize=True)
            (got,) = image_sess.run(None, {IMAGE_INPUT: pixels.numpy()})
            row("image", batch, None, ref, got)
        for batch, longest in ((1, 2), (1, ctx), (4, 7), (5, ctx // 2), (8, ctx)):
            lengths = [longest] + [
                int(x) for x in torch.randint(2, longest + 1, (batch - 1,), generator=gen)
            ]
            ids = torch.cat([_sample_ids(1, n, ctx, sot, eot, gen) for n in lengths])
            ref = model.encode_text(ids, normalize=True)
            (got,) = text_sess.run(None, {TEXT_INPUT: ids[:, :longest].numpy()})
            row("text", batch, longest, ref, got)
    worst = max(r.max_abs_diff for r in rows)
    if not np.isfinite(worst) or worst > atol:
        raise ValueError(
            f"ONNX parity check failed: max abs diff {worst:.3g} > atol {atol:g}\n"
            + format_parity(rows)
        )
    return rows


def format_parity(rows: Sequence[ParityRow]) -> str:
    lines = [f"{'tower':<6} {'batch':>5} {'seq':>4} {'max_abs_diff':>13} {'min_cosine':>11}"]
    for r in rows:
        seq = "-" if r.seq_len is None else str(r.seq_len)
        lines.append(
            f"{r.tower:<6} {r.batch:>5} {seq:>4} {r.max_abs_diff:>13.3e} {r.min_cosine:>11.7f}"
        )
    return "\n".join(lines)


def _training_info(state: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe, non-weight parts of a checkpoint (step, config, metrics...)."""
    info: dict[str, Any] = {}
    for key, value in state.items():
        if key in ("model", "optimizer", "scaler", "scheduler", "format"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        info[key] = value
    return info


def export_bundle(
    loaded: LoadedModel,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    training: dict[str, Any] | None = None,
    force: bool = False,
    variants: Sequence[str] = (),
) -> tuple[Manifest, list[ParityRow]]:
    """Export `loaded` to a bundle directory at `out`; returns its manifest and parity rows.

    Raises ValueError for an unsupported model, an existing `out` without `force`, or a
    failed parity check; `out` is untouched in every failure case.
    """
    out = Path(out)
    if opset < MIN_OPSET:
        raise ValueError(
            f"opset {opset} is too old: the dynamo exporter emits opset >= {MIN_OPSET}"
        )
    if out.exists() and not force:
        raise ValueError(f"{out} already exists (use --force to replace it)")
    tokenizer = loaded.tokenizer
    if not isinstance(tokenizer, SimpleTokenizer) or tokenizer.reduction_fn is not None:
        raise ValueError(f"only open_clip's CLIP BPE tokenizer is supported, not {tokenizer!r}")
    if tokenizer.clean_fn.__name__ != "_clean_lower":
        raise ValueError("only the tokenizer's default 'lower' cleaning is supported")
    pre = preprocess_config(loaded.preprocess_val)
    model = loaded.model.eval()
    text_parts(model)  # fail fast on unsupported text towers
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a bundle is read by the serving user
    try:
        export_towers(model, tmp, pre.image_size, opset)
        special = write_clip_tokenizer(tmp / TOKENIZER_FILE)
        if (special["sot"], special["eot"]) != (tokenizer.sot_token_id, tokenizer.eot_token_id):
            raise ValueError(f"tokenizer special ids {special} differ from open_clip's")
        files = {rel: sha256_file(tmp / rel) for rel in (IMAGE_FILE, TEXT_FILE, TOKENIZER_FILE)}
        version = hashlib.sha256((files[IMAGE_FILE] + files[TEXT_FILE]).encode()).hexdigest()
        with torch.no_grad():
            embed_dim = int(model.encode_image(torch.zeros(1, 3, *pre.image_size)).shape[-1])
        manifest = Manifest(
            model_name=loaded.spec.name,
            version=version[:12],
            embed_dim=embed_dim,
            image_size=pre.image_size,
            mean=pre.mean,
            std=pre.std,
            resize_mode=pre.resize_mode,
            interpolation=pre.interpolation,
            context_length=int(tokenizer.context_length),
            tokenizer_file=TOKENIZER_FILE,
            sot_token_id=special["sot"],
            eot_token_id=special["eot"],
            pad_token_id=special["pad"],
            opset=opset,
            image=TowerSpec(IMAGE_FILE, IMAGE_INPUT, OUTPUT),
            text=TowerSpec(TEXT_FILE, TEXT_INPUT, OUTPUT),
            files=files,
            pretrained=loaded.spec.pretrained,
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            training=training or {},
        )
        (tmp / MANIFEST_NAME).write_text(manifest.to_json() + "\n")
        load_manifest(tmp)  # the bundle must read back and hash-check before it goes live
        rows = check_parity(model, tmp, manifest, atol)
        if variants:
            manifest = add_variants(tmp, variants)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, rows


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.replace(old)
        tmp.replace(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipserve export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", help="clipserve training checkpoint (.pt)")
    p.add_argument("--model", help="open_clip model name (instead of a checkpoint)")
    p.add_argument("--pretrained", help="with --model: open_clip tag or weights file")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="parity tolerance")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--fp16", action="store_true", help="add an fp16 variant (for CUDA/TensorRT)")
    p.add_argument(
        "--int8", action="store_true", help="add a dynamically quantised int8 variant (CPU)"
    )
    p.add_argument(
        "--triton-repo",
        type=Path,
        help="also write a Triton model repository for the bundle here "
        "(see `clipserve triton-repo --help` for its options)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("give either a CHECKPOINT or --model NAME (not both)")
    if args.pretrained and not args.model:
        raise ValueError("--pretrained goes with --model")
    if args.checkpoint is not None:
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
        loaded, state = load_checkpoint(args.checkpoint)
        training = {"checkpoint": str(args.checkpoint), **_training_info(state)}
    else:
        loaded = create_model(ModelSpec(args.model, args.pretrained))
        training = {}
    variants = [v for v in ("fp16", "int8") if getattr(args, v)]
    manifest, rows = export_bundle(
        loaded,
        args.out,
        opset=args.opset,
        atol=args.atol,
        training=training,
        force=args.force,
        variants=variants,
    )
    print(format_parity(rows))
    print(
        f"parity ok (atol {args.atol:g}); wrote {args.out}: {manifest.model_name} "
        f"version {manifest.version}, dim {manifest.embed_dim}, opset {manifest.opset}"
    )
    for name, variant in manifest.variants.items():
        print(f"variant {name}: {variant.image_file}, {variant.text_file} ({variant.note})")
    if args.triton_repo is not None:
        from clipserve.serving.backends.triton_repo import main as triton_repo_main

        return triton_repo_main(["--bundle", str(args.out), "--out", str(args.triton_repo)])
    return 0
