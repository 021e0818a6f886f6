"""The storage suite, run on both backends: SQLite (default) and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store import AlertFilter, Origin, Store, StoreError, open_store
from collector.store.sql import MIGRATIONS
from tests.stores import pg_schema_url
from vigie.v1 import alert_pb2, ingest_pb2

A = Origin("agt-a", "111111111", "GHT-A", "11")
B = Origin("agt-b", "222222222", "GHT-B", "84")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vigie.db'}"
    else:
        yield from pg_schema_url()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


def alert(
    i: int,
    rev: int = 1,
    detector: str = "net.portscan",
    sev: int = 3,
    t: float = 1_700_000_000.0,
    occurrences: int = 1,
) -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=f"id{i}",
        revision=rev,
        detector=detector,
        severity=sev,
        technique="T1046",
        summary=f"s{i}",
        occurrences=occurrences,
    )
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromSeconds(int(t))
    a.entities.add(role=1, kind=1, value="203.0.113.7", pseudonymised=False)
    a.metrics["distinct_ports"] = 12.0
    return a


def test_ingest_round_trip(store: Store) -> None:
    assert store.ingest(A, [alert(1), alert(2)]) == (2, 0, 0)
    page, cursor = store.list_alerts(AlertFilter())
    assert cursor is None
    assert [(o, a.id) for o, a, _ in page] == [(A, "id2"), (A, "id1")]
    got = page[1][1]
    assert got.entities[0].value == "203.0.113.7" and got.metrics["distinct_ports"] == 12.0
    assert got.first_seen.seconds == 1_700_000_000


def test_ingest_is_idempotent_and_revision_aware(store: Store) -> None:
    store.ingest(A, [alert(1)])
    assert store.ingest(A, [alert(1)]) == (0, 1, 0)
    assert store.ingest(A, [alert(1, rev=3, occurrences=9)]) == (1, 0, 0)
    assert store.ingest(A, [alert(1, rev=2, occurrences=4)]) == (0, 1, 0)
    (row,) = store.list_alerts(AlertFilter())[0]
    assert (row[1].revision, row[1].occurrences) == (3, 9)
    assert store.ingest(B, [alert(1)]) == (1, 0, 0)  # another agent's id1 is another alert
    assert store.count_alerts() == 2


def test_filters_and_cursor_paging(store: Store) -> None:
    store.ingest(
        A, [alert(i, detector="net.portscan", sev=3, t=1_700_000_000 + i) for i in range(10)]
    )
    store.ingest(
        B, [alert(i, detector="net.bruteforce", sev=4, t=1_700_000_100 + i) for i in range(5)]
    )
    seen, cursor = [], None
    while True:
        page, cursor = store.list_alerts(AlertFilter(), limit=4, before_n=cursor)
        seen += page
        if cursor is None:
            break
    assert len(seen) == 15 and len({(o.agent_id, a.id) for o, a, _ in seen}) == 15
    assert {o for o, _, _ in store.list_alerts(AlertFilter(region="84"))[0]} == {B}
    assert len(store.list_alerts(AlertFilter(min_severity=4))[0]) == 5
    assert len(store.list_alerts(AlertFilter(detector="net.portscan", ght="GHT-A"))[0]) == 10
    assert len(store.list_alerts(AlertFilter(since=1_700_000_100))[0]) == 5
    assert len(store.list_alerts(AlertFilter(until=1_700_000_005))[0]) == 5


def test_filter_values_are_parameters_not_sql(store: Store) -> None:
    store.ingest(A, [alert(1)])
    evil = "x' OR '1'='1"
    assert store.list_alerts(AlertFilter(ght=evil))[0] == []
    assert store.list_alerts(AlertFilter(detector="%"))[0] == []
    assert store.count_alerts() == 1


def test_heartbeat_updates_the_fleet(store: Store) -> None:
    hb = ingest_pb2.Heartbeat(
        agent_version="1.2.3", packets_dropped=7, outbox_depth=42, outbox_shed=3
    )
    store.heartbeat(A, hb, received_at=1000.0)
    store.heartbeat(A, hb, received_at=2000.0)
    (row,) = store.list_agents()
    assert (row["agent_id"], row["agent_version"], row["outbox_shed"]) == ("agt-a", "1.2.3", 3)
    assert row["first_seen"] == 1000.0 and row["last_seen"] == 2000.0


def test_migrations_run_once_even_when_replicas_start_together(store_url: str) -> None:
    results: list[list[int]] = []
    errors: list[Exception] = []

    def start() -> None:
        try:
            s = open_store(store_url)
            results.append(s.migrate())  # a second call applies nothing more
            s.close()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [[]] * 4  # every start found the schema already at the last version
    s = open_store(store_url)
    with s.backend.tx() as tx:
        versions = [r["version"] for r in tx.fetch("SELECT version FROM schema_migrations")]
    s.close()
    assert sorted(versions) == [v for v, _ in MIGRATIONS]


def test_concurrent_ingest_of_the_same_alert_stores_it_once(store_url: str) -> None:
    """Two replicas receive the same re-sent batch at the same moment."""
    stores = [open_store(store_url) for _ in range(3)]
    barrier = threading.Barrier(3)
    results = []

    def go(s: Store) -> None:
        barrier.wait()
        results.append(s.ingest(A, [alert(i) for i in range(50)]))

    threads = [threading.Thread(target=go, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r[0] for r in results) == 50
    assert stores[0].count_alerts() == 50
    for s in stores:
        s.close()


def test_bad_url_is_refused() -> None:
    with pytest.raises(StoreError, match="must start with"):
        open_store("mysql://nope")


def test_unreachable_postgres_is_a_clear_error() -> None:
    t = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach PostgreSQL"):
        open_store("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1")
    assert time.monotonic() - t < 30
