"""Bundle variants (int8, fp16), selecting one at serve time, and GPU-provider startup errors.

The int8 accuracy check runs on TRAINED weights: clipserve-micro trained briefly on
coloured-square images (kept small for test time), because quantisation error depends on the
weight and activation ranges that training produces. Bound: min cosine to fp32 >= 0.99 on real
images and captions; bench/bench_int8.py measures the demo-sized model (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import BackgroundServer, start_server_error
from PIL import Image

from clipserve.serving.backends.backend import BackendStartupError
from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.serving.bundle import BundleError, load_manifest
from clipserve.serving.config import ServerConfig
from clipserve.serving.embedding.preprocess import preprocess
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.serving.server import StartupError, metrics_port
from clipserve.training.export.variants import add_variants, min_cosine

# Training + export take ~30 s on 2 idle cores; the margin is for a machine shared with others.
pytestmark = pytest.mark.timeout(1500)
INT8_MIN_COSINE = 0.99
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220)}


def _squares(root: Path, size: int = 64) -> tuple[list[Path], list[str], Path]:
    """Coloured squares at varying places on grey, with captions; returns paths, captions and
    a training manifest (jsonl)."""
    (root / "images").mkdir(parents=True)
    paths, captions, rows = [], [], []
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        for side in ("left", "right"):
            for _ in range(8):
                i = len(paths)
                img = Image.new(
                    "RGB", (size, size), tuple(int(x) for x in rng.integers(90, 160, 3))
                )
                q = size // 8  # the square is 2q wide, in the left or right half
                x0 = (
                    int(rng.integers(0, 2 * q))
                    if side == "left"
                    else int(rng.integers(4 * q, 6 * q))
                )
                y0 = int(rng.integers(0, 6 * q))
                img.paste(rgb, (x0, y0, x0 + 2 * q, y0 + 2 * q))
                path = root / "images" / f"{i:03d}.png"
                img.save(path)
                caption = f"a {name} square on the {side}"
                paths.append(path)
                captions.append(caption)
                rows.append(
                    {"id": f"{i:03d}", "image": f"images/{i:03d}.png", "caption": caption,
                     "labels": f"colour={name}|side={side}"}
                )  # fmt: skip
    manifest = root / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths, captions, manifest


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """clipserve-micro trained 30 steps, exported with --int8 --fp16."""
    from clipserve.training.config import config_from_dict
    from clipserve.training.export.bundle import main as export_main
    from clipserve.training.train import train

    root = tmp_path_factory.mktemp("variants")
    paths, captions, manifest = _squares(root / "data", size=32)
    cfg = config_from_dict(
        {
            "model": {"name": "clipserve-micro"},
            "data": {"train": str(manifest), "batch_size": 16},
            "optim": {"lr": 3e-3, "warmup_steps": 3, "max_steps": 30},
            "run": {"output_dir": str(root / "run"), "device": "cpu", "threads": 1,
                    "log_every": 10, "save_every_steps": 1000, "progress": False},
        }
    )  # fmt: skip
    result = train(cfg)
    assert result.step == 30
    bundle = root / "bundle"
    ckpt = root / "run" / "checkpoints" / "latest.pt"
    assert export_main([str(ckpt), "--out", str(bundle), "--int8", "--fp16"]) == 0
    return {"bundle": bundle, "images": paths, "captions": captions, "root": root}


def test_export_lists_variants_with_hashes(trained: dict) -> None:
    bundle = trained["bundle"]
    m = load_manifest(bundle)  # verifies every file's sha256, variants included
    assert m.variant_names() == ("default", "fp16", "int8")
    int8, fp16 = m.variants["int8"], m.variants["fp16"]
    assert (int8.precision, int8.device, fp16.precision, fp16.device) == (
        "int8", "any", "fp16", "gpu"
    )  # fmt: skip
    for f in (int8.image_file, int8.text_file, fp16.image_file, fp16.text_file):
        assert f in m.files and (bundle / f).is_file()
    assert "min cosine" in int8.note
    # Quantised for real: integer matmuls in the graph, and far smaller weights.
    ops = {n.op_type for n in onnx.load(str(bundle / int8.text_file)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops, ops
    # The image tower is nearly all MatMul weights (the text tower is mostly its token table,
    # an fp32 Gather that dynamic quantisation leaves alone).
    fp32_size = (bundle / m.image.file).stat().st_size
    assert (bundle / int8.image_file).stat().st_size < 0.7 * fp32_size


def test_fp16_variant_keeps_fp32_io_and_halves_weights(trained: dict) -> None:
    bundle = trained["bundle"]
    m = load_manifest(bundle)
    for fp32_file, half_file in ((m.image.file, m.variants["fp16"].image_file),
                                 (m.text.file, m.variants["fp16"].text_file)):  # fmt: skip
        model = onnx.load(str(bundle / half_file))
        io = [*model.graph.input, *model.graph.output]
        types = {v.name: v.type.tensor_type.elem_type for v in io}
        assert types.get("embeddings") == onnx.TensorProto.FLOAT
        assert types.get("pixel_values", types.get("input_ids")) in (
            onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
        )  # fmt: skip
        halves = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        assert halves > len(model.graph.initializer) // 2
        # LayerNorm-adjacent tensors stay fp32 (the converter's block list), hence not 0.5.
        assert (bundle / half_file).stat().st_size < 0.75 * (bundle / fp32_file).stat().st_size


def test_int8_cosine_to_fp32_on_trained_weights(trained: dict) -> None:
    bundle = trained["bundle"]
    m = load_manifest(bundle)
    fp32 = OnnxRuntimeBackend(bundle, m, providers="CPUExecutionProvider")
    int8 = OnnxRuntimeBackend(bundle, m, providers="CPUExecutionProvider", variant="int8")
    assert (int8.info.precision, int8.info.model_variant) == ("int8", "int8")
    assert (fp32.info.precision, fp32.info.model_variant) == ("fp32", "default")
    images = [Image.open(p).convert("RGB") for p in trained["images"]]
    pixels = preprocess(images, m)
    tok = ClipTokenizer.from_bundle(bundle, m)
    ids = tok.pad(tok.encode(sorted(set(trained["captions"])) + ["a photo of something else"]))
    image_cos = min_cosine(fp32.embed_images(pixels), int8.embed_images(pixels))
    text_cos = min_cosine(fp32.embed_texts(ids), int8.embed_texts(ids))
    assert image_cos >= INT8_MIN_COSINE, image_cos
    assert text_cos >= INT8_MIN_COSINE, text_cos
    # ...and image-caption retrieval scores move by far less than the gaps that rank them
    # in a trained model (top-1 agreement itself is no test for a model this briefly trained:
    # its scores are nearly tied).
    names = sorted(set(trained["captions"]))
    ids = tok.pad(tok.encode(names))
    scores32 = fp32.embed_images(pixels) @ fp32.embed_texts(ids).T
    scores8 = int8.embed_images(pixels) @ int8.embed_texts(ids).T
    assert np.abs(scores32 - scores8).max() < 0.01


def test_serve_int8_variant_reports_it_in_info(trained: dict, tmp_path: Path) -> None:
    config = ServerConfig(bundle=trained["bundle"], port=0, index_path=tmp_path / "index",
                          model_variant="int8", providers="CPUExecutionProvider",
                          metrics_port=0)  # fmt: skip
    bg = BackgroundServer(config)
    try:
        info = bg.client.info()
        assert (info.precision, info.model_variant) == ("int8", "int8")
        port = metrics_port(bg.server)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert (
            'clipserve_backend_info{backend="onnxruntime",device="cpu",model_variant="int8",'
            'precision="int8",providers="CPUExecutionProvider"} 1.0'
        ) in text
        assert info.backend == "onnxruntime" and info.device == "cpu"
        assert list(info.providers) == ["CPUExecutionProvider"]
        vecs = bg.client.embed_texts(["a red square on the left"])
        ref = OnnxRuntimeBackend(trained["bundle"], variant="int8")
        tok = ClipTokenizer.from_bundle(trained["bundle"], ref.manifest)
        want = ref.embed_texts(tok.pad(tok.encode(["a red square on the left"])))
        np.testing.assert_allclose(vecs, want, atol=1e-5)
    finally:
        bg.stop()


def test_fp16_on_cpu_is_a_startup_error(trained: dict, tmp_path: Path) -> None:
    config = ServerConfig(bundle=trained["bundle"], port=0, index_path=tmp_path / "index",
                          model_variant="fp16", providers="CPUExecutionProvider")  # fmt: skip
    exc = start_server_error(config)
    assert isinstance(exc, StartupError), exc
    assert "fp16" in str(exc) and "GPU" in str(exc)


def test_missing_variant_names_the_ones_there(tiny_bundle: Path, tmp_path: Path) -> None:
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "i",
                          model_variant="int8")  # fmt: skip
    exc = start_server_error(config)
    assert isinstance(exc, BundleError), exc
    assert "no 'int8' variant" in str(exc) and "default" in str(exc) and "--int8" in str(exc)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only onnxruntime build")
def test_cuda_requested_on_cpu_build_is_a_startup_error(tiny_bundle: Path, tmp_path: Path) -> None:
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "i",
                          providers="CUDAExecutionProvider,CPUExecutionProvider")  # fmt: skip
    exc = start_server_error(config)
    assert isinstance(exc, StartupError), exc
    msg = str(exc)
    assert "CUDAExecutionProvider" in msg and "onnxruntime-gpu" in msg, msg
    with pytest.raises(BackendStartupError, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend(tiny_bundle, providers=["CUDAExecutionProvider"])
    # The command line says it in a sentence and exits 2.
    proc = subprocess.run(
        [sys.executable, "-m", "clipserve.cli.main", "serve", "--bundle", str(tiny_bundle),
         "--port", "0", "--index-path", str(tmp_path / "cli"),
         "--providers", "CUDAExecutionProvider"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "clipserve serve: error: backend onnxruntime:" in proc.stderr
    assert "CUDAExecutionProvider" in proc.stderr and "Traceback" not in proc.stderr


def test_add_variants_to_existing_bundle_and_bad_names(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    before = load_manifest(copy)
    after = add_variants(copy, ["int8"])
    assert after.variant_names() == ("default", "int8")
    assert after.version == before.version  # same model: indexes stay compatible
    assert load_manifest(copy).variants == after.variants
    with pytest.raises(ValueError, match="unknown variant"):
        add_variants(copy, ["int4"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backend": "tensorflow"}, "backend: 'tensorflow' is not one of"),
        ({"backend": "triton"}, "triton_url"),
        ({"triton_url": "127.0.0.1:8001"}, "triton_url"),
        ({"model_variant": "int4"}, "model_variant: 'int4'"),
    ],
)
def test_backend_config_errors(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(bundle=tmp_path, index_path=tmp_path / "i", **overrides)


def test_backend_config_from_env(tmp_path: Path) -> None:
    env = {"CLIPSERVE_BACKEND": "triton", "CLIPSERVE_TRITON_URL": "127.0.0.1:8001",
           "CLIPSERVE_MODEL_VARIANT": "int8"}  # fmt: skip
    cfg = ServerConfig.from_env(env, bundle=tmp_path, index_path=tmp_path / "i")
    assert (cfg.backend, cfg.triton_url, cfg.model_variant) == ("triton", "127.0.0.1:8001", "int8")
