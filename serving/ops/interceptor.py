"""`CallInterceptor`: what every RPC gets before the servicer sees it, in one place.

- A request id: the client's `x-request-id` metadata or a new one; set for the call's logs
  (`request_context.REQUEST_ID`) and echoed in the trailing metadata.
- The call's deadline, for the batcher to drop work nobody waits for.
- API-key authentication (metadata `x-api-key`) when the server has keys; health checks stay
  open so probes need no secret. A missing or wrong key is UNAUTHENTICATED (errors table).
- Metrics (requests, errors, latency by method and code) and one structured log line per
  call: `rpc method=... code=... ms=... request_id=... peer=...`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from clipserve.serving.errors import Unauthenticated, grpc_status
from clipserve.serving.ops.metrics import Metrics
from clipserve.serving.ops.request_context import (
    DEADLINE,
    REQUEST_ID,
    deadline_from_remaining,
    new_request_id,
)

log = logging.getLogger("clipserve.serving.rpc")

API_KEY_HEADER = "x-api-key"
REQUEST_ID_HEADER = "x-request-id"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # never behind the API key


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, api_keys: frozenset[str] = frozenset()) -> None:
        self.metrics = metrics
        self._keys = tuple(k.encode() for k in api_keys)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        full_method = details.method
        method = full_method.rsplit("/", 1)[-1]
        metadata = {k: v for k, v in (details.invocation_metadata or ())}
        request_id = new_request_id(_text(metadata.get(REQUEST_ID_HEADER)))
        needs_key = bool(self._keys) and not full_method.startswith(OPEN_PREFIXES)
        authorised = not needs_key or self._check_key(metadata.get(API_KEY_HEADER))
        quiet = full_method.startswith(OPEN_PREFIXES)  # health polls: metrics, no log line

        def begin(context: grpc.aio.ServicerContext) -> float:
            REQUEST_ID.set(request_id)
            DEADLINE.set(deadline_from_remaining(context.time_remaining()))
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
            return time.perf_counter()

        def end(context: grpc.aio.ServicerContext, t0: float, outcome: str) -> None:
            code = context.code()
            name = code.name if isinstance(code, grpc.StatusCode) else outcome
            seconds = time.perf_counter() - t0
            self.metrics.rpc_done(method, name, seconds)
            if not quiet or name != "OK":
                log.info(
                    "rpc method=%s code=%s ms=%.1f request_id=%s peer=%s",
                    method, name, seconds * 1000, request_id, context.peer(),
                )  # fmt: skip

        async def deny(context: grpc.aio.ServicerContext) -> None:
            exc = Unauthenticated(
                f"this server requires an API key in the `{API_KEY_HEADER}` metadata"
                if metadata.get(API_KEY_HEADER) is None
                else "the API key is not valid"
            )
            await context.abort(grpc_status(exc), str(exc))

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                t0, outcome = begin(context), "UNKNOWN"
                try:
                    if not authorised:
                        await deny(context)
                    response = await inner_uu(request, context)
                    outcome = "OK"
                    return response
                except asyncio.CancelledError:
                    outcome = "CANCELLED"  # the client went away or the deadline passed
                    raise
                finally:
                    end(context, t0, outcome)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(
                requests: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                t0, outcome = begin(context), "UNKNOWN"
                try:
                    if not authorised:
                        await deny(context)
                    async for response in inner_ss(requests, context):
                        yield response
                    outcome = "OK"
                except asyncio.CancelledError:
                    outcome = "CANCELLED"
                    raise
                finally:
                    end(context, t0, outcome)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if not authorised:  # other shapes (health Watch, reflection): refuse without a key

            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await deny(context)

            if handler.unary_stream is not None:
                return grpc.unary_stream_rpc_method_handler(
                    refuse,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            return grpc.stream_unary_rpc_method_handler(
                refuse,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _check_key(self, supplied: Any) -> bool:
        key = _text(supplied)
        if not key:
            return False
        given = key.encode()
        # Compare against every key (constant time each) so timing says nothing about which.
        return any([hmac.compare_digest(given, k) for k in self._keys])  # noqa: C419


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
