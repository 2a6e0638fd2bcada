"""`clipserve query`, `clipserve collections` and `clipserve dedup`: the index API from the
command line, over a running server or an in-process one (see `cli/connect.py`).

    clipserve query "a red bicycle" --server 127.0.0.1:50051 --top-k 5 --filter split=test
    clipserve query --image cat.jpg --text "a cat" --weights 0.7,0.3 --mmr 0.5 ...
    clipserve collections list|create NAME [--vector-source pooled]|drop NAME|alias A NAME
    clipserve dedup --collection photos --threshold 0.95
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipserve.cli.connect import add_connect_args, connect, reports_errors
from clipserve.proto.v1 import clipserve_pb2 as pb

VECTOR_SOURCES = ("content", "image", "text", "pooled")


def parse_filter(specs: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE (equality; integers and true/false are typed), KEY=A|B (any of),
    KEY>=N / KEY<N ... (ranges), ANDed."""
    out: dict[str, Any] = {}
    for spec in specs:
        for op, bound in ((">=", "gte"), ("<=", "lte"), (">", "gt"), ("<", "lt")):
            if op in spec:
                key, value = spec.split(op, 1)
                out.setdefault(key, {})[bound] = float(value)
                break
        else:
            key, sep, value = spec.partition("=")
            if not sep or not key:
                raise ValueError(f"filter {spec!r}: write KEY=VALUE, KEY=A|B or KEY>=N")
            values = [_typed(v) for v in value.split("|")]
            out[key] = values if len(values) > 1 else values[0]
    return out


def _typed(value: str) -> Any:
    if value in ("true", "false"):
        return value == "true"
    try:
        return int(value)
    except ValueError:
        return value


# -- query ----------------------------------------------------------------------------------


@reports_errors("clipserve query")
def query_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipserve query", description="Search a collection.")
    p.add_argument("text", nargs="?", help="a text query")
    p.add_argument("--image", type=Path, help="an image query (with TEXT: a combined query)")
    p.add_argument("--weights", default="1,1", help="TEXT,IMAGE weights of a combined query")
    p.add_argument("--like", help="more like this: a stored point id")
    p.add_argument("--collection", default="", help="collection or alias")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--filter", action="append", default=[], help="KEY=VALUE, KEY=A|B, KEY>=N")
    p.add_argument("--threshold", type=float, help="only hits scoring >= this")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--mmr", type=float, help="diversify: 0 = relevance .. 1 = diversity")
    p.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_connect_args(p)
    args = p.parse_args(argv)
    kwargs: dict[str, Any] = dict(
        top_k=args.top_k, collection=args.collection, filter=parse_filter(args.filter) or None,
        score_threshold=args.threshold, offset=args.offset, mmr=args.mmr, exact=args.exact,
    )  # fmt: skip
    image = args.image.read_bytes() if args.image else None
    if args.text is not None and image is not None:
        wt, wi = (float(w) for w in args.weights.split(","))
        kwargs["multi"] = [(args.text, wt), (image, wi)]
    elif args.text is not None:
        kwargs["text"] = args.text
    elif image is not None:
        kwargs["image"] = image
    elif args.like:
        kwargs["point_id"] = args.like
    else:
        raise ValueError("give a TEXT query, --image, both, or --like POINT_ID")
    with connect(args) as client:
        resp = client.search(**kwargs)
    from clipserve.serving.convert import payload_from_proto

    if not args.json:
        print(f"collection {resp.collection}, model {resp.model_version[:12]}")
    for rank, h in enumerate(resp.hits, 1):
        payload = payload_from_proto(h.payload)
        if args.json:
            print(
                json.dumps(
                    {"rank": rank, "id": h.id, "score": round(h.score, 6), "payload": payload}
                )
            )
        else:
            shown = {k: v for k, v in payload.items() if k != "_source"}
            print(f"{rank:>3}  {h.score:.4f}  {h.id}  {json.dumps(shown)[:100]}")
    return 0


# -- collections ----------------------------------------------------------------------------


@reports_errors("clipserve collections")
def collections_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipserve collections", description="Manage collections.")
    add_connect_args(p)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="collections with counts, provenance and aliases")
    c = sub.add_parser("create", help="a new collection recording the model's provenance")
    c.add_argument("name")
    c.add_argument("--vector-source", choices=VECTOR_SOURCES, default="content")
    c.add_argument("--int8", action="store_true", help="int8 scalar quantisation")
    c.add_argument("--hnsw-m", type=int, default=0)
    c.add_argument("--ef-construct", type=int, default=0)
    d = sub.add_parser("drop", help="delete a collection and its points")
    d.add_argument("name")
    a = sub.add_parser("alias", help="point ALIAS at COLLECTION (atomic)")
    a.add_argument("alias")
    a.add_argument("collection")
    args = p.parse_args(argv)
    with connect(args) as client:
        if args.action == "list":
            for info in client.list_collections():
                prov = info.provenance
                aliases = f"  aliases: {', '.join(info.aliases)}" if info.aliases else ""
                source = (
                    pb.VectorSource.Name(prov.vector_source).removeprefix("VECTOR_SOURCE_").lower()
                )
                print(f"{info.name:<32} {info.count:>9} points  model {prov.model_name} "
                      f"{prov.model_version[:12]} dim {prov.dim} {source}{aliases}")  # fmt: skip
        elif args.action == "create":
            settings = pb.CollectionSettings(
                vector_source=pb.VectorSource.Value(f"VECTOR_SOURCE_{args.vector_source.upper()}"),
                int8_quantization=args.int8,
                hnsw=pb.HnswSettings(m=args.hnsw_m, ef_construct=args.ef_construct),
            )  # fmt: skip
            info = client.create_collection(args.name, settings)
            print(f"created {info.name} (model {info.provenance.model_version[:12]})")
        elif args.action == "drop":
            client.drop_collection(args.name)
            print(f"dropped {args.name}")
        else:
            before = client.set_alias(args.alias, args.collection)
            print(f"alias {args.alias}: {before or '(new)'} -> {args.collection}")
    return 0


# -- dedup ----------------------------------------------------------------------------------


@reports_errors("clipserve dedup")
def dedup_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="clipserve dedup",
        description="Groups of near-duplicate points (cosine similarity >= threshold).",
    )
    p.add_argument("--collection", default="")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--filter", action="append", default=[], help="KEY=VALUE, KEY=A|B, KEY>=N")
    p.add_argument("--max-groups", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON line per group")
    add_connect_args(p)
    args = p.parse_args(argv)
    with connect(args) as client:
        resp = client.dedup(args.threshold, collection=args.collection,
                            filter=parse_filter(args.filter) or None, max_groups=args.max_groups)  # fmt: skip
    for g in resp.groups:
        if args.json:
            print(json.dumps({"ids": list(g.ids), "min_score": round(g.min_score, 6)}))
        else:
            print(f"{len(g.ids)} items (min similarity {g.min_score:.4f}): {' '.join(g.ids)}")
    dupes = sum(len(g.ids) - 1 for g in resp.groups)
    print(f"{len(resp.groups)} groups, {dupes} duplicates among {resp.points_scanned} points",
          file=sys.stderr if args.json else sys.stdout)  # fmt: skip
    return 0
