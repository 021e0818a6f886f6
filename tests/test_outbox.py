"""The agent's outbox: durable, revision-aware, bounded with shedding counted."""

from __future__ import annotations

from pathlib import Path

from agent.outbox.store import Outbox
from vigie.v1 import alert_pb2


def _a(i: int, sev: int = alert_pb2.SEVERITY_MEDIUM, rev: int = 1) -> alert_pb2.Alert:
    return alert_pb2.Alert(
        id=f"id{i}", revision=rev, severity=sev, detector="net.portscan", summary="s", occurrences=1
    )


def test_survives_reopen_and_keeps_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(5):
        box.put(_a(i))
    box.close()
    box = Outbox(tmp_path / "o.db")
    assert [r[0] for r in box.pending(10)] == [f"id{i}" for i in range(5)]
    assert [r[0] for r in box.pending(10, exclude={"id0", "id1"})][:1] == ["id2"]


def test_ack_keeps_a_newer_revision(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(_a(1))
    (item,) = box.pending(10)
    box.put(_a(1, rev=2))  # grew while revision 1 was in flight
    box.ack([(item[0], item[1])])
    assert [(r[0], r[1]) for r in box.pending(10)] == [("id1", 2)]
    box.ack([("id1", 2)])
    assert box.depth() == 0


def test_bound_sheds_oldest_low_severity_first_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_alerts=10)
    for i in range(5):
        box.put(_a(i, alert_pb2.SEVERITY_HIGH))
    for i in range(5, 15):
        box.put(_a(i, alert_pb2.SEVERITY_LOW))
    assert box.depth() == 10
    assert box.shed() == 5
    ids = {r[0] for r in box.pending(100)}
    assert {f"id{i}" for i in range(5)} <= ids  # every high-severity alert kept
    box.close()
    assert Outbox(tmp_path / "o.db", max_alerts=10).shed() == 5  # the count persists
