"""Health that tells the truth: readiness stays SERVING through a saturating load (a real
server subprocess, many concurrent clients, health polled throughout, zero failed requests),
and goes NOT_SERVING when inference or the index actually fails, even with no traffic to
notice it; liveness is separate."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from helpers import BackgroundServer, ControlledBackend

from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.serving.client import ClipServeClient
from clipserve.serving.config import ServerConfig
from clipserve.serving.server import LIVENESS_SERVICE, SERVICE_NAME, service_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from serving_harness import ServerProcess, small_jpeg  # noqa: E402


def wait_for_health(client: ClipServeClient, status: str, service: str = SERVICE_NAME) -> None:
    deadline = time.monotonic() + 15
    while client.health(service) != status:
        assert time.monotonic() < deadline, f"health of {service!r} never became {status}"
        time.sleep(0.02)


@pytest.mark.slow
def test_readiness_stays_serving_through_a_saturating_load(tiny_bundle: Path) -> None:
    clients, seconds = 48, 8.0
    env = {"CLIPSERVE_HEALTH_INTERVAL_S": "0.5", "CLIPSERVE_MAX_IN_FLIGHT": str(clients + 8)}
    images = [small_jpeg(i) for i in range(4)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(tiny_bundle, Path(tmp), env=env) as server,
    ):
        stop = threading.Event()
        ok, failed, polls = [0], [], []

        def load(i: int) -> None:
            with ClipServeClient(server.target, timeout_s=60) as c:
                while not stop.is_set():
                    item = f"caption number {i}" if i % 2 else images[i % 4]
                    try:
                        c.embed([item])
                        ok[0] += 1
                    except grpc.RpcError as exc:
                        failed.append(exc.code().name)

        def poll() -> None:
            with ClipServeClient(server.target) as c:
                while not stop.is_set():
                    polls.append(c.health(SERVICE_NAME))
                    time.sleep(0.05)

        with ThreadPoolExecutor(clients + 1) as pool:
            futures = [pool.submit(load, i) for i in range(clients)] + [pool.submit(poll)]
            time.sleep(seconds)
            stop.set()
            for f in futures:
                f.result(120)
    assert failed == [] and ok[0] > clients
    assert len(polls) > 20 and set(polls) == {"SERVING"}, polls


def test_inference_failure_turns_readiness_off_without_traffic_and_back(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    backend = ControlledBackend(OnnxRuntimeBackend(tiny_bundle))
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", health_interval_s=0.3
    )
    bg = BackgroundServer(config, backend=backend)
    try:
        wait_for_health(bg.client, "SERVING")
        backend.fail = True  # nobody sends a request: the probe must find it
        wait_for_health(bg.client, "NOT_SERVING")
        assert bg.client.health("") == "NOT_SERVING"
        assert bg.client.health(LIVENESS_SERVICE) == "SERVING"  # alive, just not ready
        backend.fail = False
        wait_for_health(bg.client, "SERVING")
    finally:
        bg.stop()


def _server(
    tiny_bundle: Path, tmp_path: Path, interval: float
) -> tuple[BackgroundServer, ControlledBackend]:
    backend = ControlledBackend(OnnxRuntimeBackend(tiny_bundle))
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "index", health_interval_s=interval
    )
    return BackgroundServer(config, backend=backend), backend


def test_a_failed_request_rechecks_readiness_at_once(tiny_bundle: Path, tmp_path: Path) -> None:
    # The interval is an hour: only the failure itself can trigger the re-check.
    bg, backend = _server(tiny_bundle, tmp_path, 3600)
    try:
        backend.fail = True
        with pytest.raises(grpc.RpcError) as err:
            bg.client.embed(["this batch fails"])
        assert err.value.code() == grpc.StatusCode.INTERNAL
        wait_for_health(bg.client, "NOT_SERVING")
        backend.fail = False
        assert bg.client.embed(["fine again"]).shape == (1, 128)  # evidence of recovery
        wait_for_health(bg.client, "SERVING")
    finally:
        bg.stop()


@pytest.mark.parametrize("traffic", [True, False], ids=["request-finds-it", "probe-finds-it"])
def test_a_failed_index_is_unavailable_and_not_ready(
    tiny_bundle: Path, tmp_path: Path, traffic: bool
) -> None:
    bg, _ = _server(tiny_bundle, tmp_path, 3600 if traffic else 0.3)
    try:
        assert bg.client.upsert([("stored before the failure", {})])
        service_of(bg.server).index.close()  # the index fails underneath the server
        if traffic:
            with pytest.raises(grpc.RpcError) as err:
                bg.client.upsert([("after the failure", {})])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "index is unavailable" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                bg.client.query(text="anything")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        wait_for_health(bg.client, "NOT_SERVING")
        assert bg.client.embed(["embedding still works"]).shape == (1, 128)
        assert bg.client.health(LIVENESS_SERVICE) == "SERVING"
    finally:
        bg.stop()


def test_health_needs_no_worker(tiny_bundle: Path, tmp_path: Path) -> None:
    """Every inference worker held by a stuck batch: health still answers at once."""
    bg, backend = _server(tiny_bundle, tmp_path, 3600)
    try:
        backend.open.clear()
        threads = [
            threading.Thread(target=lambda: bg.client.embed(["held"]), daemon=True)
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        assert backend.entered.wait(10)
        answers: list[Callable[[], str]] = [lambda: bg.client.health(SERVICE_NAME)] * 5
        assert [a() for a in answers] == ["SERVING"] * 5
    finally:
        backend.open.set()
        bg.stop()
