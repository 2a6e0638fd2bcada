"""Resident memory of a real `clipserve serve` under a sustained adversarial load.

    .venv/bin/python bench/bench_memory.py [--model clipserve-tiny] [--seconds 60]

Every client sends requests of `--batch` images just under the pixel limit (half JPEG, half
PNG: PNG cannot be decoded at reduced size, so it is the worst case for memory), as fast as
the server answers, `--clients` at once (= max in flight). RSS of the server process is
sampled every 50 ms. Printed: baseline (after warm-up), peak, the stated bound, RSS after the
load, the status codes seen (RESOURCE_EXHAUSTED is allowed, INTERNAL is not), and whether the
next good request succeeds. `--json PATH` writes the same numbers (tests/test_memory.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))
from serving_harness import ServerProcess, photo, random_bundle, small_jpeg  # noqa: E402

from clipserve.proto.v1 import clipserve_pb2 as pb  # noqa: E402
from clipserve.serving.client import ClipServeClient  # noqa: E402

MiB = 1 << 20


def run(args: argparse.Namespace) -> dict[str, object]:
    bundle = Path(args.bundle) if args.bundle else random_bundle(args.model)
    side = int((args.max_pixels - 1) ** 0.5)
    w, h = side + 7, (args.max_pixels - 1) // (side + 7)  # just under the limit, not square
    images = [photo(w, h, "JPEG", seed=0), photo(w, h, "PNG", seed=1)]
    request = pb.EmbedRequest(inputs=[pb.Content(image=images[i % 2]) for i in range(args.batch)])
    req_bytes = request.ByteSize()
    max_request = max(64 * MiB, 2 * req_bytes)
    env = {
        "CLIPSERVE_MAX_IMAGE_PIXELS": str(args.max_pixels),
        "CLIPSERVE_MAX_IMAGE_BYTES": str(max(len(b) for b in images) + 1),
        "CLIPSERVE_MAX_REQUEST_BYTES": str(max_request),
        "CLIPSERVE_MAX_BATCH": str(args.batch),
        "CLIPSERVE_MAX_IN_FLIGHT": str(args.clients),
        "CLIPSERVE_HEALTH_INTERVAL_S": "2",
    }
    if args.inflight_pixels:
        env["CLIPSERVE_MAX_INFLIGHT_PIXELS"] = str(args.inflight_pixels)
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(bundle, Path(tmp), env=env) as server:
        client = ClipServeClient(server.target, timeout_s=120, max_message_bytes=max_request)
        info = client.info()
        inflight_pixels = info.limits.max_inflight_pixels
        client.embed([small_jpeg(0), "warm up"])
        time.sleep(1.0)
        baseline = server.rss()
        codes: collections.Counter[str] = collections.Counter()
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(server.rss())
                time.sleep(0.05)

        def load() -> None:
            with ClipServeClient(server.target, timeout_s=120, max_message_bytes=max_request) as c:
                while not stop.is_set():
                    try:
                        c.stub.Embed(request, timeout=120)
                        codes["OK"] += 1
                    except grpc.RpcError as exc:
                        codes[exc.code().name] += 1
                        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                            time.sleep(0.05)  # a client backing off, as told

        threads = [threading.Thread(target=sample)]
        threads += [threading.Thread(target=load) for _ in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(300)
        load_s = time.monotonic() - t0
        time.sleep(2.0)
        after = server.rss()
        next_ok = client.embed([small_jpeg(1), "next request"]).shape[0] == 2
        client.close()
    # What the design bounds: decoded pixels (<= 4 bytes each, all requests together) plus
    # the encoded requests gRPC holds (max in flight of them, and as many being rejected).
    bound = baseline + 4 * inflight_pixels + 2 * args.clients * req_bytes + 256 * MiB
    return {
        "image": f"{w}x{h} ({w * h / 1e6:.1f} MP), JPEG {len(images[0]) / MiB:.1f} MiB, "
        f"PNG {len(images[1]) / MiB:.1f} MiB",
        "request_mib": req_bytes / MiB,
        "clients": args.clients,
        "batch": args.batch,
        "seconds": load_s,
        "max_inflight_pixels": inflight_pixels,
        "baseline_mib": baseline / MiB,
        "peak_mib": max(samples, default=baseline) / MiB,
        "after_mib": after / MiB,
        "bound_mib": bound / MiB,
        "codes": dict(codes),
        "images_embedded": codes["OK"] * args.batch,
        "next_request_ok": next_ok,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="clipserve-tiny", help="random-initialised, exported")
    p.add_argument("--bundle", help="use this bundle instead of exporting --model")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="server's image limit")
    p.add_argument("--inflight-pixels", type=int, default=0, help="0 = server default")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    result = run(args)
    for key, value in result.items():
        print(f"{key:>20}: {value:.1f}" if isinstance(value, float) else f"{key:>20}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
