"""Periodic work that must happen once across replicas: dark-site checks, retention,
pushing incidents to the national service's sinks.

Each job runs under Store.run_job: a database lock and a last-run time shared by every
replica, so whichever replica gets there first does it and the others skip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from collector.store import Store
from common import logs

log = logs.get("collector.jobs")

SINK_LEASE_SECONDS = 30.0


class Jobs(threading.Thread):
    def __init__(
        self,
        store: Store,
        cfg: dict[str, Any],
        sinks: Sequence[Any] = (),
        clock: Callable[[], float] = time.time,
        period: float = 1.0,
        meters: Any = None,
    ) -> None:
        super().__init__(name="vigie-jobs", daemon=True)
        self.store = store
        self.cfg = cfg
        self.sinks = list(sinks)
        self.clock = clock
        self.period = period
        self.meters = meters
        if meters is not None:
            for sink in self.sinks:
                meters.sink_errors.inc(0, sink.name)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.period):
            self.run_once()

    def run_once(self) -> None:
        now = self.clock()
        dark = self.cfg["correlation"]["dark_site"]
        ret = self.cfg["retention"]
        for name, interval, job in (
            (
                "dark_site",
                dark["check_interval_seconds"],
                lambda tx: self.store.dark_sites(tx, now),
            ),
            (
                "retention",
                ret["check_interval_seconds"],
                lambda tx: self._purge(tx, now - ret["alert_days"] * 86400, now),
            ),
        ):
            try:
                self.store.run_job(name, interval, job, now=now)
            except Exception as exc:
                log.error("job_failed", job=name, error=type(exc).__name__, detail=str(exc))
        for sink in self.sinks:
            try:
                self._dispatch(sink, now)
            except Exception as exc:
                log.error(
                    "job_failed", job=f"sink:{sink.name}", error=type(exc).__name__, detail=str(exc)
                )

    def _purge(self, tx, older_than: float, now: float) -> None:
        n = self.store.purge(tx, older_than, now)
        if n:
            log.info("retention_purged", alerts=n)

    def _dispatch(self, sink: Any, now: float) -> None:
        """Push every incident change after this sink's cursor to it, in order, outside any
        transaction (sinks talk to the network). Each sink has its own cursor, shared by
        the replicas: one that is down gets its changes later (at least once), without
        holding back or repeating what the others delivered."""
        job = f"sink:{sink.name}"
        # Before each sink had its own cursor, they shared the "sinks" one.
        cursor = self.store.lease(job, SINK_LEASE_SECONDS, now, inherit="sinks")
        if cursor is None:
            return  # another replica is dispatching to this sink
        try:
            cursor = self._send_after(sink, cursor)
        finally:
            self.store.release(job, cursor)

    def _send_after(self, sink: Any, cursor: int) -> int:
        from collector.query.servicer import incident_message, stored_alert

        for change in self.store.list_changes(cursor, limit=100):
            found = self.store.get_incident(change["key"])
            alerts = found[1] if found is not None else []
            incident = incident_message(change)
            stored = [stored_alert(o, a, t) for o, a, t in alerts]
            try:
                sink.send(incident, stored)
            except Exception as exc:
                if self.meters is not None:
                    self.meters.sink_errors.inc(1, sink.name)
                if getattr(exc, "permanent", False):
                    # The receiver refuses this payload for good (an HTTP 400, say): sending
                    # it again would block every later change for this sink. Said loudly,
                    # counted, and passed; the change stays in the store's change feed.
                    log.error(
                        "sink_refused_change",
                        sink=sink.name,
                        incident=change["key"],
                        seq=change["seq"],
                        detail=str(exc)[:200],
                    )
                    cursor = change["seq"]
                    continue
                log.warning(
                    "sink_failed",
                    sink=sink.name,
                    incident=change["key"],
                    seq=change["seq"],
                    detail=str(exc)[:200],
                )
                return cursor
            cursor = change["seq"]
        return cursor

    def stop(self) -> None:
        self.stopping.set()
