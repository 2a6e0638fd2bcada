"""`IndexOps`: the synchronous index side of `IndexService`, run on its worker threads.

Resolves names (aliases) once per request, creates collections with this server's model
provenance, refuses another model's vectors, and maps index errors to the domain errors of
`serving/errors.py` in one place (`_errors`):

    CollectionNotFound, AliasNotFound, PointNotFound -> NotFound
    CollectionExists -> AlreadyExists;  ProvenanceMismatch -> FailedPrecondition
    DimensionMismatch, BadFilter, ValueError -> InvalidInput
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

from clipserve.index.base import (
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    CollectionSettings,
    DimensionMismatch,
    Filter,
    HasId,
    Hit,
    Point,
    PointNotFound,
    Provenance,
    ProvenanceMismatch,
    VectorIndex,
    check_model,
)
from clipserve.index.ids import canonical_id
from clipserve.serving.bundle import Manifest
from clipserve.serving.config import COLLECTION_RULE, ServerConfig, is_valid_collection_name
from clipserve.serving.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NotFound,
)


class IndexOps:
    def __init__(self, index: VectorIndex, manifest: Manifest, config: ServerConfig) -> None:
        self.index = index
        self.manifest = manifest
        self.config = config

    # -- names --------------------------------------------------------------------------------

    def name(self, collection: str) -> str:
        """The request's collection name (the default when empty), checked."""
        if not collection:
            return self.config.collection
        if not is_valid_collection_name(collection):
            raise InvalidInput(
                f"collection {collection[:80]!r} is not a valid name: {COLLECTION_RULE}"
            )
        return collection

    def resolve(self, collection: str) -> str:
        """The collection a request's `collection` (a name or an alias) means now. Resolved
        once per request, so an alias switching mid-request cannot mix two collections."""
        name = self.name(collection)
        with self._errors(name):
            return self.index.resolve(name)

    # -- collections and provenance -----------------------------------------------------------

    def provenance_for(self, settings: CollectionSettings) -> Provenance:
        m = self.manifest
        return Provenance(m.version, m.model_name, m.embed_dim, settings.vector_source)

    def create(
        self, name: str, settings: CollectionSettings, exist_ok: bool = False
    ) -> CollectionInfo:
        name = self.name(name)
        with self._errors(name):
            try:
                return self.index.create_collection(
                    name, self.manifest.embed_dim, settings, self.provenance_for(settings)
                )
            except CollectionExists:
                if not exist_ok:
                    raise
                collection = self.index.resolve(name)
                check_model(collection, self.index.provenance(collection), self.manifest.version)
                return self.index.collection_info(collection)

    def writable(self, collection: str) -> tuple[str, str, bool]:
        """(collection, its vector_source, whether it must be created) for a write by this
        server's model. Nothing is created here, so a rejected request leaves no trace;
        FailedPrecondition when another model made the collection."""
        name = self.name(collection)
        try:
            resolved = self.resolve(name)
        except NotFound:
            return name, "content", True
        prov = self._provenance(resolved)
        self._check(resolved, prov, self.manifest.version)
        return resolved, prov.vector_source if prov is not None else "content", False

    def model_version(self, name: str) -> str:
        """The model version of collection `name`'s vectors (this server's if unrecorded)."""
        prov = self._provenance(name)
        return prov.model_version if prov is not None else self.manifest.version

    def check_model(self, name: str) -> None:
        """FailedPrecondition unless this server's model made collection `name`'s vectors."""
        self._check(name, self._provenance(name), self.manifest.version)

    def check_vector_model(self, name: str, version: str) -> None:
        """FailedPrecondition if model `version` did not make `name`'s vectors ("" = the
        caller does not say: accepted)."""
        if version:
            self._check(name, self._provenance(name), version)

    def list_all(self) -> list[CollectionInfo]:
        with self._errors(""):
            return self.index.list_collections()

    def info(self, name: str) -> CollectionInfo:
        with self._errors(name):
            return self.index.collection_info(name)

    def drop(self, name: str) -> None:
        name = self.name(name)
        with self._errors(name):
            self.index.drop_collection(name)

    def set_alias(self, alias: str, collection: str) -> str:
        if not alias or not is_valid_collection_name(alias):
            raise InvalidInput(f"alias {alias[:80]!r} is not a valid name: {COLLECTION_RULE}")
        name = self.name(collection)
        with self._errors(name):
            return self.index.set_alias(alias, name) or ""

    # -- points -------------------------------------------------------------------------------

    def write(self, name: str, points: Sequence[Point], create: bool = False) -> None:
        """Upsert; `create`: make the collection first (with this model's provenance)."""
        if create:
            self.create(name, CollectionSettings(), exist_ok=True)
        with self._errors(name):
            self.index.upsert(name, points)

    def search(
        self, name: str, vector: np.ndarray, limit: int, filter: Filter | None, *,
        offset: int = 0, score_threshold: float | None = None, exact: bool = False,
    ) -> list[Hit]:  # fmt: skip
        with self._errors(name):
            return self.index.search(name, vector, limit, filter, offset=offset,
                                     score_threshold=score_threshold, exact=exact)  # fmt: skip

    def retrieve(self, name: str, ids: Sequence[str], with_vectors: bool = True) -> list[Point]:
        ids = [self._id(i, "ids") for i in ids]
        with self._errors(name):
            return self.index.retrieve(name, ids, with_vectors=with_vectors)

    def delete(self, name: str, ids: Sequence[str] | None, filter: Filter | None) -> None:
        if ids is not None:
            ids = [self._id(i, "ids") for i in ids]
        with self._errors(name):
            self.index.delete(name, ids, filter)

    def count(self, name: str, filter: Filter | None) -> int:
        with self._errors(name):
            return self.index.count(name, filter)

    def scroll(self, name: str, filter: Filter | None, limit: int, token: str,
               with_vectors: bool) -> tuple[list[Point], str]:  # fmt: skip
        with self._errors(name):
            points, nxt = self.index.scroll(name, filter, limit, token or None, with_vectors)
        return points, nxt or ""

    def point_vector(self, name: str, point_id: str) -> tuple[str, np.ndarray]:
        """(canonical id, stored unit vector) of a point; NotFound if it is not there."""
        pid = self._id(point_id, "point_id")
        found = self.retrieve(name, [pid])
        if not found:
            raise NotFound(f"point {pid} is not in collection {name!r}")
        vec = np.asarray(found[0].vector, dtype=np.float32)
        return pid, vec / max(float(np.linalg.norm(vec)), 1e-12)

    @staticmethod
    def without(point_id: str, filter: Filter | None) -> Filter:
        """`filter` AND "not the point itself" (for searches around a stored point)."""
        return Filter(must=(filter,) if filter is not None else (), must_not=(HasId((point_id,)),))

    # -- internals ----------------------------------------------------------------------------

    def _provenance(self, name: str) -> Provenance | None:
        with self._errors(name):
            return self.index.provenance(name)

    @staticmethod
    def _check(name: str, stored: Provenance | None, version: str) -> None:
        try:
            check_model(name, stored, version)
        except ProvenanceMismatch as exc:
            raise FailedPrecondition(str(exc)) from None

    @staticmethod
    def _id(point_id: str, what: str) -> str:
        try:
            return canonical_id(point_id)
        except ValueError as exc:
            raise InvalidInput(f"{what}: {exc}") from None

    @contextlib.contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        try:
            yield
        except PointNotFound as exc:
            raise NotFound(str(exc)) from None
        except CollectionNotFound:
            raise NotFound(f"collection or alias {name!r} does not exist") from None
        except CollectionExists as exc:
            raise AlreadyExists(str(exc)) from None
        except ProvenanceMismatch as exc:
            raise FailedPrecondition(str(exc)) from None
        except (DimensionMismatch, ValueError) as exc:  # BadFilter is a ValueError
            raise InvalidInput(f"collection {name!r}: {exc}" if name else str(exc)) from None
