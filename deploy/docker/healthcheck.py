#!/usr/bin/env python3
"""Container health check: asks the server's grpc.health.v1 service; exit 0 only on SERVING.

    clipserve-healthcheck [--host 127.0.0.1] [--port $CLIPSERVE_PORT or 50051] [--service ""]
                          [--timeout 3] [--tls [--ca FILE]]

Docker's HEALTHCHECK and compose use it; Kubernetes uses its native `grpc:` probe instead
(which cannot speak TLS: with --tls-cert on the server, use this script as an exec probe).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clipserve-healthcheck", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("CLIPSERVE_PORT") or 50051),
        help="default: $CLIPSERVE_PORT (the server's own setting), else 50051",
    )
    p.add_argument("--service", default="", help='"" = the whole server (default)')
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca", help="CA bundle for --tls (default: the system roots)")
    args = p.parse_args(argv)
    target = f"{args.host}:{args.port}"
    if args.tls:
        roots = open(args.ca, "rb").read() if args.ca else None  # noqa: SIM115
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots))
    else:
        channel = grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
        )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name} {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
