"""`ClipServeServicer`: the gRPC face of `EmbeddingService`. Protobuf in, domain types to the
service, protobuf out; nothing else happens here.

Errors are mapped in one place (`_rpc`): a `ServingError` becomes its status from
`serving/errors.py` with its message; anything else is a bug, logged with its traceback and
answered INTERNAL "internal error" so no internals leak to clients.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from clipserve.index.base import FieldMatch, Filter, Hit
from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.proto.v1 import clipserve_pb2_grpc as pb_grpc
from clipserve.serving.errors import InvalidInput, ServingError, grpc_status
from clipserve.serving.service import Content, EmbeddingService, UpsertItem

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]

_MODALITY = {"text": pb.MODALITY_TEXT, "image": pb.MODALITY_IMAGE}


def _rpc(method: Method[Req, Resp]) -> Method[Req, Resp]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(grpc_status(exc), str(exc))
        except Exception:
            log.exception("%s failed with an unexpected error", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


class ClipServeServicer(pb_grpc.ClipServeServicer):
    def __init__(self, service: EmbeddingService) -> None:
        self.service = service

    @_rpc
    async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        result = await self.service.embed([content_from_proto(c) for c in request.inputs])
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(values=row.tolist(), modality=_MODALITY[kind])
                for row, kind in zip(result.vectors, result.kinds, strict=True)
            ],
            model_version=result.model_version,
            dim=result.vectors.shape[1],
        )

    @_rpc
    async def Upsert(self, request: pb.UpsertRequest, context: Any) -> pb.UpsertResponse:
        items = [
            UpsertItem(content_from_proto(it.content), payload_from_proto(it.payload))
            for it in request.items
        ]
        collection, ids = await self.service.upsert(request.collection, items)
        return pb.UpsertResponse(
            ids=ids, collection=collection, model_version=self.service.manifest.version
        )

    @_rpc
    async def Query(self, request: pb.QueryRequest, context: Any) -> pb.QueryResponse:
        hits = await self.service.query(
            request.collection,
            content=query_content_from_proto(request),
            vector=list(request.vector.values) if request.HasField("vector") else None,
            top_k=request.top_k if request.HasField("top_k") else None,
            filter=filter_from_proto(request.filter),
        )
        return pb.QueryResponse(
            hits=[hit_to_proto(h) for h in hits], model_version=self.service.manifest.version
        )

    @_rpc
    async def Info(self, request: pb.InfoRequest, context: Any) -> pb.InfoResponse:
        i = self.service.info()
        limits = pb.Limits(
            max_batch=i.max_batch, max_text_chars=i.max_text_chars,
            max_image_bytes=i.max_image_bytes, max_image_pixels=i.max_image_pixels,
            max_top_k=i.max_top_k, max_in_flight=i.max_in_flight, context_length=i.context_length,
            max_request_bytes=i.max_request_bytes,
        )  # fmt: skip
        return pb.InfoResponse(
            model_name=i.model_name, model_version=i.model_version, dim=i.dim,
            image_height=i.image_size[0], image_width=i.image_size[1],
            context_length=i.context_length, limits=limits, backend=i.backend, device=i.device,
            providers=i.providers, index_kind=i.index_kind,
            default_collection=i.default_collection, server_version=i.server_version,
            precision=i.precision, model_variant=i.model_variant,
        )  # fmt: skip


# -- proto <-> domain ---------------------------------------------------------------------------


def content_from_proto(msg: pb.Content) -> Content:
    which = msg.WhichOneof("kind")
    if which == "text":
        return Content(text=msg.text)
    if which == "image":
        return Content(image=bytes(msg.image))
    return Content()  # neither: the service rejects it with the input's index


def query_content_from_proto(msg: pb.QueryRequest) -> Content | None:
    which = msg.WhichOneof("query")
    if which == "text":
        return Content(text=msg.text)
    if which == "image":
        return Content(image=bytes(msg.image))
    return None


def payload_from_proto(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Struct numbers are doubles; integral ones become ints so integer filters match them."""
    return {k: _intify(v) for k, v in json_format.MessageToDict(struct).items()}


def _intify(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _intify(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_intify(v) for v in value]
    return value


def filter_from_proto(msg: pb.Filter) -> Filter | None:
    conditions = []
    for j, cond in enumerate(msg.must):
        which = cond.WhichOneof("value")
        if which is None:
            raise InvalidInput(f"filter condition {j} ({cond.key!r}): no value set")
        conditions.append(FieldMatch(cond.key, getattr(cond, which)))
    return Filter(tuple(conditions)) if conditions else None


def hit_to_proto(hit: Hit) -> pb.Hit:
    payload = struct_pb2.Struct()
    payload.update(hit.payload)
    return pb.Hit(id=hit.id, score=hit.score, payload=payload)
