"""Bulk ingest: end-to-end throughput (read + embed + write) vs embedding alone, and the
crash test at full size (SIGKILLs at random moments, each followed by a rerun).

    .venv/bin/python bench/bench_ingest.py [--bundle DIR] [--n 5000] [--crash-items 50000]

Without --bundle, a random-init clipserve-tiny is exported into a temp bundle (real ONNX
towers; vectors are meaningless but the cost is the real cost). Images are distinct 64x64
PNGs with captions for half of them. In one process, alternating, `--repeats` times each:

    embed only   the pipeline's first stage alone: read the files, embed (ONNX Runtime), derive
                 ids (`LocalTarget.prepare` on every batch); nothing is written
    end to end   `clipserve index`'s pipeline into a fresh embedded collection: the same first
                 stage overlapped with durable writes (flushed per batch) and journal commits

Medians are reported with the ratio end-to-end / embed-only (target >= 0.90). The crash test
then runs the real `clipserve index` command in subprocesses over `--crash-items` images,
SIGKILLs it `--kills` times at random moments spread over the expected run time, reruns it
each time, lets the last run finish, and checks: count exact, no duplicate, none missing.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clipserve.index.edge import EdgeIndex
from clipserve.index.ids import image_id
from clipserve.ingest.journal import Journal
from clipserve.ingest.pipeline import Pipeline, load_item
from clipserve.ingest.sources import Source
from clipserve.ingest.targets import LocalTarget
from clipserve.serving.config import ServerConfig


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

    from clipserve.training.export import export_bundle
    from clipserve.training.model import ModelSpec, create_model

    torch.manual_seed(0)
    export_bundle(create_model(ModelSpec("clipserve-tiny")), out)
    return out


def embed_only(bundle: Path, src: Path, batch: int, work: Path) -> float:
    config = ServerConfig(bundle=bundle, index_path=work / "unused", max_batch=2 * batch,
                          max_in_flight=1024)  # fmt: skip
    target = LocalTarget(config, "bench")
    try:
        items = list(Source(src).items())
        start = time.perf_counter()
        for i in range(0, len(items), batch):
            target.prepare([load_item(it) for it in items[i : i + batch]])
        return len(items) / (time.perf_counter() - start)
    finally:
        target.close()


def end_to_end(bundle: Path, src: Path, batch: int, work: Path, run: int) -> float:
    config = ServerConfig(bundle=bundle, index_path=work / f"index{run}", max_batch=2 * batch,
                          max_in_flight=1024)  # fmt: skip
    target = LocalTarget(config, "bench")
    source = Source(src)
    journal = Journal(work / f"j{run}", work / f"r{run}", {"run": run})
    try:
        start = time.perf_counter()
        summary = Pipeline(target, journal, batch_size=batch).run(
            source.items(), len(source), False
        )
        elapsed = time.perf_counter() - start
        assert summary.final_count == len(source), summary
        return len(source) / elapsed
    finally:
        journal.close()
        target.close()


def crash_test(bundle: Path, work: Path, n: int, kills: int, est_s: float, seed: int) -> None:
    print(f"\ncrash test: {n} images, {kills} SIGKILLs, expected run ~{est_s:.0f} s")
    paths = make_images(work / "crash_src", n)
    cmd = [sys.executable, "-m", "clipserve.cli.main", "index", str(work / "crash_src"),
           "--bundle", str(bundle), "--index-path", str(work / "crash_index"), "--collection",
           "crash", "--journal", str(work / "crash.journal"), "--no-progress"]  # fmt: skip
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
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--crash-items", type=int, default=50_000, help="0 = skip the crash test")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = args.bundle or tiny_bundle(work / "bundle")
        make_images(work / "src", args.n)
        embed, e2e = [], []
        for r in range(args.repeats):
            embed.append(embed_only(bundle, work / "src", args.batch, work))
            e2e.append(end_to_end(bundle, work / "src", args.batch, work, r))
            print(
                f"  run {r + 1}: embed only {embed[-1]:.0f} items/s, end to end {e2e[-1]:.0f} items/s"
            )
        m_embed, m_e2e = statistics.median(embed), statistics.median(e2e)
        print(f"\n| {args.n} images, batch {args.batch} | items/s (median of {args.repeats}) |")
        print("|---|---|")
        print(f"| embed only (read + embed) | {m_embed:.0f} |")
        print(f"| end to end (read + embed + durable write + journal) | {m_e2e:.0f} |")
        print(f"| ratio end to end / embed only | {m_e2e / m_embed:.2f} |")
        if args.crash_items:
            crash_test(bundle, work, args.crash_items, args.kills, args.crash_items / m_e2e + 3,
                       args.seed)  # fmt: skip


if __name__ == "__main__":
    main()
