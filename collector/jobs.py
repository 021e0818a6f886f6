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
    ) -> None:
        super().__init__(name="vigie-jobs", daemon=True)
        self.store = store
        self.cfg = cfg
        self.sinks = list(sinks)
        self.clock = clock
        self.period = period
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
        if self.sinks:
            try:
                self._dispatch(now)
            except Exception as exc:
                log.error("job_failed", job="sinks", error=type(exc).__name__, detail=str(exc))

    def _purge(self, tx, older_than: float, now: float) -> None:
        n = self.store.purge(tx, older_than, now)
        if n:
            log.info("retention_purged", alerts=n)

    def _dispatch(self, now: float) -> None:
        """Push every incident change after the shared cursor to every sink, outside any
        transaction (sinks talk to the network); the cursor only moves past what every
        sink accepted, so a sink that is down gets it again later (at least once)."""
        cursor = self.store.lease("sinks", SINK_LEASE_SECONDS, now)
        if cursor is None:
            return  # another replica is dispatching
        try:
            cursor = self._send_after(cursor)
        finally:
            self.store.release("sinks", cursor)

    def _send_after(self, cursor: int) -> int:
        from collector.query.servicer import incident_message, stored_alert

        rows = self.store.list_incidents(after_seq=cursor, limit=50, ascending=True)
        for r in rows:
            found = self.store.get_incident(r["key"])
            if found is None:
                cursor = r["seq"]
                continue
            row, alerts = found
            row["seq"] = r["seq"]
            incident = incident_message(row)
            stored = [stored_alert(o, a, t) for o, a, t in alerts]
            for sink in self.sinks:
                try:
                    sink.send(incident, stored)
                except Exception as exc:
                    log.warning(
                        "sink_failed",
                        sink=getattr(sink, "name", "?"),
                        incident=r["key"],
                        detail=str(exc)[:200],
                    )
                    return cursor
            cursor = r["seq"]
        return cursor

    def stop(self) -> None:
        self.stopping.set()
