"""`clipserve demo`: the whole pipeline end to end on embedded defaults.

data synth -> train -> eval -> export -> serve (subprocess) -> Upsert held-out images ->
Query by text -> table + contact sheet -> graceful stop. Every step writes under one work
directory and is skipped when its output already exists (``--force`` redoes everything).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from clipserve.cli.main import main as clipserve_main


class DemoPaths:
    """Where each step of the demo writes, all under one work directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.train = root / "train"
        self.checkpoint = self.train / "checkpoints" / "latest.pt"
        self.eval_json = root / "eval.json"
        self.bundle = root / "bundle"
        self.index = root / "index"
        self.demo = root / "demo"


def _step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 72 - len(title)), flush=True)


def _run(argv: list[str]) -> None:
    """Run a clipserve subcommand in-process; a non-zero exit stops the demo with its code."""
    print("$ clipserve " + " ".join(argv), flush=True)
    rc = clipserve_main(argv)
    if rc:
        raise SystemExit(rc)


def _read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ServerProcess:
    """`clipserve serve` as a child process: started, awaited until healthy, stopped by SIGTERM."""

    def __init__(self, bundle: Path, index: Path, workdir: Path) -> None:
        self.port_file = workdir / "server.port"
        self.log_path = workdir / "server.log"
        self.port_file.unlink(missing_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - the child writes to it; closed in stop()
        cmd = [
            sys.executable,
            "-m",
            "clipserve.cli.main",
            "serve",
            "--bundle",
            str(bundle),
            "--index-path",
            str(index),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(self.port_file),
        ]
        print("$ " + " ".join(cmd[2:]).replace("clipserve.cli.main", "clipserve"), flush=True)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_port(self, timeout_s: float = 120.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}; see {self.log_path}"
                )
            if self.port_file.exists() and self.port_file.read_text().strip():
                return int(self.port_file.read_text().strip())
            time.sleep(0.2)
        raise RuntimeError(f"server did not start within {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clipserve demo", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="work", help="where every output lands (default: work)")
    p.add_argument("--config", default="configs/tiny-synth.toml", help="training config file")
    p.add_argument("--n", type=int, default=6000, help="synthetic items (train + held-out)")
    p.add_argument("--tuples", type=int, default=120, help="distinct attribute tuples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queries", type=int, default=8, help="text queries shown in the table")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--force", action="store_true", help="redo every step instead of reusing")
    p.add_argument("train_overrides", nargs="*", help="extra section.key=value training overrides")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from clipserve.cli.demo_report import report_queries  # keeps this module readable

    args = parse_args(argv)
    paths = DemoPaths(Path(args.workdir))
    config = Path(args.config)
    if not config.is_file():
        raise FileNotFoundError(
            f"training config {config} not found (run from the repository root)"
        )
    if args.force and paths.root.exists():
        import shutil

        shutil.rmtree(paths.root)
    t0 = time.monotonic()

    _step("1/6 synthetic data")
    _run(
        [
            "data",
            "synth",
            "--out",
            str(paths.data),
            "--n",
            str(args.n),
            "--seed",
            str(args.seed),
            "--tuples",
            str(args.tuples),
        ]
    )

    _step("2/6 fine-tune")
    # Held-out metrics come from `clipserve eval` in the next step, so no in-training eval.
    _run(
        [
            "train",
            "--config",
            str(config),
            f"data.train={paths.data / 'train.jsonl'}",
            "data.val=none",
            f"run.output_dir={paths.train}",
            f"run.seed={args.seed}",
            *args.train_overrides,
        ]
    )

    _step("3/6 evaluate (PyTorch, held-out data)")
    _run(
        [
            "eval",
            "--checkpoint",
            str(paths.checkpoint),
            "--data",
            str(paths.data / "test.jsonl"),
            "--out",
            str(paths.eval_json),
        ]
    )

    _step("4/6 export ONNX bundle")
    if (paths.bundle / "manifest.json").is_file() and not _stale(
        paths.bundle / "manifest.json", paths.checkpoint
    ):
        print(f"reusing bundle {paths.bundle} (newer than the checkpoint)")
    else:
        _run(["export", str(paths.checkpoint), "--out", str(paths.bundle)])

    _step("5/6 serve + index held-out images through gRPC Upsert")
    server = ServerProcess(paths.bundle, paths.index, paths.demo)
    try:
        port = server.wait_port()
        print(f"server ready on 127.0.0.1:{port} (log: {server.log_path})")
        _step("6/6 text queries through gRPC Query")
        summary = report_queries(
            target=f"127.0.0.1:{port}",
            test_records=_read_jsonl(paths.data / "test.jsonl"),
            data_dir=paths.data,
            out_dir=paths.demo,
            n_queries=args.queries,
            top_k=args.top_k,
        )
    finally:
        rc = server.stop()
        print(f"server stopped (exit code {rc})")

    metrics = json.loads(paths.eval_json.read_text()) if paths.eval_json.is_file() else {}
    _step("summary")
    print(summary)
    for key in ("t2i_semantic_R@1", "t2i_R@1", "i2t_semantic_R@1", "t2i_semantic_mAP"):
        if key in metrics:
            print(f"eval (PyTorch)  {key:<22} {metrics[key]:.3f}")
    print(f"total {time.monotonic() - t0:.0f}s; everything is under {paths.root}/")
    return 0


def _stale(output: Path, source: Path) -> bool:
    return not source.exists() or os.path.getmtime(output) < os.path.getmtime(source)


if __name__ == "__main__":
    sys.exit(main())
