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


def _fill_database(box: Outbox) -> None:
    """SQLite's own page limit answers SQLITE_FULL exactly as a full disk does."""
    assert box._db is not None
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")


def test_full_database_holds_in_memory_no_rollback_cascade(tmp_path: Path) -> None:
    t = [0.0]
    box = Outbox(tmp_path / "o.db", memory_alerts=20, low_space_mb=0, clock=lambda: t[0])
    box.put(_a(0))
    _fill_database(box)
    for i in range(1, 31):  # used to raise "database or disk is full", then exit
        big = _a(i)
        big.summary = "x" * 5000
        box.put(big)
    assert box.disk_full and box._db is not None and not box._db.in_transaction
    assert box.memory_queued() == 20 and box.shed_counts()["disk_full"] == 10
    assert box.depth() == 21 and len(box.pending(100)) == 21
    box._db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    t[0] += 2
    box.tick()
    assert not box.disk_full and box.memory_queued() == 0 and box.depth() == 21
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert again.shed() == 10 and again.shed_counts() == {"max_alerts": 0, "disk_full": 10}


def test_status_and_metrics_of_a_full_outbox(tmp_path: Path) -> None:
    import threading
    import time
    from types import SimpleNamespace

    from agent import service, settings
    from agent.anonymise.policy import Anonymiser
    from agent.pipeline import Pipeline
    from common import config, metrics
    from tests.test_metrics import promtool_clean

    box = Outbox(tmp_path / "o.db", memory_alerts=5, clock=lambda: 0.0)
    _fill_database(box)
    for i in range(8):
        big = _a(i)
        big.summary = "x" * 5000  # more than the pages left: every one fails to fit
        box.put(big)
    cfg = config.defaults(settings.SCHEMA)
    cfg["state_dir"] = str(tmp_path)
    svc = service.Service.__new__(service.Service)  # no signal handlers in a test process
    svc.reloads = {"applied": 0, "refused": 0}
    svc.logs = None
    svc.pipe = Pipeline(
        cfg, Anonymiser.from_settings(cfg["anonymisation"], tmp_path), [].append, time.time
    )
    sender = SimpleNamespace(connected=threading.Event(), acked=0, connects=0)
    svc.delivery = SimpleNamespace(outbox=box, sender=sender)  # type: ignore[assignment]
    assert "disk full: 5 alerts held in memory, 3 shed" in svc.status()
    text = service.agent_metrics(svc, None, lambda: (0, 0)).render()  # type: ignore[arg-type]
    s = metrics.parse(text)
    assert s["vigie_agent_outbox_memory_queued"] == 5
    assert s['vigie_agent_outbox_shed_total{reason="disk_full"}'] == 3
    assert s['vigie_agent_outbox_shed_total{reason="max_alerts"}'] == 0
    assert s["vigie_agent_outbox_disk_full"] == 1
    assert s["vigie_agent_state_dir_free_bytes"] > 0
    promtool_clean(text)
    box.close()
