"""Shared by the serving benchmarks: a random-initialised bundle, a real `clipserve serve`
subprocess on a free port, and synthetic images. Not a test double: everything is real.

Bundles are cached under --cache (default /tmp/clipserve-bench) by model name, since
exporting ViT-B-32 takes minutes on 2 cores; speed and memory do not depend on the weights.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from clipserve.serving.client import ClipServeClient

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "clipserve-bench"


def random_bundle(model: str, cache: Path = DEFAULT_CACHE) -> Path:
    """A bundle exported from a random-initialised open_clip `model` (cached)."""
    out = cache / f"{model}-random"
    if (out / "manifest.json").is_file():
        return out
    import torch  # only for exporting; the server under test never imports it

    from clipserve.training.export.bundle import export_bundle
    from clipserve.training.model import ModelSpec, create_model

    torch.manual_seed(0)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"exporting random-initialised {model} to {out} ...", flush=True)
    export_bundle(create_model(ModelSpec(model)), out)
    return out


class ServerProcess:
    """`clipserve serve` in a subprocess (port 0, port file); `rss()` reads its memory."""

    def __init__(self, bundle: Path, workdir: Path, *flags: str, env: dict[str, str] | None = None):
        port_file = workdir / "port"
        port_file.unlink(missing_ok=True)
        self.log_path = workdir / "server.log"
        cmd = [sys.executable, "-m", "clipserve.cli.main", "serve", "--bundle", str(bundle),
               "--port", "0", "--index-path", str(workdir / "index"), "--port-file",
               str(port_file), "--log-level", "WARNING", *flags]  # fmt: skip
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSERVE_")}
        full_env.update(env or {})
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        deadline = time.monotonic() + 300
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"
        with ClipServeClient(self.target) as client:
            client.wait_ready(120)

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def photo(width: int, height: int, fmt: str, seed: int = 0, quality: int = 85) -> bytes:
    """A picture of flat blocks: decodes to full size, compresses to very little, so one
    request can carry many of them (the adversarial case: few bytes, many pixels)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 512 + 2, width // 512 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, "JPEG", quality=quality)
    else:
        image.save(buf, fmt, compress_level=9)
    return buf.getvalue()


def small_jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()
