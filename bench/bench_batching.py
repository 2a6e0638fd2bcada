"""Cross-request batching: a real `clipserve serve` under 1/4/16/64 concurrent single-item
clients vs raw ONNX Runtime at the batch size the server actually formed, side by side.

    .venv/bin/python bench/bench_batching.py [--model ViT-B-32] [--seconds 10]

The model is random-initialised and exported with `clipserve export`'s code (cached; speed
does not depend on the weights). Clients are asyncio gRPC calls from this process, each
sending one caption or one 320x240 JPEG per request, back to back. For every concurrency the
server is measured first (items/s, p50/p99 latency, mean batch size from its /metrics), then
the same bundle in raw ONNX Runtime in this process at that mean batch size (inputs already
tokenized / preprocessed, so it is the ceiling), and the ratio is printed.

The raw side runs the server's own engine configuration: as many ONNX Runtime sessions as the
server has inference workers, each with the server's intra-op threads, called concurrently
from that many threads (ONNX Runtime releases the GIL), their items/s summed. The server runs
`--backend onnxruntime` (this script's default) so both sides use the same engine; with
`--backend openvino` both sides run OpenVINO (one compiled model, a stream per worker, as the
server does); with `--backend auto` (the server's default) both sides run images on OpenVINO
and text on ONNX Runtime. Workers and threads default to `clipserve serve`'s defaults (2
workers, the usable CPUs split between them).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving_harness import ServerProcess, random_bundle, small_jpeg  # noqa: E402

from clipserve.proto.v1 import clipserve_pb2 as pb  # noqa: E402
from clipserve.proto.v1 import clipserve_pb2_grpc as pb_grpc  # noqa: E402
from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend  # noqa: E402
from clipserve.serving.bundle import load_manifest  # noqa: E402
from clipserve.serving.config import ServerConfig, usable_cpus  # noqa: E402
from clipserve.serving.embedding.preprocess import decode_for_model  # noqa: E402
from clipserve.serving.embedding.tokenizer import ClipTokenizer  # noqa: E402

CAPTIONS = [
    "a photo of a cat", "a red double-decker bus driving down a rainy street",
    "two people riding bicycles next to a river at sunset", "a plate of pasta with basil",
    "an aerial view of a city at night", "a dog catching a frisbee in a park",
    "close-up of a bee on a yellow flower", "a snowy mountain range under a clear blue sky",
]  # fmt: skip


async def drive(target: str, contents: list[pb.Content], clients: int, seconds: float) -> dict:
    """`clients` concurrent callers, one item per request, for `seconds` after a warm-up;
    latencies are returned too so rounds can be pooled."""
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClipServeStub(channel)
        measuring = False
        end = time.monotonic() + 0.5 + seconds

        async def client(i: int) -> None:
            nonlocal errors
            n = i
            while time.monotonic() < end:
                request = pb.EmbedRequest(inputs=[contents[n % len(contents)]])
                n += clients
                t0 = time.perf_counter()
                try:
                    await stub.Embed(request, timeout=120)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if measuring:
                    latencies.append(time.perf_counter() - t0)

        tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
        await asyncio.sleep(0.5)  # warm-up: fill the pipeline
        measuring, t_start = True, time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t_start
    latencies.sort()
    return {
        "items_s": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "errors": errors,
        "latencies": latencies,
        "elapsed": elapsed,
    }


def batch_stats(metrics_port: int, modality: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram for `modality`."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    found = {}
    for line in body.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f'clipserve_batch_size_{part}{{modality="{modality}"}}'):
                found[part] = float(line.rsplit(" ", 1)[1])
    return found.get("sum", 0.0), found.get("count", 0.0)


def raw_items_per_s(fns, batch: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Items/s of `fns` (one per session) called back to back, all at once, for `seconds`."""
    for fn in fns:
        fn()
    runs = [0] * len(fns)
    t0 = time.perf_counter()

    def loop(k: int) -> None:
        while time.perf_counter() - t0 < seconds or runs[k] < 3:
            fns[k]()
            runs[k] += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(runs) * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32", help="random-initialised, exported, cached")
    p.add_argument("--bundle", help="use this bundle instead of exporting --model")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--modalities", nargs="+", default=["text", "image"])
    p.add_argument("--seconds", type=float, default=12.0, help="server time per point")
    p.add_argument("--rounds", type=int, default=3, help="server/raw alternations per point")
    defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
    p.add_argument("--max-batch", type=int, default=defaults["max_batch"])
    p.add_argument("--inference-workers", type=int, default=defaults["inference_workers"])
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="0 = the server's default (usable CPUs / inference workers)")  # fmt: skip
    p.add_argument("--backend", choices=("onnxruntime", "openvino", "auto"), default="onnxruntime",
                   help="the engine of both sides: the server's --backend and the raw calls "
                        "(auto: images on OpenVINO, text on ONNX Runtime)")  # fmt: skip
    args = p.parse_args(argv)
    bundle = Path(args.bundle) if args.bundle else random_bundle(args.model)
    manifest = load_manifest(bundle)
    tokenizer = ClipTokenizer.from_bundle(bundle, manifest)
    workers = args.inference_workers
    threads = args.intra_op_threads or max(1, usable_cpus() // workers)  # the server's rule

    def engine(name: str, tower: str) -> list[Any]:
        """The raw callers for one tower, as the server runs that engine."""
        if name == "openvino":  # one compiled model with a stream per worker
            from clipserve.serving.backends.openvino_backend import OpenVinoBackend

            shared = OpenVinoBackend(bundle, manifest, streams=workers,
                                     threads_per_stream=threads, towers=(tower,))  # fmt: skip
            return [shared] * workers
        return [OnnxRuntimeBackend(bundle, manifest, intra_op_threads=threads, towers=(tower,))
                for _ in range(workers)]  # fmt: skip

    engines = {"image": "openvino", "text": "onnxruntime"} if args.backend == "auto" else {}
    raws = {t: engine(engines.get(t, args.backend), t) for t in args.modalities}
    slice_s = args.seconds / args.rounds
    jpegs = [small_jpeg(i) for i in range(8)]
    contents = {
        "text": [pb.Content(text=c) for c in CAPTIONS],
        "image": [pb.Content(image=j) for j in jpegs],
    }
    ids = tokenizer.encode(CAPTIONS)
    pixels = np.stack(
        [decode_for_model(j, manifest, max_bytes=1 << 30, max_pixels=1 << 30) for j in jpegs]
    )

    def raw_at(modality: str, b: int) -> float:
        if modality == "text":
            x = tokenizer.pad([ids[i % len(ids)] for i in range(b)])
            fns = [lambda r=r: r.embed_texts(x) for r in raws["text"]]
            return raw_items_per_s(fns, b, min(slice_s, 3))
        px = np.stack([pixels[i % len(pixels)] for i in range(b)])
        fns = [lambda r=r: r.embed_images(px) for r in raws["image"]]
        return raw_items_per_s(fns, b, min(slice_s, 3))

    flags = ["--backend", args.backend,
             "--max-batch", str(args.max_batch), "--inference-workers", str(workers),
             "--intra-op-threads", str(threads),
             "--max-in-flight", str(max(args.concurrency) + 8), "--metrics-port", "0"]  # fmt: skip
    print(f"{manifest.model_name} (random weights), server flags: {' '.join(flags)}; raw "
          f"{args.backend}: {workers} concurrent caller(s) x {threads} thread(s); {args.seconds:.0f} s per "
          "point; CPU only", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        # --metrics-port 0 would pick a random port we cannot see from here: use a fixed one.
        mport = _free_port()
        flags[flags.index("--metrics-port") + 1] = str(mport)
        with ServerProcess(bundle, Path(tmp), *flags) as server:
            print(f"{'modality':<8} {'clients':>7} {'server/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'mean batch':>10} {'raw/s':>9} {'ratio':>6}  errors")  # fmt: skip
            for modality in args.modalities:
                for clients in args.concurrency:
                    # Rounds of (server, then raw ORT) so load spikes from other jobs hit
                    # both sides; the ratio is the median of the per-round ratios.
                    s0, c0 = batch_stats(mport, modality)
                    ratios, served, lat, errors, ceilings = [], 0.0, [], 0, []
                    for _ in range(args.rounds):
                        res = asyncio.run(
                            drive(server.target, contents[modality], clients, slice_s)
                        )
                        s1, c1 = batch_stats(mport, modality)
                        mean_batch = (s1 - s0) / max(c1 - c0, 1)
                        ceiling = raw_at(modality, max(1, min(args.max_batch, round(mean_batch))))
                        ratios.append(res["items_s"] / ceiling)
                        ceilings.append(ceiling)
                        served += len(res["latencies"]) / res["elapsed"] / args.rounds
                        lat += res["latencies"]
                        errors += res["errors"]
                    lat.sort()
                    p50 = 1000 * lat[len(lat) // 2] if lat else float("nan")
                    p99 = 1000 * lat[int(len(lat) * 0.99)] if lat else float("nan")
                    print(
                        f"{modality:<8} {clients:>7} {served:>9.1f} {p50:>8.1f} {p99:>8.1f} "
                        f"{mean_batch:>10.1f} {statistics.mean(ceilings):>9.1f} "
                        f"{statistics.median(ratios):>5.0%}  {errors}",
                        flush=True,
                    )
    for callers in raws.values():
        for r in set(callers):
            r.close()
    print(f"one run per point; load average at the end: {_load()}")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
