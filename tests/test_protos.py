"""The committed generated code is what the .proto files produce today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install -e '.[dev]')")
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert written, "no code generated"
    stale = []
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = ROOT / "protos" / rel
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(rel))
    protos = ROOT / "protos"
    # Python's own bytecode caches are not generated code (nor committed)
    committed_files = {
        p.relative_to(protos) for p in protos.rglob("*_pb2*.py*") if "__pycache__" not in p.parts
    }
    orphans = committed_files - {p.relative_to(tmp_path) for p in written}
    assert not stale, f"generated code is stale, run ./dev protos: {stale}"
    assert not orphans, f"generated files without a .proto: {sorted(map(str, orphans))}"


def test_contract_is_versioned() -> None:
    from vigie.v1 import alert_pb2, analyst_pb2, ingest_pb2

    assert alert_pb2.DESCRIPTOR.package == "vigie.v1"
    alert = alert_pb2.Alert.DESCRIPTOR.fields_by_name
    for name in (
        "id",
        "observed_at",
        "first_seen",
        "last_seen",
        "detector",
        "severity",
        "technique",
        "summary",
        "entities",
        "metrics",
        "occurrences",
    ):
        assert name in alert, name
    entity = alert_pb2.Entity.DESCRIPTOR.fields_by_name
    assert {"role", "kind", "value", "pseudonymised"} <= set(entity)
    assert "Stream" in ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].methods_by_name
    assert "ListAlerts" in analyst_pb2.DESCRIPTOR.services_by_name["Analyst"].methods_by_name
