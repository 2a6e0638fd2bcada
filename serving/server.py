"""The gRPC server: wiring, lifecycle and the `clipserve serve` command.

`create_server(config)` builds the backend, the index and the service, registers the ClipServe
servicer, gRPC health (per service) and server reflection, binds (TLS when configured),
starts, and warms the backend up before reporting SERVING. `shutdown(server)` drains in-flight
calls and releases everything; a plain `server.stop()` works too (resources are released once
the server has terminated).

Health service names: `clipserve.v1.ClipServe` and "" are readiness (inference and index work:
serving/ops/health.py); `liveness` is SERVING while the server runs at all (a restart would not
help a server that is merely not ready).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from clipserve.index.base import VectorIndex
from clipserve.index.factory import open_index
from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.proto.v1 import clipserve_pb2_grpc as pb_grpc
from clipserve.serving.backends.backend import BackendStartupError, EmbeddingBackend
from clipserve.serving.backends.backend_factory import make_backend, resolve_backend
from clipserve.serving.bundle import BundleError, Manifest, load_manifest
from clipserve.serving.config import BACKENDS, ServerConfig
from clipserve.serving.embedding import memory
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.serving.errors import BackendUnavailable
from clipserve.serving.ops.interceptor import CallInterceptor
from clipserve.serving.ops.request_context import RequestIdFilter
from clipserve.serving.search.index_service import IndexService
from clipserve.serving.service import EmbeddingService
from clipserve.serving.servicer import ClipServeServicer

log = logging.getLogger("clipserve.serving")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ClipServe"].full_name  # "clipserve.v1.ClipServe"
LIVENESS_SERVICE = "liveness"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class _Runtime:
    """What a running server owns besides the grpc.aio.Server object itself."""

    service: EmbeddingService
    index: IndexService
    health: HealthServicer
    supervisor: asyncio.Task[None] | None = None
    metrics_port: int | None = None


_RUNNING: dict[grpc.aio.Server, _Runtime] = {}


class StartupError(RuntimeError):
    """The server cannot start: port taken, index unavailable, backend warm-up failed."""


async def create_server(
    config: ServerConfig,
    *,
    backend: EmbeddingBackend | None = None,
    index: VectorIndex | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Build, bind and start a server; returns it with its bound port (useful for port 0).

    `backend` / `index` replace the ones built from `config` (the server takes ownership and
    closes them). Health is NOT_SERVING until a warm-up embed succeeded, then SERVING; a
    periodic probe keeps it truthful. Raises BundleError / ValueError on bad configuration and
    StartupError if the index cannot be opened, the port bound, or the warm-up fails.
    """
    api_keys = config.api_keys()  # OSError / ValueError before anything is built
    manifest = await asyncio.to_thread(load_manifest, config.bundle)
    tokenizer = ClipTokenizer.from_bundle(config.bundle, manifest)
    model: EmbeddingBackend = (
        backend if backend is not None else await asyncio.to_thread(_make_backend, config, manifest)
    )
    if index is None:
        try:
            index = await asyncio.to_thread(
                open_index,
                path=config.index_path,
                url=config.qdrant_url,
                api_key=config.qdrant_api_key,
            )
        except BaseException:
            model.close()
            raise
    assert index is not None
    kind = getattr(index, "kind", type(index).__name__)
    try:
        service = EmbeddingService(
            config, manifest, model, tokenizer, index, index_kind=kind,
            auth_required=bool(api_keys),
        )  # fmt: skip
    except BaseException:
        model.close()
        index.close()
        raise
    index_service = IndexService(config, service, index)
    try:
        try:
            await index_service.ensure_default_collection()
        except (RuntimeError, OSError, BackendUnavailable) as exc:
            # e.g. the index directory is held by another process; name the index's own error
            cause = exc.__context__ if isinstance(exc, BackendUnavailable) else exc
            raise StartupError(
                f"cannot open collection {config.collection!r}: {cause or exc}"
            ) from exc
        server, port, health = _build_grpc_server(config, service, index_service, api_keys)
    except BaseException:
        index_service.close()
        service.close()
        raise
    # The aio health servicer starts with "" SERVING: nothing is, until the warm-up succeeded.
    await _set_health(health, serving=False)
    runtime = _Runtime(service, index_service, health)
    _RUNNING[server] = runtime

    async def readiness(serving: bool) -> None:
        if server in _RUNNING:  # after shutdown began, health stays NOT_SERVING
            await _set_health(health, serving=serving)

    await server.start()
    await health.set(LIVENESS_SERVICE, _SERVING)
    runtime.supervisor = asyncio.create_task(_supervise(server, runtime, config))
    if not await service.start():
        await shutdown(server, grace_s=0)
        raise StartupError("warm-up failed (inference or index); see the log for the traceback")
    service.readiness_listeners.append(readiness)
    await _set_health(health, serving=True)
    if config.metrics_port is not None:
        try:
            runtime.metrics_port = service.metrics.serve(config.metrics_port, config.metrics_host)
        except OSError as exc:
            await shutdown(server, grace_s=0)
            raise StartupError(
                f"cannot serve metrics on port {config.metrics_port}: {exc}"
            ) from exc
    return server, port


def metrics_port(server: grpc.aio.Server) -> int | None:
    """The bound /metrics port of a running server (None when metrics are off)."""
    runtime = _RUNNING.get(server)
    return None if runtime is None else runtime.metrics_port


def service_of(server: grpc.aio.Server) -> EmbeddingService:
    """The service behind a running server (tests, embedding the server in a process)."""
    return _RUNNING[server].service


def _make_backend(config: ServerConfig, manifest: Manifest) -> EmbeddingBackend:
    try:
        return make_backend(config, manifest)
    except BackendStartupError as exc:
        raise StartupError(f"backend {resolve_backend(config)[0]}: {exc}") from exc


def _build_grpc_server(
    config: ServerConfig,
    service: EmbeddingService,
    index_service: IndexService,
    api_keys: frozenset[str],
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    server = grpc.aio.server(
        interceptors=[CallInterceptor(service.metrics, api_keys)],
        options=[
            # One limit both ways: the largest request is max_request_bytes, and the largest
            # response (max_batch embeddings) is far smaller.
            ("grpc.max_receive_message_length", config.max_request_bytes),
            ("grpc.max_send_message_length", config.max_request_bytes),
            ("grpc.so_reuseport", 0),  # port 0 must mean a port nobody else is using
        ],
    )
    pb_grpc.add_ClipServeServicer_to_server(ClipServeServicer(service, index_service), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )  # fmt: skip
    try:
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = grpc.ssl_server_credentials(
                [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
            )
            port = server.add_secure_port(config.address, credentials)
        else:
            port = server.add_insecure_port(config.address)
    except OSError as exc:
        raise StartupError(f"cannot read the TLS certificate or key: {exc}") from exc
    except RuntimeError as exc:
        raise StartupError(f"cannot bind {config.address}: {exc}") from exc
    if port == 0:
        raise StartupError(f"cannot bind {config.address}")
    return server, port, health


async def _set_health(health: HealthServicer, *, serving: bool) -> None:
    status = _SERVING if serving else _NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health.set(name, status)


async def _supervise(server: grpc.aio.Server, runtime: _Runtime, config: ServerConfig) -> None:
    """Once the server has terminated (or the loop is going away), stop the service's loops
    and release the backend, the index and the metrics endpoint. (Readiness itself is kept
    by the service's HealthMonitor.)"""
    try:
        await server.wait_for_termination()
    finally:
        _RUNNING.pop(server, None)
        runtime.service.metrics.close()
        with contextlib.suppress(Exception):
            await runtime.service.aclose()
        # Off the loop: closing waits for worker threads still finishing a backend call.
        await asyncio.to_thread(runtime.index.close)
        await asyncio.to_thread(runtime.service.close)


async def shutdown(server: grpc.aio.Server, grace_s: float | None = None) -> None:
    """Graceful stop: health goes NOT_SERVING, new calls are refused, in-flight calls get up
    to `grace_s` to finish; then the backend and index are closed. Idempotent."""
    runtime = _RUNNING.get(server)
    if runtime is not None:
        await runtime.health.enter_graceful_shutdown()
    await server.stop(grace_s)
    if runtime is not None and runtime.supervisor is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await runtime.supervisor


# -- `clipserve serve` --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    d = ServerConfig.__dataclass_fields__
    p = argparse.ArgumentParser(
        prog="clipserve serve",
        description="Serve a model bundle over gRPC (clipserve.v1.ClipServe) with a Qdrant index. "
        "Every flag can also be set as a CLIPSERVE_<NAME> environment variable "
        "(e.g. CLIPSERVE_MAX_BATCH); flags win.",
    )
    p.add_argument("--bundle", type=Path, help="model bundle directory (required)")
    p.add_argument("--host", help=f"interface to bind (default {d['host'].default})")
    p.add_argument("--port", type=int, help=f"port, 0 = any free one (default {d['port'].default})")
    p.add_argument("--index-path", type=Path, help="directory of the embedded Qdrant index")
    p.add_argument("--qdrant-url", help="a Qdrant server instead of the embedded index")
    p.add_argument("--collection", help=f"default collection (default {d['collection'].default})")
    p.add_argument("--qdrant-api-key", help="API key of the Qdrant server")
    p.add_argument("--providers", help="'auto' or comma-separated ONNX Runtime providers")
    p.add_argument("--inference-workers", type=int, help="batches run at once (default 2)")
    p.add_argument(
        "--intra-op-threads",
        type=int,
        help="engine threads per batch (default: CPUs / inference workers)",
    )
    p.add_argument("--max-batch-wait-us", type=int, help="longest wait for a batch to fill")
    p.add_argument("--max-inflight-pixels", type=int, help="decoded-pixel budget, all requests")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    p.add_argument("--api-key-file", type=Path, help="require one of these keys (x-api-key)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--max-batch", type=int, help=f"default {d['max_batch'].default}")
    p.add_argument("--max-in-flight", type=int, help=f"default {d['max_in_flight'].default}")
    p.add_argument(
        "--grace-s", type=float, help=f"drain time on stop (default {d['grace_s'].default})"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="default auto: on a CPU with OpenVINO installed, images on OpenVINO and text on "
        "ONNX Runtime (fp32); else ONNX Runtime",
    )
    p.add_argument("--triton-url", help="Triton gRPC HOST:PORT (with --backend triton)")
    p.add_argument(
        "--triton-max-inflight",
        type=int,
        help="batches in flight to Triton at once, both towers together (with --backend "
        f"triton, in place of --inference-workers; default {d['triton_max_inflight'].default})",
    )
    p.add_argument(
        "--model-variant", choices=("default", "fp16", "int8"), help="bundle variant to serve"
    )
    p.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    p.add_argument("--log-level", default="INFO", help="default INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    memory.tune_allocator()  # before the first large decode (see serving/embedding/memory.py)
    config = ServerConfig.from_env(
        bundle=args.bundle,
        host=args.host,
        port=args.port,
        index_path=args.index_path,
        qdrant_url=args.qdrant_url,
        collection=args.collection,
        qdrant_api_key=args.qdrant_api_key,
        providers=args.providers,
        inference_workers=args.inference_workers,
        intra_op_threads=args.intra_op_threads,
        max_batch_wait_us=args.max_batch_wait_us,
        max_inflight_pixels=args.max_inflight_pixels,
        metrics_port=args.metrics_port,
        api_key_file=args.api_key_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_batch=args.max_batch,
        max_in_flight=args.max_in_flight,
        grace_s=args.grace_s,
        backend=args.backend,
        triton_url=args.triton_url,
        triton_max_inflight=args.triton_max_inflight,
        model_variant=args.model_variant,
    )  # ValueError -> the CLI prints it as a user error
    try:
        asyncio.run(_serve(config, args.port_file))
    except (BundleError, StartupError, OSError) as exc:
        print(f"clipserve serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


async def _serve(config: ServerConfig, port_file: Path | None) -> None:
    server, port = await create_server(config)
    service = _RUNNING[server].service
    info = service.info()
    if config.backend == "triton":
        inference = f"up to {service.embedder.inference_slots} batches in flight"
    else:
        inference = (
            f"{service.embedder.inference_slots} workers x "
            f"{config.resolved_intra_op_threads} threads"
        )
    chosen, why = resolve_backend(config)
    if info.backend != chosen:
        why = f"fell back from {chosen}, see the warning above"
    log.info(
        "serving %s version %s (dim %d) on %s:%d | backend %s (%s) %s, %s | index %s collection %r",
        info.model_name, info.model_version[:12], info.dim, config.host, port,
        info.backend, why, ",".join(info.providers), inference, info.index_kind,
        info.default_collection,
    )  # fmt: skip
    mport = metrics_port(server)
    if mport is not None:
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, mport)
    if port_file is not None:
        _write_atomic(port_file, f"{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    terminated = asyncio.ensure_future(server.wait_for_termination())
    await asyncio.wait({stopping, terminated}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping: draining in-flight calls (up to %.1f s)", config.grace_s)
    await shutdown(server, config.grace_s)
    stopping.cancel()
    log.info("stopped")


def _write_atomic(path: Path, text: str) -> None:
    """Readers polling `path` see nothing or the whole content, never a partial write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
