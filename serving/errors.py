"""Domain errors of the serving path, and the one table that maps them to gRPC status codes.

The service layer raises these; only the servicer (via `grpc_status`) turns them into statuses.
Anything not listed here is a bug: logged with its traceback, answered INTERNAL without details.
"""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base class: the message is safe to show to the client and says what is wrong."""


class InvalidInput(ServingError):
    """The request is malformed or over a limit (undecodable image, empty, too long...)."""


class NotFound(ServingError):
    """A named collection or point does not exist."""


class Overloaded(ServingError):
    """Too many requests in flight; the client should retry with backoff."""


class BackendUnavailable(ServingError):
    """The inference backend or the index cannot serve right now."""


class AlreadyExists(ServingError):
    """Creating something (a collection) that exists already."""


class FailedPrecondition(ServingError):
    """The target is in a state that refuses the call: e.g. a collection made by another
    model (the message names both model versions)."""


class Unauthenticated(ServingError):
    """The server requires an API key and the call carried none, or a wrong one."""


class DeadlineExceeded(ServingError):
    """The call's deadline passed (or it was cancelled) before its work ran."""


STATUS_TABLE: dict[type[ServingError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_status(exc: ServingError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_TABLE:
            return STATUS_TABLE[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL
