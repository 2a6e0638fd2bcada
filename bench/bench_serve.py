"""Load test: clipserve's gRPC server vs raw ONNX Runtime vs a peer (infinity-emb), one run.

    make bench-serve            (= .venv/bin/python bench/bench_serve.py, peer venv included)
    .venv/bin/python bench/bench_serve.py [--model ViT-B-32] [--concurrency 1 4 16 64]
        [--duration 12] [--peer-python .bench-venv/infinity/bin/python] [--no-peer]

What it does, in order, on this machine:

1. Exports a random-initialised open_clip model (seed 0) to a bundle with `clipserve export`'s
   own code (cached under --workdir), and saves the peer's model: a random-initialised HF
   `CLIPModel` of the same ViT-B-32 architecture (bench/make_hf_clip.py, in the peer's venv).
2. Raw ONNX Runtime: the bundle's towers in this process, at batch 1 and at the server's batch
   size (--server-batch), on the same images and captions: the ceiling a server can reach.
3. Starts both servers (clipserve `clipserve serve`, infinity `infinity_emb v2`, both fp32 on
   CPU) and runs every scenario x concurrency cell on one, then on the other, alternating
   which goes first; the idle server waits meanwhile, so both are measured at the same
   minutes of a machine whose speed drifts. Each cell is a separate load-generator process
   (`bench_serve.py client`) issuing for --duration seconds: N clients in a closed loop, each
   sending its next request when the previous one answered. Scenarios:
   one image, one caption, 32 images per request. Reported: items/s (items completed / time
   from the first send to the last answer) and request latency p50/p99.
4. Measures raw ORT again and compares with the mean of both ends.
5. Prints the tables and the ratios (clipserve / raw ORT, clipserve / peer) and writes JSON,
   a Markdown table and a PNG plot to --workdir.

Both servers get the same JPEG images (640x480, decoded and resized by the server) and the
same captions. Items over a request's answer are checked for the model's dimension.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = [
    "a photo of a cat",
    "a red double-decker bus driving down a rainy street",
    "two people riding bicycles next to a river at sunset",
    "a plate of pasta with tomato sauce and basil",
    "an aerial view of a city at night",
    "a dog catching a frisbee in a park",
    "close-up of a bee on a yellow flower",
    "a snowy mountain range under a clear blue sky",
]
SCENARIOS = {"image": ("image", 1), "caption": ("text", 1), "image32": ("image", 32)}


def jpegs(n: int = 8, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """Photo-like test images: smooth gradients, shapes and noise, JPEG quality 90."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    w, h = size
    for _ in range(n):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack(
            [(xx * rng.uniform(0.2, 0.5) + yy * rng.uniform(0.1, 0.4) + rng.uniform(0, 80)) % 256
             for _ in range(3)], axis=-1
        )  # fmt: skip
        base += rng.normal(0, 12, base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 100)), int(rng.integers(0, h - 100))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse((x0, y0, x0 + int(rng.integers(30, 200)), y0 + int(rng.integers(30, 200))),
                         fill=color)  # fmt: skip
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# -- the load generator (runs in its own process) ------------------------------------------------


async def _run_clients(
    send: Any, concurrency: int, duration: float, kind: str, per_request: int
) -> dict[str, Any]:
    images, caps = jpegs(), CAPTIONS
    latencies: list[float] = []
    errors: list[str] = []
    counter = 0

    def next_items() -> list[Any]:
        nonlocal counter
        pool = images if kind == "image" else caps
        items = [pool[(counter + i) % len(pool)] for i in range(per_request)]
        counter += per_request
        return items

    start = time.perf_counter()
    stop_at = start + duration

    async def client() -> None:
        while time.perf_counter() < stop_at:
            items = next_items()
            t0 = time.perf_counter()
            try:
                await send(kind, items)
            except Exception as exc:  # report, keep loading
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                await asyncio.sleep(0.05)
                continue
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "requests": len(latencies),
        "items": len(latencies) * per_request,
        "elapsed_s": elapsed,
        "items_per_s": len(latencies) * per_request / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


async def _clipserve_sender(addr: str, dim: int) -> tuple[Any, Any]:
    import grpc

    from clipserve.proto.v1 import clipserve_pb2 as pb
    from clipserve.proto.v1 import clipserve_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(
        addr, options=[("grpc.max_receive_message_length", 256 << 20),
                       ("grpc.max_send_message_length", 256 << 20)]
    )  # fmt: skip
    stub = pb_grpc.ClipServeStub(channel)

    async def send(kind: str, items: list[Any]) -> None:
        content = [pb.Content(image=x) if kind == "image" else pb.Content(text=x) for x in items]
        resp = await stub.Embed(pb.EmbedRequest(inputs=content), timeout=600)
        if len(resp.embeddings) != len(items) or len(resp.embeddings[0].values) != dim:
            raise RuntimeError("wrong answer shape")

    return send, channel.close


async def _infinity_sender(addr: str, dim: int) -> tuple[Any, Any]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)
    )
    url = f"http://{addr}/embeddings"

    async def send(kind: str, items: list[Any]) -> None:
        if kind == "image":
            inputs = ["data:image/jpeg;base64," + base64.b64encode(x).decode() for x in items]
        else:
            inputs = items
        body = {"model": "clip", "input": inputs, "modality": kind, "encoding_format": "base64"}
        async with session.post(url, json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
            data = (await r.json())["data"]
        if len(data) != len(items) or len(base64.b64decode(data[0]["embedding"])) != 4 * dim:
            raise RuntimeError("wrong answer shape")

    return send, session.close


async def _client_main(args: argparse.Namespace) -> None:
    make = _clipserve_sender if args.target == "clipserve" else _infinity_sender
    send, close = await make(args.addr, args.dim)
    results = []
    try:
        for scenario in args.scenarios:
            kind, per_request = SCENARIOS[scenario]
            # Warm-up: every code path once, not timed.
            await _run_clients(send, 2, 0.5, kind, per_request)
            for c in args.concurrency:
                if per_request > 1 and c > args.max_bulk_concurrency:
                    continue
                r = await _run_clients(send, c, args.duration, kind, per_request)
                r.update(target=args.target, scenario=scenario, concurrency=c)
                print(json.dumps(r), flush=True)
                results.append(r)
    finally:
        await close()


# -- orchestration -------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _load(
    target: str, addr: str, dim: int, args: argparse.Namespace, scenario: str, concurrency: int
) -> list[dict[str, Any]]:
    """One cell (scenario x concurrency) against one server, from a fresh client process."""
    # The infinity client needs aiohttp, which the peer's venv has (the project's may not).
    python = args.peer_python if target == "infinity" else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "client", "--target", target,
           "--addr", addr, "--dim", str(dim), "--duration", str(args.duration),
           "--max-bulk-concurrency", str(args.max_bulk_concurrency),
           "--concurrency", str(concurrency), "--scenarios", scenario]  # fmt: skip
    results = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            r = json.loads(line)
            print(f"  {target:<9} {r['scenario']:<8} c={r['concurrency']:<3} "
                  f"{r['items_per_s']:8.1f} items/s  p50 {r['p50_ms']:8.1f} ms  "
                  f"p99 {r['p99_ms']:8.1f} ms  errors {r['errors']}", flush=True)  # fmt: skip
            results.append(r)
    if proc.returncode:
        raise RuntimeError(f"load generator for {target} failed ({proc.returncode})")
    return results


def _export_bundle(model: str, out: Path) -> Path:
    if (out / "manifest.json").is_file():
        return out
    import torch

    from clipserve.training.export.bundle import export_bundle
    from clipserve.training.model import ModelSpec, create_model

    print(f"exporting random-init {model} to {out} ...", flush=True)
    torch.manual_seed(0)
    export_bundle(create_model(ModelSpec(model)), out, force=True)
    return out


def raw_ort(bundle: Path, batch: int, threads: int | None) -> dict[str, float]:
    """Items/s of the bundle's towers called directly, at batch 1 and `batch`."""
    from PIL import Image

    from clipserve.serving.backends.onnx_backend import OnnxRuntimeBackend
    from clipserve.serving.embedding.preprocess import preprocess
    from clipserve.serving.embedding.tokenizer import ClipTokenizer

    backend = OnnxRuntimeBackend(bundle, providers="CPUExecutionProvider",
                                 intra_op_threads=threads)  # fmt: skip
    m = backend.manifest
    tok = ClipTokenizer.from_bundle(bundle, m)
    imgs = [Image.open(io.BytesIO(b)).convert("RGB") for b in jpegs()]
    out: dict[str, float] = {}
    for b in sorted({1, batch}):
        pixels = preprocess([imgs[i % len(imgs)] for i in range(b)], m)
        ids = tok.pad(tok.encode([CAPTIONS[i % len(CAPTIONS)] for i in range(b)]))
        for name, fn in (("image", lambda p=pixels: backend.embed_images(p)),
                         ("caption", lambda i=ids: backend.embed_texts(i))):  # fmt: skip
            fn()
            times = []
            t_end = time.perf_counter() + 4
            while time.perf_counter() < t_end or len(times) < 3:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[f"{name}_b{b}"] = b / statistics.median(times)
    backend.close()
    return out


def _write_results(work: Path, engine: str, raw: dict[str, float], runs: list[dict]) -> None:
    doc = {"clipserve_engine": engine, "raw_ort": raw, "runs": runs}
    (work / "results.json").write_text(json.dumps(doc, indent=2))


def _engine(addr: str) -> str:
    """What the running clipserve computes with, from its Info RPC: "openvino (OpenVINO ...)"."""
    from clipserve.serving.client import ClipServeClient

    client = ClipServeClient(addr)
    try:
        info = client.info()
    finally:
        client.close()
    return f"{info.backend} ({', '.join(info.providers)}, {info.precision})"


@contextlib.contextmanager
def clipserve_server(bundle: Path, args: argparse.Namespace, work: Path) -> Iterator[str]:
    """`clipserve serve` on the bundle, as a subprocess; yields its address."""
    port_file = work / "clipserve.port"
    port_file.unlink(missing_ok=True)
    index = Path(tempfile.mkdtemp(prefix="bench-index-", dir=work))
    env = dict(os.environ, CLIPSERVE_MAX_IN_FLIGHT=str(max(256, 4 * max(args.concurrency))),
               CLIPSERVE_MAX_REQUEST_BYTES=str(256 << 20))  # fmt: skip
    log = open(work / "clipserve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipserve.cli.main", "serve", "--bundle", str(bundle),
         "--port", "0", "--port-file", str(port_file), "--index-path", str(index),
         "--log-level", "WARNING", *args.clipserve_args],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait(port_file.is_file, proc, "clipserve serve")
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(index, ignore_errors=True)


@contextlib.contextmanager
def infinity_server(args: argparse.Namespace, work: Path) -> Iterator[str]:
    """`infinity_emb v2` on the same architecture, from the peer's venv; yields its address."""
    import open_clip

    peer_python = Path(args.peer_python)
    model_dir = work / "hf-clip-vit-b-32"
    if not (model_dir / "config.json").is_file():
        bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
        subprocess.run([str(peer_python), str(ROOT / "bench" / "make_hf_clip.py"),
                        "--bpe", str(bpe), "--out", str(model_dir)], check=True)  # fmt: skip
    port = _free_port()
    exe = peer_python.parent / "infinity_emb"
    log = open(work / "infinity.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(exe), "v2", "--model-id", str(model_dir), "--served-model-name", "clip",
         "--engine", "torch", "--device", "cpu", "--batch-size", str(args.peer_batch),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1",
                                                       INFINITY_ANONYMOUS_USAGE_STATS="0"),
    )  # fmt: skip

    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return bool(r.status == 200)

    try:
        _wait(ready, proc, "infinity_emb v2")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)
        log.close()


def report(results: list[dict[str, Any]], raw: dict[str, float], args: argparse.Namespace) -> str:
    by = {(r["target"], r["scenario"], r["concurrency"]): r for r in results}
    lines = [
        f"raw ONNX Runtime (this process, {args.model}): "
        + ", ".join(f"{k} {v:.1f}/s" for k, v in raw.items()),
        "",
        "| scenario | clients | clipserve items/s | p50 ms | p99 ms | infinity items/s | p50 ms "
        "| p99 ms | clipserve / infinity | clipserve / raw ORT |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in args.scenarios:
        for c in args.concurrency:
            ours, peer = by.get(("clipserve", scenario, c)), by.get(("infinity", scenario, c))
            if ours is None and peer is None:
                continue
            raw_key = f"{'caption' if scenario == 'caption' else 'image'}_b{args.server_batch}"

            def cell(r: dict | None, key: str) -> str:
                return "-" if r is None else f"{r[key]:.1f}"

            vs_peer = f"{ours['items_per_s'] / peer['items_per_s']:.2f}x" if ours and peer else "-"
            vs_raw = f"{ours['items_per_s'] / raw[raw_key]:.0%}" if ours and raw_key in raw else "-"
            lines.append(
                f"| {scenario} | {c} | {cell(ours, 'items_per_s')} | {cell(ours, 'p50_ms')} | "
                f"{cell(ours, 'p99_ms')} | {cell(peer, 'items_per_s')} | {cell(peer, 'p50_ms')} "
                f"| {cell(peer, 'p99_ms')} | {vs_peer} | {vs_raw} |"
            )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(args.scenarios), figsize=(5 * len(args.scenarios), 4))
    for ax, scenario in zip(np.atleast_1d(axes), args.scenarios, strict=True):
        for target in ("clipserve", "infinity"):
            rows = sorted((r["concurrency"], r["items_per_s"]) for r in results
                          if r["target"] == target and r["scenario"] == scenario)  # fmt: skip
            if rows:
                ax.plot(*zip(*rows, strict=True), marker="o", label=target)
        ax.set(title=scenario, xlabel="concurrent clients", ylabel="items/s", xscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("client", help="(internal) the load generator process")
    c.add_argument("--target", choices=("clipserve", "infinity"), required=True)
    c.add_argument("--addr", required=True)
    c.add_argument("--dim", type=int, required=True)
    for q in (p, c):
        q.add_argument("--duration", type=float, default=12.0, help="seconds of issuing per cell")
        q.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
        q.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
        q.add_argument("--max-bulk-concurrency", type=int, default=64,
                       help="skip 32-image cells above this many clients")  # fmt: skip
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--workdir", type=Path, default=ROOT / "work" / "bench-serve")
    p.add_argument("--server-batch", type=int, default=16, help="raw ORT batch to compare with")
    p.add_argument("--threads", type=int, default=None, help="raw ORT intra-op threads")
    p.add_argument("--peer-python", default=str(ROOT / ".bench-venv/infinity/bin/python"))
    p.add_argument("--peer-batch", type=int, default=32, help="infinity --batch-size")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--no-clipserve", action="store_true", help="peer only (raw ORT still runs)")
    p.add_argument("--clipserve-args", nargs=argparse.REMAINDER, default=[],
                   help="extra `clipserve serve` flags (last on the line)")  # fmt: skip
    args = p.parse_args(argv)
    if args.command == "client":
        asyncio.run(_client_main(args))
        return 0
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    bundle = _export_bundle(args.model, work / f"{args.model}-bundle")
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()}", flush=True)
    raw = raw_ort(bundle, args.server_batch, args.threads)
    print("raw ORT items/s:", {k: round(v, 1) for k, v in raw.items()}, flush=True)
    from clipserve.serving.bundle import load_manifest

    dim = load_manifest(bundle).embed_dim
    results: list[dict[str, Any]] = []
    engine = "-"
    with contextlib.ExitStack() as stack:
        # Both servers stay up (idle while the other is measured) and every cell runs on one,
        # then the other, in alternating order: both see the machine at the same minutes.
        servers = []
        if not args.no_clipserve:
            servers.append(("clipserve", stack.enter_context(clipserve_server(bundle, args, work))))
            engine = _engine(servers[-1][1])
            print(f"clipserve engine: {engine}", flush=True)
        if not args.no_peer:
            servers.append(("infinity", stack.enter_context(infinity_server(args, work))))
        cells = [(sc, c) for sc in args.scenarios for c in args.concurrency]
        for k, (scenario, c) in enumerate(cells):
            for target, addr in servers if k % 2 == 0 else servers[::-1]:
                results += _load(target, addr, dim if target == "clipserve" else 512, args,
                                 scenario, c)  # fmt: skip
                _write_results(work, engine, raw, results)
    raw_after = raw_ort(bundle, args.server_batch, args.threads)
    print("raw ORT items/s after:", {k: round(v, 1) for k, v in raw_after.items()}, flush=True)
    raw = {k: (v + raw_after[k]) / 2 for k, v in raw.items()}  # the mean of both ends
    table = f"clipserve engine: {engine}\n" + report(results, raw, args)
    print("\n" + table)
    _write_results(work, engine, raw, results)
    (work / "results.md").write_text(table + "\n")
    plot(results, args, work / "results.png")
    print(f"\nwrote {work / 'results.json'}, results.md, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
