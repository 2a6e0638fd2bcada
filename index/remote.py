"""`RemoteIndex`: a Qdrant server or cluster through `qdrant_client`, same semantics as EdgeIndex.

The client is either built from `url`/`api_key` or injected, which is how tests run this code
against `QdrantClient(":memory:")` or `QdrantClient(path=...)` (qdrant-client's local mode: the
same client API over a pure-Python engine, always exact search).

Errors: a missing collection is detected after the fact (the failing call is followed by one
`collection_exists` round trip) so the normal path costs no extra request. Collection
dimensions are cached on first use to check vectors before they travel; a collection deleted and
recreated with another dimension behind this object's back is reported by the server instead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from clipserve.index.base import (
    CollectionNotFound,
    DimensionMismatch,
    Filter,
    Hit,
    Point,
    as_vector,
    check_collection_name,
    ordered_points,
)
from clipserve.index.ids import canonical_id


class RemoteIndex:
    """A `VectorIndex` over a Qdrant deployment.

    Args:
        url: e.g. "http://qdrant:6333"; ignored when `client` is given.
        client: an existing `QdrantClient` (not closed by `close()`: its owner closes it).
        api_key: for Qdrant Cloud or a secured server.
        exact: ask the server for exact (brute-force) search instead of HNSW (local mode
            always searches exactly).
        batch_size: points per upsert request.
        timeout: request timeout in seconds for a client built here.
    """

    kind = "qdrant"  # reported by the server's Info

    def __init__(
        self,
        url: str | None = None,
        *,
        client: QdrantClient | None = None,
        api_key: str | None = None,
        exact: bool = False,
        batch_size: int = 256,
        timeout: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if client is None:
            if not url:
                raise ValueError("RemoteIndex needs a url or a client")
            client = QdrantClient(url=url, api_key=api_key, timeout=timeout)
            self._owns_client = True
        else:
            self._owns_client = False
        self._client = client
        self._batch_size = batch_size
        self._dims: dict[str, int] = {}
        # Local mode is a pure-Python engine with no locking of its own; server clients are
        # thread-safe. `_client` is private to qdrant-client, hence the defensive getattr.
        is_local = type(getattr(client, "_client", None)).__name__ == "QdrantLocal"
        self._local_lock: AbstractContextManager[Any] = (
            threading.RLock() if is_local else nullcontext()
        )
        # Local mode is always exact and warns on every call that gets search params.
        self._search_params = models.SearchParams(exact=True) if exact and not is_local else None

    # --- VectorIndex ---

    def ensure_collection(self, name: str, dim: int) -> None:
        check_collection_name(name)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        with self._local_lock:
            if not self._client.collection_exists(name):
                try:
                    self._client.create_collection(
                        name,
                        vectors_config=models.VectorParams(
                            size=dim, distance=models.Distance.COSINE
                        ),
                    )
                    self._dims[name] = dim
                    return
                except Exception:
                    # Lost a race with another creator: fall through and compare dimensions.
                    if not self._client.collection_exists(name):
                        raise
            existing = self._fetch_dim(name)
        if existing != dim:
            raise DimensionMismatch(
                f"collection {name!r} exists with dim {existing}, asked for {dim}"
            )

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        dim = self._dim(name)
        structs = [
            models.PointStruct(
                id=canonical_id(p.id),
                vector=as_vector(p.vector, dim).tolist(),
                payload=dict(p.payload),
            )
            for p in points
        ]
        with self._local_lock, self._not_found_as(name):
            for start in range(0, len(structs), self._batch_size):
                self._client.upsert(
                    name, points=structs[start : start + self._batch_size], wait=True
                )

    def search(
        self, name: str, vector: np.ndarray, top_k: int, filter: Filter | None = None
    ) -> list[Hit]:
        dim = self._dim(name)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        query = as_vector(vector, dim)
        with self._local_lock, self._not_found_as(name):
            response = self._client.query_points(
                name,
                query=query,
                limit=top_k,
                query_filter=_qdrant_filter(filter),
                search_params=self._search_params,
                with_payload=True,
            )
        return [
            Hit(id=str(p.id), score=float(p.score), payload=p.payload or {})
            for p in response.points
        ]

    def count(self, name: str) -> int:
        check_collection_name(name)
        with self._local_lock, self._not_found_as(name):
            return int(self._client.count(name, exact=True).count)

    def retrieve(self, name: str, ids: Sequence[str]) -> list[Point]:
        """Stored points for `ids`, in the order asked, each once; unknown ids are left out."""
        check_collection_name(name)
        wanted = list(dict.fromkeys(canonical_id(i) for i in ids))
        if not wanted:
            return []
        with self._local_lock, self._not_found_as(name):
            records = self._client.retrieve(name, ids=wanted, with_payload=True, with_vectors=True)
        return ordered_points(wanted, records)

    def close(self) -> None:
        """Close the client if this object built it. Idempotent."""
        if self._owns_client:
            self._client.close()

    # --- extras ---

    def create_payload_index(self, name: str, key: str, kind: str) -> None:
        """Index payload field `key` ("keyword", "integer" or "bool") on the server. Idempotent."""
        schema = {
            "keyword": models.PayloadSchemaType.KEYWORD,
            "integer": models.PayloadSchemaType.INTEGER,
            "bool": models.PayloadSchemaType.BOOL,
        }
        if kind not in schema:
            raise ValueError(f"kind must be one of {sorted(schema)}, got {kind!r}")
        check_collection_name(name)
        with self._local_lock, self._not_found_as(name):
            self._client.create_payload_index(name, key, field_schema=schema[kind], wait=True)

    def __enter__(self) -> RemoteIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---

    def _dim(self, name: str) -> int:
        dim = self._dims.get(name)
        if dim is None:
            check_collection_name(name)
            with self._local_lock:
                dim = self._fetch_dim(name)
        return dim

    def _fetch_dim(self, name: str) -> int:
        with self._not_found_as(name):
            params = self._client.get_collection(name).config.params.vectors
        if not isinstance(params, models.VectorParams):
            raise ValueError(f"collection {name!r} uses named vectors; clipserve needs one vector")
        if params.distance != models.Distance.COSINE:
            raise ValueError(f"collection {name!r} uses {params.distance}, clipserve needs cosine")
        self._dims[name] = params.size
        return params.size

    @contextmanager
    def _not_found_as(self, name: str) -> Iterator[None]:
        """Re-raise a failure as CollectionNotFound when the collection is in fact missing.

        Local mode raises ValueError, a server UnexpectedResponse(404) or a gRPC NOT_FOUND: asking
        once more is simpler and more robust than parsing each."""
        try:
            yield
        except (CollectionNotFound, DimensionMismatch):
            raise
        except Exception as exc:
            try:
                exists = self._client.collection_exists(name)
            except Exception:
                exists = True  # cannot tell: report the original failure
            if not exists:
                self._dims.pop(name, None)
                raise CollectionNotFound(f"collection {name!r} does not exist") from exc
            raise


def _qdrant_filter(filter: Filter | None) -> models.Filter | None:
    if filter is None or not filter.must:
        return None
    conditions: list[models.Condition] = []
    for cond in filter.must:
        if not isinstance(cond.value, str | int):  # bool is an int
            raise ValueError(f"filter on {cond.key!r}: value must be str, int or bool")
        conditions.append(
            models.FieldCondition(key=cond.key, match=models.MatchValue(value=cond.value))
        )
    return models.Filter(must=conditions)
