"""`open_index`: pick the `VectorIndex` implementation from configuration."""

from __future__ import annotations

import os

from clipserve.index.base import VectorIndex


def open_index(
    *,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    api_key: str | None = None,
) -> VectorIndex:
    """A Qdrant server/cluster when `url` is given (`RemoteIndex`), else the embedded engine on
    the directory `path` (`EdgeIndex`). Raises ValueError when neither is given, or when both
    are (one would be silently ignored)."""
    if url and path:
        raise ValueError("give either an index url (Qdrant server) or an index path, not both")
    if url:
        from clipserve.index.remote import RemoteIndex

        return RemoteIndex(url, api_key=api_key)
    if path:
        if api_key:
            raise ValueError("api_key applies to a Qdrant server url, not to a local index path")
        from clipserve.index.edge import EdgeIndex

        return EdgeIndex(path)
    raise ValueError(
        "no index configured: give a directory path for the embedded Qdrant engine, "
        "or a url for a Qdrant server"
    )
