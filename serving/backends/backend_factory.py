"""`make_backend(config, manifest)`: the `EmbeddingBackend` a `ServerConfig` asks for.

Kept apart from server wiring so the choice (and each backend's heavy import: onnxruntime,
openvino, tritonclient) happens in one place. Failures that the operator can fix raise
`BackendStartupError` with a sentence saying what to change.

``backend="auto"`` (the default) is resolved by `resolve_backend`. When the bundle's fp32 towers
run on the CPU and OpenVINO is installed (``pip install 'clipserve[openvino]'``), each tower
goes to the engine that serves it faster on this project's x86 machine (docs/benchmarks.md):
the image tower to OpenVINO (7-11 % more images/s than ONNX Runtime, and a CPU server's image
throughput is the engine's), the text tower to ONNX Runtime (6-18 % more captions/s served),
as one `TowerSplitBackend`. ONNX Runtime runs both otherwise: a GPU provider in the onnxruntime
build, an explicit ``--providers`` list, the int8 or fp16 variant, or no OpenVINO. Info, health
and metrics name the engines in use, and the server logs the choice and its reason at startup;
a bundle that OpenVINO cannot load falls back to ONNX Runtime under ``auto`` (with a warning).
"""

from __future__ import annotations

import importlib.util
import logging

from clipserve.serving.backends.backend import TOWERS, BackendStartupError, EmbeddingBackend
from clipserve.serving.backends.split_backend import TowerSplitBackend
from clipserve.serving.bundle import DEFAULT_VARIANT, Manifest
from clipserve.serving.config import ServerConfig

log = logging.getLogger(__name__)

_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


SPLIT = "openvino+onnxruntime"  # auto on a CPU: images on OpenVINO, text on ONNX Runtime


def resolve_backend(config: ServerConfig) -> tuple[str, str]:
    """The backend `config` gets ("onnxruntime" | "openvino" | "triton" | `SPLIT`) and why,
    in words."""
    if config.backend != "auto":
        return config.backend, "asked for"
    if config.model_variant != DEFAULT_VARIANT:
        return "onnxruntime", f"the {config.model_variant} variant runs on ONNX Runtime"
    if config.providers.strip() != "auto":
        return "onnxruntime", "--providers names ONNX Runtime providers"
    import onnxruntime as ort

    gpu = [p for p in _GPU_PROVIDERS if p in ort.get_available_providers()]
    if gpu:
        return "onnxruntime", f"this onnxruntime build has {gpu[0]}"
    if importlib.util.find_spec("openvino") is None:
        return "onnxruntime", "OpenVINO is not installed (pip install 'clipserve[openvino]')"
    return SPLIT, "fp32 on the CPU: images on OpenVINO, text on ONNX Runtime"


def make_backend(config: ServerConfig, manifest: Manifest) -> EmbeddingBackend:
    """The backend `resolve_backend` picks. Under ``auto``, a bundle OpenVINO cannot load
    (an op it does not know, a broken install) falls back to ONNX Runtime with a warning;
    asked for by name, the failure is the operator's `BackendStartupError`."""
    backend, _ = resolve_backend(config)
    if backend == "triton":
        return _triton(config, manifest)
    if backend == "openvino":
        return _openvino(config, manifest)
    if backend == SPLIT:
        try:
            image = _openvino(config, manifest, towers=("image",))
        except BackendStartupError as exc:
            log.warning(
                "--backend auto: OpenVINO cannot run this bundle (%s); using ONNX Runtime", exc
            )
        else:
            try:
                return TowerSplitBackend(image, _onnxruntime(config, manifest, towers=("text",)))
            except BaseException:
                image.close()
                raise
    return _onnxruntime(config, manifest)


def _triton(config: ServerConfig, manifest: Manifest) -> EmbeddingBackend:
    try:
        from clipserve.serving.backends.triton_backend import TritonBackend
    except ImportError as exc:
        raise BackendStartupError(
            f"--backend triton needs tritonclient: pip install 'clipserve[triton]' ({exc})"
        ) from exc
    assert config.triton_url is not None  # ServerConfig checks it
    return TritonBackend(config.triton_url, manifest, variant=config.model_variant)


def _openvino(
    config: ServerConfig, manifest: Manifest, towers: tuple[str, ...] = TOWERS
) -> EmbeddingBackend:
    try:
        from clipserve.serving.backends.openvino_backend import OpenVinoBackend
    except ImportError as exc:
        raise BackendStartupError(
            f"--backend openvino needs OpenVINO: pip install 'clipserve[openvino]' ({exc})"
        ) from exc
    if config.providers != "auto":
        raise BackendStartupError("--providers is for --backend onnxruntime only")
    return OpenVinoBackend(
        config.bundle,
        manifest,
        streams=config.inference_workers,
        threads_per_stream=config.resolved_intra_op_threads,
        variant=config.model_variant,
        towers=towers,
    )


def _onnxruntime(
    config: ServerConfig, manifest: Manifest, towers: tuple[str, ...] = TOWERS
) -> EmbeddingBackend:
    from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend  # loads onnxruntime

    return OnnxRuntimeBackend(
        config.bundle,
        manifest,
        providers=config.provider_list,
        intra_op_threads=config.resolved_intra_op_threads,
        variant=config.model_variant,
        towers=towers,
    )
