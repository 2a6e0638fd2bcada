"""Opaque page tokens for Query: which collection answered the first page, and where the next
page starts. Clients pass them back unchanged; a token that does not decode is INVALID_ARGUMENT."""

from __future__ import annotations

import base64
import binascii
import json

from clipserve.serving.config import is_valid_collection_name
from clipserve.serving.errors import InvalidInput


def encode_page_token(collection: str, offset: int) -> str:
    raw = json.dumps({"c": collection, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str, int]:
    """(collection, offset); InvalidInput for anything `encode_page_token` did not make."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        collection, offset = data["c"], data["o"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidInput("page_token is not a token this server issued") from None
    ok = isinstance(collection, str) and is_valid_collection_name(collection)
    if not ok or not isinstance(offset, int) or offset < 0:
        raise InvalidInput("page_token is not a token this server issued")
    return collection, offset
