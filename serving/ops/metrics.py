"""Prometheus metrics of one server (its own registry, so several servers can share a process),
served over HTTP at /metrics on `--metrics-port`.

Names (all prefixed `clipserve_`):
  requests_total{method,code}           every RPC, by final status code
  errors_total{method,code}             the non-OK subset
  request_seconds{method}               latency histogram
  batch_size{modality}                  items per inference batch
  batch_cost{modality}                  padded tokens (text) / model-input pixels (image) per batch
  queue_depth{modality}                 items waiting for inference
  queue_wait_seconds{modality}          time from queueing to the batch starting
  inference_seconds{modality}           backend time per batch
  inference_failures_total{modality}
  inflight_pixels                       decoded-pixel budget in use
  inflight_requests                     admitted requests in flight
  ready                                 1 when readiness is SERVING
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "clipserve_requests", "RPCs by method and status code", ["method", "code"], registry=r
        )
        self.errors = Counter(
            "clipserve_errors", "RPCs that did not end OK", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "clipserve_request_seconds", "RPC latency", ["method"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "clipserve_batch_size", "items per inference batch", ["modality"],
            buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_cost = Histogram(
            "clipserve_batch_cost", "padded tokens / model-input pixels per batch", ["modality"],
            buckets=tuple(2**i for i in range(4, 25, 2)), registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "clipserve_queue_depth", "items waiting for inference", ["modality"], registry=r
        )
        self.queue_wait = Histogram(
            "clipserve_queue_wait_seconds", "queueing time before inference", ["modality"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference = Histogram(
            "clipserve_inference_seconds", "backend time per batch", ["modality"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_failures = Counter(
            "clipserve_inference_failures", "failed inference batches", ["modality"], registry=r
        )
        self.inflight_pixels = Gauge(
            "clipserve_inflight_pixels", "decoded-pixel budget in use", registry=r
        )
        self.inflight_requests = Gauge(
            "clipserve_inflight_requests", "admitted requests in flight", registry=r
        )
        self.ready = Gauge("clipserve_ready", "1 when readiness is SERVING", registry=r)
        self.backend = Gauge(
            "clipserve_backend_info",
            "1 for the backend in use: what actually runs the model (as Info reports it)",
            ["backend", "device", "providers", "precision", "model_variant"],
            registry=r,
        )
        self._http: Any = None
        self._http_thread: threading.Thread | None = None

    # -- observers ------------------------------------------------------------------------------

    def backend_in_use(self, info: Any) -> None:
        """`info`: the backend's BackendInfo."""
        providers = ",".join(info.providers)
        self.backend.labels(info.name, info.device, providers, info.precision,
                            info.model_variant).set(1)  # fmt: skip

    def rpc_done(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        if code != "OK":
            self.errors.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def queue_depth_changed(self, modality: str, depth: int) -> None:
        self.queue_depth.labels(modality).set(depth)

    def batch_done(
        self, modality: str, size: int, cost: int, waits_s: Sequence[float], infer_s: float
    ) -> None:
        self.batch_size.labels(modality).observe(size)
        self.batch_cost.labels(modality).observe(cost)
        self.inference.labels(modality).observe(infer_s)
        wait = self.queue_wait.labels(modality)
        for w in waits_s:
            wait.observe(w)

    def batch_failed(self, modality: str) -> None:
        self.inference_failures.labels(modality).inc()

    # -- HTTP -----------------------------------------------------------------------------------

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP server in a thread; returns the bound port (0 = any)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._http, self._http_thread = server, thread
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
