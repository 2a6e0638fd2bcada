"""The patch-embedding Conv -> MatMul rewrite: same numbers as the Conv, applied only where it
is exact, and the int8 variant quantises the patch weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from clipserve.training.export.patch_matmul import rewrite_patch_convs


def _conv_model(
    kernel: int, stride: int, *, bias: bool, pads: int = 0, hw: int = 32
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, kernel, kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"))
        inputs.append("b")
    conv = helper.make_node(
        "Conv", inputs, ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
        pads=[pads] * 4,
    )  # fmt: skip
    relu = helper.make_node("Relu", ["y"], ["out"])  # a consumer of the Conv's output
    graph = helper.make_graph(
        [conv, relu],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, hw, hw])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 8, "gh", "gw"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_rewritten_patch_conv_computes_the_same(bias: bool, batch: int) -> None:
    model = _conv_model(8, 8, bias=bias)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    ref = _run(model, x)
    assert rewrite_patch_convs(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "Conv" not in ops and "MatMul" in ops
    assert "w" not in {t.name for t in model.graph.initializer}  # the unused copy is gone
    onnx.checker.check_model(model)
    got = _run(model, x)
    assert got.shape == ref.shape == (batch, 8, 4, 4)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "kernel, stride, pads, hw",
    [(8, 4, 0, 32), (3, 3, 1, 33), (8, 8, 0, 36)],  # overlapping, padded, size not divisible
)
def test_convs_that_are_not_patch_embeddings_stay(
    kernel: int, stride: int, pads: int, hw: int
) -> None:
    model = _conv_model(kernel, stride, bias=True, pads=pads, hw=hw)
    assert rewrite_patch_convs(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]


def test_int8_variant_quantises_the_patch_embedding(tiny_bundle: Path, tmp_path: Path) -> None:
    from clipserve.training.export.variants import make_int8, min_cosine

    dst = tmp_path / "image.int8.onnx"
    make_int8(tiny_bundle / "image.onnx", dst)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert "Conv" not in ops and "ConvInteger" not in ops
    pixels = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    sessions = [
        ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
        for f in (tiny_bundle / "image.onnx", dst)
    ]
    ref, got = (s.run(None, {"pixel_values": pixels})[0] for s in sessions)
    assert min_cosine(ref, got) > 0.99
