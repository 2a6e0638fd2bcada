"""Deterministic point ids: the same content always gets the same id.

A client that retries an upsert after a timeout must not create a second copy of the item, so
point ids are derived from the content itself, never drawn at random:

    id = UUID(sha256(kind + b"\\0" + data)[:16]) with the RFC 9562 version-8 and variant bits set

`kind` keeps a caption and an image whose bytes happen to be equal apart ("text" vs "image"); the
NUL separator keeps (kind, data) pairs unambiguous. Text ids hash the UTF-8 bytes of the exact
string: no normalisation (case, whitespace, Unicode form), so "a cat" and "a cat " are two items.
Image ids hash the encoded file bytes as received, so a re-encoded copy of a picture is a new item.

Version 8 is the RFC's "custom" UUID: the 122 free bits are the first 122 bits of the digest.
"""

from __future__ import annotations

import hashlib
import re
import uuid

KINDS = ("text", "image")

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_VERSION_MASK = 0xF << 76
_VARIANT_MASK = 0x3 << 62


def content_id(kind: str, data: bytes) -> str:
    """The point id (canonical lower-case UUID string) for `data` of the given `kind`.

    Raises ValueError for a kind other than "text" or "image", TypeError if `data` is not bytes.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    digest = hashlib.sha256(kind.encode("ascii") + b"\0" + bytes(data)).digest()
    value = int.from_bytes(digest[:16], "big")
    value = (value & ~_VERSION_MASK) | (8 << 76)
    value = (value & ~_VARIANT_MASK) | (0b10 << 62)
    return str(uuid.UUID(int=value))


def text_id(text: str) -> str:
    """`content_id("text", text.encode("utf-8"))`."""
    return content_id("text", text.encode("utf-8"))


def image_id(data: bytes) -> str:
    """`content_id("image", data)` for the encoded image bytes."""
    return content_id("image", data)


def canonical_id(point_id: str) -> str:
    """`point_id` in canonical form (lower-case, hyphenated); ValueError if it is not a UUID.

    Both Qdrant engines return ids in this form, so callers compare ids only after this.
    """
    if isinstance(point_id, str) and _CANONICAL.fullmatch(point_id):
        return point_id  # already canonical: skip the parse (bulk ingest calls this per point)
    try:
        return str(uuid.UUID(point_id))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"point id must be a UUID string, got {point_id!r}") from exc
