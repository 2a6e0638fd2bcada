"""Rewrite a ViT's patch-embedding convolution as a MatMul, so dynamic int8 quantisation
covers it.

A Conv whose kernel equals its stride (no padding, no dilation, one group) over an input of
known channels and size is a matrix product over non-overlapping patches:

    X [N,C,H,W] -> Reshape [N,C,H/p,p,W/p,p] -> Transpose [N,H/p,W/p,C,p,p]
      -> Reshape [N,(H/p)(W/p),C*p*p] -> MatMul W^T [C*p*p,D] (-> Add bias)
      -> Transpose [N,D,(H/p)(W/p)] -> Reshape [N,D,H/p,W/p]      (the Conv's own output)

ONNX Runtime's dynamic quantiser has no fast path for Conv (ConvInteger ran the ViT-B-32 image
tower 25 % slower than leaving the Conv in fp32), while a MatMul becomes a
DynamicQuantizeMatMul: with it the int8 ViT-B-32 image tower ran 161 instead of 193 ms per batch
of 16 (docs/benchmarks.md). The
fp32 towers keep their Conv, which ONNX Runtime already runs well.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def rewrite_patch_convs(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every patch-embedding Conv of `model` that reads a graph input of
    static [C,H,W]; returns how many were rewritten."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    inputs = {i.name: i for i in graph.input}
    done = 0
    for pos, node in enumerate(list(graph.node)):
        if node.op_type != "Conv" or node.input[0] not in inputs or node.input[1] not in inits:
            continue
        chw = _static_chw(inputs[node.input[0]])
        weight = numpy_helper.to_array(inits[node.input[1]])
        patch = _patch_size(node, weight)
        if chw is None or patch is None or chw[1] % patch or chw[2] % patch:
            continue
        graph.node.remove(node)
        for k, new in enumerate(_patch_nodes(graph, node, chw, patch, weight)):
            graph.node.insert(pos + k, new)
        if not any(node.input[1] in n.input for n in graph.node):
            graph.initializer.remove(inits[node.input[1]])  # now held transposed by the MatMul
        done += 1
    return done


def _static_chw(value: onnx.ValueInfoProto) -> tuple[int, int, int] | None:
    dims = value.type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[1:]):
        return None
    c, h, w = (d.dim_value for d in dims[1:])
    return c, h, w


def _patch_size(node: onnx.NodeProto, weight: np.ndarray) -> int | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kh, kw = weight.shape[2:]
    if kh != kw or list(attrs.get("strides", [1, 1])) != [kh, kw]:
        return None
    if any(attrs.get("pads", [0])) or any(d != 1 for d in attrs.get("dilations", [1])):
        return None
    if attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    return int(kh)


def _patch_nodes(
    graph: onnx.GraphProto,
    conv: onnx.NodeProto,
    chw: tuple[int, int, int],
    p: int,
    weight: np.ndarray,
) -> list[onnx.NodeProto]:
    c, h, w = chw
    gh, gw, d = h // p, w // p, weight.shape[0]
    base = f"{conv.name or conv.output[0]}_patch"

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, f"{base}_{name}"))
        return f"{base}_{name}"

    def shape(*dims: int) -> str:
        return const(f"shape{len(graph.initializer)}", np.array(dims, dtype=np.int64))

    w_t = const("weight", np.ascontiguousarray(weight.reshape(d, c * p * p).T))
    nodes = [
        helper.make_node("Reshape", [conv.input[0], shape(-1, c, gh, p, gw, p)], [f"{base}_6d"]),
        helper.make_node("Transpose", [f"{base}_6d"], [f"{base}_t6"], perm=[0, 2, 4, 1, 3, 5]),
        helper.make_node("Reshape", [f"{base}_t6", shape(-1, gh * gw, c * p * p)], [f"{base}_x"]),
        helper.make_node("MatMul", [f"{base}_x", w_t], [f"{base}_y"], name=f"{base}_MatMul"),
    ]
    y = f"{base}_y"
    if len(conv.input) > 2 and conv.input[2]:
        nodes.append(helper.make_node("Add", [y, conv.input[2]], [f"{base}_yb"]))
        y = f"{base}_yb"
    nodes += [
        helper.make_node("Transpose", [y], [f"{base}_yt"], perm=[0, 2, 1]),
        helper.make_node("Reshape", [f"{base}_yt", shape(-1, d, gh, gw)], [conv.output[0]]),
    ]
    return nodes
