"""The store: every query written once, run on SQLite or PostgreSQL (backends.py).

Correctness with several collector replicas comes from the database, not from this
process: unique keys and conditional upserts make ingestion idempotent, and schema
migrations run once under a lock the database holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collector.store.backends import Tx
from common.pbtime import seconds as _ts
from common.pbtime import set_seconds as _set_ts
from vigie.v1 import alert_pb2, ingest_pb2

# Per dialect: auto-increment key, float and integer column types.
TYPES = {
    "sqlite": {"ID": "INTEGER PRIMARY KEY AUTOINCREMENT", "REAL": "REAL", "INT": "INTEGER"},
    "postgresql": {
        "ID": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "REAL": "DOUBLE PRECISION",
        "INT": "BIGINT",
    },
}

# Versioned migrations, applied once each, in order. Never edit one that has shipped.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE alerts (
    n            {ID},
    agent_id     TEXT NOT NULL,
    alert_id     TEXT NOT NULL,
    revision     {INT} NOT NULL,
    finess       TEXT NOT NULL,
    ght          TEXT NOT NULL,
    region       TEXT NOT NULL,
    detector     TEXT NOT NULL,
    severity     {INT} NOT NULL,
    technique    TEXT NOT NULL,
    summary      TEXT NOT NULL,
    first_seen   {REAL} NOT NULL,
    last_seen    {REAL} NOT NULL,
    observed_at  {REAL} NOT NULL,
    occurrences  {INT} NOT NULL,
    key_epoch    {INT} NOT NULL,
    entities     TEXT NOT NULL,
    metrics      TEXT NOT NULL,
    received_at  {REAL} NOT NULL,
    UNIQUE (agent_id, alert_id)
);
CREATE INDEX alerts_last_seen ON alerts (last_seen);
CREATE INDEX alerts_ght ON alerts (ght, last_seen);
CREATE INDEX alerts_region ON alerts (region, n);
CREATE TABLE agents (
    agent_id         TEXT PRIMARY KEY,
    finess           TEXT NOT NULL,
    ght              TEXT NOT NULL,
    region           TEXT NOT NULL,
    first_seen       {REAL} NOT NULL,
    last_seen        {REAL} NOT NULL,
    agent_version    TEXT NOT NULL DEFAULT '',
    packets_dropped  {INT} NOT NULL DEFAULT 0,
    outbox_depth     {INT} NOT NULL DEFAULT 0,
    outbox_shed      {INT} NOT NULL DEFAULT 0,
    host             TEXT NOT NULL DEFAULT '{{}}'
);
""",
    ),
]

# A newer revision of an alert replaces the stored one; an equal or older one is a duplicate.
UPSERT_ALERT = """
INSERT INTO alerts (agent_id, alert_id, revision, finess, ght, region, detector, severity,
    technique, summary, first_seen, last_seen, observed_at, occurrences, key_epoch, entities,
    metrics, received_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (agent_id, alert_id) DO UPDATE SET
    revision = excluded.revision, severity = excluded.severity, summary = excluded.summary,
    first_seen = excluded.first_seen, last_seen = excluded.last_seen,
    observed_at = excluded.observed_at, occurrences = excluded.occurrences,
    key_epoch = excluded.key_epoch, entities = excluded.entities, metrics = excluded.metrics,
    received_at = excluded.received_at
WHERE excluded.revision > alerts.revision
"""

TOUCH_AGENT = """
INSERT INTO agents (agent_id, finess, ght, region, first_seen, last_seen)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (agent_id) DO UPDATE SET last_seen = excluded.last_seen,
    finess = excluded.finess, ght = excluded.ght, region = excluded.region
"""

ADVISORY_LOCK_MIGRATIONS = 7_270_001


@dataclass(frozen=True)
class Origin:
    agent_id: str
    finess: str
    ght: str
    region: str


@dataclass
class AlertFilter:
    since: float | None = None
    until: float | None = None
    detector: str = ""
    min_severity: int = 0
    finess: str = ""
    ght: str = ""
    region: str = ""


def _entities_json(alert: alert_pb2.Alert) -> str:
    return json.dumps(
        [[e.role, e.kind, e.value, e.pseudonymised] for e in alert.entities],
        separators=(",", ":"),
    )


class Store:
    def __init__(self, backend) -> None:
        self.backend = backend
        self.dialect = backend.dialect
        self.migrate()

    # Schema ---------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply the missing migrations once, whatever the number of replicas starting."""
        applied_now = []
        with self.backend.tx() as tx:
            if self.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (ADVISORY_LOCK_MIGRATIONS,))
            tx.execute(
                f"CREATE TABLE IF NOT EXISTS schema_migrations (version "
                f"{TYPES[self.dialect]['INT']} PRIMARY KEY, applied_at "
                f"{TYPES[self.dialect]['REAL']} NOT NULL)"
            )
            done = {r["version"] for r in tx.fetch("SELECT version FROM schema_migrations")}
            for version, script in MIGRATIONS:
                if version in done:
                    continue
                for statement in script.format(**TYPES[self.dialect]).split(";"):
                    if statement.strip():
                        tx.execute(statement)
                tx.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
                applied_now.append(version)
        return applied_now

    def close(self) -> None:
        self.backend.close()

    # Ingestion ------------------------------------------------------------------------

    def ingest(
        self, origin: Origin, alerts: Sequence[alert_pb2.Alert], received_at: float | None = None
    ) -> tuple[int, int]:
        """Store a batch in one transaction; return (stored, duplicates).

        Returns only after the commit, so an acknowledgement built from it is true.
        """
        now = time.time() if received_at is None else received_at
        rows = [
            (
                origin.agent_id,
                a.id,
                a.revision,
                origin.finess,
                origin.ght,
                origin.region,
                a.detector,
                a.severity,
                a.technique,
                a.summary,
                _ts(a.first_seen),
                _ts(a.last_seen),
                _ts(a.observed_at),
                a.occurrences,
                a.key_epoch,
                _entities_json(a),
                json.dumps(dict(a.metrics), separators=(",", ":")),
                now,
            )
            for a in alerts
        ]
        with self.backend.tx() as tx:
            stored = tx.many(UPSERT_ALERT, rows)
            self._touch_agent(tx, origin, now)
        return stored, len(rows) - stored

    def _touch_agent(self, tx: Tx, origin: Origin, now: float) -> None:
        tx.execute(
            TOUCH_AGENT, (origin.agent_id, origin.finess, origin.ght, origin.region, now, now)
        )

    def heartbeat(
        self, origin: Origin, hb: ingest_pb2.Heartbeat, received_at: float | None = None
    ) -> None:
        now = time.time() if received_at is None else received_at
        host = {
            "cpu_percent": hb.host.cpu_percent,
            "memory_percent": hb.host.memory_percent,
            "disk_percent": hb.host.disk_percent,
            "uptime_seconds": hb.host.uptime_seconds,
            "agent_cpu_percent": hb.host.agent_cpu_percent,
            "agent_rss_bytes": hb.host.agent_rss_bytes,
        }
        with self.backend.tx() as tx:
            self._touch_agent(tx, origin, now)
            tx.execute(
                """UPDATE agents SET agent_version = ?, packets_dropped = ?,
                   outbox_depth = ?, outbox_shed = ?, host = ? WHERE agent_id = ?""",
                (
                    hb.agent_version,
                    hb.packets_dropped,
                    hb.outbox_depth,
                    hb.outbox_shed,
                    json.dumps(host),
                    origin.agent_id,
                ),
            )

    # Queries --------------------------------------------------------------------------

    def list_alerts(
        self, flt: AlertFilter, limit: int = 100, before_n: int | None = None
    ) -> tuple[list[tuple[Origin, alert_pb2.Alert, float]], int | None]:
        """Newest first. Returns the page and the cursor for the next one (None at the end)."""
        where, args = [], []
        for column, value in (
            ("detector", flt.detector),
            ("finess", flt.finess),
            ("ght", flt.ght),
            ("region", flt.region),
        ):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if flt.min_severity:
            where.append("severity >= ?")
            args.append(flt.min_severity)
        if flt.since is not None:
            where.append("last_seen >= ?")
            args.append(flt.since)
        if flt.until is not None:
            where.append("first_seen < ?")
            args.append(flt.until)
        if before_n is not None:
            where.append("n < ?")
            args.append(before_n)
        sql = "SELECT * FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY n DESC LIMIT ?"
        args.append(limit + 1)
        with self.backend.tx() as tx:
            rows = tx.fetch(sql, args)
        more = len(rows) > limit
        rows = rows[:limit]
        page = [
            (
                Origin(r["agent_id"], r["finess"], r["ght"], r["region"]),
                _to_alert(r),
                r["received_at"],
            )
            for r in rows
        ]
        return page, (rows[-1]["n"] if more and rows else None)

    def list_agents(self) -> list[dict[str, Any]]:
        with self.backend.tx() as tx:
            return tx.fetch("SELECT * FROM agents ORDER BY last_seen ASC")

    def count_alerts(self) -> int:
        with self.backend.tx() as tx:
            return tx.fetch("SELECT COUNT(*) AS n FROM alerts")[0]["n"]


def _to_alert(r: dict[str, Any]) -> alert_pb2.Alert:
    a = alert_pb2.Alert(
        id=r["alert_id"],
        revision=r["revision"],
        detector=r["detector"],
        severity=r["severity"],
        technique=r["technique"],
        summary=r["summary"],
        occurrences=r["occurrences"],
        key_epoch=r["key_epoch"],
    )
    _set_ts(a.first_seen, r["first_seen"])
    _set_ts(a.last_seen, r["last_seen"])
    _set_ts(a.observed_at, r["observed_at"])
    for role, kind, value, pseudo in json.loads(r["entities"]):
        a.entities.add(role=role, kind=kind, value=value, pseudonymised=pseudo)
    a.metrics.update(json.loads(r["metrics"]))
    return a
