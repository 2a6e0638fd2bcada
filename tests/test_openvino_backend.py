"""OpenVINO backend: the same embeddings as ONNX Runtime from the same bundle files, fp32
enforced, concurrent callers, clear errors, and a real server on `--backend openvino`."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("openvino")

from helpers import BackgroundServer  # noqa: E402

from clipserve.serving.backends.backend import BackendStartupError  # noqa: E402
from clipserve.serving.backends.backend_factory import (  # noqa: E402
    make_backend,
    resolve_backend,
)
from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend  # noqa: E402
from clipserve.serving.backends.openvino_backend import (  # noqa: E402
    OpenVinoBackend,
    expand_ort_ops,
)
from clipserve.serving.bundle import load_manifest  # noqa: E402
from clipserve.serving.config import ServerConfig  # noqa: E402
from clipserve.serving.embedding.tokenizer import ClipTokenizer  # noqa: E402

ATOL = 1e-4  # normalised embeddings, as the export's own parity check


@pytest.fixture(scope="module")
def backends(tiny_bundle: Path):
    ov_backend = OpenVinoBackend(tiny_bundle, streams=2)
    ort_backend = OnnxRuntimeBackend(tiny_bundle)
    yield ov_backend, ort_backend
    ov_backend.close()
    ort_backend.close()


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


def _ids(tiny_bundle: Path, texts: list[str]) -> np.ndarray:
    manifest = load_manifest(tiny_bundle)
    tok = ClipTokenizer.from_bundle(tiny_bundle, manifest)
    return tok.pad(tok.encode(texts))  # trimmed to the longest text, as the server sends it


def test_expanding_ort_gelus_keeps_the_numbers(tiny_bundle: Path) -> None:
    fused = onnx.load(str(tiny_bundle / "image.onnx"))
    plain = onnx.load(str(tiny_bundle / "image.onnx"))
    # BiasGelu in every block; a bias-free Gelu in the last one (its MLP runs on [N, W]).
    assert {"BiasGelu", "Gelu"} <= {n.op_type for n in fused.graph.node}
    assert expand_ort_ops(plain) > 0
    assert not [n for n in plain.graph.node if n.domain == "com.microsoft"]
    x = _pixels(3, 0)
    run = lambda m: ort.InferenceSession(  # noqa: E731
        m.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, {"pixel_values": x})[0]
    np.testing.assert_allclose(run(plain), run(fused), atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 5])
def test_images_match_onnx_runtime(backends, batch: int) -> None:
    ov_backend, ort_backend = backends
    x = _pixels(batch, batch)
    got = ov_backend.embed_images(x)
    assert got.shape == (batch, 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, ort_backend.embed_images(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "texts", [["a"], ["a red square", "two dogs on a much longer caption than the first"]]
)
def test_texts_match_onnx_runtime_at_every_length(backends, tiny_bundle: Path, texts) -> None:
    ov_backend, ort_backend = backends
    ids = _ids(tiny_bundle, texts)
    np.testing.assert_allclose(
        ov_backend.embed_texts(ids), ort_backend.embed_texts(ids), atol=ATOL, rtol=0
    )


def test_concurrent_callers_get_their_own_answers(backends) -> None:
    ov_backend, _ = backends
    inputs = [_pixels(2, 10 + k) for k in range(6)]
    expected = [ov_backend.embed_images(x) for x in inputs]
    got: list[np.ndarray | None] = [None] * len(inputs)

    def call(k: int) -> None:
        for _ in range(3):
            got[k] = ov_backend.embed_images(inputs[k])

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(len(inputs)):
        np.testing.assert_array_equal(got[k], expected[k])


def test_info_and_errors(backends, tiny_bundle: Path) -> None:
    ov_backend, _ = backends
    info = ov_backend.info
    assert (info.name, info.device, info.precision) == ("openvino", "cpu", "fp32")
    assert info.providers[0].startswith("OpenVINO ")
    with pytest.raises(ValueError, match=r"pixel_values must be \[N>=1,3,64,64\]"):
        ov_backend.embed_images(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="int64"):
        ov_backend.embed_texts(np.zeros((1, 4), np.int32))
    with pytest.raises(BackendStartupError, match="default fp32 towers"):
        OpenVinoBackend(tiny_bundle, variant="int8")


def test_factory_refuses_onnxruntime_providers(tiny_bundle: Path, tmp_path: Path) -> None:
    config = ServerConfig(
        bundle=tiny_bundle,
        index_path=tmp_path,
        backend="openvino",
        providers="CPUExecutionProvider",
    )
    with pytest.raises(BackendStartupError, match="--providers"):
        make_backend(config, load_manifest(tiny_bundle))


def test_factory_names_the_install_when_openvino_is_missing(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "clipserve.serving.backends.openvino_backend", None)
    config = ServerConfig(bundle=tiny_bundle, index_path=tmp_path, backend="openvino")
    with pytest.raises(BackendStartupError, match=r"pip install 'clipserve\[openvino\]'"):
        make_backend(config, load_manifest(tiny_bundle))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "openvino+onnxruntime"),  # the default: fp32 on the CPU, OpenVINO installed
        ({"model_variant": "int8"}, "onnxruntime"),
        ({"providers": "CPUExecutionProvider"}, "onnxruntime"),
        ({"backend": "onnxruntime"}, "onnxruntime"),
        ({"backend": "openvino"}, "openvino"),
    ],
)
def test_auto_backend_is_openvino_for_fp32_on_the_cpu(
    tiny_bundle: Path, tmp_path: Path, overrides: dict, expected: str
) -> None:
    config = ServerConfig(bundle=tiny_bundle, index_path=tmp_path, **overrides)
    assert resolve_backend(config)[0] == expected


def test_auto_backend_falls_back_to_onnxruntime_and_says_why(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServerConfig(bundle=tiny_bundle, index_path=tmp_path)
    available = ort.get_available_providers()
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available]
    )
    assert resolve_backend(config) == (
        "onnxruntime", "this onnxruntime build has CUDAExecutionProvider"
    )  # fmt: skip
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    backend, why = resolve_backend(config)
    assert backend == "onnxruntime" and "pip install 'clipserve[openvino]'" in why
    with_auto = make_backend(config, load_manifest(tiny_bundle))
    try:
        assert with_auto.info.name == "onnxruntime"
    finally:
        with_auto.close()


def test_auto_puts_images_on_openvino_and_text_on_onnxruntime(
    tiny_bundle: Path, tmp_path: Path, backends
) -> None:
    _, ort_backend = backends
    backend = make_backend(
        ServerConfig(bundle=tiny_bundle, index_path=tmp_path), load_manifest(tiny_bundle)
    )
    try:
        info = backend.info
        assert (info.name, info.device, info.precision) == ("openvino+onnxruntime", "cpu", "fp32")
        assert info.providers[0].startswith("OpenVINO ") and info.providers[0].endswith("(image)")
        assert info.providers[1] == "CPUExecutionProvider (text)"
        x = _pixels(3, 7)
        np.testing.assert_allclose(
            backend.embed_images(x), ort_backend.embed_images(x), atol=ATOL, rtol=0
        )
        ids = _ids(tiny_bundle, ["a red square", "two dogs on grass"])
        np.testing.assert_allclose(
            backend.embed_texts(ids), ort_backend.embed_texts(ids), atol=1e-6, rtol=0
        )
    finally:
        backend.close()


def test_a_backend_built_for_one_tower_refuses_the_other(tiny_bundle: Path) -> None:
    ids = _ids(tiny_bundle, ["a red square"])
    image_only = OpenVinoBackend(tiny_bundle, towers=("image",))
    text_only = OnnxRuntimeBackend(tiny_bundle, towers=("text",))
    try:
        with pytest.raises(RuntimeError, match="without the text tower"):
            image_only.embed_texts(ids)
        with pytest.raises(RuntimeError, match="without the image tower"):
            text_only.embed_images(_pixels(1, 0))
        assert image_only.embed_images(_pixels(1, 0)).shape[0] == 1
        assert text_only.embed_texts(ids).shape[0] == 1
    finally:
        image_only.close()
        text_only.close()
    with pytest.raises(ValueError, match="non-empty subset"):
        OnnxRuntimeBackend(tiny_bundle, towers=())
    with pytest.raises(ValueError, match="non-empty subset"):
        OpenVinoBackend(tiny_bundle, towers=("audio",))


def test_auto_falls_back_to_onnxruntime_when_openvino_cannot_load_the_bundle(
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import clipserve.serving.backends.openvino_backend as ov_module

    def cannot(*args, **kwargs):
        raise BackendStartupError("OpenVINO cannot compile image.onnx: unsupported op")

    monkeypatch.setattr(ov_module, "OpenVinoBackend", cannot)
    manifest = load_manifest(tiny_bundle)
    backend = make_backend(ServerConfig(bundle=tiny_bundle, index_path=tmp_path), manifest)
    try:
        assert backend.info.name == "onnxruntime"
    finally:
        backend.close()
    assert "OpenVINO cannot run this bundle (OpenVINO cannot compile image.onnx" in caplog.text
    named = ServerConfig(bundle=tiny_bundle, index_path=tmp_path, backend="openvino")
    with pytest.raises(BackendStartupError, match="unsupported op"):
        make_backend(named, manifest)  # asked for by name: the operator's error


def test_served_over_grpc(tiny_bundle: Path, tmp_path: Path, backends) -> None:
    _, ort_backend = backends
    config = ServerConfig(bundle=tiny_bundle, port=0, index_path=tmp_path, backend="openvino")
    bg = BackgroundServer(config)
    try:
        info = bg.client.info()
        assert (info.backend, info.device, info.precision) == ("openvino", "cpu", "fp32")
        assert info.providers[0].startswith("OpenVINO ")
        got = bg.client.embed_texts(["a red square", "two dogs"])
        ref = ort_backend.embed_texts(_ids(tiny_bundle, ["a red square", "two dogs"]))
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
        assert bg.client.health() == "SERVING"
    finally:
        bg.stop()
