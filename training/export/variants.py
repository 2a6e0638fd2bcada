"""Bundle variants: an fp16 build of the towers for GPUs and a dynamically quantised int8 build
for CPUs, written next to the fp32 towers and listed in the manifest.

    clipserve export CHECKPOINT --out BUNDLE --int8 --fp16     (at export time)
    add_variants(BUNDLE, ["int8"])                             (to an existing bundle)

Every variant keeps the default towers' interface: the same input and output names, fp32
pixels / int64 ids in and fp32 embeddings out, so serving code does not change with it.

* fp16: ONNX Runtime's float16 converter (``onnxruntime.transformers.float16``, the same code
  as onnxconverter-common) with ``keep_io_types=True``; LayerNorm/normalisation-sensitive ops
  stay fp32 (the converter's default block list). Meant for CUDA/TensorRT.
* int8: ``quant_pre_process`` (shape inference + ORT graph optimisation, which fuses the
  attention and layer-norm patterns so the quantiser sees plain MatMuls), then
  ``quantize_dynamic``: int8 weights (7-bit range) per output channel, activations quantised
  on the fly per batch. Only MatMul/Gemm are quantised (the transformer's weight-bearing
  ops). A ViT's patch embedding convolution is rewritten as a MatMul first
  (``patch_matmul.py``) so it is quantised too: ONNX Runtime's int8 Conv is slower than its
  fp32 one.

The manifest's content version is not changed: a variant computes the same model within its
precision, so an index built with one variant keeps working with another. How close each
variant stays is measured by `variant_parity` and recorded in the variant's note.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from clipserve.serving.bundle import (
    MANIFEST_NAME,
    Manifest,
    Variant,
    load_manifest,
    sha256_file,
)

VARIANTS = ("fp16", "int8")


def _variant_file(name: str, variant: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{variant}{dot}{ext}" if dot else f"{name}.{variant}"


def make_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute, fp32 inputs and outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(half, str(dst))


def make_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of MatMul/Gemm weights (per channel), after pre-processing;
    a ViT's patch-embedding Conv is first rewritten as a MatMul (patch_matmul.py)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from clipserve.training.export.patch_matmul import rewrite_patch_convs

    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(src))
        if rewrite_patch_convs(model):
            src = Path(tmp) / "patch.onnx"
            onnx.save(model, str(src))
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(
            str(pre),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights: on x86 CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime's u8s8
            # kernels add pairs of 8-bit products in saturating int16, which overflows with
            # full-range weights (score errors of 0.06 measured on an AVX2 EPYC). A bundle
            # may be served on any CPU, so the export is safe for all of them.
            reduce_range=True,
            op_types_to_quantize=["MatMul", "Gemm"],
        )


def variant_parity(
    bundle_dir: Path, manifest: Manifest, variant: str, *, samples: int = 8, seed: int = 0
) -> dict[str, float]:
    """Min cosine between the default towers and `variant` on CPU, on random pixels and on
    random token sequences; {"image_min_cosine": ..., "text_min_cosine": ...}."""
    import onnxruntime as ort

    img_file, txt_file, _ = manifest.tower_files(variant)
    cpu = ["CPUExecutionProvider"]

    def run(file: str, name: str, x: np.ndarray) -> np.ndarray:
        sess = ort.InferenceSession(str(bundle_dir / file), providers=cpu)
        return sess.run(None, {name: x})[0]

    rng = np.random.default_rng(seed)
    h, w = manifest.image_size
    pixels = rng.standard_normal((samples, 3, h, w), dtype=np.float32)
    ids = random_ids(manifest, samples, rng)
    out = {}
    for tower, default_file, file, spec, x in (
        ("image", manifest.image.file, img_file, manifest.image, pixels),
        ("text", manifest.text.file, txt_file, manifest.text, ids),
    ):
        ref = run(default_file, spec.input_name, x)
        got = run(file, spec.input_name, x)
        out[f"{tower}_min_cosine"] = float(min_cosine(ref, got))
    return out


def random_ids(manifest: Manifest, n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows of SOT, random word ids, EOT, zero padding -> int64 [n, L] (L <= context)."""
    ctx = manifest.context_length
    length = min(ctx, 16)
    ids = np.zeros((n, length), dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(3, length + 1))
        ids[i, 0] = manifest.sot_token_id
        ids[i, 1 : k - 1] = rng.integers(1, manifest.sot_token_id, size=k - 2)
        ids[i, k - 1] = manifest.eot_token_id
    return ids


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


def add_variants(bundle_dir: str | Path, variants: Sequence[str]) -> Manifest:
    """Write `variants` ("fp16", "int8") into an existing bundle and list them (with their
    hashes) in its manifest; returns the new manifest. ValueError for an unknown name."""
    bundle_dir = Path(bundle_dir)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    manifest = load_manifest(bundle_dir)
    makers = {"fp16": make_fp16, "int8": make_int8}
    new_variants = dict(manifest.variants)
    files = dict(manifest.files)
    for variant in variants:
        written = []
        for spec in (manifest.image, manifest.text):
            rel = _variant_file(spec.file, variant)
            makers[variant](bundle_dir / spec.file, bundle_dir / rel)
            files[rel] = sha256_file(bundle_dir / rel)
            written.append(rel)
        new_variants[variant] = Variant(
            image_file=written[0],
            text_file=written[1],
            precision=variant,
            device="gpu" if variant == "fp16" else "any",
        )
    manifest = replace(manifest, variants=new_variants, files=files)
    for variant in variants:
        if variant == "fp16":
            note = "fp16 weights and compute, fp32 I/O; run on CUDA/TensorRT"
        else:
            cos = variant_parity(bundle_dir, manifest, variant)
            note = (
                "dynamic int8 (MatMul/Gemm and patch weights per channel); min cosine to fp32 on random "
                f"inputs: image {cos['image_min_cosine']:.5f}, text {cos['text_min_cosine']:.5f}"
            )
        manifest.variants[variant] = replace(manifest.variants[variant], note=note)
    tmp = bundle_dir / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(manifest.to_json() + "\n")
    tmp.replace(bundle_dir / MANIFEST_NAME)  # readers see the old or the new manifest, whole
    return load_manifest(bundle_dir)
