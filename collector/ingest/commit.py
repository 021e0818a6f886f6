"""Group commit: a writer thread stores what every stream brought in one transaction.

With SQLite synchronous=FULL each commit waits for an fsync, so a commit per batch caps
the collector at a few hundred batches per second however small they are: a thousand
agents each sending one small batch a second would queue behind each other's fsyncs.
Here the batches (and heartbeats) that arrive while a commit is under way wait for the
next one and share it. A stream still gets its answer only after the commit that holds
its batch, so an acknowledgement stays true.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from common import logs

log = logs.get("collector.ingest")

# One transaction holds at most about this many alerts: a bound on how long the streams
# whose batches came first wait for the ones that came last.
MAX_GROUP_ALERTS = 4000
_STOP = object()


class GroupCommit:
    """The ingest path's way to the store: `submit()` and `submit_heartbeat()` return a
    future that resolves once the transaction holding them commits (or fails with what
    storing them raised)."""

    def __init__(self, store, max_group_alerts: int = MAX_GROUP_ALERTS, writers: int = 1) -> None:
        """`writers` threads take groups from the same queue: one for SQLite (one writer at
        a time anyway), several for PostgreSQL, whose transactions run side by side."""
        self.store = store
        self.max_group_alerts = max_group_alerts
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"group-commit-{i}", daemon=True)
            for i in range(writers)
        ]
        for t in self._threads:
            t.start()

    def submit_heartbeat(self, origin, hb) -> Future:
        fut: Future = Future()
        self._q.put((origin, None, hb, fut))
        return fut

    def submit(self, origin, alerts: Sequence) -> Future:
        fut: Future = Future()
        self._q.put((origin, alerts, None, fut))
        return fut

    def close(self) -> None:
        self._q.put(_STOP)  # each writer puts it back for the next one
        for t in self._threads:
            t.join(10)
        close = getattr(self.store, "close_writes", None)
        if close is not None:
            close()

    def _run(self) -> None:
        q = self._q
        while True:
            item = q.get()
            if item is _STOP:
                q.put(_STOP)
                return
            group, n = [item], len(item[1] or ())
            while n < self.max_group_alerts:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    q.put(_STOP)  # after this group
                    break
                group.append(item)
                n += len(item[1] or ())
            for item in group:
                # From here a stream that goes away can no longer cancel its future (which
                # would make setting its result raise and stop this thread); its batch is
                # stored all the same: storage is idempotent, and the agent sends it again.
                item[3].set_running_or_notify_cancel()
            self._commit(group)

    def _commit(self, group: list) -> None:
        batches = [(o, a) for o, a, _, _ in group if a is not None]
        beats = [(o, hb) for o, a, hb, _ in group if a is None]
        try:
            results = self.store.ingest_many(batches, beats)
        except Exception as exc:
            if len(group) == 1:
                if not group[0][3].cancelled():
                    group[0][3].set_exception(exc)
                return
            # Something in the group failed and nothing of it was stored: store each on its
            # own, so that one bad batch fails alone instead of taking the others down.
            log.warning("group_commit_split", size=len(group))
            for item in group:
                self._commit([item])
            return
        it = iter(results)
        for _, a, _, fut in group:
            result = next(it) if a is not None else None
            if not fut.cancelled():  # its stream went away before the group started
                fut.set_result(result)
