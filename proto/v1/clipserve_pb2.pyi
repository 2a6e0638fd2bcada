from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_UNSPECIFIED: _ClassVar[Modality]
    MODALITY_TEXT: _ClassVar[Modality]
    MODALITY_IMAGE: _ClassVar[Modality]

class VectorSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_SOURCE_UNSPECIFIED: _ClassVar[VectorSource]
    VECTOR_SOURCE_CONTENT: _ClassVar[VectorSource]
    VECTOR_SOURCE_IMAGE: _ClassVar[VectorSource]
    VECTOR_SOURCE_TEXT: _ClassVar[VectorSource]
    VECTOR_SOURCE_POOLED: _ClassVar[VectorSource]

class PayloadType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYLOAD_TYPE_UNSPECIFIED: _ClassVar[PayloadType]
    PAYLOAD_TYPE_KEYWORD: _ClassVar[PayloadType]
    PAYLOAD_TYPE_INTEGER: _ClassVar[PayloadType]
    PAYLOAD_TYPE_FLOAT: _ClassVar[PayloadType]
    PAYLOAD_TYPE_BOOL: _ClassVar[PayloadType]
MODALITY_UNSPECIFIED: Modality
MODALITY_TEXT: Modality
MODALITY_IMAGE: Modality
VECTOR_SOURCE_UNSPECIFIED: VectorSource
VECTOR_SOURCE_CONTENT: VectorSource
VECTOR_SOURCE_IMAGE: VectorSource
VECTOR_SOURCE_TEXT: VectorSource
VECTOR_SOURCE_POOLED: VectorSource
PAYLOAD_TYPE_UNSPECIFIED: PayloadType
PAYLOAD_TYPE_KEYWORD: PayloadType
PAYLOAD_TYPE_INTEGER: PayloadType
PAYLOAD_TYPE_FLOAT: PayloadType
PAYLOAD_TYPE_BOOL: PayloadType

class Content(_message.Message):
    __slots__ = ("text", "image")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("inputs", "truncate")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[Content]
    truncate: bool
    def __init__(self, inputs: _Optional[_Iterable[_Union[Content, _Mapping]]] = ..., truncate: _Optional[bool] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "modality", "truncated", "tokens", "original_tokens")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    modality: Modality
    truncated: bool
    tokens: int
    original_tokens: int
    def __init__(self, values: _Optional[_Iterable[float]] = ..., modality: _Optional[_Union[Modality, str]] = ..., truncated: _Optional[bool] = ..., tokens: _Optional[int] = ..., original_tokens: _Optional[int] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "model_version", "dim")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    model_version: str
    dim: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., model_version: _Optional[str] = ..., dim: _Optional[int] = ...) -> None: ...

class EmbedStreamRequest(_message.Message):
    __slots__ = ("id", "content", "truncate")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    content: Content
    truncate: bool
    def __init__(self, id: _Optional[int] = ..., content: _Optional[_Union[Content, _Mapping]] = ..., truncate: _Optional[bool] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class EmbedStreamResponse(_message.Message):
    __slots__ = ("id", "embedding", "error", "model_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: int
    embedding: Embedding
    error: ItemError
    model_version: str
    def __init__(self, id: _Optional[int] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class Truncation(_message.Message):
    __slots__ = ("item", "original_tokens", "tokens")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    item: int
    original_tokens: int
    tokens: int
    def __init__(self, item: _Optional[int] = ..., original_tokens: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class UpsertItem(_message.Message):
    __slots__ = ("content", "payload", "caption", "vector", "id")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    content: Content
    payload: _struct_pb2.Struct
    caption: str
    vector: Vector
    id: str
    def __init__(self, content: _Optional[_Union[Content, _Mapping]] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., caption: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "items", "truncate", "vector_model_version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    items: _containers.RepeatedCompositeFieldContainer[UpsertItem]
    truncate: bool
    vector_model_version: str
    def __init__(self, collection: _Optional[str] = ..., items: _Optional[_Iterable[_Union[UpsertItem, _Mapping]]] = ..., truncate: _Optional[bool] = ..., vector_model_version: _Optional[str] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("ids", "collection", "model_version", "truncations")
    IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATIONS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    model_version: str
    truncations: _containers.RepeatedCompositeFieldContainer[Truncation]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ..., model_version: _Optional[str] = ..., truncations: _Optional[_Iterable[_Union[Truncation, _Mapping]]] = ...) -> None: ...

class FieldMatch(_message.Message):
    __slots__ = ("key", "keyword", "integer", "boolean")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    key: str
    keyword: str
    integer: int
    boolean: bool
    def __init__(self, key: _Optional[str] = ..., keyword: _Optional[str] = ..., integer: _Optional[int] = ..., boolean: _Optional[bool] = ...) -> None: ...

class RangeCondition(_message.Message):
    __slots__ = ("key", "gt", "gte", "lt", "lte")
    KEY_FIELD_NUMBER: _ClassVar[int]
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    key: str
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, key: _Optional[str] = ..., gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class MatchAny(_message.Message):
    __slots__ = ("key", "keywords", "integers")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    INTEGERS_FIELD_NUMBER: _ClassVar[int]
    key: str
    keywords: _containers.RepeatedScalarFieldContainer[str]
    integers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key: _Optional[str] = ..., keywords: _Optional[_Iterable[str]] = ..., integers: _Optional[_Iterable[int]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("match", "range", "any", "filter", "has_id")
    MATCH_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    HAS_ID_FIELD_NUMBER: _ClassVar[int]
    match: FieldMatch
    range: RangeCondition
    any: MatchAny
    filter: Filter
    has_id: IdList
    def __init__(self, match: _Optional[_Union[FieldMatch, _Mapping]] = ..., range: _Optional[_Union[RangeCondition, _Mapping]] = ..., any: _Optional[_Union[MatchAny, _Mapping]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., has_id: _Optional[_Union[IdList, _Mapping]] = ...) -> None: ...

class IdList(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("must", "all", "should", "must_not")
    MUST_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    SHOULD_FIELD_NUMBER: _ClassVar[int]
    MUST_NOT_FIELD_NUMBER: _ClassVar[int]
    must: _containers.RepeatedCompositeFieldContainer[FieldMatch]
    all: _containers.RepeatedCompositeFieldContainer[Condition]
    should: _containers.RepeatedCompositeFieldContainer[Condition]
    must_not: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, must: _Optional[_Iterable[_Union[FieldMatch, _Mapping]]] = ..., all: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., should: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., must_not: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class WeightedContent(_message.Message):
    __slots__ = ("content", "weight")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    content: Content
    weight: float
    def __init__(self, content: _Optional[_Union[Content, _Mapping]] = ..., weight: _Optional[float] = ...) -> None: ...

class MultiQuery(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[WeightedContent]
    def __init__(self, parts: _Optional[_Iterable[_Union[WeightedContent, _Mapping]]] = ...) -> None: ...

class Mmr(_message.Message):
    __slots__ = ("diversity", "candidates")
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    diversity: float
    candidates: int
    def __init__(self, diversity: _Optional[float] = ..., candidates: _Optional[int] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("collection", "text", "image", "vector", "point_id", "multi", "top_k", "filter", "score_threshold", "offset", "page_token", "mmr", "truncate", "exact", "vector_model_version")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    POINT_ID_FIELD_NUMBER: _ClassVar[int]
    MULTI_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MMR_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    text: str
    image: bytes
    vector: Vector
    point_id: str
    multi: MultiQuery
    top_k: int
    filter: Filter
    score_threshold: float
    offset: int
    page_token: str
    mmr: Mmr
    truncate: bool
    exact: bool
    vector_model_version: str
    def __init__(self, collection: _Optional[str] = ..., text: _Optional[str] = ..., image: _Optional[bytes] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., point_id: _Optional[str] = ..., multi: _Optional[_Union[MultiQuery, _Mapping]] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., score_threshold: _Optional[float] = ..., offset: _Optional[int] = ..., page_token: _Optional[str] = ..., mmr: _Optional[_Union[Mmr, _Mapping]] = ..., truncate: _Optional[bool] = ..., exact: _Optional[bool] = ..., vector_model_version: _Optional[str] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    payload: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("hits", "model_version", "next_page_token", "collection", "query_truncated")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    model_version: str
    next_page_token: str
    collection: str
    query_truncated: bool
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., model_version: _Optional[str] = ..., next_page_token: _Optional[str] = ..., collection: _Optional[str] = ..., query_truncated: _Optional[bool] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("id", "payload", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    payload: _struct_pb2.Struct
    vector: Vector
    def __init__(self, id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "with_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("points", "missing_ids", "model_version")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    model_version: str
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ..., model_version: _Optional[str] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("collection", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ScrollRequest(_message.Message):
    __slots__ = ("collection", "filter", "limit", "page_token", "with_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter: Filter
    limit: int
    page_token: str
    with_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class ScrollResponse(_message.Message):
    __slots__ = ("points", "next_page_token")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    next_page_token: str
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PayloadField(_message.Message):
    __slots__ = ("key", "type")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    key: str
    type: PayloadType
    def __init__(self, key: _Optional[str] = ..., type: _Optional[_Union[PayloadType, str]] = ...) -> None: ...

class HnswSettings(_message.Message):
    __slots__ = ("m", "ef_construct", "ef_search", "full_scan_threshold")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCT_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    FULL_SCAN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construct: int
    ef_search: int
    full_scan_threshold: int
    def __init__(self, m: _Optional[int] = ..., ef_construct: _Optional[int] = ..., ef_search: _Optional[int] = ..., full_scan_threshold: _Optional[int] = ...) -> None: ...

class CollectionSettings(_message.Message):
    __slots__ = ("hnsw", "int8_quantization", "payload_schema", "vector_source", "hnsw_build_threshold")
    HNSW_FIELD_NUMBER: _ClassVar[int]
    INT8_QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SOURCE_FIELD_NUMBER: _ClassVar[int]
    HNSW_BUILD_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    hnsw: HnswSettings
    int8_quantization: bool
    payload_schema: _containers.RepeatedCompositeFieldContainer[PayloadField]
    vector_source: VectorSource
    hnsw_build_threshold: int
    def __init__(self, hnsw: _Optional[_Union[HnswSettings, _Mapping]] = ..., int8_quantization: _Optional[bool] = ..., payload_schema: _Optional[_Iterable[_Union[PayloadField, _Mapping]]] = ..., vector_source: _Optional[_Union[VectorSource, str]] = ..., hnsw_build_threshold: _Optional[int] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("model_version", "model_name", "dim", "vector_source", "created_at")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    model_name: str
    dim: int
    vector_source: VectorSource
    created_at: str
    def __init__(self, model_version: _Optional[str] = ..., model_name: _Optional[str] = ..., dim: _Optional[int] = ..., vector_source: _Optional[_Union[VectorSource, str]] = ..., created_at: _Optional[str] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "count", "provenance", "settings", "aliases")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    provenance: Provenance
    settings: CollectionSettings
    aliases: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., settings: _Optional[_Union[CollectionSettings, _Mapping]] = ..., aliases: _Optional[_Iterable[str]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "settings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    settings: CollectionSettings
    def __init__(self, name: _Optional[str] = ..., settings: _Optional[_Union[CollectionSettings, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionInfo
    def __init__(self, collection: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("alias", "collection")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    collection: str
    def __init__(self, alias: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("previous_collection",)
    PREVIOUS_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    previous_collection: str
    def __init__(self, previous_collection: _Optional[str] = ...) -> None: ...

class DedupRequest(_message.Message):
    __slots__ = ("collection", "threshold", "filter", "max_groups")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MAX_GROUPS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    threshold: float
    filter: Filter
    max_groups: int
    def __init__(self, collection: _Optional[str] = ..., threshold: _Optional[float] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., max_groups: _Optional[int] = ...) -> None: ...

class DuplicateGroup(_message.Message):
    __slots__ = ("ids", "min_score")
    IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    min_score: float
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., min_score: _Optional[float] = ...) -> None: ...

class DedupResponse(_message.Message):
    __slots__ = ("groups", "points_scanned")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    POINTS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[DuplicateGroup]
    points_scanned: int
    def __init__(self, groups: _Optional[_Iterable[_Union[DuplicateGroup, _Mapping]]] = ..., points_scanned: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_batch", "max_text_chars", "max_image_bytes", "max_image_pixels", "max_top_k", "max_in_flight", "context_length", "max_request_bytes", "max_batch_tokens", "max_batch_pixels", "max_inflight_pixels", "max_batch_wait_us")
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_WAIT_US_FIELD_NUMBER: _ClassVar[int]
    max_batch: int
    max_text_chars: int
    max_image_bytes: int
    max_image_pixels: int
    max_top_k: int
    max_in_flight: int
    context_length: int
    max_request_bytes: int
    max_batch_tokens: int
    max_batch_pixels: int
    max_inflight_pixels: int
    max_batch_wait_us: int
    def __init__(self, max_batch: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_in_flight: _Optional[int] = ..., context_length: _Optional[int] = ..., max_request_bytes: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_batch_pixels: _Optional[int] = ..., max_inflight_pixels: _Optional[int] = ..., max_batch_wait_us: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "dim", "image_height", "image_width", "context_length", "limits", "backend", "device", "providers", "index_kind", "default_collection", "server_version", "precision", "auth_required", "model_variant")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VARIANT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    dim: int
    image_height: int
    image_width: int
    context_length: int
    limits: Limits
    backend: str
    device: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    index_kind: str
    default_collection: str
    server_version: str
    precision: str
    auth_required: bool
    model_variant: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., dim: _Optional[int] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., context_length: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., index_kind: _Optional[str] = ..., default_collection: _Optional[str] = ..., server_version: _Optional[str] = ..., precision: _Optional[str] = ..., auth_required: _Optional[bool] = ..., model_variant: _Optional[str] = ...) -> None: ...
