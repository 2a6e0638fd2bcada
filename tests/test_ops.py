"""Operations: Prometheus metrics over HTTP, API-key authentication, TLS with a self-signed
certificate made at test time (openssl), request ids in trailing metadata, the CLI flags."""

from __future__ import annotations

import logging
import shutil
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import BackgroundServer

from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.proto.v1 import clipserve_pb2_grpc as pb_grpc
from clipserve.serving.config import ServerConfig
from clipserve.serving.server import SERVICE_NAME, metrics_port

EMBED = pb.EmbedRequest(inputs=[pb.Content(text="a red bicycle")])


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.fixture()
def ops_server(tiny_bundle: Path, tmp_path: Path) -> BackgroundServer:
    keys = tmp_path / "keys"
    keys.write_text("old-key\n\nnew-key\n")
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", metrics_port=0,
        api_key_file=keys, max_batch=4,
    )  # fmt: skip
    bg = BackgroundServer(config)
    yield bg
    bg.stop()


def test_metrics_auth_and_request_ids(
    ops_server: BackgroundServer, caplog: pytest.LogCaptureFixture
) -> None:
    bg = ops_server
    stub = bg.client.stub
    # No key, a wrong key: UNAUTHENTICATED, saying which.
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(EMBED, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "x-api-key" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(EMBED, timeout=30, metadata=[("x-api-key", "nope")])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not valid" in err.value.details()
    # Either key of the file works (rotation); the request id comes back.
    with caplog.at_level(logging.INFO, logger="clipserve.serving.rpc"):
        resp, call = stub.Embed.with_call(
            EMBED, timeout=30, metadata=[("x-api-key", "new-key"), ("x-request-id", "req-42")]
        )
    assert len(resp.embeddings) == 1
    assert ("x-request-id", "req-42") in call.trailing_metadata()
    assert any("method=Embed code=OK" in r.message and "request_id=req-42" in r.message
               for r in caplog.records)  # fmt: skip
    _, call = stub.Info.with_call(pb.InfoRequest(), metadata=[("x-api-key", "old-key")])
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 32  # none sent: one was made
    info = stub.Info(pb.InfoRequest(), metadata=[("x-api-key", "old-key")])
    assert info.auth_required and info.limits.max_inflight_pixels > 0
    assert info.limits.max_batch_tokens > 0 and info.limits.max_batch_wait_us > 0
    # Health needs no key.
    health = health_pb2_grpc.HealthStub(bg.client._channel)
    check = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    # Metrics: requests and errors by method and code, latency, batches, in-flight pixels.
    port = metrics_port(bg.server)
    assert port
    m = scrape(port)
    assert m['clipserve_requests_total{code="UNAUTHENTICATED",method="Embed"}'] == 2
    assert m['clipserve_errors_total{code="UNAUTHENTICATED",method="Embed"}'] == 2
    assert m['clipserve_requests_total{code="OK",method="Embed"}'] == 1
    assert m['clipserve_request_seconds_count{method="Embed"}'] == 3
    assert m['clipserve_batch_size_count{modality="text"}'] >= 1
    assert m['clipserve_inference_seconds_count{modality="text"}'] >= 1
    assert 'clipserve_queue_depth{modality="text"}' in m
    assert 'clipserve_queue_wait_seconds_count{modality="text"}' in m
    assert m["clipserve_inflight_pixels"] == 0 and m["clipserve_ready"] == 1


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_a_self_signed_certificate(tiny_bundle: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", tls_cert=cert, tls_key=key
    )
    bg = BackgroundServer(config)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{bg.port}", creds) as channel:
            resp = pb_grpc.ClipServeStub(channel).Embed(EMBED, timeout=30)
            assert len(resp.embeddings[0].values) == 128
        with grpc.insecure_channel(f"127.0.0.1:{bg.port}") as plain:  # plaintext is refused
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.ClipServeStub(plain).Embed(EMBED, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        bg.stop()


def test_config_validates_ops_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls: give both"):
        ServerConfig(bundle=Path("b"), index_path=tmp_path, tls_cert=tmp_path / "c")
    with pytest.raises(ValueError, match="max_inflight_pixels"):
        ServerConfig(bundle=Path("b"), index_path=tmp_path, max_inflight_pixels=10)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no key"):
        ServerConfig(bundle=Path("b"), index_path=tmp_path, api_key_file=empty).api_keys()
    env = {"CLIPSERVE_BUNDLE": "b", "CLIPSERVE_INDEX_PATH": str(tmp_path),
           "CLIPSERVE_API_KEY": "s3cret", "CLIPSERVE_METRICS_PORT": "9100"}  # fmt: skip
    config = ServerConfig.from_env(env)
    assert config.api_keys() == frozenset({"s3cret"}) and config.metrics_port == 9100
