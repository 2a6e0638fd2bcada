"""Collection and alias requests of `RemoteIndex`, as functions over a `QdrantClient`.

Settings and provenance are stored in the collection's metadata under "clipserve" (Qdrant
>= 1.16), as the same JSON the embedded engine keeps in collection.json; the HNSW and
quantisation settings are also applied to the server's own collection config.
"""

from __future__ import annotations

from typing import Any

from qdrant_client import QdrantClient, models

from clipserve.index.collections import CollectionSettings, Provenance

META_KEY = "clipserve"
PAYLOAD_SCHEMA = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


def create_collection(
    client: QdrantClient,
    name: str,
    dim: int,
    settings: CollectionSettings,
    provenance: Provenance | None,
    payload_indexes: bool,
) -> None:
    """Create `name` with `settings` applied and recorded, and its declared payload indexes
    (unless `payload_indexes` is False: local mode ignores them)."""
    quant = (
        models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True
            )
        )
        if settings.int8_quantization
        else None
    )
    client.create_collection(
        name,
        vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
        hnsw_config=models.HnswConfigDiff(
            m=settings.hnsw_m,
            ef_construct=settings.hnsw_ef_construct,
            full_scan_threshold=settings.full_scan_threshold,
        ),
        quantization_config=quant,
        metadata={
            META_KEY: {
                "settings": settings.to_dict(),
                "provenance": provenance.to_dict() if provenance else None,
            }
        },
    )
    if payload_indexes:
        for key, kind in settings.payload_schema:
            client.create_payload_index(name, key, field_schema=PAYLOAD_SCHEMA[kind], wait=True)


def stored_meta(
    name: str, config: models.CollectionConfig
) -> tuple[int, CollectionSettings, Provenance | None]:
    """(dim, settings, provenance) of a collection from its config; ValueError if clipserve
    cannot use it (named vectors, another distance)."""
    params = config.params.vectors
    if not isinstance(params, models.VectorParams):
        raise ValueError(f"collection {name!r} uses named vectors; clipserve needs one vector")
    if params.distance != models.Distance.COSINE:
        raise ValueError(f"collection {name!r} uses {params.distance}, clipserve needs cosine")
    stored = (config.metadata or {}).get(META_KEY) or {}
    prov = stored.get("provenance")
    return (
        params.size,
        CollectionSettings.from_dict(stored.get("settings") or {}),
        Provenance.from_dict(prov) if prov else None,
    )


def switch_alias_ops(alias: str, collection: str, previous: str | None) -> list[Any]:
    """The operations of one atomic alias switch (the server applies a request whole)."""
    ops: list[Any] = []
    if previous is not None:
        ops.append(delete_alias_op(alias))
    ops.append(
        models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
        )
    )
    return ops


def delete_alias_op(alias: str) -> models.DeleteAliasOperation:
    return models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
