"""The store's writes in a process of their own (SQLite).

Reading the alerts, the correlation rules and SQLite's calls are most of the collector's
Python work per batch. In the serving process they would share one GIL with the event
loop that serves every agent's stream, and the writer, which gives the GIL up at every
SQLite call, would wait behind the loop each time it wants it back. Here the serving
process hands each group commit over a pipe (batches as serialized protobuf: a copy in
C, not a pickle of objects) and the writer process answers with the per-batch results,
after its commit.

If the writer process dies, the group in hand fails (its streams get no ack, their agents
send again: storage is idempotent) and the next group starts a new process.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import signal
import threading
from collections.abc import Sequence
from typing import Any

from collector.store.sql import Events, Stored
from common import logs

log = logs.get("collector.ingest")

_PR_SET_PDEATHSIG = 1


class WriterError(Exception):
    """The writer process failed to store a group (its message), or died."""


class WriterProcess:
    """`ingest_many` as the store has it, run in a child process on its own connection."""

    def __init__(self, url: str, synchronous: str, correlation: dict[str, Any]) -> None:
        self._args = (url, synchronous, correlation)
        # spawn, not fork: the serving process runs gRPC's threads, which fork would copy
        # in an undefined state.
        self._ctx = mp.get_context("spawn")
        self.events = Events()  # what the writer process reported going wrong
        self._lock = threading.Lock()  # one group at a time on the pipe
        self._proc = None
        self._conn = None
        self._start()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_main, args=(child, *self._args), name="vigie-collector-writer", daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent

    def ingest_many(self, batches: Sequence[tuple], heartbeats: Sequence[tuple] = ()) -> list:
        from vigie.v1 import ingest_pb2

        request = (
            [(_origin(o), ingest_pb2.AlertBatch(alerts=a).SerializeToString()) for o, a in batches],
            [(_origin(o), hb.SerializeToString()) for o, hb in heartbeats],
        )
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                log.warning("writer_restarted")
                self._start()
            try:
                self._conn.send(request)
                ok, result, events = self._conn.recv()
            except (EOFError, OSError) as exc:
                self._proc.join(1)
                self._proc = None
                raise WriterError(f"the writer process died: {exc!r}") from None
        for (name, label), n in events.items():
            self.events.add(name, label, n)
        if not ok:
            raise WriterError(result)
        return [Stored(*r) for r in result]

    def close(self) -> None:
        with self._lock:
            if self._proc is None:
                return
            self._conn.close()  # the writer sees EOF and returns
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None


def _origin(o) -> tuple[str, str, str, str]:
    return (o.agent_id, o.finess, o.ght, o.region)


def _main(conn, url: str, synchronous: str, correlation: dict[str, Any]) -> None:
    # Die with the serving process, even when it is killed with -9: a writer left behind
    # would hold the database open.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    from collector.store import Origin, open_store
    from vigie.v1 import ingest_pb2

    store = open_store(url, synchronous, correlation)
    try:
        while True:
            try:
                batches, beats = conn.recv()
            except (EOFError, OSError):
                return
            try:
                result = store.ingest_many(
                    [(Origin(*o), ingest_pb2.AlertBatch.FromString(b).alerts) for o, b in batches],
                    [(Origin(*o), ingest_pb2.Heartbeat.FromString(b)) for o, b in beats],
                )
                conn.send((True, [tuple(r) for r in result], store.events.take()))
            except Exception as exc:
                # Only what retrying can mend gets here (the store keeps the rest aside).
                conn.send((False, f"{type(exc).__name__}: {exc}", store.events.take()))
    finally:
        store.close()
