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


_DIALECT_BRANCHES_ALLOWED = {"collector/store/backends.py"}


def test_no_dialect_branches_outside_the_dialect() -> None:
    """SQLite and PostgreSQL differ only in the Dialect (collector/store/backends.py):
    elsewhere the store writes each query once and asks the Dialect, never which database
    it runs on, so that a difference is found, and changed, in one place."""
    names = {"sqlite", "postgresql", "postgres"}

    def is_dialect(node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, ast.Attribute):
            return node.attr == "dialect"
        return isinstance(node, ast.Name) and node.id == "dialect"

    found = []
    for path in (ROOT / "collector").rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        if rel in _DIALECT_BRANCHES_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare) and any(
                is_dialect(x) for x in [node.left, *node.comparators]
            ):
                found.append(f"{rel}:{node.lineno}")
    assert not found, found


def test_detectors_use_only_declared_hooks() -> None:
    """Every `on_*` method a detector class defines is a hook listed in
    agent/detect/hooks.py, and every class attribute it sets is a listed declaration: a
    new hook or declaration is added there, with its documentation, before it is used."""
    from agent.detect import hooks, registry

    bad = set()
    for det in registry.DETECTORS:
        for cls in det.__mro__[:-1]:  # the detector and its bases, not `object`
            for attr, value in vars(cls).items():
                if attr.startswith("_"):
                    continue
                if attr.startswith("on_") and attr not in hooks.HOOKS:
                    bad.add(f"{cls.__name__}.{attr}: not a hook")
                elif (
                    not callable(value)
                    and not isinstance(value, classmethod | staticmethod)
                    and attr not in hooks.DECLARATIONS
                ):
                    bad.add(f"{cls.__name__}.{attr}: not a declaration")
    assert not bad, sorted(bad)


def test_no_detector_name_in_the_pipeline() -> None:
    """The pipeline reads what detectors declare, never which detector it is."""
    from agent.detect import registry

    names = {d.name for d in registry.DETECTORS} | {
        registry.config_key(d) for d in registry.DETECTORS
    }
    tree = ast.parse((ROOT / "agent" / "pipeline.py").read_text(encoding="utf-8"))
    found = [
        f"line {node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert not found, found


def _private_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """`x._name = ...` (or augmented, annotated, in a tuple, through setattr) where x is
    not self or cls: another object's private field."""
    out = []

    def foreign(owner: ast.expr) -> bool:
        return not (isinstance(owner, ast.Name) and owner.id in ("self", "cls"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            targets = []
        while targets:
            t = targets.pop()
            if isinstance(t, ast.Tuple | ast.List):
                targets.extend(t.elts)
            elif isinstance(t, ast.Starred):
                targets.append(t.value)
            elif (
                isinstance(t, ast.Attribute)
                and t.attr.startswith("_")
                and not t.attr.startswith("__")
                and foreign(t.value)
            ):
                out.append((node.lineno, ast.unparse(t)))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) >= 2
            and foreign(node.args[0])
        ):
            name = node.args[1]
            if not (isinstance(name, ast.Constant) and not str(name.value).startswith("_")):
                out.append((node.lineno, ast.unparse(node)))
    return out


def test_no_private_field_writes_across_objects() -> None:
    """An object's private fields are written by its own methods only: a change of state
    another object needs goes through a public method (IntelFile.mark_stale,
    Detector.set_allow), which says what it means and keeps the owner's invariants."""
    found = []
    for package in ("agent", "collector", "common", "analyst"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found += [f"{path.relative_to(ROOT)}:{n}: {w}" for n, w in _private_writes(tree)]
    assert not found, found


def test_private_write_check_sees_what_it_must() -> None:
    src = "x._a = 1\nself._b = 2\na.b._c += 1\nsetattr(o, '_d', 1)\ncls._e = 3\nx.f = 4\n"
    assert [n for n, _ in _private_writes(ast.parse(src))] == [1, 3, 4]
