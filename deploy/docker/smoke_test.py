"""`make deploy-test`: build the CPU serving image and smoke-test it for real.

1. a Docker engine (deploy/docker/ensure-docker.sh: apt docker.io, start dockerd),
2. a local Debian base image (deploy/docker/base-image.sh: debootstrap + docker import, cached),
3. the wheels (deploy/docker/wheelhouse.sh, cached) and the serve-cpu image on that base,
4. a tiny bundle exported with the real export code (random-init clipserve-tiny, cached),
5. the container on the mounted bundle: Docker's HEALTHCHECK and a grpc.health.v1 check read
   SERVING, one Embed and one Upsert + Query succeed, and `docker stop` (SIGTERM) ends it
   cleanly (exit code 0, drained) well within the grace period.

Prints the time of every step. Root only (docker, apt, debootstrap); no registry is needed.
    .venv/bin/python deploy/docker/smoke_test.py [--workdir work/deploy-test] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
BASE_TAG = "clipserve-base:bookworm"
IMAGE = "clipserve:cpu-smoke"
CONTAINER = "clipserve-smoke"


class Steps:
    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []
        self.t0 = time.perf_counter()

    def run(self, name: str, fn, *args):  # noqa: ANN001, ANN202
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        result = fn(*args)
        self.times.append((name, time.perf_counter() - start))
        print(f"   {name}: {self.times[-1][1]:.1f} s", flush=True)
        return result

    def report(self) -> None:
        print("\nstep                                          seconds")
        for name, seconds in self.times:
            print(f"{name:<45} {seconds:8.1f}")
        print(f"{'total':<45} {time.perf_counter() - self.t0:8.1f}")


def sh(*cmd: str | Path, capture: bool = False, check: bool = True) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], check=check, text=True, capture_output=capture, cwd=ROOT
    )
    return out.stdout if capture else ""


def build_image() -> None:
    sh(DOCKER_DIR / "wheelhouse.sh", "serve")
    sh(
        "docker", "build", "--quiet",
        "-f", DOCKER_DIR / "serve-cpu.Dockerfile",
        "--build-arg", f"BASE_IMAGE={BASE_TAG}",
        "--build-arg", "PIP_NO_INDEX=1",
        "-t", IMAGE, ".",
    )  # fmt: skip
    size = sh("docker", "image", "inspect", "--format", "{{.Size}}", IMAGE, capture=True)
    print(f"   {IMAGE}: {int(size) / 1e6:.0f} MB")


def export_bundle(models: Path) -> Path:
    """A random-init clipserve-tiny bundle, exported (and parity-checked) by the real code."""
    bundle = models / "bundle"
    if (bundle / "manifest.json").is_file():
        print(f"   reusing {bundle}")
        return bundle
    import torch

    from clipserve.training.export.bundle import main as export_main
    from clipserve.training.model import ModelSpec, create_model, save_checkpoint

    torch.manual_seed(0)
    loaded = create_model(ModelSpec("clipserve-tiny"))
    checkpoint = models.parent / "tiny.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        checkpoint,
        {"model": loaded.model.state_dict(), "model_name": "clipserve-tiny", "pretrained": None,
         "step": 0, "metrics": {"note": "random init, deploy smoke test"}},
    )  # fmt: skip
    if export_main([str(checkpoint), "--out", str(bundle)]) != 0:
        raise SystemExit("export failed")
    return bundle


def start_container(models: Path) -> int:
    sh("docker", "rm", "-f", CONTAINER, check=False, capture=True)
    sh(
        "docker", "run", "--detach", "--name", CONTAINER,
        "--publish", "127.0.0.1::50051",
        "--volume", f"{models}:/models:ro",
        "--env", "CLIPSERVE_GRACE_S=10",
        IMAGE,
    )  # fmt: skip
    mapping = sh("docker", "port", CONTAINER, "50051/tcp", capture=True).split()[0]
    return int(mapping.rsplit(":", 1)[1])


def docker_health() -> str:
    out = sh("docker", "inspect", "--format", "{{json .State}}", CONTAINER, capture=True)
    state = json.loads(out)
    if not state.get("Running"):
        raise SystemExit(f"container exited: {state}\n{logs()}")
    return state.get("Health", {}).get("Status", "none")


def logs() -> str:
    out = subprocess.run(["docker", "logs", CONTAINER], text=True, capture_output=True, check=False)
    return out.stdout + out.stderr


def wait_healthy(port: int, timeout_s: float = 180.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    start = time.monotonic()
    deadline = start + timeout_s
    serving = False
    while time.monotonic() < deadline:
        if not serving:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service="clipserve.v1.ClipServe"), timeout=2
                    )
                    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
                    if serving:
                        elapsed = time.monotonic() - start
                        print(
                            f"   grpc.health.v1 clipserve.v1.ClipServe: SERVING after {elapsed:.1f} s"
                        )
                except grpc.RpcError:
                    pass
        status = docker_health()
        if serving and status == "healthy":
            print("   docker HEALTHCHECK (clipserve-healthcheck in the image): healthy")
            return
        time.sleep(1)
    raise SystemExit(f"not healthy within {timeout_s:.0f} s (docker: {docker_health()})\n{logs()}")


def embed_upsert_query(port: int) -> None:
    import numpy as np
    from PIL import Image

    from clipserve.serving.client import ClipServeClient

    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :, 0] = 220
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    image = buf.getvalue()
    with ClipServeClient(f"127.0.0.1:{port}", timeout_s=60) as client:
        vectors = client.embed(["a small red circle", image])
        norms = np.linalg.norm(vectors, axis=1)
        print(f"   Embed: {vectors.shape}, norms {norms.round(4).tolist()}")
        assert vectors.shape[0] == 2 and np.allclose(norms, 1.0, atol=1e-3), norms
        ids = client.upsert([(image, {"source": "smoke"})])
        hits = client.query(image=image, top_k=1, filter={"source": "smoke"})
        print(f"   Upsert: {ids}; Query: {[(h.id, round(h.score, 4)) for h in hits]}")
        assert hits and hits[0].id == ids[0], (ids, hits)


def stop_container() -> float:
    start = time.perf_counter()
    sh("docker", "stop", "--time", "30", CONTAINER, capture=True)  # SIGTERM, SIGKILL after 30 s
    seconds = time.perf_counter() - start
    state = json.loads(
        sh("docker", "inspect", "--format", "{{json .State}}", CONTAINER, capture=True)
    )
    text = logs()
    print(f"   exit code {state['ExitCode']}, OOMKilled {state['OOMKilled']}, {seconds:.1f} s")
    if state["ExitCode"] != 0 or "stopped" not in text:
        raise SystemExit(f"unclean stop: exit code {state['ExitCode']}\n{text}")
    if seconds >= 25:
        raise SystemExit(f"stop took {seconds:.1f} s: SIGTERM was not handled promptly\n{text}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=ROOT / "work" / "deploy-test")
    p.add_argument("--keep", action="store_true", help="keep the stopped container")
    args = p.parse_args(argv)
    models = args.workdir.resolve() / "models"
    models.mkdir(parents=True, exist_ok=True)
    steps = Steps()
    steps.run("docker engine", sh, DOCKER_DIR / "ensure-docker.sh")
    steps.run("base image (debootstrap, cached)", sh, DOCKER_DIR / "base-image.sh", BASE_TAG)
    steps.run("serve-cpu image build", build_image)
    steps.run("tiny bundle export (cached)", export_bundle, models)
    try:
        port = steps.run("container start", start_container, models)
        steps.run("health SERVING (grpc + docker)", wait_healthy, port)
        steps.run("Embed + Upsert + Query", embed_upsert_query, port)
        steps.run("docker stop (SIGTERM, drain)", stop_container)
    finally:
        if not args.keep:
            sh("docker", "rm", "-f", CONTAINER, check=False, capture=True)
    steps.report()
    print("\ndeploy smoke test: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
