"""`clipserve triton-repo`: write a Triton Inference Server model repository for a bundle.

    clipserve triton-repo --bundle BUNDLE --out REPO [--model-variant default|fp16|int8]
        [--kind cpu|gpu] [--instances N] [--max-batch 64] [--max-queue-delay-us 2000]
        [--tensorrt] [--python-backend]

(`clipserve export ... --triton-repo REPO` calls it too.) The repository holds two models,
``clipserve_image`` and ``clipserve_text``, each ``<model>/config.pbtxt`` plus
``<model>/1/model.onnx`` (a copy of the bundle's tower), platform ``onnxruntime_onnx`` with
dynamic batching and an instance group; ``--tensorrt`` adds TensorRT as the GPU execution
accelerator. Inputs, outputs and dtypes are the bundle's, so `TritonBackend` sends exactly what
`OnnxRuntimeBackend` runs. Each config carries the bundle's model version and variant as
parameters; `TritonBackend` refuses a repository made from another bundle.

``--python-backend`` writes the same models for Triton's python backend instead (a model.py
running ONNX Runtime on the same model.onnx), for Triton builds without the onnxruntime backend
(the tritonserver shipped in the nvidia-pytriton wheel is one; the integration test uses it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clipserve.serving.bundle import (
    DEFAULT_VARIANT,
    BundleError,
    Manifest,
    TowerSpec,
    load_manifest,
)

IMAGE_MODEL, TEXT_MODEL = "clipserve_image", "clipserve_text"
MODEL_FILE = "model.onnx"
VERSION_PARAM, VARIANT_PARAM = "clipserve_model_version", "clipserve_model_variant"


@dataclass(frozen=True)
class RepoOptions:
    variant: str = DEFAULT_VARIANT
    kind: str = "cpu"  # instance group kind: "cpu" | "gpu"
    instances: int = 1  # model instances per device
    max_batch: int = 64  # Triton's max_batch_size: the largest batch it forms or accepts
    max_queue_delay_us: int = 2000  # how long the dynamic batcher waits to fill a batch
    tensorrt: bool = False  # TensorRT as the onnxruntime backend's GPU accelerator
    python_backend: bool = False  # host the ONNX file in a python-backend model instead
    intra_op_threads: int = 0  # python backend: ONNX Runtime threads per instance (0 = ORT's)

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"kind: {self.kind!r} is not cpu or gpu")
        for name in ("instances", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_us < 0 or self.intra_op_threads < 0:
            raise ValueError("max_queue_delay_us and intra_op_threads must be >= 0")
        if self.tensorrt and (self.kind != "gpu" or self.python_backend):
            raise ValueError("tensorrt: needs --kind gpu and the onnxruntime backend")


def model_config(
    name: str,
    spec: TowerSpec,
    dtype: str,
    input_dims: Sequence[int],
    manifest: Manifest,
    opts: RepoOptions,
) -> str:
    """The config.pbtxt text of one tower (Triton's ModelConfig protobuf, text format)."""
    runtime = 'backend: "python"' if opts.python_backend else 'platform: "onnxruntime_onnx"'
    dims = ", ".join(str(d) for d in input_dims)
    kind = "KIND_GPU" if opts.kind == "gpu" else "KIND_CPU"
    params = {VERSION_PARAM: manifest.version, VARIANT_PARAM: opts.variant}
    if opts.python_backend:
        params["intra_op_threads"] = str(opts.intra_op_threads)
    lines = [
        f'name: "{name}"',
        runtime,
        f"max_batch_size: {opts.max_batch}",
        f'input [ {{ name: "{spec.input_name}" data_type: {dtype} dims: [ {dims} ] }} ]',
        f'output [ {{ name: "{spec.output_name}" data_type: TYPE_FP32 '
        f"dims: [ {manifest.embed_dim} ] }} ]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {opts.max_queue_delay_us} }}",
        f"instance_group [ {{ count: {opts.instances} kind: {kind} }} ]",
    ]
    lines += [
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    ]
    if opts.tensorrt:
        precision = "FP16" if opts.variant == "fp16" else "FP32"
        lines.append(
            "optimization { execution_accelerators { gpu_execution_accelerator : [ "
            f'{{ name : "tensorrt" parameters {{ key: "precision_mode" value: "{precision}" }} '
            'parameters { key: "max_workspace_size_bytes" value: "1073741824" } } ] } }'
        )
    return "\n".join(lines) + "\n"


def write_triton_repo(bundle: str | Path, out: str | Path, opts: RepoOptions) -> Path:
    """Write the repository into `out` (which must not exist, or be empty); returns it."""
    bundle, out = Path(bundle), Path(out)
    manifest = load_manifest(bundle)
    image_file, text_file, _ = manifest.tower_files(opts.variant)
    if opts.max_batch > 65536:
        raise ValueError("max_batch: the bundle's towers accept at most 65536 rows")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty")
    h, w = manifest.image_size
    towers = (
        (IMAGE_MODEL, manifest.image, image_file, "TYPE_FP32", (3, h, w)),
        (TEXT_MODEL, manifest.text, text_file, "TYPE_INT64", (-1,)),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, spec, file, dtype, dims in towers:
            version_dir = tmp / name / "1"
            version_dir.mkdir(parents=True)
            shutil.copyfile(bundle / file, version_dir / MODEL_FILE)
            (tmp / name / "config.pbtxt").write_text(
                model_config(name, spec, dtype, dims, manifest, opts)
            )
            if opts.python_backend:
                (version_dir / "model.py").write_text(PYTHON_MODEL)
        tmp.chmod(0o755)
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# The python-backend model: one ONNX Runtime run per dynamic batch. Text requests of
# different lengths are zero-padded to the longest; ids after EOT change nothing (causal
# mask, EOT pooling; every export proves it in its parity check).
PYTHON_MODEL = '''\
"""clipserve tower for Triton's python backend: ONNX Runtime on model.onnx beside this file."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0"))
        if threads:
            options.intra_op_num_threads = threads
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        try:
            if arrays[0].ndim == 2:  # token ids [n, L]: pad to the longest L
                width = max(a.shape[1] for a in arrays)
                arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
            batch = np.ascontiguousarray(np.concatenate(arrays))
            (out,) = self.session.run([self.output], {self.input: batch})
        except Exception as exc:
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for a in arrays:
            chunk = out[start : start + len(a)]
            start += len(a)
            tensor = pb_utils.Tensor(self.output, np.ascontiguousarray(chunk))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
'''


def _parser() -> argparse.ArgumentParser:
    d = RepoOptions()
    p = argparse.ArgumentParser(prog="clipserve triton-repo", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    p.add_argument("--out", type=Path, required=True, help="repository directory to create")
    p.add_argument("--model-variant", default=d.variant, choices=("default", "fp16", "int8"))
    p.add_argument("--kind", default=d.kind, choices=("cpu", "gpu"), help="instance group kind")
    p.add_argument("--instances", type=int, default=d.instances, help="instances per device")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="Triton max_batch_size")
    p.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us)
    p.add_argument("--tensorrt", action="store_true", help="TensorRT GPU accelerator")
    p.add_argument(
        "--python-backend", action="store_true", help="python-backend models running ORT"
    )
    p.add_argument("--intra-op-threads", type=int, default=0, help="python backend ORT threads")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = RepoOptions(
        variant=args.model_variant,
        kind=args.kind,
        instances=args.instances,
        max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay_us,
        tensorrt=args.tensorrt,
        python_backend=args.python_backend,
        intra_op_threads=args.intra_op_threads,
    )
    try:
        out = write_triton_repo(args.bundle, args.out, opts)
    except BundleError as exc:
        print(f"clipserve triton-repo: error: {exc}", file=sys.stderr)
        return 2
    runtime = "python backend" if opts.python_backend else "onnxruntime_onnx"
    print(f"wrote Triton repository {out}: {IMAGE_MODEL}, {TEXT_MODEL} ({runtime}, {opts.kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
