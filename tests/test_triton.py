"""The Triton backend against a REAL tritonserver (2.51, from the nvidia-pytriton wheel).

That tritonserver has the python backend but not the onnxruntime one, so the repository used
here is `clipserve triton-repo --python-backend`: the same model.onnx files, run by ONNX
Runtime inside python-backend models. Everything between clipserve and Triton is the real
production path (tritonclient's asyncio gRPC client on the serving loop, dynamic batching,
config checks). The onnxruntime_onnx repository, the one a GPU deployment uses, is checked
against Triton's own ModelConfig schema. One tritonserver serves the module; the test that
stops Triton mid-serving runs its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from helpers import BackgroundServer, start_server_error
from PIL import Image
from triton_local import TritonServer, free_port

from clipserve.serving.backends.backend import BackendStartupError
from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
from clipserve.serving.backends.triton_repo import IMAGE_MODEL, TEXT_MODEL
from clipserve.serving.backends.triton_repo import main as triton_repo_main
from clipserve.serving.bundle import load_manifest
from clipserve.serving.client import ClipServeClient
from clipserve.serving.config import ServerConfig
from clipserve.serving.embedding.preprocess import decode_for_model
from clipserve.serving.embedding.tokenizer import ClipTokenizer
from clipserve.serving.errors import BackendUnavailable
from clipserve.serving.server import StartupError, service_of

triton = pytest.importorskip("tritonclient.grpc", reason="pip install 'clipserve[triton]'")
from tritonclient.grpc import model_config_pb2  # noqa: E402

# The tiny bundle's export (shared fixture) dominates: ~15 s on 2 idle cores, minutes when shared.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
TRITON_MAX_BATCH = 8  # small, so a 20-image request is split into 8+8+4 by TritonBackend
ATOL = 1e-5  # same ONNX file, same ONNX Runtime kernels: only summation order may differ


def png(rgb: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(sum(rgb))
    pixels = np.clip(np.array(rgb) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


IMAGES = [png((200, 30, 30), (80, 60)), png((30, 180, 60), (64, 90)), png((20, 40, 220), (50, 50))]
TEXTS = ["a photo of a cat", "a red double-decker bus driving down a rainy street", "x"]


@pytest.fixture(scope="module")
def triton_repo(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("triton") / "repo"
    args = ["--bundle", str(tiny_bundle), "--out", str(repo), "--python-backend",
            "--max-batch", str(TRITON_MAX_BATCH), "--instances", "1", "--intra-op-threads", "1"]  # fmt: skip
    assert triton_repo_main(args) == 0
    return repo


@pytest.fixture(scope="module")
def triton_server(triton_repo: Path):
    server = TritonServer(triton_repo, [IMAGE_MODEL, TEXT_MODEL])
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(tiny_bundle, providers="CPUExecutionProvider")


def _expected(bundle: Path, ref: OnnxRuntimeBackend) -> tuple[np.ndarray, np.ndarray]:
    m = ref.manifest
    tok = ClipTokenizer.from_bundle(bundle, m)
    texts = ref.embed_texts(tok.pad(tok.encode(TEXTS)))
    pixels = [decode_for_model(b, m, max_bytes=10**8, max_pixels=10**8) for b in IMAGES]
    images = ref.embed_images(np.stack(pixels))  # the server's own decode path
    return texts, images


def test_onnxruntime_repo_is_valid_triton_config(tiny_bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert triton_repo_main(["--bundle", str(tiny_bundle), "--out", str(repo), "--kind", "gpu",
                             "--instances", "2", "--tensorrt", "--max-batch", "32"]) == 0  # fmt: skip
    m = load_manifest(tiny_bundle)
    for name, tower, dtype, dims in (
        (IMAGE_MODEL, m.image, model_config_pb2.TYPE_FP32, [3, *m.image_size]),
        (TEXT_MODEL, m.text, model_config_pb2.TYPE_INT64, [-1]),
    ):
        cfg = text_format.Parse(
            (repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert (cfg.name, cfg.platform, cfg.max_batch_size) == (name, "onnxruntime_onnx", 32)
        assert cfg.HasField("dynamic_batching")
        assert [(g.count, g.kind) for g in cfg.instance_group] == [
            (2, model_config_pb2.ModelInstanceGroup.KIND_GPU)
        ]
        accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accel] == ["tensorrt"]
        assert (cfg.input[0].name, cfg.input[0].data_type, list(cfg.input[0].dims)) == (
            tower.input_name, dtype, dims
        )  # fmt: skip
        assert list(cfg.output[0].dims) == [m.embed_dim]
        assert cfg.parameters["clipserve_model_version"].string_value == m.version
        onnx_file = repo / name / "1" / "model.onnx"
        assert onnx_file.read_bytes() == (tiny_bundle / tower.file).read_bytes()
    # TensorRT without a GPU instance group is refused, with the reason.
    with pytest.raises(ValueError, match="tensorrt: needs --kind gpu"):
        triton_repo_main(
            ["--bundle", str(tiny_bundle), "--out", str(tmp_path / "r2"), "--tensorrt"]
        )
    # A variant the bundle lacks: exit 2 with a sentence.
    rc = triton_repo_main(["--bundle", str(tiny_bundle), "--out", str(tmp_path / "r3"),
                           "--model-variant", "int8"])  # fmt: skip
    assert rc == 2


def test_triton_backend_matches_in_process_onnxruntime(
    triton_server: TritonServer, tiny_bundle: Path, reference: OnnxRuntimeBackend
) -> None:
    from clipserve.serving.backends.triton_backend import TritonBackend

    m = reference.manifest
    backend = TritonBackend(triton_server.url, m)
    try:
        assert backend.info.name == "triton" and backend.info.device == "cpu"
        assert backend.info.providers == ("triton:python",)
        rng = np.random.default_rng(0)
        pixels = rng.standard_normal((20, 3, *m.image_size)).astype(np.float32)  # > max batch
        np.testing.assert_allclose(backend.embed_images(pixels), reference.embed_images(pixels),
                                   atol=ATOL)  # fmt: skip
        tok = ClipTokenizer.from_bundle(tiny_bundle, m)
        ids = tok.pad(tok.encode(TEXTS))
        np.testing.assert_allclose(backend.embed_texts(ids), reference.embed_texts(ids), atol=ATOL)

        async def serving_path() -> tuple[np.ndarray, np.ndarray]:
            try:  # the 20 images go as 8+8+4, at once
                images = await backend.embed_images_async(pixels)
                return images, await backend.embed_texts_async(ids)
            finally:
                await backend.aclose()

        images, texts = asyncio.run(serving_path())
        np.testing.assert_allclose(images, reference.embed_images(pixels), atol=ATOL)
        np.testing.assert_allclose(texts, reference.embed_texts(ids), atol=ATOL)
        with pytest.raises(ValueError, match="int64"):
            asyncio.run(backend.embed_texts_async(ids.astype(np.int32)))

        async def past_timeout() -> np.ndarray:
            backend.timeout_s = 1e-6  # the per-call timeout: a call that outlives it fails
            try:
                return await backend.embed_texts_async(ids)
            finally:
                await backend.aclose()

        with pytest.raises(
            BackendUnavailable, match=f"Triton at {triton_server.url}.*(?i:deadline)"
        ):
            asyncio.run(past_timeout())
    finally:
        backend.close()


def test_repository_of_another_bundle_is_refused(
    triton_server: TritonServer, reference: OnnxRuntimeBackend
) -> None:
    from clipserve.serving.backends.triton_backend import TritonBackend

    other = dataclasses.replace(reference.manifest, version="0123456789ab")
    with pytest.raises(BackendStartupError, match="serves model version"):
        TritonBackend(triton_server.url, other)
    with pytest.raises(BackendStartupError, match="serves variant 'default'"):
        TritonBackend(triton_server.url, reference.manifest, variant="int8")


def test_clipserve_serve_backend_triton_end_to_end(
    triton_server: TritonServer, tiny_bundle: Path, reference: OnnxRuntimeBackend, tmp_path: Path
) -> None:
    """`clipserve serve --backend triton --triton-url ...` as an operator runs it."""
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipserve.cli.main", "serve", "--bundle", str(tiny_bundle),
         "--port", "0", "--port-file", str(port_file), "--index-path", str(tmp_path / "index"),
         "--backend", "triton", "--triton-url", triton_server.url, "--triton-max-inflight", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not port_file.is_file():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        with ClipServeClient(f"127.0.0.1:{port_file.read_text().strip()}", timeout_s=60) as c:
            info = c.info()
            assert (info.backend, info.device, list(info.providers)) == (
                "triton", "cpu", ["triton:python"]
            )  # fmt: skip
            assert (info.precision, info.model_variant) == ("fp32", "default")
            want_text, want_image = _expected(tiny_bundle, reference)
            np.testing.assert_allclose(c.embed_texts(TEXTS), want_text, atol=ATOL)
            np.testing.assert_allclose(c.embed_images(IMAGES), want_image, atol=ATOL)
            mixed = c.embed([TEXTS[0], IMAGES[1]])
            np.testing.assert_allclose(mixed, [want_text[0], want_image[1]], atol=ATOL)
            assert c.health() == "SERVING"
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "backend triton (asked for) triton:python, up to 3 batches in flight" in out, out


def test_triton_down_at_startup_is_a_clear_error(tiny_bundle: Path, tmp_path: Path) -> None:
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "i",
                          backend="triton", triton_url=url)  # fmt: skip
    exc = start_server_error(config)
    assert isinstance(exc, StartupError), exc
    assert f"Triton at {url} is not reachable" in str(exc) and "--triton-url" in str(exc)


def test_model_unloaded_while_serving_is_unavailable(
    triton_server: TritonServer, tiny_bundle: Path, tmp_path: Path
) -> None:
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "i",
                          backend="triton", triton_url=triton_server.url)  # fmt: skip
    bg = BackgroundServer(config)
    admin = triton.InferenceServerClient(triton_server.url)
    try:
        assert bg.client.embed_texts(["before"]).shape == (1, 128)
        admin.unload_model(TEXT_MODEL)
        with pytest.raises(grpc.RpcError) as err:
            bg.client.embed_texts(["while unloaded"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert TEXT_MODEL in (err.value.details() or "")
        assert bg.client.embed_images(IMAGES[:1]).shape == (1, 128)  # the other tower serves on
    finally:
        admin.load_model(TEXT_MODEL)
        admin.close()
    try:
        assert bg.client.embed_texts(["after"]).shape == (1, 128)  # back without a restart
    finally:
        bg.stop()


class InflightGate:
    """Test double around the real `TritonBackend`: each async call waits (up to 30 s) until
    `target` calls are in flight at once, then goes on to Triton; `peak` is the most ever in
    flight. The sync methods (the health probe) pass straight through."""

    def __init__(self, real: Any, target: int) -> None:
        self.real, self.info, self.target = real, real.info, target
        self.in_flight = self.peak = 0
        self._full: asyncio.Event | None = None  # made on the serving loop, on first use

    async def _through(self, call: Callable[[np.ndarray], Awaitable[np.ndarray]], x: np.ndarray):
        if self._full is None:
            self._full = asyncio.Event()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.target:
            self._full.set()
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._full.wait(), 30)
            return await call(x)
        finally:
            self.in_flight -= 1

    async def embed_texts_async(self, input_ids: np.ndarray) -> np.ndarray:
        return await self._through(self.real.embed_texts_async, input_ids)

    async def embed_images_async(self, pixel_values: np.ndarray) -> np.ndarray:
        return await self._through(self.real.embed_images_async, pixel_values)

    async def aclose(self) -> None:
        await self.real.aclose()

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        return self.real.embed_texts(input_ids)

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.real.embed_images(pixel_values)

    def close(self) -> None:
        self.real.close()


def _text_requests(admin: Any) -> int:
    stats = admin.get_inference_statistics(TEXT_MODEL, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def test_more_batches_in_flight_to_triton_than_inference_workers(
    triton_server: TritonServer, tiny_bundle: Path, reference: OnnxRuntimeBackend, tmp_path: Path
) -> None:
    """One inference worker, --triton-max-inflight 4: four batches are in flight to Triton
    at once (a thread per call, as before, would hold them to one), never a fifth."""
    from clipserve.serving.backends.triton_backend import TritonBackend

    gate = InflightGate(TritonBackend(triton_server.url, reference.manifest), target=4)
    config = ServerConfig(
        bundle=tiny_bundle, port=0, index_path=tmp_path / "i", backend="triton",
        triton_url=triton_server.url, inference_workers=1, triton_max_inflight=4,
        max_batch=1, health_interval_s=3600,  # max_batch 1: every request is its own batch
    )  # fmt: skip
    bg = BackgroundServer(config, backend=gate)
    admin = triton.InferenceServerClient(triton_server.url)
    texts = [f"caption number {i}" for i in range(8)]
    try:
        assert service_of(bg.server).embedder.inference_slots == 4
        before = _text_requests(admin)
        with ThreadPoolExecutor(len(texts)) as pool:
            rows = list(pool.map(lambda t: bg.client.embed_texts([t])[0], texts))
        assert gate.peak == 4
        assert _text_requests(admin) - before == len(texts)  # each went to Triton on its own
        tok = ClipTokenizer.from_bundle(tiny_bundle, reference.manifest)
        want = np.stack([reference.embed_texts(tok.pad(tok.encode([t])))[0] for t in texts])
        np.testing.assert_allclose(np.stack(rows), want, atol=ATOL)
    finally:
        admin.close()
        bg.stop()


def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.5)


def test_triton_going_away_is_unavailable_and_the_server_serves_on(
    triton_repo: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Triton stops while clipserve serves: embeds get UNAVAILABLE naming Triton, readiness
    goes NOT_SERVING, everything that does not need the towers (Info, liveness, queries by
    vector) keeps working, and once Triton is back on its address embeds work again
    without restarting clipserve."""
    models = [IMAGE_MODEL, TEXT_MODEL]
    first = TritonServer(triton_repo, models)
    second: TritonServer | None = None
    bg: BackgroundServer | None = None
    try:
        first.wait_ready()
        config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path / "i",
                              backend="triton", triton_url=first.url, health_interval_s=1)  # fmt: skip
        bg = BackgroundServer(config)
        client = bg.client
        (point,) = client.upsert([(IMAGES[0], {"source": "before"})])
        vector = client.embed_images(IMAGES[:1])[0]

        first.stop()  # SIGTERM: Triton unloads its models and exits
        for call in (lambda: client.embed_texts(["gone"]), lambda: client.embed_images(IMAGES)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"Triton at {first.url}" in (err.value.details() or "")
        hits = client.query(vector=vector, top_k=1)
        assert [h.id for h in hits] == [point]
        assert client.info().backend == "triton"
        assert client.health("liveness") == "SERVING"
        _eventually(lambda: client.health() == "NOT_SERVING", "readiness NOT_SERVING")

        second = TritonServer(triton_repo, models, port=first.port)
        second.wait_ready()

        def embeds() -> bool:
            with contextlib.suppress(grpc.RpcError):
                return client.embed_texts(["back"]).shape == (1, 128)
            return False

        _eventually(embeds, "embeds work again")
        np.testing.assert_allclose(client.embed_images(IMAGES[:1])[0], vector, atol=ATOL)
        _eventually(lambda: client.health() == "SERVING", "readiness SERVING again")
    finally:
        if bg is not None:
            bg.stop()
        for server in (first, second):
            if server is not None:
                server.stop()
