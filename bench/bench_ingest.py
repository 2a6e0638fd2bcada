"""Bulk ingest: end-to-end throughput (read + embed + write) vs embedding alone, and the
crash test at full size (SIGKILLs at random moments, each followed by a rerun).

    .venv/bin/python bench/bench_ingest.py [--bundle DIR] [--n 5000] [--crash-items 50000]

Without --bundle, a random-init clipserve-tiny is exported into a temp bundle (real ONNX
towers; vectors are meaningless but the cost is the real cost). Images are distinct 64x64
PNGs with captions for half of them. In one process:

    embed only   the pipeline's first stage alone: read the files, embed (ONNX Runtime), derive
                 ids (`LocalTarget.prepare` on every batch); nothing is written
    end to end   `clipserve index`'s pipeline into a fresh embedded collection: the same first
                 stage overlapped with durable writes (flushed per batch) and journal commits

The items are split into `--rounds` chunks, each timed both ways in alternating order (one
model session throughout), so both modes see the same machine load; the ratio end-to-end /
embed-only is the figure of merit (target >= 0.90).

The crash test then runs the real `clipserve index` command in subprocesses over
`--crash-items` images, SIGKILLs it `--kills` times at random moments spread over the expected
run time, reruns it each time, lets the last run finish, and checks: count exact, no
duplicate, none missing.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipserve.index.embedded.edge import EdgeIndex
from clipserve.index.ids import image_id
from clipserve.index.ingest.journal import Journal
from clipserve.index.ingest.pipeline import Pipeline, load_item
from clipserve.index.ingest.sources import Source
from clipserve.index.ingest.targets import LocalTarget
from clipserve.serving.config import ServerConfig

THREADS = 1  # ONNX Runtime intra-op threads (--intra-op-threads)


def make_images(root: Path, n: int, size: int = 64) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        pixels = np.kron(blocks, np.ones((size // 8, size // 8, 1), dtype=np.uint8))
        p = root / f"d{i // 1000:03d}" / f"img{i:06d}.png"
        p.parent.mkdir(exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
        p.write_bytes(buf.getvalue())
        if i % 2 == 0:
            p.with_suffix(".txt").write_text(f"a picture of pattern {i}")
        paths.append(p)
    return paths


def tiny_bundle(out: Path) -> Path:
    import torch

    from clipserve.training.export.bundle import export_bundle
    from clipserve.training.model import ModelSpec, create_model

    torch.manual_seed(0)
    export_bundle(create_model(ModelSpec("clipserve-tiny")), out)
    return out


def measure(bundle: Path, src: Path, batch: int, work: Path, rounds: int) -> tuple[float, float]:
    """(embed-only items/s, end-to-end items/s), measured on the same items, interleaved.

    The items are split into `rounds` chunks; each chunk is timed both ways (ABBA order), so
    both see the same machine load. One model session serves both (steady state)."""
    config = ServerConfig(bundle=bundle, index_path=work / "index", max_batch=2 * batch,
                          max_in_flight=1024, intra_op_threads=THREADS)  # fmt: skip
    target = LocalTarget(config, "bench")
    items = list(Source(src).items())
    size = -(-len(items) // rounds)
    t_embed = t_e2e = 0.0
    try:
        target.prepare([load_item(items[0])])  # warm-up
        for r in range(rounds):
            chunk = items[r * size : (r + 1) * size]
            order = (embed_only, end_to_end) if r % 2 == 0 else (end_to_end, embed_only)
            for fn in order:
                seconds = fn(target, chunk, batch, work / f"j{r}")
                if fn is embed_only:
                    t_embed += seconds
                else:
                    t_e2e += seconds
            print(f"  round {r + 1}/{rounds}: {len(chunk)} items, embed only so far "
                  f"{(r + 1) * size / t_embed:.0f}/s, end to end {(r + 1) * size / t_e2e:.0f}/s")  # fmt: skip
        assert target.count() == len(items)
    finally:
        target.close()
    return len(items) / t_embed, len(items) / t_e2e


def embed_only(target: LocalTarget, chunk: list[Any], batch: int, journal: Path) -> float:
    start = time.perf_counter()
    for i in range(0, len(chunk), batch):
        target.prepare([load_item(it) for it in chunk[i : i + batch]])
    return time.perf_counter() - start


def end_to_end(target: LocalTarget, chunk: list[Any], batch: int, journal: Path) -> float:
    j = Journal(journal, journal.with_suffix(".rejects"), {"bench": str(journal)})
    try:
        start = time.perf_counter()
        Pipeline(target, j, batch_size=batch).run(iter(chunk), len(chunk), False)
        return time.perf_counter() - start
    finally:
        j.close()


def crash_test(bundle: Path, work: Path, n: int, kills: int, est_s: float, seed: int) -> None:
    print(f"\ncrash test: {n} images, {kills} SIGKILLs, expected run ~{est_s:.0f} s")
    paths = make_images(work / "crash_src", n)
    cmd = [sys.executable, "-m", "clipserve.cli.main", "index", str(work / "crash_src"),
           "--bundle", str(bundle), "--index-path", str(work / "crash_index"), "--collection",
           "crash", "--journal", str(work / "crash.journal"), "--no-progress",
           "--intra-op-threads", str(THREADS)]  # fmt: skip
    rng = random.Random(seed)
    start, mid_run = time.perf_counter(), 0
    for k in range(kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 2.0 + 1.6 * est_s / kills))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            mid_run += 1
        proc.wait()
        journal = work / "crash.journal"
        done = journal.read_text().count("\n") - 1 if journal.exists() else 0
        print(f"  kill {k + 1}: {'killed mid-run' if proc.returncode < 0 else 'had finished'}, "
              f"{done} batches committed so far")  # fmt: skip
    final = subprocess.run(cmd, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    index = EdgeIndex(work / "crash_index")
    try:
        ids, token = [], None
        while True:
            page, token = index.scroll("crash", None, 1000, token, False)
            ids += [p.id for p in page]
            if not token:
                break
        count = index.count("crash")
    finally:
        index.close()
    expected = {image_id(p.read_bytes()) for p in paths}
    print(f"  {mid_run}/{kills} kills landed mid-run; total {time.perf_counter() - start:.0f} s")
    print(f"  final count {count}, expected {len(expected)}; duplicates "
          f"{len(ids) - len(set(ids))}; missing {len(expected - set(ids))}; "
          f"unexpected {len(set(ids) - expected)}")  # fmt: skip
    ok = count == len(expected) == len(ids) and set(ids) == expected
    print(f"  crash test: {'PASS' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6, help="interleaved measurement rounds")
    p.add_argument("--crash-items", type=int, default=50_000, help="0 = skip the crash test")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--intra-op-threads", type=int, default=1)
    args = p.parse_args()
    global THREADS
    THREADS = args.intra_op_threads
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle or tiny_bundle(work / "bundle")
        make_images(work / "src", args.n)
        m_embed, m_e2e = measure(bundle, work / "src", args.batch, work, args.rounds)
        print(
            f"\n| {args.n} images, batch {args.batch}, {args.rounds} interleaved rounds | items/s |"
        )
        print("|---|---|")
        print(f"| embed only (read + embed) | {m_embed:.0f} |")
        print(f"| end to end (read + embed + durable write + journal) | {m_e2e:.0f} |")
        print(f"| ratio end to end / embed only | {m_e2e / m_embed:.2f} |")
        if args.crash_items:
            crash_test(bundle, work, args.crash_items, args.kills, args.crash_items / m_e2e + 3,
                       args.seed)  # fmt: skip


if __name__ == "__main__":
    main()
