"""Periodic jobs, run once across replicas (a lease per job, an advisory lock while it is
taken), and what they run against the store: retention and the dark-site check."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from collector.store.backends import Postgres, Sqlite, Tx

if TYPE_CHECKING:
    from collector.correlate.rules import Correlator


class Jobs:
    backend: Sqlite | Postgres
    correlator: Correlator

    def run_job(
        self, name: str, interval: float, job: Callable[[Tx], object], now: float | None = None
    ) -> bool:
        """Run `job(tx)` inside one transaction if due and no other replica holds it."""
        now = time.time() if now is None else now
        with self.backend.tx() as tx:
            if not self._claim(tx, name, interval, now):
                return False
            job(tx)
            self._set_job(tx, name, now, None)
        return True

    def lease(
        self, name: str, seconds: float, now: float | None = None, inherit: str = ""
    ) -> int | None:
        """Take a job for `seconds` (work done outside any transaction, e.g. network
        sends); returns its cursor, or None when another replica holds it. A job never run
        before starts from the cursor of the job `inherit` names, if that one ran."""
        now = time.time() if now is None else now
        with self.backend.tx() as tx:
            if not self._claim(tx, name, seconds, now):
                return None
            rows = tx.fetch("SELECT cursor FROM jobs WHERE name = ?", (name,))
            if rows or not inherit:
                cursor = rows[0]["cursor"] if rows else 0
            else:
                cursor = self._job(tx, inherit)[1]
            self._set_job(tx, name, now, cursor)
            return cursor

    def release(self, name: str, cursor: int) -> None:
        with self.backend.tx() as tx:
            self._set_job(tx, name, 0.0, cursor)

    def _claim(self, tx: Tx, name: str, interval: float, now: float) -> bool:
        if not self.backend.dialect.try_lock(tx, f"job:{name}"):
            return False
        return now - self._job(tx, name)[0] >= interval

    def _job(self, tx: Tx, name: str) -> tuple[float, int]:
        rows = tx.fetch("SELECT last_run, cursor FROM jobs WHERE name = ?", (name,))
        return (rows[0]["last_run"], rows[0]["cursor"]) if rows else (0.0, 0)

    def _set_job(self, tx: Tx, name: str, last_run: float, cursor: int | None) -> None:
        if cursor is None:
            cursor = self._job(tx, name)[1]
        tx.execute(
            "INSERT INTO jobs VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "last_run = excluded.last_run, cursor = excluded.cursor",
            (name, last_run, cursor),
        )

    def dark_sites(self, tx: Tx, now: float) -> int:
        return self.correlator.dark_sites(tx, now)

    def purge(self, tx: Tx, older_than: float, now: float | None = None) -> int:
        """Retention: what the store has held since before `older_than` goes: alerts by
        when they were received (an old capture replayed today is today's data), closed
        incidents by their last change, an alert's indicator rows with it. The per-site
        correlation summaries only hold event times: a row goes once it is older than the
        retention age behind the newest event of its table, so replayed old traffic
        still correlates while live traffic ages out as usual."""
        now = time.time() if now is None else now
        age = now - older_than
        closed = "SELECT key FROM incidents WHERE status = 3 AND updated_at < ?"
        tx.execute(f"DELETE FROM incident_alerts WHERE incident_key IN ({closed})", (older_than,))
        tx.execute(f"DELETE FROM incident_sites WHERE incident_key IN ({closed})", (older_than,))
        tx.execute("DELETE FROM incidents WHERE status = 3 AND updated_at < ?", (older_than,))
        tx.execute("DELETE FROM incident_changes WHERE at < ?", (older_than,))
        purged = tx.many("DELETE FROM alerts WHERE received_at < ?", [(older_than,)])
        tx.execute(
            "DELETE FROM alert_indicators WHERE NOT EXISTS (SELECT 1 FROM alerts a "
            "WHERE a.agent_id = alert_indicators.agent_id "
            "AND a.alert_id = alert_indicators.alert_id)"
        )
        for table, column in (
            ("indicator_sites", "last_seen"),
            ("indicator_ghts", "last_seen"),
            ("detector_sites", "last_seen"),
            ("site_stages", "first_max"),
        ):
            newest = tx.fetch(f"SELECT MAX({column}) AS t FROM {table}")[0]["t"]
            if newest is not None:
                tx.execute(
                    f"DELETE FROM {table} WHERE {column} < ?", (min(older_than, newest - age),)
                )
        return purged
