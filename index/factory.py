"""`open_index`: pick the `VectorIndex` implementation from configuration."""

from __future__ import annotations

import os

from clipserve.index.base import VectorIndex


def open_index(
    *,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    api_key: str | None = None,
    https: bool | None = None,
    prefer_grpc: bool = True,
) -> VectorIndex:
    """A Qdrant server/cluster when `url` is given (`RemoteIndex`), else the embedded engine on
    the directory `path` (`EdgeIndex`). Raises ValueError when neither is given, or when both
    are (one would be silently ignored).

    For a server: `api_key` authenticates, `https` forces TLS on or off (None = the url's
    scheme decides), `prefer_grpc` talks gRPC (port 6334) rather than REST."""
    if url and path:
        raise ValueError("give either an index url (Qdrant server) or an index path, not both")
    if url:
        from clipserve.index.remote.remote import RemoteIndex

        return RemoteIndex(url, api_key=api_key, https=https, prefer_grpc=prefer_grpc)
    if path:
        if api_key or https:
            raise ValueError(
                "api_key and https apply to a Qdrant server url, not to a local index path"
            )
        from clipserve.index.embedded.edge import EdgeIndex

        return EdgeIndex(path)
    raise ValueError(
        "no index configured: give a directory path for the embedded Qdrant engine, "
        "or a url for a Qdrant server"
    )
