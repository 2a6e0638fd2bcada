"""clipserve from Python with the generated stubs only (what any gRPC client does): Info, Embed,
Upsert with a payload, Query with a filter. `clipserve.serving.client.ClipServeClient` wraps the
same calls; this file shows the wire-level messages for client authors.

    python docs/clients/python/example.py [HOST:PORT]    (CLIPSERVE_API_KEY if required)

Prints what it does, then one line `RESULT {json}` that tests/test_deploy.py reads.
"""

from __future__ import annotations

import json
import math
import os
import sys

import grpc
from google.protobuf import json_format, struct_pb2

from clipserve.proto.v1 import clipserve_pb2 as pb
from clipserve.proto.v1 import clipserve_pb2_grpc as pb_grpc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    address = args[0] if args else os.environ.get("CLIPSERVE_ADDRESS", "127.0.0.1:50051")
    metadata = []
    if os.environ.get("CLIPSERVE_API_KEY"):
        metadata.append(("x-api-key", os.environ["CLIPSERVE_API_KEY"]))
    collection = os.environ.get("CLIPSERVE_COLLECTION", "python_example")

    # With TLS: grpc.secure_channel(address, grpc.ssl_channel_credentials(open("ca.pem", "rb").read()))
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.ClipServeStub(channel)

        info = stub.Info(pb.InfoRequest(), metadata=metadata, timeout=30)
        # 64-bit fields are plain Python ints here (JSON/JS clients see strings, see the Node example).
        print(
            f"model {info.model_name} dim {info.dim}; max_image_bytes {info.limits.max_image_bytes}"
        )

        embed = stub.Embed(
            pb.EmbedRequest(
                inputs=[
                    pb.Content(text="a small red circle"),
                    pb.Content(text="a large blue square"),
                ]
            ),
            metadata=metadata,
            timeout=30,
        )
        vector = list(embed.embeddings[0].values)
        norm = math.sqrt(sum(x * x for x in vector))
        print(f"embedded {len(embed.embeddings)} texts, dim {embed.dim}, |v| = {norm:.4f}")

        # A Struct payload: struct_pb2.Struct.update() converts a dict (nested dicts/lists too).
        payload = struct_pb2.Struct()
        payload.update({"source": "python-example", "rank": 7, "tags": ["red", "circle"]})
        upsert = stub.Upsert(
            pb.UpsertRequest(
                collection=collection,
                items=[
                    pb.UpsertItem(content=pb.Content(text="a small red circle"), payload=payload)
                ],
            ),
            metadata=metadata,
            timeout=30,
        )
        print(f"upserted ids {', '.join(upsert.ids)} into {upsert.collection}")

        query = stub.Query(
            pb.QueryRequest(
                collection=collection,
                text="a small red circle",
                top_k=2,
                filter=pb.Filter(must=[pb.FieldMatch(key="source", keyword="python-example")]),
            ),
            metadata=metadata,
            timeout=30,
        )
        hits = [
            {"id": h.id, "score": h.score, "payload": json_format.MessageToDict(h.payload)}
            for h in query.hits
        ]
        for h in hits:
            print(f"hit {h['id']} score {h['score']:.4f} payload {json.dumps(h['payload'])}")

    result = {
        "model_version": info.model_version,
        "dim": embed.dim,
        "n_embeddings": len(embed.embeddings),
        "norm": norm,
        "max_image_bytes": info.limits.max_image_bytes,
        "ids": list(upsert.ids),
        "hits": hits,
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
