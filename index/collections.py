"""What a collection is made of: its settings, the model that made its vectors, its summary.

Both backends store `CollectionSettings` and `Provenance` as the JSON of `to_dict()` (the embedded
engine in `collection.json`, a Qdrant server in the collection's metadata) and read them back
with `from_dict`, so the two describe a collection identically.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from clipserve.index.errors import DimensionMismatch, ProvenanceMismatch

PayloadType = Literal["keyword", "integer", "float", "bool"]
VectorSource = Literal["content", "image", "text", "pooled"]
PAYLOAD_TYPES: tuple[str, ...] = get_args(PayloadType)
VECTOR_SOURCES: tuple[str, ...] = get_args(VectorSource)


def _positive_int(name: str, value: object, *, zero_ok: bool = False) -> None:
    low = 0 if zero_ok else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


@dataclass(frozen=True)
class CollectionSettings:
    """How a collection indexes its vectors. Applied when the collection is created.

    Attributes:
        hnsw_m: HNSW edges per node (Qdrant's default 16).
        hnsw_ef_construct: candidates while building the graph (default 100).
        hnsw_ef_search: candidates while searching; higher = better recall, slower.
        full_scan_threshold: segments holding fewer vector kilobytes than this are scanned in
            full instead of through the graph (Qdrant's unit: KB; default 10000).
        int8_quantization: keep an int8 scalar-quantised copy of the vectors in RAM and search
            it first, rescoring the best candidates with the full vectors.
        payload_schema: (key, type) pairs: a payload index is created for each.
        vector_source: what the stored vector embeds (recorded with the provenance).
        hnsw_build_threshold: embedded engine: once a collection holds this many points that
            are not yet in its HNSW graph, a background thread builds it. 0 = never (search
            stays exact until `optimize` is called). A Qdrant server builds on its own.
    """

    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    hnsw_ef_search: int = 128
    full_scan_threshold: int = 10_000
    int8_quantization: bool = False
    payload_schema: tuple[tuple[str, PayloadType], ...] = ()
    vector_source: VectorSource = "content"
    hnsw_build_threshold: int = 20_000

    def __post_init__(self) -> None:
        _positive_int("hnsw_m", self.hnsw_m)
        _positive_int("hnsw_ef_construct", self.hnsw_ef_construct)
        _positive_int("hnsw_ef_search", self.hnsw_ef_search)
        _positive_int("full_scan_threshold", self.full_scan_threshold, zero_ok=True)
        _positive_int("hnsw_build_threshold", self.hnsw_build_threshold, zero_ok=True)
        if not isinstance(self.int8_quantization, bool):
            raise ValueError(f"int8_quantization must be a bool, got {self.int8_quantization!r}")
        if self.vector_source not in VECTOR_SOURCES:
            raise ValueError(
                f"vector_source must be one of {VECTOR_SOURCES}, got {self.vector_source!r}"
            )
        schema = tuple(tuple(pair) for pair in self.payload_schema)
        keys: set[str] = set()
        for pair in schema:
            if len(pair) != 2:
                raise ValueError(f"payload_schema entries are (key, type) pairs, got {pair!r}")
            key, kind = pair
            if not isinstance(key, str) or not key:
                raise ValueError(f"payload_schema key must be a non-empty string, got {key!r}")
            if kind not in PAYLOAD_TYPES:
                raise ValueError(
                    f"payload_schema type for {key!r} must be one of {PAYLOAD_TYPES}, got {kind!r}"
                )
            if key in keys:
                raise ValueError(f"payload_schema names {key!r} twice")
            keys.add(key)
        object.__setattr__(self, "payload_schema", schema)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["payload_schema"] = [list(p) for p in self.payload_schema]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "payload_schema" in known:
            known["payload_schema"] = tuple(tuple(p) for p in known["payload_schema"])
        return cls(**known)


def utc_now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Provenance:
    """The model that made a collection's vectors.

    `model_version` is the bundle's version id: two bundles with equal versions produce the
    same vector space. `created_at` (RFC 3339, UTC) is filled in when the collection is created
    if left empty.
    """

    model_version: str
    model_name: str
    dim: int
    vector_source: VectorSource = "content"
    created_at: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model_version, str) or not self.model_version:
            raise ValueError(
                f"model_version must be a non-empty string, got {self.model_version!r}"
            )
        if not isinstance(self.model_name, str):
            raise ValueError(f"model_name must be a string, got {self.model_name!r}")
        _positive_int("dim", self.dim)
        if self.vector_source not in VECTOR_SOURCES:
            raise ValueError(
                f"vector_source must be one of {VECTOR_SOURCES}, got {self.vector_source!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class CollectionInfo:
    """A collection as listed: its point count, what made it, how it indexes, its aliases."""

    name: str
    count: int
    provenance: Provenance | None
    settings: CollectionSettings
    aliases: tuple[str, ...] = field(default=())


def creation_provenance(
    name: str, dim: int, settings: CollectionSettings, provenance: Provenance | None
) -> Provenance | None:
    """`provenance` checked against the new collection and stamped with its creation time."""
    if provenance is None:
        return None
    if provenance.dim != dim:
        raise DimensionMismatch(
            f"collection {name!r}: provenance says dim {provenance.dim}, asked for {dim}"
        )
    if provenance.vector_source != settings.vector_source:
        raise ValueError(
            f"collection {name!r}: provenance vector_source {provenance.vector_source!r} differs "
            f"from the settings' {settings.vector_source!r}"
        )
    if provenance.created_at:
        return provenance
    return Provenance(**{**provenance.to_dict(), "created_at": utc_now_rfc3339()})


def check_model(name: str, stored: Provenance | None, model_version: str) -> None:
    """Raise ProvenanceMismatch when `name` was made by another model than `model_version`.

    A collection without recorded provenance (made before provenance existed, or created without
    one) accepts every model: there is nothing to compare against.
    """
    if stored is not None and stored.model_version != model_version:
        raise ProvenanceMismatch(
            f"collection {name!r} holds vectors of model version {stored.model_version!r} "
            f"({stored.model_name}); these come from model version {model_version!r}: "
            "re-index into a new collection instead of mixing vector spaces"
        )
