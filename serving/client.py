"""`ClipServeClient`: a small synchronous client for the clipserve.v1 API.

    with ClipServeClient("127.0.0.1:50051") as client:
        client.wait_ready()
        ids = client.upsert([("a red bicycle", {"split": "test"}), (png_bytes, {"n": 3})])
        hits = client.query(text="a bike", top_k=5, filter={"split": "test"})

Texts are `str`, images are encoded `bytes` (the server never fetches URLs). Failed calls raise
`grpc.RpcError`; `.code()` and `.details()` say what was wrong (see proto/v1/clipserve.proto).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipserve.index.base import Hit
from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.proto.v1 import clipserve_pb2_grpc as pb_grpc
from clipserve.serving.servicer import payload_from_proto

SERVICE_NAME = "clipserve.v1.ClipServe"
Item = str | bytes  # text or encoded image


def to_content(item: Item) -> pb.Content:
    if isinstance(item, str):
        return pb.Content(text=item)
    if isinstance(item, bytes | bytearray | memoryview):
        return pb.Content(image=bytes(item))
    raise TypeError(f"an item is a str (text) or bytes (encoded image), got {type(item).__name__}")


def to_filter(conditions: Mapping[str, str | int | bool] | None) -> pb.Filter | None:
    if not conditions:
        return None
    must = []
    for key, value in conditions.items():
        if isinstance(value, bool):  # before int: bool is an int subclass
            must.append(pb.FieldMatch(key=key, boolean=value))
        elif isinstance(value, int):
            must.append(pb.FieldMatch(key=key, integer=value))
        elif isinstance(value, str):
            must.append(pb.FieldMatch(key=key, keyword=value))
        else:
            raise TypeError(f"filter {key!r}: value must be str, int or bool")
    return pb.Filter(must=must)


class ClipServeClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 60.0,
        max_message_bytes: int = 64 << 20,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
        tls: bool = False,
    ) -> None:
        """`api_key` is sent as `x-api-key` on every call; `tls` (implied by
        `root_certificates`, a PEM bundle; default: the system's roots) uses a secure channel."""
        self.target = target
        self.timeout_s = timeout_s
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls or root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        if api_key:
            self._channel = grpc.intercept_channel(self._channel, _ApiKey(api_key))
        self.stub = pb_grpc.ClipServeStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- RPCs -----------------------------------------------------------------------------

    def embed(self, items: Sequence[Item]) -> np.ndarray:
        """float32 [N, dim], L2-normalised rows, in item order."""
        resp = self.stub.Embed(
            pb.EmbedRequest(inputs=[to_content(i) for i in items]), timeout=self.timeout_s
        )
        if not resp.embeddings:
            return np.zeros((0, resp.dim), dtype=np.float32)
        return np.array([e.values for e in resp.embeddings], dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(list(texts))

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        return self.embed(list(images))

    def upsert(
        self,
        items: Sequence[tuple[Item, Mapping[str, Any] | None]],
        *,
        collection: str = "",
    ) -> list[str]:
        """Store (item, payload) pairs; returns their content-derived ids, in order."""
        request = pb.UpsertRequest(collection=collection)
        for item, payload in items:
            struct = struct_pb2.Struct()
            struct.update(dict(payload or {}))
            request.items.append(pb.UpsertItem(content=to_content(item), payload=struct))
        return list(self.stub.Upsert(request, timeout=self.timeout_s).ids)

    def query(
        self,
        *,
        text: str | None = None,
        image: bytes | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        top_k: int | None = None,
        filter: Mapping[str, str | int | bool] | None = None,
        collection: str = "",
    ) -> list[Hit]:
        """Best first. Give exactly one of text / image / vector; `filter` ANDs equalities."""
        request = pb.QueryRequest(collection=collection, top_k=top_k, filter=to_filter(filter))
        if text is not None:
            request.text = text
        if image is not None:
            request.image = image
        if vector is not None:
            request.vector.values.extend(np.asarray(vector, dtype=np.float32).reshape(-1).tolist())
        resp = self.stub.Query(request, timeout=self.timeout_s)
        return [
            Hit(id=h.id, score=h.score, payload=payload_from_proto(h.payload)) for h in resp.hits
        ]

    def info(self) -> pb.InfoResponse:
        return self.stub.Info(pb.InfoRequest(), timeout=self.timeout_s)

    # -- health ---------------------------------------------------------------------------

    def health(self, service: str = SERVICE_NAME) -> str:
        """The health status name ("SERVING", "NOT_SERVING", ...) of `service`."""
        resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the server reports SERVING; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health()
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = f"{exc.code().name}"
            time.sleep(0.1)
        raise TimeoutError(f"{self.target} not SERVING after {timeout_s:.0f} s (last: {last})")

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ClipServeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _ApiKey(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `x-api-key` to every call's metadata."""

    def __init__(self, key: str) -> None:
        self._pair = ("x-api-key", key)

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._pair]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
