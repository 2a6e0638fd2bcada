"""`ClipServeServicer`: the gRPC face of `EmbeddingService` and `IndexService`. Protobuf in,
domain types to the services (conversions in `serving/convert.py`), protobuf out.

Errors are mapped in one place (`_rpc`): a `ServingError` becomes its status from
`serving/errors.py` with its message; anything else is a bug, logged with its traceback and
answered INTERNAL "internal error" so no internals leak to clients.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.proto.v1 import clipserve_pb2_grpc as pb_grpc
from clipserve.serving import convert
from clipserve.serving.convert import content_from_proto, payload_from_proto
from clipserve.serving.errors import ServingError, grpc_status
from clipserve.serving.search.index_service import IndexService
from clipserve.serving.service import Embeddings, EmbeddingService, StreamItem

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
    def __init__(self, service: EmbeddingService, index: IndexService) -> None:
        self.service = service
        self.index = index

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
        done = await self.index.upsert(
            request.collection,
            [convert.upsert_item_from_proto(it) for it in request.items],
            truncate=request.truncate,
            vector_model_version=request.vector_model_version,
        )
        truncations = [
            pb.Truncation(item=i, original_tokens=o, tokens=t) for i, o, t in done.truncations
        ]
        return pb.UpsertResponse(ids=done.ids, collection=done.collection,
                                 model_version=done.model_version, truncations=truncations)  # fmt: skip

    @_rpc
    async def Query(self, request: pb.QueryRequest, context: Any) -> pb.QueryResponse:
        result = await self.index.query(convert.query_from_proto(request))
        return convert.query_result_to_proto(result)

    @_rpc
    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        f = convert.filter_from_proto(request.filter)
        name = await self.index.delete(request.collection, list(request.ids), f)
        return pb.DeleteResponse(collection=name)

    @_rpc
    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        got = await self.index.get(request.collection, list(request.ids), request.with_vectors)
        points = [convert.point_to_proto(p, request.with_vectors) for p in got.points]
        return pb.GetResponse(points=points, missing_ids=got.missing_ids,
                              model_version=got.model_version)  # fmt: skip

    @_rpc
    async def Count(self, request: pb.CountRequest, context: Any) -> pb.CountResponse:
        f = convert.filter_from_proto(request.filter)
        return pb.CountResponse(count=await self.index.count(request.collection, f))

    @_rpc
    async def Scroll(self, request: pb.ScrollRequest, context: Any) -> pb.ScrollResponse:
        points, token = await self.index.scroll(
            request.collection, convert.filter_from_proto(request.filter), request.limit,
            request.page_token, request.with_vectors,
        )  # fmt: skip
        return pb.ScrollResponse(
            points=[convert.point_to_proto(p, request.with_vectors) for p in points],
            next_page_token=token,
        )

    @_rpc
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: Any
    ) -> pb.ListCollectionsResponse:
        infos = await self.index.list_collections()
        return pb.ListCollectionsResponse(
            collections=[convert.collection_to_proto(c) for c in infos]
        )

    @_rpc
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: Any
    ) -> pb.CreateCollectionResponse:
        settings = convert.settings_from_proto(request.settings)
        info = await self.index.create_collection(request.name, settings)
        return pb.CreateCollectionResponse(collection=convert.collection_to_proto(info))

    @_rpc
    async def DropCollection(
        self, request: pb.DropCollectionRequest, context: Any
    ) -> pb.DropCollectionResponse:
        await self.index.drop_collection(request.name)
        return pb.DropCollectionResponse()

    @_rpc
    async def SetAlias(self, request: pb.SetAliasRequest, context: Any) -> pb.SetAliasResponse:
        previous = await self.index.set_alias(request.alias, request.collection)
        return pb.SetAliasResponse(previous_collection=previous)

    @_rpc
    async def Dedup(self, request: pb.DedupRequest, context: Any) -> pb.DedupResponse:
        result = await self.index.dedup(
            request.collection, request.threshold, convert.filter_from_proto(request.filter),
            request.max_groups,
        )  # fmt: skip
        return convert.dedup_to_proto(result)

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


# -- proto <-> domain (the index API's conversions live in serving/convert.py) ---------------


def embedding_to_proto(result: Embeddings, i: int) -> pb.Embedding:
    tokens = result.tokens[i] if result.tokens else 0
    return pb.Embedding(
        values=result.vectors[i].tolist(), modality=_MODALITY[result.kinds[i]],
        truncated=result.truncated(i), tokens=tokens,
        original_tokens=result.original_tokens[i] if result.tokens else 0,
    )  # fmt: skip


__all__ = ["ClipServeServicer", "content_from_proto", "embedding_to_proto", "payload_from_proto"]
