"""`ClipServeServicer`: the gRPC face of `EmbeddingService`. Protobuf in, domain types to the
service, protobuf out; nothing else happens here.

Errors are mapped in one place (`_rpc`): a `ServingError` becomes its status from
`serving/errors.py` with its message; anything else is a bug, logged with its traceback and
answered INTERNAL "internal error" so no internals leak to clients.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from clipserve.index.base import FieldMatch, Filter, Hit
from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.proto.v1 import clipserve_pb2_grpc as pb_grpc
from clipserve.serving.errors import InvalidInput, ServingError, grpc_status
from clipserve.serving.service import (
    Content,
    Embeddings,
    EmbeddingService,
    StreamItem,
    UpsertItem,
)

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
        result = await self.service.embed(
            [content_from_proto(c) for c in request.inputs], truncate=request.truncate
        )
        return pb.EmbedResponse(
            embeddings=[embedding_to_proto(result, i) for i in range(len(result.kinds))],
            model_version=result.model_version,
            dim=result.vectors.shape[1],
        )

    async def EmbedStream(
        self, requests: AsyncIterator[pb.EmbedStreamRequest], context: Any
    ) -> AsyncIterator[pb.EmbedStreamResponse]:
        # Per-item errors travel in the stream; a failure of the stream itself (admission,
        # a broken request stream) ends it with a status through the same error table.
        items = (
            StreamItem(r.id, content_from_proto(r.content), r.truncate) async for r in requests
        )
        try:
            async for res in self.service.embed_stream(items):
                if res.embeddings is None:
                    error = pb.ItemError(code=res.error_code, message=res.error_message)
                    yield pb.EmbedStreamResponse(id=res.id, error=error)
                else:
                    yield pb.EmbedStreamResponse(
                        id=res.id, embedding=embedding_to_proto(res.embeddings, 0),
                        model_version=res.embeddings.model_version,
                    )  # fmt: skip
        except ServingError as exc:
            await context.abort(grpc_status(exc), str(exc))
        except Exception:
            log.exception("EmbedStream failed with an unexpected error")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    @_rpc
    async def Upsert(self, request: pb.UpsertRequest, context: Any) -> pb.UpsertResponse:
        items = [
            UpsertItem(content_from_proto(it.content), payload_from_proto(it.payload))
            for it in request.items
        ]
        collection, ids, cuts = await self.service.upsert(
            request.collection, items, truncate=request.truncate
        )
        return pb.UpsertResponse(
            ids=ids, collection=collection, model_version=self.service.manifest.version,
            truncations=[pb.Truncation(item=i, original_tokens=o, tokens=t) for i, o, t in cuts],
        )  # fmt: skip

    @_rpc
    async def Query(self, request: pb.QueryRequest, context: Any) -> pb.QueryResponse:
        hits, truncated = await self.service.query(
            request.collection,
            content=query_content_from_proto(request),
            vector=list(request.vector.values) if request.HasField("vector") else None,
            top_k=request.top_k if request.HasField("top_k") else None,
            filter=filter_from_proto(request.filter),
            truncate=request.truncate,
        )
        return pb.QueryResponse(
            hits=[hit_to_proto(h) for h in hits], model_version=self.service.manifest.version,
            query_truncated=truncated,
        )  # fmt: skip

    @_rpc
    async def Info(self, request: pb.InfoRequest, context: Any) -> pb.InfoResponse:
        i = self.service.info()
        limits = pb.Limits(
            max_batch=i.max_batch, max_text_chars=i.max_text_chars,
            max_image_bytes=i.max_image_bytes, max_image_pixels=i.max_image_pixels,
            max_top_k=i.max_top_k, max_in_flight=i.max_in_flight, context_length=i.context_length,
            max_request_bytes=i.max_request_bytes, max_batch_tokens=i.max_batch_tokens,
            max_batch_pixels=i.max_batch_pixels, max_inflight_pixels=i.max_inflight_pixels,
            max_batch_wait_us=i.max_batch_wait_us,
        )  # fmt: skip
        return pb.InfoResponse(
            model_name=i.model_name, model_version=i.model_version, dim=i.dim,
            image_height=i.image_size[0], image_width=i.image_size[1],
            context_length=i.context_length, limits=limits, backend=i.backend, device=i.device,
            providers=i.providers, index_kind=i.index_kind,
            default_collection=i.default_collection, server_version=i.server_version,
            auth_required=i.auth_required,
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


def embedding_to_proto(result: Embeddings, i: int) -> pb.Embedding:
    tokens = result.tokens[i] if result.tokens else 0
    return pb.Embedding(
        values=result.vectors[i].tolist(), modality=_MODALITY[result.kinds[i]],
        truncated=result.truncated(i), tokens=tokens,
        original_tokens=result.original_tokens[i] if result.tokens else 0,
    )  # fmt: skip


def payload_from_proto(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Struct numbers are doubles; integral ones become ints so integer filters match them.
    Numbers JSON cannot hold (NaN, Infinity) are InvalidInput, naming the key."""
    _check_finite(struct, "payload")
    return {k: _intify(v) for k, v in json_format.MessageToDict(struct).items()}


def _check_finite(value: Any, path: str) -> None:
    if isinstance(value, struct_pb2.Struct):
        for k, v in value.fields.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(value, struct_pb2.ListValue):
        for j, v in enumerate(value.values):
            _check_finite(v, f"{path}[{j}]")
    elif isinstance(value, struct_pb2.Value):
        which = value.WhichOneof("kind")
        if which == "number_value" and not math.isfinite(value.number_value):
            raise InvalidInput(
                f"{path} is {value.number_value}; payload numbers must be finite (JSON has no "
                "NaN or Infinity)"
            )
        if which in ("struct_value", "list_value"):
            _check_finite(getattr(value, which), path)


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
