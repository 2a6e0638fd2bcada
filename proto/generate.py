"""Generate the Python gRPC/protobuf modules for proto/v1/*.proto (`make proto`).

    python -m clipserve.proto.generate            # rewrite proto/v1/*_pb2*.py[i]
    python -m clipserve.proto.generate --check    # exit 1 if the committed files are stale

protoc sees the sources under the virtual path `clipserve/proto/` so the generated imports read
`from clipserve.proto.v1 import clipserve_pb2`, exactly the installed package layout. The output
goes to a temporary tree first and only the generated files are copied into proto/v1: nothing is
edited after protoc writes it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent  # the repository's proto/ directory
VIRTUAL_ROOT = "clipserve/proto"  # where protoc believes PROTO_ROOT lives
PROTO_FILES = ("v1/clipserve.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_names(proto_file: str) -> list[str]:
    """Relative paths (under PROTO_ROOT) of the modules generated from one proto file."""
    stem = proto_file.removesuffix(".proto")
    return [stem + suffix for suffix in GENERATED_SUFFIXES]


def generate(dest: Path) -> list[Path]:
    """Run protoc on PROTO_FILES and write the generated modules under `dest` (same relative
    layout as PROTO_ROOT, e.g. dest/v1/clipserve_pb2.py). Returns the written paths.

    Raises RuntimeError with protoc's exit status if it fails.
    """
    try:
        from grpc_tools import protoc  # dev-only dependency
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "grpcio-tools is needed to generate the stubs: pip install 'clipserve[dev]'"
        ) from exc

    well_known = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="clipserve-proto-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={VIRTUAL_ROOT}={PROTO_ROOT}",
            f"--proto_path={well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(f"{VIRTUAL_ROOT}/{f}" for f in PROTO_FILES),
        ]
        status = protoc.main(args)
        if status != 0:
            raise RuntimeError(f"protoc failed with exit status {status}: {' '.join(args)}")
        for proto_file in PROTO_FILES:
            for rel in generated_names(proto_file):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(tmp) / VIRTUAL_ROOT / rel, target)
                written.append(target)
    return written


def stale_files(committed_root: Path = PROTO_ROOT) -> list[str]:
    """Generated files under `committed_root` that differ from a fresh generation."""
    with tempfile.TemporaryDirectory(prefix="clipserve-proto-check-") as tmp:
        generate(Path(tmp))
        stale = []
        for proto_file in PROTO_FILES:
            for rel in generated_names(proto_file):
                committed = committed_root / rel
                fresh = Path(tmp) / rel
                if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
                    stale.append(rel)
        return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipserve.proto.generate", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if generated files are stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated files (run `make proto`): {', '.join(stale)}", file=sys.stderr)
            return 1
        print("generated files are up to date")
        return 0
    for path in generate(PROTO_ROOT):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
