"""Per-call context the layers below the servicer see without it being passed down:
the request id (for logs) and the call's deadline (so queued work for an expired call is
dropped before inference). Set by the RPC interceptor; asyncio copies context vars into
every task a call spawns.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Absolute time.monotonic() by which the call must be answered; None = no deadline.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

_MAX_ID_CHARS = 128


def new_request_id(supplied: str | None = None) -> str:
    """The client's `x-request-id` if it is sane (printable, at most 128 chars), else a new one."""
    if (
        supplied
        and len(supplied) <= _MAX_ID_CHARS
        and supplied.isprintable()
        and " " not in supplied
    ):
        return supplied
    return uuid.uuid4().hex


def deadline_from_remaining(time_remaining: float | None) -> float | None:
    return None if time_remaining is None else time.monotonic() + max(0.0, time_remaining)


def expired(deadline: float | None, now: float | None = None) -> bool:
    return deadline is not None and (time.monotonic() if now is None else now) >= deadline


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record, so a format can include %(request_id)s."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True
