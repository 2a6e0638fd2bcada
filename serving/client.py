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
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeAlias

import grpc
import numpy as np
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clipserve.index.base import Hit, Point
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


FilterSpec: TypeAlias = Mapping[str, Any] | pb.Filter


def to_filter(conditions: FilterSpec | None) -> pb.Filter | None:
    """A `pb.Filter` from a dict of conditions, ANDed: a scalar means equality
    (`{"split": "test"}`), a list means any-of (`{"colour": ["red", "blue"]}`), a dict of
    gt/gte/lt/lte means a range (`{"year": {"gte": 2000}}`). A `pb.Filter` passes through
    (for OR / NOT / nesting)."""
    if conditions is None or isinstance(conditions, pb.Filter):
        return conditions
    if not conditions:
        return None
    must, all_ = [], []
    for key, value in conditions.items():
        if isinstance(value, bool):  # before int: bool is an int subclass
            must.append(pb.FieldMatch(key=key, boolean=value))
        elif isinstance(value, int):
            must.append(pb.FieldMatch(key=key, integer=value))
        elif isinstance(value, str):
            must.append(pb.FieldMatch(key=key, keyword=value))
        elif isinstance(value, list | tuple):
            strs = [v for v in value if isinstance(v, str)]
            ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
            all_.append(pb.Condition(any=pb.MatchAny(key=key, keywords=strs, integers=ints)))
        elif isinstance(value, Mapping):
            all_.append(pb.Condition(range=pb.RangeCondition(key=key, **value)))
        else:
            raise TypeError(f"filter {key!r}: value must be str, int, bool, a list or a range dict")
    return pb.Filter(must=must, all=all_)


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
        items: Sequence[
            tuple[Item, Mapping[str, Any] | None] | tuple[Item, Mapping[str, Any] | None, str]
        ],
        *,
        collection: str = "",
        vectors: np.ndarray | None = None,
        vector_model_version: str = "",
    ) -> list[str]:
        """Store (item, payload) or (image, payload, caption) tuples; returns their
        content-derived ids, in order. `vectors` [N, dim]: precomputed vectors of model
        `vector_model_version` (then the items only name the points)."""
        request = pb.UpsertRequest(collection=collection, vector_model_version=vector_model_version)
        for i, (item, payload, *caption) in enumerate(items):
            struct = struct_pb2.Struct()
            struct.update(dict(payload or {}))
            msg = pb.UpsertItem(content=to_content(item), payload=struct,
                                caption=caption[0] if caption else "")  # fmt: skip
            if vectors is not None:
                msg.vector.values.extend(np.asarray(vectors[i], dtype=np.float32).tolist())
            request.items.append(msg)
        return list(self.stub.Upsert(request, timeout=self.timeout_s).ids)

    def query(self, **kwargs: Any) -> list[Hit]:
        """Best first; the arguments of `search`."""
        resp = self.search(**kwargs)
        return [
            Hit(id=h.id, score=h.score, payload=payload_from_proto(h.payload)) for h in resp.hits
        ]

    def search(
        self,
        *,
        text: str | None = None,
        image: bytes | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        point_id: str | None = None,
        multi: Sequence[tuple[Item, float]] | None = None,
        top_k: int | None = None,
        filter: FilterSpec | None = None,
        collection: str = "",
        score_threshold: float | None = None,
        offset: int = 0,
        page_token: str = "",
        mmr: float | None = None,
        mmr_candidates: int = 0,
        exact: bool = False,
        truncate: bool = False,
        vector_model_version: str = "",
    ) -> pb.QueryResponse:
        """The whole QueryResponse (hits, model_version, collection, next_page_token). Give
        exactly one of text / image / vector / point_id ("more like this") / multi
        ([(item, weight), ...], e.g. a text and an image); `mmr` is the diversity in [0, 1]."""
        request = pb.QueryRequest(
            collection=collection, top_k=top_k, filter=to_filter(filter),
            score_threshold=score_threshold, offset=offset, page_token=page_token,
            exact=exact, truncate=truncate, vector_model_version=vector_model_version,
        )  # fmt: skip
        if text is not None:
            request.text = text
        if image is not None:
            request.image = image
        if vector is not None:
            request.vector.values.extend(np.asarray(vector, dtype=np.float32).reshape(-1).tolist())
        if point_id is not None:
            request.point_id = point_id
        for item, weight in multi or ():
            request.multi.parts.append(pb.WeightedContent(content=to_content(item), weight=weight))
        if mmr is not None:
            request.mmr.CopyFrom(pb.Mmr(diversity=mmr, candidates=mmr_candidates))
        return self.stub.Query(request, timeout=self.timeout_s)

    # -- points ---------------------------------------------------------------------------

    def get(
        self, ids: Sequence[str], *, collection: str = "", with_vectors: bool = False
    ) -> tuple[list[Point], list[str]]:
        """(points in request order, ids not found)."""
        request = pb.GetRequest(collection=collection, ids=list(ids), with_vectors=with_vectors)
        resp = self.stub.Get(request, timeout=self.timeout_s)
        return [_point(p) for p in resp.points], list(resp.missing_ids)

    def delete(
        self, ids: Sequence[str] | None = None, *, filter: FilterSpec | None = None,
        collection: str = "",
    ) -> str:  # fmt: skip
        """Delete by ids, by filter, or the ids matching the filter; returns the collection."""
        request = pb.DeleteRequest(
            collection=collection, ids=list(ids or ()), filter=to_filter(filter)
        )
        return self.stub.Delete(request, timeout=self.timeout_s).collection

    def count(self, *, filter: FilterSpec | None = None, collection: str = "") -> int:
        request = pb.CountRequest(collection=collection, filter=to_filter(filter))
        return int(self.stub.Count(request, timeout=self.timeout_s).count)

    def scroll(
        self, *, filter: FilterSpec | None = None, limit: int = 0, page_token: str = "",
        with_vectors: bool = False, collection: str = "",
    ) -> tuple[list[Point], str]:  # fmt: skip
        """One page in id order and the next page's token ("" after the last)."""
        request = pb.ScrollRequest(collection=collection, filter=to_filter(filter), limit=limit,
                                   page_token=page_token, with_vectors=with_vectors)  # fmt: skip
        resp = self.stub.Scroll(request, timeout=self.timeout_s)
        return [_point(p) for p in resp.points], resp.next_page_token

    def scroll_all(self, **kwargs: Any) -> Iterator[Point]:
        """Every point (matching `filter`), page after page."""
        token = ""
        while True:
            points, token = self.scroll(page_token=token, **kwargs)
            yield from points
            if not token:
                return

    # -- collections ----------------------------------------------------------------------

    def list_collections(self) -> list[pb.CollectionInfo]:
        return list(
            self.stub.ListCollections(
                pb.ListCollectionsRequest(), timeout=self.timeout_s
            ).collections
        )

    def create_collection(self, name: str, settings: Any = None) -> pb.CollectionInfo:
        """`settings`: a pb.CollectionSettings, an index `CollectionSettings`, or None."""
        if settings is not None and not isinstance(settings, pb.CollectionSettings):
            from clipserve.serving.convert import settings_to_proto

            settings = settings_to_proto(settings)
        request = pb.CreateCollectionRequest(name=name, settings=settings)
        return self.stub.CreateCollection(request, timeout=self.timeout_s).collection

    def drop_collection(self, name: str) -> None:
        self.stub.DropCollection(pb.DropCollectionRequest(name=name), timeout=self.timeout_s)

    def set_alias(self, alias: str, collection: str) -> str:
        """Point `alias` at `collection`; returns the collection it named before ("" if new)."""
        request = pb.SetAliasRequest(alias=alias, collection=collection)
        return self.stub.SetAlias(request, timeout=self.timeout_s).previous_collection

    def dedup(
        self, threshold: float, *, collection: str = "", filter: FilterSpec | None = None,
        max_groups: int = 0,
    ) -> pb.DedupResponse:  # fmt: skip
        request = pb.DedupRequest(collection=collection, threshold=threshold,
                                  filter=to_filter(filter), max_groups=max_groups)  # fmt: skip
        return self.stub.Dedup(request, timeout=self.timeout_s)

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


def _point(msg: pb.Point) -> Point:
    return Point(id=msg.id, vector=np.asarray(msg.vector.values, dtype=np.float32),
                 payload=payload_from_proto(msg.payload))  # fmt: skip


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
