"""`TowerSplitBackend`: each tower on the engine that runs it faster.

On this project's x86 machine OpenVINO runs the ViT-B-32 image tower 7-11 % faster than ONNX
Runtime, and ONNX Runtime serves the text tower 6-18 % faster than OpenVINO (small, frequent
caption batches; alternated runs in docs/benchmarks.md). `--backend auto` therefore puts the
image tower on OpenVINO and the text tower on ONNX Runtime when both can run the bundle's fp32
towers on the CPU (`backend_factory.resolve_backend`). Each engine loads only its own tower.

`info` names both: backend ``"openvino+onnxruntime"``, providers tagged with their tower, e.g.
``("OpenVINO 2026.4.1 CPU (image)", "CPUExecutionProvider (text)")``.
"""

from __future__ import annotations

import numpy as np

from clipserve.serving.backends.backend import BackendInfo, BackendStartupError, EmbeddingBackend


class TowerSplitBackend:
    """`embed_images` on `image`, `embed_texts` on `text`; owns (and closes) both."""

    def __init__(self, image: EmbeddingBackend, text: EmbeddingBackend) -> None:
        a, b = image.info, text.info
        if (a.precision, a.model_variant) != (b.precision, b.model_variant):
            raise BackendStartupError(
                f"towers disagree on precision/variant: image {a.precision}/{a.model_variant}, "
                f"text {b.precision}/{b.model_variant}"
            )
        self._image, self._text = image, text
        self.info = BackendInfo(
            name=f"{a.name}+{b.name}",
            device=a.device if a.device == b.device else f"{a.device}+{b.device}",
            providers=(f"{a.providers[0]} (image)", f"{b.providers[0]} (text)"),
            precision=a.precision,
            model_variant=a.model_variant,
        )

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._image.embed_images(pixel_values)

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        return self._text.embed_texts(input_ids)

    def close(self) -> None:
        try:
            self._image.close()
        finally:
            self._text.close()
