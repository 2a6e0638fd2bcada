"""`TritonBackend`: a Triton Inference Server's ``clipserve_image`` / ``clipserve_text`` models
(written by `clipserve triton-repo`) behind the `EmbeddingBackend` interface, over gRPC.

Serving goes through the async interface (`AsyncEmbeddingBackend`): one
``tritonclient.grpc.aio`` client, created on first use on the serving event loop and used only
there, so the batches in flight to Triton are bounded by `--triton-max-inflight`, not by
local threads; Triton's dynamic batcher then merges what they (and other clipserve replicas)
send. The synchronous methods stay for callers without a loop (the health probe's thread,
scripts): they use ``tritonclient.grpc``'s blocking client, one per calling thread.

At construction (blocking; the server runs it on a worker thread) the backend checks that
Triton is up, that both models are ready, and that their inputs, outputs and the bundle
version recorded in their configs match the bundle this server tokenizes and preprocesses
for; anything else is a `BackendStartupError`. A failure while serving (Triton went away, a
model was unloaded, a call outlived `timeout_s`) is `BackendUnavailable`: the client sees
UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import numpy as np

try:
    import tritonclient.grpc as triton
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.utils import InferenceServerException
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the Triton backend needs tritonclient: pip install 'clipserve[triton]'"
    ) from exc

from clipserve.serving.backends.backend import (
    BackendInfo,
    BackendStartupError,
    check_input_ids,
    check_pixel_values,
)
from clipserve.serving.backends.triton_repo import (
    IMAGE_MODEL,
    TEXT_MODEL,
    VARIANT_PARAM,
    VERSION_PARAM,
)
from clipserve.serving.bundle import DEFAULT_VARIANT, VARIANT_PRECISION, Manifest, TowerSpec
from clipserve.serving.errors import BackendUnavailable

log = logging.getLogger(__name__)


class TritonBackend:
    """Embeds through a Triton server at `url` (HOST:PORT of its gRPC endpoint); every call
    (each chunk of up to the model's max_batch_size rows) may take `timeout_s`."""

    def __init__(
        self,
        url: str,
        manifest: Manifest,
        *,
        variant: str = DEFAULT_VARIANT,
        timeout_s: float = 60.0,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.manifest = manifest
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._clients: list[Any] = []  # the blocking ones, one per thread that called
        self._lock = threading.Lock()
        # The asyncio client and the loop it belongs to (see _aio_client).
        self._aio: tuple[asyncio.AbstractEventLoop, Any] | None = None
        client = triton.InferenceServerClient(url)
        try:
            configs = self._check_server(client, variant, startup_timeout_s)
        finally:
            client.close()
        self._max_batch = {n: int(c.get("max_batch_size", 0)) for n, c in configs.items()}
        image_cfg = configs[IMAGE_MODEL]
        groups = image_cfg.get("instance_group", [])
        gpu = any(g.get("kind") == "KIND_GPU" for g in groups)
        runtime = image_cfg.get("platform") or image_cfg.get("backend") or "unknown"
        accel = (
            image_cfg.get("optimization", {})
            .get("execution_accelerators", {})
            .get("gpu_execution_accelerator", [])
        )
        self.info = BackendInfo(
            name="triton",
            device="cuda" if gpu else "cpu",
            providers=(f"triton:{runtime}", *(a.get("name", "") for a in accel)),
            precision=VARIANT_PRECISION.get(variant, variant),
            model_variant=variant,
        )

    # -- startup checks (blocking) -------------------------------------------------------------

    def _check_server(
        self, client: Any, variant: str, startup_timeout_s: float
    ) -> dict[str, dict[str, Any]]:
        """Triton is live and serves both towers of this bundle; returns their configs."""
        try:
            live = client.is_server_live(client_timeout=startup_timeout_s)
        except InferenceServerException as exc:
            raise BackendStartupError(
                f"Triton at {self.url} is not reachable ({_message(exc)}); start tritonserver "
                "with the repository from `clipserve triton-repo` or fix --triton-url"
            ) from exc
        if not live:
            raise BackendStartupError(f"Triton at {self.url} answers but is not live")
        h, w = self.manifest.image_size
        checks = (
            (IMAGE_MODEL, self.manifest.image, [3, h, w], "TYPE_FP32"),
            (TEXT_MODEL, self.manifest.text, [-1], "TYPE_INT64"),
        )
        return {
            name: self._check_model(client, name, spec, dims, dtype, variant)
            for name, spec, dims, dtype in checks
        }

    def _check_model(
        self, client: Any, name: str, spec: TowerSpec, dims: list[int], dtype: str, variant: str
    ) -> dict[str, Any]:
        where = f"Triton at {self.url}, model {name}"
        try:
            if not client.is_model_ready(name, client_timeout=self.timeout_s):
                raise BackendStartupError(f"{where}: not ready (is it in the repository?)")
            config = client.get_model_config(name, as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise BackendStartupError(f"{where}: {_message(exc)}") from exc
        config = config.get("config", config)
        inputs = {i["name"]: i for i in config.get("input", [])}
        outputs = {o["name"]: o for o in config.get("output", [])}
        got = inputs.get(spec.input_name)
        if got is None or spec.output_name not in outputs:
            raise BackendStartupError(
                f"{where}: expects inputs {sorted(inputs)} / outputs {sorted(outputs)}, the "
                f"bundle needs {spec.input_name!r} -> {spec.output_name!r}"
            )
        got_dims = [int(d) for d in got.get("dims", [])]
        out_dims = [int(d) for d in outputs[spec.output_name].get("dims", [])]
        if got.get("data_type") != dtype or got_dims != dims:
            raise BackendStartupError(
                f"{where}: input {spec.input_name} is {got.get('data_type')} {got_dims}, "
                f"the bundle sends {dtype} {dims}"
            )
        if out_dims != [self.manifest.embed_dim]:
            raise BackendStartupError(
                f"{where}: output dims {out_dims}, the bundle's embeddings are "
                f"[{self.manifest.embed_dim}]"
            )
        params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
        version = params.get(VERSION_PARAM)
        if version is None:
            log.warning(
                "%s: config has no %s; cannot check it is this bundle", where, VERSION_PARAM
            )
        elif version != self.manifest.version:
            raise BackendStartupError(
                f"{where}: serves model version {version}, the bundle is "
                f"{self.manifest.version}; rebuild the repository from this bundle"
            )
        served = params.get(VARIANT_PARAM)
        if served is not None and served != variant:
            raise BackendStartupError(
                f"{where}: serves variant {served!r}, --model-variant is {variant!r}"
            )
        return dict(config)

    # -- inputs ---------------------------------------------------------------------------------

    def _check_images(self, pixel_values: np.ndarray) -> None:
        check_pixel_values(self.manifest, pixel_values)

    def _check_texts(self, input_ids: np.ndarray) -> None:
        check_input_ids(self.manifest, input_ids)

    def _requests(
        self, model: str, spec: TowerSpec, x: np.ndarray, dtype: str
    ) -> list[tuple[list[Any], list[Any]]]:
        """(inputs, outputs) per request: `x` cut to the model's max_batch_size."""
        step = self._max_batch.get(model) or len(x)  # 0 = Triton batches nothing itself
        requests = []
        for start in range(0, len(x), step):
            chunk = np.ascontiguousarray(x[start : start + step])
            inp = triton.InferInput(spec.input_name, list(chunk.shape), dtype)
            inp.set_data_from_numpy(chunk)
            requests.append(([inp], [triton.InferRequestedOutput(spec.output_name)]))
        return requests

    def _unavailable(self, model: str, exc: InferenceServerException) -> BackendUnavailable:
        return BackendUnavailable(f"Triton at {self.url}, model {model}: {_message(exc)}")

    # -- async: the serving path ---------------------------------------------------------------

    async def embed_images_async(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] -> float32 [N,D]. On the serving loop only."""
        self._check_images(pixel_values)
        return await self._infer_async(IMAGE_MODEL, self.manifest.image, pixel_values, "FP32")

    async def embed_texts_async(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [N,L], 2 <= L <= context_length -> float32 [N,D]. On the serving
        loop only."""
        self._check_texts(input_ids)
        return await self._infer_async(TEXT_MODEL, self.manifest.text, input_ids, "INT64")

    def _aio_client(self) -> Any:
        """The asyncio client of the running loop. Created here, not in __init__: the server
        constructs the backend on a worker thread, and a grpc.aio channel belongs to the loop
        it was created on. A different loop (a script calling asyncio.run twice) gets its own
        client; the old loop's one went away with that loop."""
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop:
            self._aio = (loop, triton_aio.InferenceServerClient(self.url))
        return self._aio[1]

    async def _infer_async(
        self, model: str, spec: TowerSpec, x: np.ndarray, dtype: str
    ) -> np.ndarray:
        client = self._aio_client()

        async def one(inputs: list[Any], outputs: list[Any]) -> np.ndarray:
            try:
                result = await client.infer(
                    model, inputs, outputs=outputs, client_timeout=self.timeout_s
                )
            except InferenceServerException as exc:
                raise self._unavailable(model, exc) from exc
            return np.asarray(result.as_numpy(spec.output_name))

        requests = self._requests(model, spec, x, dtype)
        # Chunks of one batch go at once (Triton spreads them over its instances). Every
        # outcome is collected before the first failure is raised, so none goes unretrieved;
        # cancelling this cancels them all.
        results = await asyncio.gather(*(one(*r) for r in requests), return_exceptions=True)
        parts = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            parts.append(result)
        return _rows(parts)

    async def aclose(self) -> None:
        """Close the asyncio client; on the loop it was used on."""
        aio, self._aio = self._aio, None
        if aio is not None:
            try:
                await aio[1].close()
            except Exception:  # closing a dead channel must not mask the real error
                log.debug("closing the Triton asyncio client failed", exc_info=True)

    # -- sync: threads without a loop (the health probe, scripts) -------------------------------

    def embed_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values float32 [N,3,H,W] -> float32 [N,D]."""
        self._check_images(pixel_values)
        return self._infer(IMAGE_MODEL, self.manifest.image, pixel_values, "FP32")

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids int64 [N,L], 2 <= L <= context_length -> float32 [N,D]."""
        self._check_texts(input_ids)
        return self._infer(TEXT_MODEL, self.manifest.text, input_ids, "INT64")

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = triton.InferenceServerClient(self.url)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _infer(self, model: str, spec: TowerSpec, x: np.ndarray, dtype: str) -> np.ndarray:
        client = self._client()
        parts = []
        for inputs, outputs in self._requests(model, spec, x, dtype):
            try:
                result = client.infer(model, inputs, outputs=outputs, client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                raise self._unavailable(model, exc) from exc
            parts.append(np.asarray(result.as_numpy(spec.output_name)))
        return _rows(parts)

    def close(self) -> None:
        """Close the blocking clients. The asyncio one belongs to its loop: `aclose()` there
        closes it; if that did not happen, it is closed on its loop if that still runs."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # closing a dead channel must not mask the real error
                log.debug("closing a Triton client failed", exc_info=True)
        aio, self._aio = self._aio, None
        if aio is not None and aio[0].is_running():
            asyncio.run_coroutine_threadsafe(aio[1].close(), aio[0])


def _rows(parts: list[np.ndarray]) -> np.ndarray:
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return np.asarray(out, dtype=np.float32)


def _message(exc: InferenceServerException) -> str:
    return str(exc.message() or exc).strip()
