"""Where ingest sends items: an in-process model and index (`LocalTarget`) or a running
server (`ServerTarget`). Both take `UpsertItem`s in two steps so the pipeline can overlap
them: `prepare` (local: embed; server: build the request) and `write` (local: write the
points; server: the Upsert call, which embeds and writes there). Failures become `BadInput`
(the items are at fault: the pipeline isolates and rejects them), `Transient` (retried) or
propagate unchanged (fatal: e.g. the collection was made by another model)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import grpc
import numpy as np

from clipserve.index.ingest.retry import BadInput, Transient
from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.serving.errors import BackendUnavailable, InvalidInput, Overloaded
from clipserve.serving.search.index_service import UpsertItem

T = TypeVar("T")

TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})  # fmt: skip


class Target(Protocol):
    collection: str
    model_version: str
    max_batch: int

    def prepare(self, items: Sequence[UpsertItem]) -> Any: ...

    def write(self, prepared: Any) -> int:
        """Write; returns the number of points written."""

    def count(self) -> int: ...

    def close(self) -> None: ...


class LocalTarget:
    """The bundle's model in this process (ONNX Runtime) and the index opened here, through
    the server's own `IndexService`, so stored points are exactly what Upsert would store."""

    def __init__(
        self, config: Any, collection: str, settings: Any = None, index: Any = None
    ) -> None:
        """`index`: an index already open in this process (borrowed: not closed here);
        by default the one `config` names is opened (and closed by `close`)."""
        from clipserve.index.factory import open_index
        from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
        from clipserve.serving.bundle import load_manifest
        from clipserve.serving.embedding.tokenizer import ClipTokenizer
        from clipserve.serving.search.index_service import IndexService
        from clipserve.serving.service import EmbeddingService

        manifest = load_manifest(config.bundle)
        backend = OnnxRuntimeBackend(config.bundle, manifest, providers=config.provider_list,
                                     intra_op_threads=config.intra_op_threads)  # fmt: skip
        if index is None:
            index = open_index(path=config.index_path, url=config.qdrant_url,
                               api_key=config.qdrant_api_key)  # fmt: skip
            owned: Any = index
        else:
            owned = _Borrowed(index)
        tokenizer = ClipTokenizer.from_bundle(config.bundle, manifest)
        self.embedder = EmbeddingService(config, manifest, backend, tokenizer, owned)
        self.service = IndexService(config, self.embedder, index)
        self.index = index
        self.collection = collection
        self.model_version = manifest.version
        self.max_batch = config.max_batch
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        if settings is not None:
            self.create(settings)

    def create(self, settings: Any) -> None:
        """Create the target collection with `settings` unless it exists (made by this model)."""
        self._call(self.service.create_collection(self.collection, settings, exist_ok=True))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def prepare(self, items: Sequence[UpsertItem]) -> Any:
        with _local_errors():
            return self._call(self.service.prepare(self.collection, items))

    def write(self, prepared: Any) -> int:
        with _local_errors():
            self._call(self.service.write(prepared))
        return len(prepared.points)

    def count(self) -> int:
        return int(self._call(self.service.count(self.collection)))

    def close(self) -> None:
        self._call(self.embedder.aclose())  # stop the batchers on their own loop first
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self.service.close()
        self.embedder.close()  # closes the backend and the index


class _Borrowed:
    """An index lent by its owner: usable, but `close()` leaves it open."""

    def __init__(self, index: Any) -> None:
        self._index = index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _local_errors() -> Iterator[None]:
    try:
        yield
    except InvalidInput as exc:
        raise BadInput(str(exc)) from exc
    except (Overloaded, BackendUnavailable) as exc:
        raise Transient(str(exc)) from exc


class ServerTarget:
    """A running clipserve server: Upsert calls carrying the items (it embeds and writes)."""

    def __init__(self, address: str, collection: str, timeout_s: float = 120.0,
                 settings: Any = None) -> None:  # fmt: skip
        from clipserve.serving.client import ClipServeClient

        self.client = ClipServeClient(address, timeout_s=timeout_s)
        self.client.wait_ready(timeout_s=30)
        info = self.client.info()
        self.model_version = info.model_version
        self.max_batch = info.limits.max_batch
        self.collection = collection or info.default_collection
        if settings is not None:
            with contextlib.suppress(grpc.RpcError):
                self.client.create_collection(self.collection, settings)

    def prepare(self, items: Sequence[UpsertItem]) -> pb.UpsertRequest:
        from clipserve.serving.convert import payload_to_proto

        request = pb.UpsertRequest(collection=self.collection)
        for it in items:
            msg = pb.UpsertItem(payload=payload_to_proto(it.payload), caption=it.caption or "")
            if it.content is not None and it.content.text is not None:
                msg.content.text = it.content.text
            elif it.content is not None and it.content.image is not None:
                msg.content.image = it.content.image
            if it.vector is not None:
                msg.vector.values.extend(np.asarray(it.vector, dtype=np.float32).tolist())
            request.items.append(msg)
        return request

    def write(self, prepared: pb.UpsertRequest) -> int:
        try:
            resp = self.client.stub.Upsert(prepared, timeout=self.client.timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code in TRANSIENT_CODES:
                raise Transient(f"{code.name}: {exc.details()}") from exc  # type: ignore[attr-defined]
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise BadInput(exc.details()) from exc  # type: ignore[attr-defined]
            raise
        return len(set(resp.ids))

    def count(self) -> int:
        return self.client.count(collection=self.collection)

    def close(self) -> None:
        self.client.close()
