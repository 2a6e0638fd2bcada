"""`make_backend(config, manifest)`: the `EmbeddingBackend` a `ServerConfig` asks for.

Kept apart from server wiring so the choice (and each backend's heavy import: onnxruntime,
openvino, tritonclient) happens in one place. Failures that the operator can fix raise
`BackendStartupError` with a sentence saying what to change.
"""

from __future__ import annotations

from clipserve.serving.backends.backend import BackendStartupError, EmbeddingBackend
from clipserve.serving.bundle import Manifest
from clipserve.serving.config import ServerConfig


def make_backend(config: ServerConfig, manifest: Manifest) -> EmbeddingBackend:
    if config.backend == "triton":
        try:
            from clipserve.serving.backends.triton_backend import TritonBackend
        except ImportError as exc:
            raise BackendStartupError(
                f"--backend triton needs tritonclient: pip install 'clipserve[triton]' ({exc})"
            ) from exc
        assert config.triton_url is not None  # ServerConfig checks it
        return TritonBackend(config.triton_url, manifest, variant=config.model_variant)
    if config.backend == "openvino":
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
        )
    from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend  # loads onnxruntime

    return OnnxRuntimeBackend(
        config.bundle,
        manifest,
        providers=config.provider_list,
        intra_op_threads=config.resolved_intra_op_threads,
        variant=config.model_variant,
    )
