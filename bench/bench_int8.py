"""int8 on CPU: torch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 (dynamic), same
model, same inputs, one process; plus the int8 variant's cosine to fp32.

    .venv/bin/python bench/bench_int8.py [--model ViT-B-32] [--checkpoint CKPT] [--threads 2]

`--model` benchmarks a random-initialised open_clip model (speed does not depend on the
weights); `--checkpoint` a trained clipserve checkpoint (e.g. the demo's
work/train/checkpoints/latest.pt), whose cosine is the one that matters: quantisation error
depends on the value ranges training produces. Cosines are measured on real inputs: the
bench's photo-like JPEGs and captions (bench_serve.py), preprocessed and tokenised as the
server does. Times are medians (bench_inference.median_ms).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import median_ms  # noqa: E402
from bench_serve import CAPTIONS, jpegs  # noqa: E402

from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend  # noqa: E402
from clipserve.serving.embedding.preprocess import preprocess  # noqa: E402
from clipserve.serving.embedding.tokenizer import ClipTokenizer  # noqa: E402
from clipserve.training.export.bundle import export_bundle  # noqa: E402
from clipserve.training.export.variants import add_variants, min_cosine  # noqa: E402
from clipserve.training.model import ModelSpec, create_model, load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--checkpoint", type=Path, help="a trained clipserve checkpoint instead")
    p.add_argument(
        "--bundle",
        type=Path,
        help="reuse this export of --model made with seed 0 (bench_serve.py's cached one) "
        "instead of exporting again; checked against torch before timing",
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--image-batch", type=int, default=16)
    p.add_argument("--text-batch", type=int, default=32)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        loaded, _ = load_checkpoint(args.checkpoint)
        name = f"{loaded.spec.name} (trained: {args.checkpoint})"
    else:
        torch.manual_seed(0)
        loaded = create_model(ModelSpec(args.model))
        name = f"{args.model} (random init)"
    model = loaded.model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        if args.bundle is not None and not args.checkpoint:
            shutil.copytree(args.bundle, bundle)
            manifest = add_variants(bundle, ["int8"])
        else:
            manifest, _ = export_bundle(loaded, bundle, variants=["int8"])
        kw = {"providers": "CPUExecutionProvider", "intra_op_threads": args.threads}
        fp32 = OnnxRuntimeBackend(bundle, manifest, **kw)
        int8 = OnnxRuntimeBackend(bundle, manifest, variant="int8", **kw)
        tok = ClipTokenizer.from_bundle(bundle, manifest)
        imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in jpegs()]
        pixels = preprocess([imgs[i % len(imgs)] for i in range(args.image_batch)], manifest)
        texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.text_batch)]
        ids = tok.pad(tok.encode(texts))
        padded = tok.pad(tok.encode(texts), length=manifest.context_length)
        with torch.inference_mode():  # the bundle is this very model (matters with --bundle)
            same = min_cosine(model.encode_image(torch.from_numpy(pixels[:2])).numpy(),
                              fp32.embed_images(pixels[:2]))  # fmt: skip
        if same < 0.9999:
            raise SystemExit(f"the bundle is not this model (cosine {same:.4f})")
        img_cos = min_cosine(fp32.embed_images(pixels), int8.embed_images(pixels))
        txt_cos = min_cosine(fp32.embed_texts(ids), int8.embed_texts(ids))
        pt, padded_t = torch.from_numpy(pixels), torch.from_numpy(padded)
        with torch.inference_mode():
            rows = {
                "image": [
                    median_ms(lambda: model.encode_image(pt, normalize=True)),
                    median_ms(lambda: fp32.embed_images(pixels)),
                    median_ms(lambda: int8.embed_images(pixels)),
                ],
                "text": [
                    median_ms(lambda: model.encode_text(padded_t, normalize=True)),
                    median_ms(lambda: fp32.embed_texts(ids)),
                    median_ms(lambda: int8.embed_texts(ids)),
                ],
            }
    print(f"{name}, {args.threads} threads, torch {torch.__version__}, CPU only")
    print(f"int8 min cosine to ORT fp32: image {img_cos:.5f}, text {txt_cos:.5f}")
    print(f"{'tower':<6} {'batch':>5} {'torch fp32 ms':>14} {'ORT fp32 ms':>12} {'ORT int8 ms':>12} "
          f"{'int8 vs torch':>14} {'int8 vs ORT fp32':>17}")  # fmt: skip
    for tower, (t_torch, t_fp32, t_int8) in rows.items():
        n = args.image_batch if tower == "image" else args.text_batch
        print(f"{tower:<6} {n:>5} {t_torch:>14.1f} {t_fp32:>12.1f} {t_int8:>12.1f} "
              f"{t_torch / t_int8:>13.2f}x {t_fp32 / t_int8:>16.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
