"""Incidents as analysts read and update them, and their change feed (the rules that
open them are in collector/correlate/)."""

from __future__ import annotations

import json
import time
from typing import Any

from collector.correlate.incidents import CHANGE_OF_STATUS, next_seq, record_change
from collector.store.alerts import Origin, _to_alert
from collector.store.backends import Postgres, Sqlite, Tx
from vigie.v1 import alert_pb2


class Incidents:
    backend: Sqlite | Postgres

    def list_incidents(
        self,
        *,
        status: int = 0,
        min_severity: int = 0,
        rule: str = "",
        region: str = "",
        since: float | None = None,
        after_seq: int | None = None,
        ght: str = "",
        until: float | None = None,
        before_seq: int | None = None,
        limit: int = 100,
        ascending: bool = False,
    ) -> list[dict[str, Any]]:
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if min_severity:
            where.append("severity >= ?")
            args.append(min_severity)
        if rule:
            where.append("rule = ?")
            args.append(rule)
        if since is not None:
            where.append("last_seen >= ?")
            args.append(since)
        if after_seq is not None:
            where.append("seq > ?")
            args.append(after_seq)
        if before_seq is not None:
            where.append("seq < ?")
            args.append(before_seq)
        if until is not None:
            where.append("first_seen < ?")
            args.append(until)
        if region:
            where.append("key IN (SELECT incident_key FROM incident_sites WHERE region = ?)")
            args.append(region)
        if ght:
            where.append("key IN (SELECT incident_key FROM incident_sites WHERE ght = ?)")
            args.append(ght)
        sql = "SELECT * FROM incidents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?"
        args.append(limit)
        with self.backend.tx() as tx:
            rows = tx.fetch(sql, args)
            self._attach_sites(tx, rows)
        return rows

    def _attach_sites(self, tx: Tx, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        marks = ",".join("?" * len(rows))
        sites = tx.fetch(
            f"SELECT * FROM incident_sites WHERE incident_key IN ({marks}) ORDER BY ght, finess",
            [r["key"] for r in rows],
        )
        by_key: dict[str, list] = {}
        for s in sites:
            by_key.setdefault(s["incident_key"], []).append(s)
        for r in rows:
            r["sites"] = by_key.get(r["key"], [])

    def get_incident(
        self, key: str, alert_limit: int = 200
    ) -> tuple[dict[str, Any], list[tuple[Origin, alert_pb2.Alert, float]]] | None:
        with self.backend.tx() as tx:
            rows = tx.fetch("SELECT * FROM incidents WHERE key = ?", (key,))
            if not rows:
                return None
            self._attach_sites(tx, rows)
            alerts = tx.fetch(
                "SELECT a.* FROM incident_alerts l JOIN alerts a ON a.agent_id = l.agent_id "
                "AND a.alert_id = l.alert_id WHERE l.incident_key = ? ORDER BY a.first_seen "
                "LIMIT ?",
                (key, alert_limit),
            )
        return rows[0], [
            (
                Origin(r["agent_id"], r["finess"], r["ght"], r["region"]),
                _to_alert(r),
                r["received_at"],
            )
            for r in alerts
        ]

    def update_incident(
        self, key: str, status: int, by: str, comment: str, now: float | None = None
    ) -> dict[str, Any] | None:
        now = time.time() if now is None else now
        with self.backend.tx() as tx:
            if not tx.fetch("SELECT key FROM incidents WHERE key = ?", (key,)):
                return None
            seq = next_seq(tx)
            tx.execute(
                "UPDATE incidents SET status = ?, status_by = ?, status_at = ?, "
                "status_comment = ?, seq = ?, updated_at = ? WHERE key = ?",
                (status, by, now, comment, seq, now, key),
            )
            record_change(tx, key, seq, CHANGE_OF_STATUS[status], now)
        return self.get_incident(key, 0)[0]

    def list_changes(
        self, after_seq: int, *, region: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        """Incident changes after `after_seq`, oldest first, each the incident as it stood
        then (with its sites and `change`, `seq` the change's). A regional reader sees
        only the changes of incidents that involve their region (as they stood then)."""
        with self.backend.tx() as tx:
            rows = tx.fetch(
                "SELECT seq, incident_key, change, snapshot FROM incident_changes "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
            out, stale = [], []
            for r in rows:
                if r["snapshot"]:
                    inc = json.loads(r["snapshot"])
                else:  # changed before the feed existed: as it stands now
                    found = tx.fetch("SELECT * FROM incidents WHERE key = ?", (r["incident_key"],))
                    if not found:
                        continue
                    inc = found[0]
                    stale.append(inc)
                inc["seq"], inc["change"] = r["seq"], r["change"]
                out.append(inc)
            self._attach_sites(tx, stale)
        if region:
            out = [i for i in out if any(s["region"] == region for s in i["sites"])]
        return out

    def last_change_seq(self) -> int:
        with self.backend.tx() as tx:
            return tx.fetch("SELECT MAX(seq) AS s FROM incident_changes")[0]["s"] or 0

    def last_incident_seq(self) -> int:
        with self.backend.tx() as tx:
            return tx.fetch("SELECT value FROM counters WHERE name = 'incident_seq'")[0]["value"]
