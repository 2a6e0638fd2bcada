"""The committed generated modules are exactly what `make proto` produces from the .proto, and
the contract keeps its conventions (package, UNSPECIFIED = 0 enums, the RPCs clients rely on)."""

from __future__ import annotations

from pathlib import Path

from clipserve.proto import generate
from clipserve.proto.v1 import clipserve_pb2 as pb


def test_committed_stubs_equal_a_fresh_generation(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert len(written) == 3
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = generate.PROTO_ROOT / rel
        assert committed.read_bytes() == path.read_bytes(), f"{rel} is stale: run `make proto`"


def test_check_mode_reports_up_to_date_and_detects_drift(tmp_path: Path) -> None:
    assert generate.main(["--check"]) == 0
    generate.generate(tmp_path)
    (tmp_path / "v1" / "clipserve_pb2.py").write_text("# edited by hand\n")
    assert generate.stale_files(tmp_path) == ["v1/clipserve_pb2.py"]


def test_generated_imports_use_the_installed_package_path() -> None:
    grpc_module = (generate.PROTO_ROOT / "v1" / "clipserve_pb2_grpc.py").read_text()
    assert "from clipserve.proto.v1 import clipserve_pb2" in grpc_module


def test_contract_conventions() -> None:
    assert pb.DESCRIPTOR.package == "clipserve.v1"
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.name
    service = pb.DESCRIPTOR.services_by_name["ClipServe"]
    assert {"Embed", "Upsert", "Query", "Info"} <= set(service.methods_by_name)
    assert pb.Content.DESCRIPTOR.oneofs_by_name["kind"].fields
    assert pb.QueryRequest.DESCRIPTOR.fields_by_name["top_k"].has_presence
