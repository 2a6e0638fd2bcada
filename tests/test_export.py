"""Export: ONNX towers vs open_clip in torch, trimming, the manifest and its hashes, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from clipserve.serving.bundle import BundleError, Manifest, load_manifest
from clipserve.training.export.bundle import check_parity, export_bundle, main
from clipserve.training.model import load_checkpoint

ATOL = 1e-4  # normalised embeddings; measured max diff is ~2e-7


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint: Path):
    loaded, _ = load_checkpoint(tiny_checkpoint)
    return loaded


def _session(bundle: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / name), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_image_tower_matches_torch(tiny_bundle: Path, tiny_model, batch: int) -> None:
    pixels = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = tiny_model.model.encode_image(pixels, normalize=True).numpy()
    (got,) = _session(tiny_bundle, "image.onnx").run(None, {"pixel_values": pixels.numpy()})
    assert got.shape == (batch, 128)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("tower", ["image.onnx", "text.onnx"])
def test_towers_are_exported_with_fused_gelu(tiny_bundle: Path, tower: str) -> None:
    """fuse_tower ran: the MLPs' erf-based GELU became ORT's fused BiasGelu (the parity tests
    cover its numbers)."""
    ops = [n.op_type for n in onnx.load(str(tiny_bundle / tower)).graph.node]
    assert "BiasGelu" in ops and "Erf" not in ops


TEXTS = [
    "a photo of a cat",
    "x",
    "a much longer caption that describes a busy street with red buses, bikes and people",
    "",
]


@pytest.mark.parametrize("texts", [TEXTS[:1], TEXTS[:2], TEXTS, TEXTS[2:3]])
def test_text_tower_trimmed_matches_torch_full_context(
    tiny_bundle: Path, tiny_model, texts: list[str]
) -> None:
    full = tiny_model.tokenizer(texts)  # open_clip: [N, 32], zero-padded
    longest = int((full != 0).sum(1).max())
    sess = _session(tiny_bundle, "text.onnx")
    with torch.no_grad():
        ref = tiny_model.model.encode_text(full, normalize=True).numpy()
    (trimmed,) = sess.run(None, {"input_ids": full[:, :longest].numpy()})
    (padded,) = sess.run(None, {"input_ids": full.numpy()})
    np.testing.assert_allclose(trimmed, ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(padded, ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(trimmed, padded, atol=1e-5, rtol=0)


def test_parity_check_runs_several_shapes_and_catches_a_wrong_model(
    tiny_bundle: Path, tiny_model
) -> None:
    manifest = load_manifest(tiny_bundle)
    rows = check_parity(tiny_model.model, tiny_bundle, manifest)
    assert {r.batch for r in rows if r.tower == "image"} >= {1, 3, 8}
    assert len({r.seq_len for r in rows if r.tower == "text"}) >= 3
    assert max(r.max_abs_diff for r in rows) < ATOL
    # A model with other weights must fail the same check.
    other = load_checkpoint_copy_perturbed(tiny_model)
    with pytest.raises(ValueError, match="parity check failed"):
        check_parity(other, tiny_bundle, manifest)


def load_checkpoint_copy_perturbed(loaded):
    import copy

    model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        model.visual.conv1.weight.add_(torch.randn(model.visual.conv1.weight.shape, generator=gen))
    return model.eval()


def test_manifest_describes_the_bundle(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    m = load_manifest(tiny_bundle)
    assert m.model_name == "clipserve-tiny"
    assert (m.embed_dim, m.image_size, m.context_length) == (128, (64, 64), 32)
    assert (m.sot_token_id, m.eot_token_id, m.pad_token_id) == (49406, 49407, 0)
    assert (m.resize_mode, m.interpolation) == ("shortest", "bicubic")
    assert m.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert set(m.files) == {"image.onnx", "text.onnx", "tokenizer/tokenizer.json"}
    assert len(m.version) == 12 and m.opset == 18
    for tower in (m.image, m.text):  # the manifest's opset is the one in the files
        proto = onnx.load(str(tiny_bundle / tower.file), load_external_data=False)
        assert {o.domain: o.version for o in proto.opset_import}[""] == m.opset
    assert m.training["step"] == 0 and m.training["checkpoint"] == str(tiny_checkpoint)
    for tower in (m.image, m.text):
        sess = _session(tiny_bundle, tower.file)
        assert [i.name for i in sess.get_inputs()] == [tower.input_name]
        assert [o.name for o in sess.get_outputs()] == [tower.output_name]
    text_shape = _session(tiny_bundle, m.text.file).get_inputs()[0].shape
    assert all(isinstance(d, str) for d in text_shape), f"text axes must be dynamic: {text_shape}"
    # JSON round trip is lossless.
    assert Manifest.from_dict(json.loads(m.to_json())) == m


def test_tampered_file_fails_hash_check(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    load_manifest(copy)  # intact copy verifies
    with open(copy / "tokenizer" / "tokenizer.json", "ab") as f:
        f.write(b" ")
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_manifest(copy)
    load_manifest(copy, verify=False)  # still readable when asked not to verify
    (copy / "image.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_manifest(copy)


def test_malformed_manifest_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a model bundle"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="invalid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "clipserve-bundle/1"}))
    with pytest.raises(BundleError, match="malformed"):
        load_manifest(tmp_path)


@pytest.mark.slow
def test_failed_export_leaves_no_bundle(tiny_model, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="parity"):
        export_bundle(tiny_model, out, atol=-1.0)  # impossible tolerance: parity must fail
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # temp dir cleaned up too


def test_cli_refuses_existing_output_and_bad_arguments(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="already exists"):
        main(["--model", "clipserve-tiny", "--out", str(tiny_bundle)])
    with pytest.raises(ValueError, match="either a CHECKPOINT or --model"):
        main(["--out", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError):
        main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="opset 13 is too old"):
        main(["--model", "clipserve-tiny", "--out", str(tmp_path / "x"), "--opset", "13"])
    with pytest.raises(ValueError, match="unknown model"):
        main(["--model", "no-such-model", "--out", str(tmp_path / "x")])


@pytest.mark.slow
def test_cli_via_clipserve_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipserve.cli.main import main as cli

    assert cli(["export", "--model", "clipserve-tiny", "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "max_abs_diff" in printed and "parity ok" in printed
    load_manifest(tmp_path / "b")
    assert cli(["export", "--model", "clipserve-tiny", "--out", str(tmp_path / "b")]) == 2
