"""`RemoteIndex`: a Qdrant server or cluster through `qdrant_client`, same semantics as EdgeIndex.

The client is either built from `url` (gRPC preferred, API key, TLS) or injected, which is how
tests run this code against `QdrantClient(":memory:")` or `QdrantClient(path=...)`
(qdrant-client's local mode: the same client API over a pure-Python engine, always exact).

Settings and provenance live in the collection's metadata (see `remote_admin`). Aliases are
Qdrant's own: a switch is one
`update_collection_aliases` request (delete + create), which the server applies atomically, and
the server resolves an alias on every call, so point calls pass names through unchanged.

Errors: a missing collection is detected after the fact (the failing call is followed by one
`collection_exists` round trip) so the normal path costs no extra request. Each collection's
dimension and settings are cached on first use to check vectors before they travel; a vector
that fails the check against a cached entry refreshes it once (an alias may have switched).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from clipserve.index.base import (
    AliasNotFound,
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    CollectionSettings,
    DimensionMismatch,
    Filter,
    Hit,
    Point,
    Provenance,
    as_matrix,
    check_collection_name,
    check_dim,
    check_model,
    check_scroll_args,
    check_search_args,
    delete_filter,
    neighbours,
    ordered_points,
    to_hit,
    to_point,
)
from clipserve.index.collections import creation_provenance
from clipserve.index.ids import canonical_id
from clipserve.index.remote import remote_admin
from clipserve.index.remote.remote_filters import remote_filter


class RemoteIndex:
    """A `VectorIndex` over a Qdrant deployment.

    Args:
        url: e.g. "http://qdrant:6333" or "https://...": https turns TLS on; ignored when
            `client` is given.
        client: an existing `QdrantClient` (not closed by `close()`: its owner closes it).
        api_key: for Qdrant Cloud or a secured server (send it over TLS).
        https: force TLS on (True) or off (False); None = as the url's scheme says.
        prefer_grpc: talk gRPC on `grpc_port` (faster for vectors) instead of REST.
        grpc_port: the server's gRPC port (Qdrant's default 6334).
        exact: ask the server for exact (brute-force) search instead of HNSW.
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
        https: bool | None = None,
        prefer_grpc: bool = True,
        grpc_port: int = 6334,
        exact: bool = False,
        batch_size: int = 256,
        timeout: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if client is None:
            if not url:
                raise ValueError("RemoteIndex needs a url or a client")
            client = QdrantClient(
                url=url,
                api_key=api_key,
                https=https,
                prefer_grpc=prefer_grpc,
                grpc_port=grpc_port,
                timeout=timeout,
            )
            self._owns_client = True
        else:
            self._owns_client = False
        self._client = client
        self._batch_size = batch_size
        self._exact = exact
        self._meta: dict[str, tuple[int, CollectionSettings]] = {}
        # Local mode is a pure-Python engine with no locking of its own; server clients are
        # thread-safe. `_client` is private to qdrant-client, hence the defensive getattr.
        self._is_local = type(getattr(client, "_client", None)).__name__ == "QdrantLocal"
        self._local_lock: AbstractContextManager[Any] = (
            threading.RLock() if self._is_local else nullcontext()
        )

    # --- collections ---

    def create_collection(
        self,
        name: str,
        dim: int,
        settings: CollectionSettings | None = None,
        provenance: Provenance | None = None,
    ) -> CollectionInfo:
        check_collection_name(name)
        check_dim(dim)
        settings = settings or CollectionSettings()
        provenance = creation_provenance(name, dim, settings, provenance)
        with self._local_lock:
            if name in self.aliases():
                raise CollectionExists(f"an alias named {name!r} exists already")
            if self._client.collection_exists(name):
                raise CollectionExists(f"collection {name!r} exists already")
            try:
                remote_admin.create_collection(
                    self._client, name, dim, settings, provenance, not self._is_local
                )
                self._meta[name] = (dim, settings)
            except Exception:
                if self._client.collection_exists(name):  # lost a race with another creator
                    raise CollectionExists(f"collection {name!r} exists already") from None
                raise
        return self.collection_info(name)

    def ensure_collection(
        self,
        name: str,
        dim: int,
        settings: CollectionSettings | None = None,
        provenance: Provenance | None = None,
    ) -> None:
        check_collection_name(name)
        check_dim(dim)
        try:
            target = self.resolve(name)
        except CollectionNotFound:
            try:
                self.create_collection(name, dim, settings, provenance)
                return
            except CollectionExists:
                target = self.resolve(name)
        existing, _ = self._fetch_meta(target)
        if existing != dim:
            raise DimensionMismatch(
                f"collection {name!r} exists with dim {existing}, asked for {dim}"
            )
        if provenance is not None:
            check_model(target, self.provenance(target), provenance.model_version)

    def drop_collection(self, name: str) -> None:
        check_collection_name(name)
        with self._local_lock:
            if name in self.aliases():
                raise ValueError(f"{name!r} is an alias; drop_collection takes a collection name")
            if not self._client.collection_exists(name):
                raise CollectionNotFound(f"collection {name!r} does not exist")
            ops = [remote_admin.delete_alias_op(a) for a, c in self.aliases().items() if c == name]
            if ops:
                self._client.update_collection_aliases(change_aliases_operations=ops)
            self._client.delete_collection(name)
            self._meta.pop(name, None)

    def list_collections(self) -> list[CollectionInfo]:
        with self._local_lock:
            names = sorted(c.name for c in self._client.get_collections().collections)
        return [self.collection_info(n) for n in names]

    def collection_info(self, name: str) -> CollectionInfo:
        target = self.resolve(name)
        aliases = self.aliases()
        with self._local_lock, self._not_found_as(target):
            config = self._client.get_collection(target).config
            count = int(self._client.count(target, exact=True).count)
        _, settings, provenance = remote_admin.stored_meta(target, config)
        return CollectionInfo(
            name=target,
            count=count,
            provenance=provenance,
            settings=settings,
            aliases=tuple(sorted(a for a, c in aliases.items() if c == target)),
        )

    def provenance(self, name: str) -> Provenance | None:
        return self.collection_info(name).provenance

    # --- aliases ---

    def set_alias(self, alias: str, collection: str) -> str | None:
        check_collection_name(alias)
        check_collection_name(collection)
        with self._local_lock:
            current = self.aliases()
            if collection in current:
                raise ValueError(f"{collection!r} is an alias; an alias must name a collection")
            if self._client.collection_exists(alias) and alias not in current:
                raise CollectionExists(f"a collection named {alias!r} exists; pick another alias")
            if not self._client.collection_exists(collection):
                raise CollectionNotFound(f"collection {collection!r} does not exist")
            previous = current.get(alias)
            # One request: the server applies the delete and the create atomically.
            self._client.update_collection_aliases(
                change_aliases_operations=remote_admin.switch_alias_ops(alias, collection, previous)
            )
            self._meta.pop(alias, None)
            return previous

    def delete_alias(self, alias: str) -> None:
        check_collection_name(alias)
        with self._local_lock:
            if alias not in self.aliases():
                raise AliasNotFound(f"alias {alias!r} does not exist")
            self._client.update_collection_aliases(
                change_aliases_operations=[remote_admin.delete_alias_op(alias)]
            )
            self._meta.pop(alias, None)

    def resolve(self, name: str) -> str:
        check_collection_name(name)
        target = self.aliases().get(name)
        if target is not None:
            return target
        with self._local_lock:
            if self._client.collection_exists(name):
                return name
        raise CollectionNotFound(f"collection {name!r} does not exist")

    def aliases(self) -> dict[str, str]:
        with self._local_lock:
            listed = self._client.get_aliases().aliases
        return {a.alias_name: a.collection_name for a in listed}

    # --- points ---

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        ids = [canonical_id(p.id) for p in points]
        rows = self._vectors(name, [p.vector for p in points]).tolist()
        if not ids:
            return
        structs = [
            models.PointStruct(id=i, vector=v, payload=dict(p.payload))
            for i, v, p in zip(ids, rows, points, strict=True)
        ]
        with self._local_lock, self._not_found_as(name):
            for start in range(0, len(structs), self._batch_size):
                self._client.upsert(
                    name, points=structs[start : start + self._batch_size], wait=True
                )

    def delete(
        self, name: str, ids: Sequence[str] | None = None, filter: Filter | None = None
    ) -> None:
        flt = remote_filter(delete_filter(ids, filter))
        check_collection_name(name)
        with self._local_lock, self._not_found_as(name):
            if flt is None:
                self._client.count(name)  # nothing to delete; still report a missing collection
                return
            self._client.delete(name, points_selector=models.FilterSelector(filter=flt), wait=True)

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> list[Point]:
        check_collection_name(name)
        wanted = list(dict.fromkeys(canonical_id(i) for i in ids))
        with self._local_lock, self._not_found_as(name):
            if not wanted:
                self._client.count(name)  # report a missing collection like the edge does
                return []
            records = self._client.retrieve(
                name, ids=wanted, with_payload=True, with_vectors=with_vectors
            )
        return ordered_points(wanted, records)

    def count(self, name: str, filter: Filter | None = None, exact: bool = True) -> int:
        flt = remote_filter(filter)
        check_collection_name(name)
        with self._local_lock, self._not_found_as(name):
            return int(self._client.count(name, count_filter=flt, exact=exact).count)

    def scroll(
        self,
        name: str,
        filter: Filter | None = None,
        limit: int = 100,
        page_token: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[Point], str | None]:
        offset = check_scroll_args(limit, page_token)
        flt = remote_filter(filter)
        check_collection_name(name)
        with self._local_lock, self._not_found_as(name):
            records, next_id = self._client.scroll(
                name,
                scroll_filter=flt,
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
        return [to_point(r) for r in records], None if next_id is None else str(next_id)

    def search(
        self,
        name: str,
        vector: np.ndarray,
        top_k: int,
        filter: Filter | None = None,
        *,
        offset: int = 0,
        score_threshold: float | None = None,
        exact: bool = False,
        with_vectors: bool = False,
    ) -> list[Hit]:
        check_search_args(top_k, offset, score_threshold)
        (query,) = self._vectors(name, [vector])
        flt = remote_filter(filter)
        with self._local_lock, self._not_found_as(name):
            response = self._client.query_points(
                name,
                query=query,
                limit=top_k,
                offset=offset,
                query_filter=flt,
                score_threshold=score_threshold,
                search_params=self._search_params(name, exact),
                with_payload=True,
                with_vectors=with_vectors,
            )
        return [to_hit(p, with_vectors) for p in response.points]

    def search_by_id(
        self,
        name: str,
        point_id: str,
        top_k: int,
        filter: Filter | None = None,
        *,
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        return neighbours(self, name, point_id, top_k, filter, score_threshold, exact)

    def flush(self, name: str) -> None:
        """Writes are sent with wait=True: the server has applied them (its WAL is its own
        durability). Only checks that the collection exists."""
        self.count(name)

    def close(self) -> None:
        """Close the client if this object built it. Idempotent."""
        if self._owns_client:
            self._client.close()

    # --- extras ---

    def create_payload_index(self, name: str, key: str, kind: str) -> None:
        """Index payload field `key` ("keyword", "integer", "float" or "bool"). Idempotent."""
        if kind not in remote_admin.PAYLOAD_SCHEMA:
            raise ValueError(
                f"payload index type must be one of {sorted(remote_admin.PAYLOAD_SCHEMA)}, "
                f"got {kind!r}"
            )
        check_collection_name(name)
        with self._local_lock, self._not_found_as(name):
            self._payload_index(name, key, kind)

    def _payload_index(self, name: str, key: str, kind: str) -> None:
        if self._is_local:
            self._client.get_collection(name)  # no effect in local mode; still check it exists
            return
        schema = remote_admin.PAYLOAD_SCHEMA[kind]
        self._client.create_payload_index(name, key, field_schema=schema, wait=True)

    def __enter__(self) -> RemoteIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---

    def _vectors(self, name: str, vectors: Sequence[Any]) -> np.ndarray:
        """Vectors checked against the collection's dimension (refreshed once on a mismatch)."""
        dim, _ = self._cached_meta(name)
        try:
            return as_matrix(vectors, dim)
        except DimensionMismatch:
            self._meta.pop(name, None)
            dim, _ = self._cached_meta(name)
            return as_matrix(vectors, dim)

    def _search_params(self, name: str, exact: bool) -> models.SearchParams | None:
        if self._is_local:
            return None  # local mode is always exact and warns on every call with params
        _, settings = self._cached_meta(name)
        quant = (
            models.QuantizationSearchParams(rescore=True, oversampling=2.0)
            if settings.int8_quantization
            else None
        )
        return models.SearchParams(
            hnsw_ef=settings.hnsw_ef_search, exact=exact or self._exact, quantization=quant
        )

    def _cached_meta(self, name: str) -> tuple[int, CollectionSettings]:
        meta = self._meta.get(name)
        if meta is None:
            check_collection_name(name)
            meta = self._fetch_meta(name)
        return meta

    def _fetch_meta(self, name: str) -> tuple[int, CollectionSettings]:
        with self._local_lock, self._not_found_as(name):
            config = self._client.get_collection(name).config
        dim, settings, _ = remote_admin.stored_meta(name, config)
        meta = (dim, settings)
        self._meta[name] = meta
        return meta

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
                exists = self._client.collection_exists(name) or name in self.aliases()
            except Exception:
                exists = True  # cannot tell: report the original failure
            if not exists:
                self._meta.pop(name, None)
                raise CollectionNotFound(f"collection {name!r} does not exist") from exc
            raise
