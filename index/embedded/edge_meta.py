"""On-disk description of one embedded collection, and the engine config it implies.

    <root>/<collection>/collection.json   {"format": 2, "dim": 512, "distance": "cosine",
                                           "shard": "shard", "settings": {...},
                                           "provenance": {...} | null}
    <root>/<collection>/<shard>/          the EdgeShard: WAL, segments, payload indexes

Format 1 files (dim only) still load, with default settings and no provenance. `shard` names the
live shard directory: a background rebuild writes a new one and switches this field atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import qdrant_edge as qe

from clipserve.index.collections import CollectionSettings, Provenance
from clipserve.index.jsonfile import read_json, write_json_atomic

META_FILE = "collection.json"
_FORMAT = 2

_SCHEMA = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}


@dataclass(frozen=True)
class EdgeMeta:
    dim: int
    settings: CollectionSettings
    provenance: Provenance | None
    shard: str = "shard"


def is_collection(cdir: Path) -> bool:
    return (cdir / META_FILE).exists()


def read_meta(cdir: Path) -> EdgeMeta:
    data = read_json(cdir / META_FILE)
    if data.get("format") not in (1, _FORMAT) or data.get("distance") != "cosine":
        raise ValueError(f"collection {cdir.name!r}: unsupported metadata {data}")
    prov = data.get("provenance")
    return EdgeMeta(
        dim=int(data["dim"]),
        settings=CollectionSettings.from_dict(data.get("settings") or {}),
        provenance=Provenance.from_dict(prov) if prov else None,
        shard=str(data.get("shard", "shard")),
    )


def write_meta(cdir: Path, meta: EdgeMeta) -> None:
    write_json_atomic(
        cdir / META_FILE,
        {
            "format": _FORMAT,
            "dim": meta.dim,
            "distance": "cosine",
            "shard": meta.shard,
            "settings": meta.settings.to_dict(),
            "provenance": meta.provenance.to_dict() if meta.provenance else None,
        },
    )


def edge_config(dim: int, settings: CollectionSettings) -> qe.EdgeConfig:
    """The engine config for a collection. `indexing_threshold=1` (KB) lets `optimize` build the
    HNSW graph for every segment: when it runs is decided here (hnsw_build_threshold), not by
    the engine's segment-size heuristic."""
    quant = (
        qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True)
        if settings.int8_quantization
        else None
    )
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(
            m=settings.hnsw_m,
            ef_construct=settings.hnsw_ef_construct,
            full_scan_threshold=settings.full_scan_threshold,
        ),
        quantization_config=quant,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
    )


def payload_index_op(key: str, kind: str) -> qe.UpdateOperation:
    if kind not in _SCHEMA:
        raise ValueError(f"payload index type must be one of {sorted(_SCHEMA)}, got {kind!r}")
    return qe.UpdateOperation.create_field_index(key, _SCHEMA[kind])
