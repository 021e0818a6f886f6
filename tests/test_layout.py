"""agent/ and collector/ never import each other; the wire contract is protos/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for n in names:
                found.add((str(path.relative_to(ROOT)), n.split(".")[0]))
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("agent", {"collector", "analyst"}),
        ("collector", {"agent", "analyst"}),
        ("analyst", {"agent", "collector"}),
        ("common", {"agent", "collector", "analyst"}),
    ],
)
def test_no_cross_imports(package: str, forbidden: set[str]) -> None:
    bad = sorted(f"{f} imports {m}" for f, m in _imports(package) if m in forbidden)
    assert not bad, bad


def test_every_streaming_call_of_the_collector_is_a_coroutine() -> None:
    """A streaming handler written as a plain function holds one of the collector's few
    pool threads for as long as its client keeps the call (or forever, if it waits for a
    change that never comes): a handful of abandoned calls then starve every analyst query
    and hang the shutdown. Streaming handlers live on the event loop."""
    import inspect

    from grpc_health.v1 import health_pb2

    from collector.enroll.servicer import RenewalServicer
    from collector.ingest.servicer import IngestServicer
    from collector.query.servicer import AnalystServicer
    from collector.server import Health
    from vigie.v1 import analyst_pb2, enroll_pb2, ingest_pb2

    served = [
        (IngestServicer, ingest_pb2.DESCRIPTOR.services_by_name["Ingest"]),
        (AnalystServicer, analyst_pb2.DESCRIPTOR.services_by_name["Analyst"]),
        (RenewalServicer, enroll_pb2.DESCRIPTOR.services_by_name["Renewal"]),
        (Health, health_pb2.DESCRIPTOR.services_by_name["Health"]),
    ]
    streaming = [
        (cls, m.name)
        for cls, service in served
        for m in service.methods
        if m.client_streaming or m.server_streaming
    ]
    assert len(streaming) >= 3  # Ingest.Stream, Analyst.WatchIncidents, Health.Watch
    blocking = [
        f"{cls.__name__}.{name}"
        for cls, name in streaming
        if not inspect.isasyncgenfunction(getattr(cls, name))
    ]
    assert not blocking, blocking
