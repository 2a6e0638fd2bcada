"""`IndexService`: the index operations of the server (Upsert, Query and the collection API).

It sits beside `EmbeddingService` and takes it for vectors: every text or image is embedded
through `EmbeddingService.embed`, so batching, limits and truncation are the embedding path's.
This layer adds what belongs to the index: which collection (aliases resolved), which vector
an item stores (the collection's `vector_source`), model provenance (vectors of another model
are refused), and the index calls, run on their own worker threads. It knows nothing about
protobuf; index errors become the domain errors of `serving/errors.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np

from clipserve.index.base import (
    CollectionInfo,
    CollectionSettings,
    Filter,
    Hit,
    Point,
    VectorIndex,
)
from clipserve.index.ids import canonical_id, content_id
from clipserve.serving.config import ServerConfig
from clipserve.serving.errors import FailedPrecondition, InvalidInput, Overloaded
from clipserve.serving.search.dedup import DedupResult, find_duplicates
from clipserve.serving.search.index_ops import IndexOps
from clipserve.serving.search.page_token import decode_page_token, encode_page_token
from clipserve.serving.search.vectors import check_vector, mmr, pool
from clipserve.serving.service import Content, EmbeddingService

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TOP_K = 10
# Payload keys for re-indexing (README "Re-indexing"): the image file, a text item's text.
SOURCE_KEY = "_source"
TEXT_KEY = "_text"


@dataclass(frozen=True)
class UpsertItem:
    """One item to store. `content` is the item itself (its id derives from it); `caption`
    is an image's caption (used by text/pooled collections and stored for re-indexing);
    `vector` a precomputed vector (then `content` only names the item); `id` overrides the
    content-derived id."""

    content: Content | None
    payload: dict[str, Any] = field(default_factory=dict)
    caption: str | None = None
    vector: np.ndarray | None = None
    id: str | None = None


@dataclass(frozen=True)
class Prepared:
    """Points ready to write (embedded, ids derived), and where they go."""

    collection: str
    points: list[Point]
    ids: list[str]  # one per request item, in order (duplicates collapse to one point)
    model_version: str
    create: bool = False  # the collection does not exist yet: the write creates it
    truncations: list[tuple[int, int, int]] = field(default_factory=list)  # (item, orig, kept)


@dataclass(frozen=True)
class Mmr:
    diversity: float  # 0 = pure relevance .. 1 = pure diversity
    candidates: int = 0  # 0 = 4 * top_k


@dataclass(frozen=True)
class QuerySpec:
    """One query: exactly one of content / vector / point_id / multi ((content, weight)...)."""

    collection: str = ""
    content: Content | None = None
    vector: np.ndarray | Sequence[float] | None = None
    point_id: str = ""
    multi: tuple[tuple[Content, float], ...] = ()
    top_k: int | None = None
    filter: Filter | None = None
    score_threshold: float | None = None
    offset: int = 0
    page_token: str = ""
    mmr: Mmr | None = None
    truncate: bool = False
    exact: bool = False
    vector_model_version: str = ""


@dataclass(frozen=True)
class GetResult:
    points: list[Point]
    missing_ids: list[str]
    model_version: str


@dataclass(frozen=True)
class QueryResult:
    hits: list[Hit]
    collection: str  # the collection that answered (an alias resolved)
    model_version: str  # the model that made its vectors
    next_page_token: str = ""
    query_truncated: bool = False


class IndexService:
    """Index operations over `index`, embedding through `embedder` (whose manifest is the
    model this server writes and queries with). Does not own `embedder`; owns nothing it
    must close but its worker threads (`close()`)."""

    def __init__(self, config: ServerConfig, embedder: EmbeddingService, index: VectorIndex):
        self.config = config
        self.embedder = embedder
        self.manifest = embedder.manifest
        self._pool = ThreadPoolExecutor(4, "clipserve-index")
        self.ops = IndexOps(index, self.manifest, config)
        self._in_flight = 0

    async def ensure_default_collection(self) -> None:
        """Startup: the default collection exists (made by this model) or is created."""
        name, _, create = await self._run(self.ops.writable, "")
        if create:
            await self._run(self.ops.create, name, CollectionSettings(), True)

    # -- writes -----------------------------------------------------------------------------

    async def upsert(
        self,
        collection: str,
        items: Sequence[UpsertItem],
        *,
        truncate: bool = False,
        vector_model_version: str = "",
    ) -> Prepared:
        """Embed and store `items` (see `prepare` and `write`)."""
        async with self._admit():
            prepared = await self._prepare(collection, items, truncate, vector_model_version)
            await self._run(self.ops.write, prepared.collection, prepared.points, prepared.create)
            return prepared

    async def prepare(
        self,
        collection: str,
        items: Sequence[UpsertItem],
        *,
        truncate: bool = False,
        vector_model_version: str = "",
    ) -> Prepared:
        """The embedding half of `upsert`: validate, embed, derive ids. Nothing is written;
        bulk ingest overlaps this with `write` of the previous batch."""
        async with self._admit():
            return await self._prepare(collection, items, truncate, vector_model_version)

    async def write(self, prepared: Prepared) -> None:
        """The writing half of `upsert`: durable when it returns."""
        async with self._admit():
            await self._run(self.ops.write, prepared.collection, prepared.points, prepared.create)

    # -- reads ------------------------------------------------------------------------------

    async def query(self, spec: QuerySpec) -> QueryResult:
        """Nearest stored points to the spec's text, image, vector, point or weighted parts."""
        async with self._admit():
            k = self._top_k(spec.top_k)
            name, offset = await self._run(self._paging, spec)
            if spec.mmr is not None and offset:
                raise InvalidInput("mmr: diversified results do not page; drop offset/page_token")
            vec, filter, truncated = await self._query_vector(name, spec)
            limit = (
                k
                if spec.mmr is None
                else min(self.config.max_top_k, max(k, spec.mmr.candidates or 4 * k))
            )
            hits = await self._run(
                functools.partial(self.ops.search, offset=offset, exact=spec.exact,
                                  score_threshold=spec.score_threshold),
                name, vec, limit, filter,
            )  # fmt: skip
            token = ""
            if spec.mmr is not None:
                hits = await self._run(self._diversify, name, vec, hits, k, spec.mmr.diversity)
            elif len(hits) == k:
                token = encode_page_token(name, offset + k)
            version = await self._run(self.ops.model_version, name)
            return QueryResult(hits, name, version, token, truncated)

    async def get(self, collection: str, ids: Sequence[str], with_vectors: bool) -> GetResult:
        """Points by id, in request order; unknown ids are listed in `missing_ids`."""
        async with self._admit():
            if len(ids) > self.config.max_top_k:
                raise InvalidInput(
                    f"request has {len(ids)} ids; the limit is {self.config.max_top_k}"
                )
            name = await self._run(self.ops.resolve, collection)
            points = await self._run(self.ops.retrieve, name, ids, with_vectors)
            found = {p.id for p in points}
            wanted = [canonical_id(i) for i in ids]  # valid: retrieve checked them
            missing = [i for i in dict.fromkeys(wanted) if i not in found]
            return GetResult(points, missing, await self._run(self.ops.model_version, name))

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        async with self._admit():
            name = await self._run(self.ops.resolve, collection)
            return await self._run(self.ops.count, name, filter)

    async def scroll(
        self, collection: str, filter: Filter | None, limit: int, page_token: str,
        with_vectors: bool,
    ) -> tuple[list[Point], str]:  # fmt: skip
        """A page in id order and the next page's token ("" after the last page)."""
        async with self._admit():
            limit = limit or 100
            if not 1 <= limit <= self.config.max_top_k:
                raise InvalidInput(f"limit is {limit}; it must be in [1, {self.config.max_top_k}]")
            name = await self._run(self.ops.resolve, collection)
            return await self._run(self.ops.scroll, name, filter, limit, page_token, with_vectors)

    async def delete(
        self, collection: str, ids: Sequence[str] | None, filter: Filter | None
    ) -> str:
        """Delete by ids, by filter, or the ids that match the filter; returns the collection."""
        async with self._admit():
            if not ids and filter is None:
                raise InvalidInput("delete: give ids, a filter, or both")
            name = await self._run(self.ops.resolve, collection)
            await self._run(self.ops.delete, name, list(ids) if ids else None, filter)
            return name

    # -- collections ------------------------------------------------------------------------

    async def list_collections(self) -> list[CollectionInfo]:
        return await self._run(self.ops.list_all)

    async def create_collection(
        self, name: str, settings: CollectionSettings, *, exist_ok: bool = False
    ) -> CollectionInfo:
        """A new collection recording this server's model as its provenance."""
        if not name:
            raise InvalidInput("create: the collection needs a name")
        return await self._run(self.ops.create, name, settings, exist_ok)

    async def drop_collection(self, name: str) -> None:
        if not name:
            raise InvalidInput("drop: name the collection")
        await self._run(self.ops.drop, name)

    async def set_alias(self, alias: str, collection: str) -> str:
        """Point `alias` at `collection` atomically; returns the previous collection or ""."""
        if not collection:
            raise InvalidInput("set_alias: name the collection")
        return await self._run(self.ops.set_alias, alias, collection)

    async def dedup(
        self, collection: str, threshold: float, filter: Filter | None, max_groups: int
    ) -> DedupResult:
        """Groups of points with cosine similarity >= `threshold` to the group's first point."""
        if not 0.0 < threshold <= 1.0:
            raise InvalidInput(f"threshold is {threshold}; it must be in (0, 1]")
        async with self._admit():
            name = await self._run(self.ops.resolve, collection)
            return await self._run(
                find_duplicates, self.ops, name, threshold, filter, max_groups,
                self.config.max_top_k,
            )  # fmt: skip

    def _top_k(self, top_k: int | None) -> int:
        k = min(DEFAULT_TOP_K, self.config.max_top_k) if top_k is None else top_k
        if not 1 <= k <= self.config.max_top_k:
            raise InvalidInput(f"top_k is {k}; it must be in [1, {self.config.max_top_k}]")
        return k

    def _paging(self, spec: QuerySpec) -> tuple[str, int]:
        """(collection, offset): a page token pins the collection its first page came from,
        so paging through an alias never mixes two collections."""
        if spec.page_token:
            return decode_page_token(spec.page_token)
        return self.ops.resolve(spec.collection), spec.offset

    async def _query_vector(
        self, name: str, spec: QuerySpec
    ) -> tuple[np.ndarray, Filter | None, bool]:
        """The query vector, the filter to search with (a point query leaves itself out), and
        whether the query text was truncated."""
        given = [spec.content is not None, spec.vector is not None, bool(spec.point_id),
                 bool(spec.multi)]  # fmt: skip
        if sum(given) != 1:
            raise InvalidInput(
                "query: set exactly one of text, image or vector (or point_id, multi)"
            )
        if spec.vector is not None:
            vec = check_vector(spec.vector, self.manifest.embed_dim, "query")
            await self._run(self.ops.check_vector_model, name, spec.vector_model_version)
            return vec, spec.filter, False
        if spec.point_id:
            pid, vec = await self._run(self.ops.point_vector, name, spec.point_id)
            return vec, self.ops.without(pid, spec.filter), False
        await self._run(self.ops.check_model, name)
        if spec.content is not None:
            _check_query_content(spec.content)
            try:
                vectors, cut = await self.embed([spec.content], truncate=spec.truncate)
                return vectors[0], spec.filter, bool(cut)
            except InvalidInput as exc:
                raise InvalidInput(str(exc).replace("input 0: ", "query: ", 1)) from None
        weights = [w for _, w in spec.multi]
        for j, (c, w) in enumerate(spec.multi):
            if not (w > 0 and np.isfinite(w)):
                raise InvalidInput(f"multi part {j}: weight is {w}; it must be > 0")
            if (c.text is None) == (c.image is None):
                raise InvalidInput(f"multi part {j}: set exactly one of text or image")
        try:
            vectors, cut = await self.embed([c for c, _ in spec.multi], truncate=spec.truncate)
        except InvalidInput as exc:
            raise InvalidInput(str(exc).replace("input ", "multi part ", 1)) from None
        return pool(vectors, weights), spec.filter, bool(cut)

    def _diversify(
        self, name: str, query: np.ndarray, hits: list[Hit], k: int, diversity: float
    ) -> list[Hit]:
        if not 0.0 <= diversity <= 1.0:
            raise InvalidInput(f"mmr.diversity is {diversity}; it must be in [0, 1]")
        points = self.ops.retrieve(name, [h.id for h in hits])
        vectors = {p.id: p.vector for p in points}
        kept = [h for h in hits if h.id in vectors]  # a point deleted since the search
        if not kept:
            return []
        order = mmr(query, np.stack([vectors[h.id] for h in kept]), k, diversity)
        return [kept[i] for i in order]

    # -- internals ----------------------------------------------------------------------------

    async def _prepare(
        self,
        collection: str,
        items: Sequence[UpsertItem],
        truncate: bool,
        vector_model_version: str,
    ) -> Prepared:
        cfg = self.config
        if not items:
            raise InvalidInput(f"request has no items; send 1 to {cfg.max_batch}")
        if len(items) > cfg.max_batch:
            raise InvalidInput(f"request has {len(items)} items; the limit is {cfg.max_batch}")
        name, source, create = await self._run(self.ops.writable, collection)
        has_vectors = [it.vector is not None for it in items]
        if any(has_vectors):
            if not all(has_vectors):
                raise InvalidInput("items: give a precomputed vector for every item or none")
            if not vector_model_version:
                raise InvalidInput(
                    "vector_model_version is required with precomputed vectors: "
                    f"the version of the model that made them (this server's: {self.manifest.version})"
                )
            if not create:
                await self._run(self.ops.check_vector_model, name, vector_model_version)
            if vector_model_version != self.manifest.version:
                raise FailedPrecondition(
                    f"collection {name!r} takes vectors of model version {self.manifest.version!r} "
                    f"(this server's); these come from model version {vector_model_version!r}"
                )
        if all(has_vectors):
            dim = self.manifest.embed_dim
            vectors = np.stack(
                [check_vector(it.vector, dim, f"item {i}") for i, it in enumerate(items)]
            )
            truncations: list[tuple[int, int, int]] = []
        else:
            vectors, truncations = await self._embed_items(items, source, truncate)
        ids = [_item_id(it, i) for i, it in enumerate(items)]
        # The same item twice in one request is one point: the last payload wins.
        points = {
            pid: Point(pid, vec, _stored_payload(it))
            for pid, vec, it in zip(ids, vectors, items, strict=True)
        }
        return Prepared(
            name, list(points.values()), ids, self.manifest.version, create, truncations
        )

    async def _embed_items(
        self, items: Sequence[UpsertItem], source: str, truncate: bool
    ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """One embed call for every content and caption the collection's `vector_source`
        needs, then each item's stored vector from its rows."""
        contents: list[Content] = []
        rows: list[tuple[int, ...]] = []
        for i, it in enumerate(items):
            wanted = _sources_for(it, source, i)
            rows.append(tuple(range(len(contents), len(contents) + len(wanted))))
            contents.extend(wanted)
        embedded, cut = await self.embed(contents, truncate=truncate)
        owner = {row: i for i, r in enumerate(rows) for row in r}
        truncations = [(owner[row], original, kept) for row, original, kept in cut]
        return np.stack([pool(embedded[list(r)]) for r in rows]), truncations

    async def embed(
        self, contents: Sequence[Content], *, truncate: bool = False
    ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """Vectors from the embedding path, float32 [N, dim] in input order, and the
        (input, original tokens, tokens kept) of every text it truncated."""
        if truncate:
            if "truncate" not in inspect.signature(self.embedder.embed).parameters:
                raise InvalidInput("truncate: this server's embedding path cannot truncate yet")
            result = await self.embedder.embed(contents, truncate=True)  # type: ignore[call-arg]
        else:
            result = await self.embedder.embed(contents)
        return result.vectors, list(getattr(result, "truncations", ()))

    @contextlib.asynccontextmanager
    async def _admit(self) -> AsyncIterator[None]:
        if self._in_flight >= self.config.max_in_flight:
            raise Overloaded(
                f"server busy: {self._in_flight} index requests in flight "
                f"(max_in_flight={self.config.max_in_flight}); retry with backoff"
            )
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on an index thread; through the embedding service's `index_call` when
        it has one, so index failures count in the server's health like its own calls."""
        index_call = getattr(self.embedder, "index_call", None)
        if index_call is not None:
            return cast(T, await index_call(fn, *args))
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _check_query_content(c: Content) -> None:
    if (c.text is None) == (c.image is None):
        raise InvalidInput("query: set exactly one of text or image")


def _sources_for(item: UpsertItem, source: str, i: int) -> list[Content]:
    """What to embed for `item` in a collection storing `source` vectors."""
    c = item.content
    if c is None:
        raise InvalidInput(f"input {i}: set exactly one of text or image")
    caption = Content(text=item.caption) if item.caption else None
    if source == "content":
        return [c]
    if source == "text":
        if c.text is not None:
            return [c]
        if caption is None:
            raise InvalidInput(f"input {i}: this collection stores caption vectors; add a caption")
        return [caption]
    if c.image is None and source in ("image", "pooled"):
        raise InvalidInput(f"input {i}: this collection stores {source} vectors; send an image")
    if source == "image":
        return [c]
    if caption is None:
        raise InvalidInput(f"input {i}: this collection pools image and caption; add a caption")
    return [c, caption]


def _item_id(item: UpsertItem, i: int) -> str:
    if item.id:
        try:
            return canonical_id(item.id)
        except ValueError as exc:
            raise InvalidInput(f"item {i}: {exc}") from None
    c = item.content
    if c is None or (c.text is None) == (c.image is None):
        raise InvalidInput(f"input {i}: set exactly one of text or image (or an explicit id)")
    return content_id(c.kind, c.data)


def _stored_payload(item: UpsertItem) -> dict[str, Any]:
    """The caller's payload plus an image's `caption`, which a re-index embeds again. The
    item itself is found again through `_source` (an image file's path) or `_text` (a text
    item's text), which the client sets in the payload; `clipserve index` does (README)."""
    payload = dict(item.payload)
    if item.caption:
        payload.setdefault("caption", item.caption)
    return payload
