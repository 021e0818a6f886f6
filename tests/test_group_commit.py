"""The collector's writer: batches arriving together share one transaction, each stream
learns its own result, and a batch that cannot be stored fails alone."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from collector.ingest.commit import GroupCommit
from collector.store import Origin, open_store
from vigie.v1 import alert_pb2, ingest_pb2


def _alert(aid: str) -> alert_pb2.Alert:
    a = alert_pb2.Alert(id=aid, revision=1, detector="net.portscan", severity=3, summary="x")
    for f in (a.first_seen, a.last_seen, a.observed_at):
        f.FromSeconds(1_700_000_000)
    return a


def _origin(n: int) -> Origin:
    return Origin(f"agt-{n}", f"{n:09d}", f"GHT-{n % 3}", "11")


class SlowStore:
    """A store whose commits take a while, as an fsync does: batches pile up meanwhile."""

    def __init__(self, store, fail_ids: set[str] = frozenset()) -> None:
        self.store, self.fail_ids = store, fail_ids
        self.groups: list[int] = []
        self.go = threading.Event()
        self.entered = threading.Event()

    def ingest_many(self, batches, heartbeats=()):
        self.entered.set()
        self.go.wait(5)
        if any(a.id in self.fail_ids for _, alerts in batches for a in alerts):
            raise RuntimeError("disk full")
        self.groups.append(len(batches) + len(heartbeats))
        return self.store.ingest_many(batches, heartbeats)


def test_batches_waiting_together_share_a_commit_and_get_their_own_answer(
    tmp_path: Path,
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'v.db'}")
    slow = SlowStore(store)
    writer = GroupCommit(slow)
    try:
        futures = [writer.submit(_origin(n), [_alert(f"a{n}-{i}") for i in range(n)])
                   for n in range(1, 21)]  # fmt: skip
        dup = writer.submit(_origin(5), [_alert("a5-0"), _alert("a5-new")])
        beat = writer.submit_heartbeat(_origin(1), ingest_pb2.Heartbeat(agent_version="t"))
        slow.go.set()
        assert [f.result(5) for f in futures] == [(n, 0, 0) for n in range(1, 21)]
        assert dup.result(5) == (1, 1, 0)  # one new, one already stored by the same group
        assert beat.result(5) is None
        assert sum(slow.groups) == 22 and len(slow.groups) < 22  # grouped, nothing lost
        assert store.count_alerts() == sum(range(1, 21)) + 1
        assert {a["agent_id"]: a["agent_version"] for a in store.list_agents()}["agt-1"] == "t"
    finally:
        writer.close()
        store.close()


def test_a_batch_that_fails_fails_alone(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'v.db'}")
    slow = SlowStore(store, fail_ids={"poison"})
    writer = GroupCommit(slow)
    try:
        good = [writer.submit(_origin(n), [_alert(f"g{n}")]) for n in range(5)]
        bad = writer.submit(_origin(9), [_alert("poison")])
        more = writer.submit(_origin(7), [_alert("g7b")])
        slow.go.set()
        assert [f.result(5) for f in good] == [(1, 0, 0)] * 5
        assert more.result(5) == (1, 0, 0)
        with pytest.raises(RuntimeError, match="disk full"):
            bad.result(5)
        assert store.count_alerts() == 6
    finally:
        writer.close()
        store.close()


def test_budget_holds_readers_back_and_loses_no_room() -> None:
    """Streams wait for room in the collector-wide budget of unstored alerts, first come
    first served; a stream that ends while waiting leaves the budget whole."""
    from collector.ingest.servicer import Budget

    async def scenario() -> list[str]:
        b = Budget(10)
        order: list[str] = []
        assert await b.take(6) == 6

        async def reader(name: str, n: int) -> None:
            await b.take(n)
            order.append(name)

        first = asyncio.ensure_future(reader("first", 6))
        gone = asyncio.ensure_future(reader("gone", 1))
        small = asyncio.ensure_future(reader("small", 2))  # would fit, but waits its turn
        await asyncio.sleep(0.01)
        assert order == [] and b.used == 6
        gone.cancel()
        await asyncio.sleep(0.01)
        b.give(6)
        await asyncio.gather(first, small)
        assert b.used == 8
        return order

    async def oversize() -> int:  # a batch larger than the whole budget takes all of it
        return await Budget(10).take(50)

    assert asyncio.run(scenario()) == ["first", "small"]
    assert asyncio.run(oversize()) == 10


def test_writer_process_stores_and_comes_back_after_dying(tmp_path: Path) -> None:
    """The SQLite writes run in a child process: results come back per batch; if the child
    dies, the group in hand fails (agents re-send) and the next group gets a new child."""
    import os
    import signal

    from collector.ingest.writer import WriterError, WriterProcess
    from collector.store import open_store as _open

    url = f"sqlite:///{tmp_path / 'v.db'}"
    _open(url).close()  # the serving process migrates before it starts the writer
    w = WriterProcess(url, "FULL", None)
    try:
        assert w.ingest_many([(_origin(1), [_alert("x1"), _alert("x2")])]) == [(2, 0, 0)]
        first = w._proc.pid
        os.kill(first, signal.SIGKILL)
        w._proc.join(5)  # found dead before the next group: a new child takes it
        assert w.ingest_many([(_origin(2), [_alert("y1"), _alert("x1")])]) == [(2, 0, 0)]
        assert w._proc.pid != first
        pid, send = w._proc.pid, w._conn.send

        def dies_meanwhile(req) -> None:  # after the liveness check, before the group
            os.kill(pid, signal.SIGKILL)
            w._proc.join(5)
            send(req)

        w._conn.send = dies_meanwhile
        with pytest.raises(WriterError):
            w.ingest_many([(_origin(3), [_alert("z1")])])
        assert w.ingest_many([(_origin(1), [_alert("x1")])]) == [(0, 1, 0)]
    finally:
        w.close()
    s = _open(url)
    assert s.count_alerts() == 4
    s.close()


def test_a_stream_gone_before_its_commit_stops_nothing(tmp_path: Path) -> None:
    """An agent disconnecting while its batch waits (its future cancelled): the batch is
    stored anyway, and the writer goes on serving everyone else."""
    store = open_store(f"sqlite:///{tmp_path / 'v.db'}")
    slow = SlowStore(store)
    writer = GroupCommit(slow)
    try:
        first = writer.submit(_origin(1), [_alert("held")])
        assert slow.entered.wait(5)  # the writer is committing `first`; `gone` waits
        gone = writer.submit(_origin(2), [_alert("gone")])
        assert gone.cancel()
        slow.go.set()
        assert first.result(5) == (1, 0, 0)
        after = writer.submit(_origin(3), [_alert("after")])
        assert after.result(5) == (1, 0, 0)
        assert store.count_alerts() == 3
    finally:
        writer.close()
        store.close()
