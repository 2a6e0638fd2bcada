"""`ServerConfig`: everything `clipserve serve` can be told, validated once, then frozen.

Sources, later wins: the defaults below, `CLIPSERVE_*` environment variables (read only in
`ServerConfig.from_env`), then explicit overrides (the CLI's flags, a test's arguments).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from clipserve.index.base import check_collection_name

ENV_PREFIX = "CLIPSERVE_"
MiB = 1 << 20

BACKENDS = ("auto", "onnxruntime", "openvino", "triton")
MODEL_VARIANTS = ("default", "fp16", "int8")

# The index's rule (names become directories of the embedded engine), stated for clients.
COLLECTION_RULE = "1-64 characters from A-Z a-z 0-9 _ -"


def is_valid_collection_name(name: str) -> bool:
    try:
        check_collection_name(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ServerConfig:
    bundle: Path  # model bundle directory (see clipserve.serving.bundle)
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = any free port (create_server returns the bound one)
    # Index: an embedded Qdrant engine on `index_path`, or a Qdrant server at `qdrant_url`.
    index_path: Path | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    collection: str = "clipserve"  # used when a request names none; created at startup
    # Limits, published by the Info RPC. Requests over them get INVALID_ARGUMENT.
    max_batch: int = 64  # inputs per Embed, items per Upsert
    max_text_chars: int = 4096  # cheap guard before tokenizing; tokens are checked too
    max_image_bytes: int = 8 * MiB  # encoded size
    max_image_pixels: int = 40_000_000  # decoded width * height (decompression bombs)
    max_top_k: int = 1000
    max_in_flight: int = 64  # concurrent RPCs before RESOURCE_EXHAUSTED "server busy"
    # gRPC's own cap on one message; bounds memory per request (max_in_flight of them at once).
    max_request_bytes: int = 64 * MiB
    # Inference.
    providers: str = "auto"  # "auto" or comma-separated ONNX Runtime providers
    # ONNX Runtime threads per batch; None = the usable CPUs split between the inference
    # workers (resolved_intra_op_threads). ORT's own default gives every concurrent batch all
    # cores: two batches on 2 cores then ran at half the speed of one (docs/benchmarks.md).
    intra_op_threads: int | None = None
    inference_workers: int = 2  # threads running backend calls concurrently (not for Triton)
    grace_s: float = 10.0  # how long a graceful stop lets in-flight calls finish
    health_interval_s: float = 10.0  # period of the backend probe behind the health status
    # Dynamic batching across requests (serving/embedding/batcher.py), per modality. A batch closes when
    # it holds max_batch items, when the next item would pass its budget, or max_batch_wait_us
    # after its oldest item arrived (it only starts waiting once an inference worker is free).
    max_batch_tokens: int = 8192  # text: rows x longest row (padded tokens) per batch
    # images: model-input pixels per batch. 16 images at 224 px: on CPU an image batch gains
    # little beyond that and bigger ones only lengthen the tail (docs/benchmarks.md); raise it
    # on a GPU (e.g. CLIPSERVE_MAX_BATCH_PIXELS=3211264 for 64 images).
    max_batch_pixels: int = 16 * 224 * 224
    max_batch_wait_us: int = 2000
    max_queued_items: int = 4096  # items waiting for inference; more = RESOURCE_EXHAUSTED
    # Memory (serving/embedding/budget.py): decoded pixels held at once, all requests together. A
    # decoded pixel costs at most 4 bytes and a preprocessed model-input pixel 3 units
    # (three float32 channels), so decoded image memory stays under ~4 bytes x this.
    max_inflight_pixels: int = 100_000_000
    admission_wait_s: float = 30.0  # longest wait for budget before RESOURCE_EXHAUSTED
    decode_workers: int = 2  # threads decoding images / tokenizing texts
    # Operations.
    metrics_port: int | None = None  # Prometheus /metrics on this port; None = off
    metrics_host: str = "127.0.0.1"
    api_key: str | None = None  # clients send it as metadata `x-api-key`; None = no auth
    api_key_file: Path | None = None  # one key per line (rotation: several at once)
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, serve TLS only
    tls_key: Path | None = None
    # Backend (serving/backends/backend_factory.py): in-process ONNX Runtime or OpenVINO, or a
    # Triton server. "auto": for fp32 on a CPU with OpenVINO installed, images on OpenVINO and
    # text on ONNX Runtime (each the faster there, docs/benchmarks.md), else ONNX Runtime for
    # both (`backend_factory.resolve_backend`).
    backend: str = "auto"  # "auto" | "onnxruntime" | "openvino" | "triton"
    triton_url: str | None = None  # HOST:PORT of Triton's gRPC endpoint (backend "triton")
    # Batches in flight to Triton at once, both towers together (in place of
    # inference_workers, which bounds local threads): a remote call holds no thread, and
    # Triton's dynamic batcher and instances want several requests queued to merge and overlap.
    triton_max_inflight: int = 4
    model_variant: str = "default"  # bundle variant: "default" (fp32) | "fp16" | "int8"

    def __post_init__(self) -> None:
        # Accept str paths from callers, store Paths: frozen, so go through object.__setattr__.
        object.__setattr__(self, "bundle", Path(self.bundle))
        for name in ("index_path", "api_key_file", "tls_cert", "tls_key"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if not str(self.bundle):
            raise ValueError("bundle: a model bundle directory is required")
        if not self.host:
            raise ValueError("host: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not in [0, 65535]")
        if (self.index_path is None) == (not self.qdrant_url):
            raise ValueError(
                "index: give exactly one of index_path (embedded Qdrant engine on a directory) "
                "or qdrant_url (a Qdrant server)"
            )
        if not is_valid_collection_name(self.collection):
            raise ValueError(f"collection: {self.collection!r} is not {COLLECTION_RULE}")
        for name in (
            "max_batch",
            "max_text_chars",
            "max_image_bytes",
            "max_image_pixels",
            "max_top_k",
            "max_in_flight",
            "max_request_bytes",
            "inference_workers",
            "max_batch_tokens",
            "max_batch_pixels",
            "max_batch_wait_us",
            "max_queued_items",
            "max_inflight_pixels",
            "decode_workers",
            "triton_max_inflight",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads: must be >= 1, got {self.intra_op_threads}")
        if not self.providers.strip():
            raise ValueError(
                "providers: 'auto' or a comma-separated list of ONNX Runtime providers"
            )
        if self.grace_s < 0:
            raise ValueError(f"grace_s: must be >= 0, got {self.grace_s}")
        if self.health_interval_s <= 0:
            raise ValueError(f"health_interval_s: must be > 0, got {self.health_interval_s}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if (self.backend == "triton") != bool(self.triton_url):
            raise ValueError("triton_url: give --triton-url HOST:PORT with --backend triton only")
        if self.model_variant not in MODEL_VARIANTS:
            raise ValueError(
                f"model_variant: {self.model_variant!r} is not one of {', '.join(MODEL_VARIANTS)}"
            )
        if self.max_request_bytes >= 2**31:
            raise ValueError("max_request_bytes: gRPC messages must be under 2 GiB")
        if self.max_inflight_pixels < self.max_image_pixels:
            raise ValueError(
                f"max_inflight_pixels ({self.max_inflight_pixels}) must be >= max_image_pixels "
                f"({self.max_image_pixels}): the largest allowed image must fit on its own"
            )
        if self.admission_wait_s < 0:
            raise ValueError(f"admission_wait_s: must be >= 0, got {self.admission_wait_s}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port: {self.metrics_port} is not in [0, 65535]")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls: give both tls_cert and tls_key, or neither")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key: must not be blank")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def api_keys(self) -> frozenset[str]:
        """Every accepted API key (`api_key` and the lines of `api_key_file`); empty = no
        auth. Reads the file, so call it once at startup; OSError / ValueError if unusable."""
        keys = {self.api_key.strip()} if self.api_key else set()
        if self.api_key_file is not None:
            lines = self.api_key_file.read_text().splitlines()
            file_keys = {line.strip() for line in lines if line.strip()}
            if not file_keys:
                raise ValueError(f"api_key_file {self.api_key_file} holds no key")
            keys |= file_keys
        return frozenset(keys)

    @property
    def resolved_intra_op_threads(self) -> int:
        """intra_op_threads, or the usable CPUs divided between the inference workers."""
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        return max(1, usable_cpus() // self.inference_workers)

    @property
    def provider_list(self) -> str | list[str]:
        """`providers` in the form OnnxRuntimeBackend takes: "auto" or a list of names."""
        if self.providers.strip() == "auto":
            return "auto"
        return [p.strip() for p in self.providers.split(",") if p.strip()]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults <- `CLIPSERVE_<FIELD>` variables <- overrides (None overrides are ignored,
        so argparse results can be passed straight through). Raises ValueError naming the
        variable or field that is wrong."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.name.upper()
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _ENV_PARSERS.get(f.name, str)(raw)
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r}: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown ServerConfig fields: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "bundle" not in values:
            raise ValueError(f"bundle: pass --bundle or set {ENV_PREFIX}BUNDLE")
        return cls(**values)


_ENV_PARSERS: dict[str, Callable[[str], Any]] = {
    "bundle": Path,
    "index_path": Path,
    "port": int,
    "max_batch": int,
    "max_text_chars": int,
    "max_image_bytes": int,
    "max_image_pixels": int,
    "max_top_k": int,
    "max_in_flight": int,
    "max_request_bytes": int,
    "intra_op_threads": int,
    "inference_workers": int,
    "grace_s": float,
    "health_interval_s": float,
    "max_batch_tokens": int,
    "max_batch_pixels": int,
    "max_batch_wait_us": int,
    "max_queued_items": int,
    "max_inflight_pixels": int,
    "admission_wait_s": float,
    "decode_workers": int,
    "triton_max_inflight": int,
    "metrics_port": int,
    "api_key_file": Path,
    "tls_cert": Path,
    "tls_key": Path,
}


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
