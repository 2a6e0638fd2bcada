"""A real `tritonserver` for tests, from the nvidia-pytriton wheel, run as a subprocess.

The wheel ships tritonserver 2.51 with its python backend (not the onnxruntime backend), and
pins numpy < 2, so it lives in its own virtualenv, `.triton-env` (made by `make triton-env`, or
by `ensure_env` on first use), with numpy 1.26 and onnxruntime for the python-backend models;
the project's own environment keeps its numpy. Launching follows pytriton's own
`Triton._prepare_triton_inference_server` / `TritonServer._get_env`: the backends directory is
copied to a workspace, the stub built for this Python is put into backends/python, the bundled
libraries (nvidia_pytriton.libs) plus this Python's libpython directory go on LD_LIBRARY_PATH,
and the virtualenv's bin/ goes first on PATH: the stub's embedded interpreter ignores
PYTHONPATH and takes its environment from the `python3` it finds on PATH.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_DIR = ROOT / ".triton-env"
PYTRITON = "nvidia-pytriton==0.7.0"
ENV_PACKAGES = ("numpy==1.26.*", "onnxruntime")


def _site_packages(env: Path) -> Path:
    return env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def ensure_env(env: Path = ENV_DIR) -> Path:
    """The tritonserver virtualenv, installed with pip on first use (~300 MB, 1-2 min)."""
    stamp = env / ".installed"
    if stamp.is_file():
        return env
    shutil.rmtree(env, ignore_errors=True)
    # The stub embeds this interpreter's libpython, so the venv must use this same Python.
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    subprocess.run([str(base), "-m", "venv", str(env)], check=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]  # fmt: skip
    # --no-deps: only its files are needed (the binary, backends, stubs, libraries); its
    # Python dependencies would pull tritonclient and friends in a second time.
    subprocess.run([*pip, "--no-deps", PYTRITON], check=True)
    subprocess.run([*pip, *ENV_PACKAGES], check=True)
    stamp.touch()
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonServer:
    """`tritonserver` on 127.0.0.1 (gRPC only) serving `repository`, models loaded explicitly;
    on `port`, or a free one (a restart passes the port of the server it replaces)."""

    def __init__(
        self, repository: Path, models: list[str], env: Path = ENV_DIR, port: int | None = None
    ) -> None:
        self.env = ensure_env(env)
        site = _site_packages(self.env)
        dist = site / "pytriton" / "tritonserver"
        self.binary = dist / "bin" / "tritonserver"
        self.workspace = Path(tempfile.mkdtemp(prefix="tritonserver-"))
        backends = self.workspace / "backends"
        shutil.copytree(dist / "backends", backends)
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise RuntimeError(f"nvidia-pytriton has no python backend stub for Python {version}")
        shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
        self.port = port or free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log_path = self.workspace / "tritonserver.log"
        libs = [str(site / "nvidia_pytriton.libs"), str(sysconfig.get_config_var("LIBDIR"))]
        environ = dict(os.environ)
        environ["LD_LIBRARY_PATH"] = ":".join(
            libs + [p for p in [environ.get("LD_LIBRARY_PATH")] if p]
        )
        environ["PATH"] = f"{self.env / 'bin'}:{environ.get('PATH', '')}"
        environ.pop("PYTHONPATH", None)
        environ.pop("PYTHONHOME", None)
        environ["OMP_NUM_THREADS"] = environ.get("OMP_NUM_THREADS", "1")
        cmd = [
            str(self.binary),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in models),
            "--exit-on-error=true",
            "--exit-timeout-secs=5",
        ]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=environ, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        import tritonclient.grpc as triton

        client = triton.InferenceServerClient(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tritonserver exited {self.proc.returncode}:\n{self.log()}")
                try:
                    if client.is_server_ready(client_timeout=2):
                        return
                except Exception:
                    pass
                time.sleep(0.5)
        finally:
            client.close()
        raise TimeoutError(f"tritonserver not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.workspace, ignore_errors=True)


if __name__ == "__main__":  # `make triton-env`
    print(f"tritonserver environment ready in {ensure_env()}")
