"""`OpenVinoBackend`: the bundle's towers on Intel's OpenVINO runtime, CPU, fp32.

Why a second CPU engine: on this project's x86 machine OpenVINO runs the ViT-B-32 image tower
~15 % faster than ONNX Runtime at the server's batch sizes (docs/benchmarks.md), and image
throughput on a CPU is bound by the engine, not by the server around it.

- **Same files.** It reads the bundle's ONNX towers; OpenVINO's ONNX frontend converts them at
  startup. The ONNX Runtime-specific ops `clipserve export` writes (``BiasGelu`` and
  ``Gelu``, from its offline fusion) are expanded back to standard ops first
  (`expand_ort_ops`), so OpenVINO applies its own fusions to a plain graph.
- **fp32, always.** On CPUs with AMX or AVX512-BF16 OpenVINO computes in bf16 unless told
  otherwise; ``INFERENCE_PRECISION_HINT=f32`` keeps the numbers those of the fp32 towers
  (checked at startup like every backend: the server's warm-up embeds before serving).
- **Concurrency.** One compiled model per tower with as many streams as the server has
  inference workers, each stream with the server's intra-op threads. A call borrows an idle
  infer request from a pool (a new one when all are busy: the health probe runs on its own
  thread); ``infer`` releases the GIL, so workers run in parallel.
- Only the default fp32 variant: the int8 variant is built from ONNX Runtime's quantised ops
  and fp16 is for GPUs; asking for either is a `BackendStartupError`.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import openvino as ov  # an ImportError becomes backend_factory's "pip install" sentence
from onnx import helper, numpy_helper

from clipserve.serving.backends.backend import (
    TOWERS,
    BackendInfo,
    BackendStartupError,
    check_input_ids,
    check_pixel_values,
    check_towers,
)
from clipserve.serving.bundle import DEFAULT_VARIANT, Manifest, TowerSpec, load_manifest


def expand_ort_ops(model: onnx.ModelProto) -> int:
    """Rewrite, in place, ONNX Runtime's ``com.microsoft.BiasGelu(x, b)`` and
    ``com.microsoft.Gelu(x)`` as the exact (erf) GELU of ``x + b`` (or ``x``) in standard
    ops; returns how many nodes were expanded."""
    graph = model.graph
    consts = {"half": 0.5, "one": 1.0, "rsqrt2": float(1 / np.sqrt(2.0))}
    names = {k: f"_clipserve_gelu_{k}" for k in consts}
    nodes: list[onnx.NodeProto] = []
    expanded = 0
    for node in graph.node:
        if node.domain != "com.microsoft" or node.op_type not in ("BiasGelu", "Gelu"):
            nodes.append(node)
            continue
        y = node.output[0]
        p = f"_clipserve_gelu_{expanded}"
        if node.op_type == "BiasGelu":
            nodes.append(helper.make_node("Add", list(node.input), [f"{p}_x"]))
        else:
            nodes.append(helper.make_node("Identity", [node.input[0]], [f"{p}_x"]))
        nodes += [
            helper.make_node("Mul", [f"{p}_x", names["rsqrt2"]], [f"{p}_s"]),
            helper.make_node("Erf", [f"{p}_s"], [f"{p}_e"]),
            helper.make_node("Add", [f"{p}_e", names["one"]], [f"{p}_e1"]),
            helper.make_node("Mul", [f"{p}_x", f"{p}_e1"], [f"{p}_m"]),
            helper.make_node("Mul", [f"{p}_m", names["half"]], [y]),
        ]
        expanded += 1
    if expanded:
        for k, v in consts.items():
            graph.initializer.append(numpy_helper.from_array(np.array(v, np.float32), names[k]))
        del graph.node[:]
        graph.node.extend(nodes)
    return expanded


class _Tower:
    """One compiled tower and its pool of idle infer requests."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            request = self.idle.get_nowait()
        except queue.Empty:
            with self.lock:  # create_infer_request is not documented as thread-safe
                request = self.compiled.create_infer_request()
        try:
            result = request.infer({0: x})
            return np.array(result[0], dtype=np.float32, copy=True)
        finally:
            self.idle.put(request)


class OpenVinoBackend:
    """Runs a bundle's default (fp32) image and text towers with OpenVINO on the CPU."""

    def __init__(
        self,
        bundle_dir: str | Path,
        manifest: Manifest | None = None,
        *,
        streams: int = 1,
        threads_per_stream: int = 1,
        variant: str = DEFAULT_VARIANT,
        towers: Sequence[str] = TOWERS,
    ) -> None:
        check_towers(towers)
        if variant != DEFAULT_VARIANT:
            raise BackendStartupError(
                f"--backend openvino runs the bundle's default fp32 towers, not the {variant!r} "
                "variant (int8 is ONNX Runtime's quantisation, fp16 is for GPUs); drop "
                "--model-variant or use --backend onnxruntime"
            )
        if streams < 1 or threads_per_stream < 1:
            raise ValueError(
                f"streams and threads must be >= 1, got {streams}, {threads_per_stream}"
            )
        bundle_dir = Path(bundle_dir)
        self.manifest = manifest or load_manifest(bundle_dir)
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "NUM_STREAMS": streams,
            "INFERENCE_NUM_THREADS": streams * threads_per_stream,
        }
        specs = {"image": self.manifest.image, "text": self.manifest.text}
        self._towers = {t: self._compile(core, bundle_dir, specs[t], config) for t in towers}
        self.info = BackendInfo(
            name="openvino",
            device="cpu",
            providers=(f"OpenVINO {ov.get_version().split('-')[0]} CPU",),
            precision="fp32",
            model_variant=DEFAULT_VARIANT,
        )

    @staticmethod
    def _compile(core: Any, bundle_dir: Path, spec: TowerSpec, config: dict[str, Any]) -> _Tower:
        model = onnx.load(str(bundle_dir / spec.file))
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = bundle_dir / spec.file
                if expand_ort_ops(model):
                    path = Path(tmp) / spec.file
                    onnx.save(model, str(path))
                compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except RuntimeError as exc:
            raise BackendStartupError(f"OpenVINO cannot compile {spec.file}: {exc}") from exc
        precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if "f32" not in precision and "float32" not in precision:
            raise BackendStartupError(f"OpenVINO runs {spec.file} in {precision}, not fp32")
        return _Tower(compiled)

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] (H, W from the manifest) -> float32 [N,D]."""
        check_pixel_values(self.manifest, pixel_values)
        return self._tower("image").run(np.ascontiguousarray(pixel_values))

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [N,L], 2 <= L <= context_length, zero-padded -> float32 [N,D]."""
        check_input_ids(self.manifest, input_ids)
        return self._tower("text").run(np.ascontiguousarray(input_ids))

    def _tower(self, name: str) -> _Tower:
        tower = self._towers.get(name)
        if tower is None:
            raise RuntimeError(f"this backend was built without the {name} tower")
        return tower

    def close(self) -> None:
        self._towers.clear()
