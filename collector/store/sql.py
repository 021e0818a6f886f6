"""The store: every query written once, run on SQLite or PostgreSQL (backends.py).

Correctness with several collector replicas comes from the database, not from this
process: unique keys and conditional upserts make ingestion idempotent, and schema
migrations run once under a lock the database holds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from collector.store.backends import Tx, transient
from common import logs
from common.pbtime import seconds as _ts
from common.pbtime import set_seconds as _set_ts
from vigie.v1 import alert_pb2, ingest_pb2

# Per dialect: auto-increment key, float and integer column types.
TYPES = {
    "sqlite": {
        "ID": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "REAL": "REAL",
        "INT": "INTEGER",
        "BLOB": "BLOB",
    },
    "postgresql": {
        "ID": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "REAL": "DOUBLE PRECISION",
        "INT": "BIGINT",
        "BLOB": "BYTEA",
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
    (
        2,
        """
CREATE TABLE alert_indicators (
    agent_id  TEXT NOT NULL,
    alert_id  TEXT NOT NULL,
    kind      {INT} NOT NULL,
    value     TEXT NOT NULL,
    finess    TEXT NOT NULL,
    ght       TEXT NOT NULL,
    region    TEXT NOT NULL,
    seen      {REAL} NOT NULL,
    PRIMARY KEY (agent_id, alert_id, kind, value)
);
CREATE INDEX alert_indicators_value ON alert_indicators (kind, value, seen);
CREATE INDEX alerts_detector ON alerts (detector, last_seen);
CREATE INDEX alerts_finess ON alerts (finess, last_seen);
CREATE TABLE incidents (
    key             TEXT PRIMARY KEY,
    rule            TEXT NOT NULL,
    subject         TEXT NOT NULL,
    severity        {INT} NOT NULL,
    status          {INT} NOT NULL,
    status_by       TEXT NOT NULL DEFAULT '',
    status_at       {REAL} NOT NULL DEFAULT 0,
    status_comment  TEXT NOT NULL DEFAULT '',
    first_seen      {REAL} NOT NULL,
    last_seen       {REAL} NOT NULL,
    summary         TEXT NOT NULL,
    alert_count     {INT} NOT NULL DEFAULT 0,
    seq             {INT} NOT NULL,
    created_at      {REAL} NOT NULL,
    updated_at      {REAL} NOT NULL
);
CREATE INDEX incidents_seq ON incidents (seq);
CREATE INDEX incidents_rule_subject ON incidents (rule, subject, status);
CREATE TABLE incident_sites (
    incident_key  TEXT NOT NULL,
    finess        TEXT NOT NULL,
    ght           TEXT NOT NULL,
    region        TEXT NOT NULL,
    PRIMARY KEY (incident_key, finess)
);
CREATE INDEX incident_sites_region ON incident_sites (region, incident_key);
CREATE TABLE incident_alerts (
    incident_key  TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    alert_id      TEXT NOT NULL,
    PRIMARY KEY (incident_key, agent_id, alert_id)
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value {INT} NOT NULL);
INSERT INTO counters VALUES ('incident_seq', 0);
CREATE TABLE jobs (name TEXT PRIMARY KEY, last_run {REAL} NOT NULL, cursor {INT} NOT NULL)
""",
    ),
    (
        3,
        """
CREATE TABLE audit (
    n       {ID},
    at      {REAL} NOT NULL,
    who     TEXT NOT NULL,
    role    TEXT NOT NULL,
    action  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at)
""",
    ),
    (
        4,
        """
CREATE TABLE indicator_sites (
    kind      {INT} NOT NULL,
    value     TEXT NOT NULL,
    finess    TEXT NOT NULL,
    ght       TEXT NOT NULL,
    region    TEXT NOT NULL,
    last_seen {REAL} NOT NULL,
    PRIMARY KEY (kind, value, finess)
);
CREATE TABLE detector_sites (
    detector  TEXT NOT NULL,
    finess    TEXT NOT NULL,
    ght       TEXT NOT NULL,
    region    TEXT NOT NULL,
    last_seen {REAL} NOT NULL,
    PRIMARY KEY (detector, finess)
);
CREATE TABLE site_stages (
    finess    TEXT NOT NULL,
    stage     {INT} NOT NULL,
    first_min {REAL} NOT NULL,
    first_max {REAL} NOT NULL,
    PRIMARY KEY (finess, stage)
)
""",
    ),
    (
        5,
        # The multi-site rule asks "how many GHTs saw this indicator lately?" on every batch
        # that carries it. Counting distinct GHTs in indicator_sites reads one row per
        # establishment (a scanner hitting every hospital of a region: hundreds); this
        # table holds one row per GHT.
        """
CREATE TABLE indicator_ghts (
    kind      {INT} NOT NULL,
    value     TEXT NOT NULL,
    ght       TEXT NOT NULL,
    last_seen {REAL} NOT NULL,
    PRIMARY KEY (kind, value, ght)
);
INSERT INTO indicator_ghts
    SELECT kind, value, ght, MAX(last_seen) FROM indicator_sites GROUP BY kind, value, ght;
CREATE INDEX incident_sites_ght ON incident_sites (incident_key, ght)
""",
    ),
    (
        6,
        # Every incident change as it stood (the sinks and watchers read this feed, not the
        # incidents table, where an ack followed by a close leaves only the close); and the
        # alerts or rule runs the store could not take, held with their reason until a fix.
        # Incidents changed before this migration enter the feed as they stand now.
        """
CREATE TABLE incident_changes (
    seq           {INT} PRIMARY KEY,
    incident_key  TEXT NOT NULL,
    change        TEXT NOT NULL,
    at            {REAL} NOT NULL,
    snapshot      TEXT NOT NULL
);
CREATE INDEX incident_changes_at ON incident_changes (at);
INSERT INTO incident_changes
    SELECT seq, key, 'updated', updated_at, '' FROM incidents WHERE seq > 0;
CREATE TABLE dead_letters (
    n            {ID},
    kind         TEXT NOT NULL,
    rule         TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    finess       TEXT NOT NULL,
    ght          TEXT NOT NULL,
    region       TEXT NOT NULL,
    alert_id     TEXT NOT NULL,
    alert        {BLOB} NOT NULL,
    reason       TEXT NOT NULL,
    received_at  {REAL} NOT NULL,
    attempts     {INT} NOT NULL DEFAULT 1,
    last_try     {REAL} NOT NULL,
    UNIQUE (kind, rule, agent_id, alert_id)
);
CREATE INDEX dead_letters_agent ON dead_letters (agent_id)
""",
    ),
]

# Dead letters: "store" for an alert the store refused (kept whole, to be stored again),
# "correlation" for a stored alert a rule failed on (to be correlated again).
DEAD_STORE, DEAD_CORRELATION = "store", "correlation"
DEAD_LETTER = """
INSERT INTO dead_letters (kind, rule, agent_id, finess, ght, region, alert_id, alert, reason,
    received_at, last_try)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (kind, rule, agent_id, alert_id) DO UPDATE SET alert = excluded.alert,
    reason = excluded.reason, attempts = dead_letters.attempts + 1,
    last_try = excluded.last_try
"""

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

log = logs.get("collector.store")


class Stored(NamedTuple):
    """What storing one batch did: its acknowledgement."""

    stored: int
    duplicates: int
    dead_lettered: int = 0


class Events:
    """What went wrong while storing, for the metrics and the logs: counted here (the
    writer may be another process) and taken by whoever reports them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, name: str, label: str = "", n: int = 1) -> None:
        with self._lock:
            self._counts[(name, label)] = self._counts.get((name, label), 0) + n

    def take(self) -> dict[tuple[str, str], int]:
        with self._lock:
            out, self._counts = self._counts, {}
        return out


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


_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Store:
    def __init__(self, backend, correlation: dict[str, Any] | None = None) -> None:
        from collector.correlate.rules import OPTIONS, Correlator
        from common.config import defaults

        self.backend = backend
        self.dialect = backend.dialect
        self.events = Events()
        self.migrate()
        self.correlator = Correlator(correlation or defaults(OPTIONS), self.dialect)

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
    ) -> Stored:
        """Store a batch in one transaction; return what was stored.

        Returns only after the commit, so an acknowledgement built from it is true.
        """
        return self.ingest_many([(origin, alerts)], received_at=received_at)[0]

    def ingest_many(
        self,
        batches: Sequence[tuple[Origin, Sequence[alert_pb2.Alert]]],
        heartbeats: Sequence[tuple[Origin, ingest_pb2.Heartbeat]] = (),
        received_at: float | None = None,
    ) -> list[Stored]:
        """Store several streams' batches and heartbeats in one transaction (group commit):
        one commit, hence one fsync, for all of them. Returns what each batch stored, only
        after the commit.

        Raises only for a failure that retrying can mend (the database unreachable, locked
        or full): the agents then send again. A failure that would come back at every try
        (a value the store refuses, a bug) never blocks an agent: the group is stored batch
        by batch, a batch that still fails alert by alert, and what cannot be stored goes
        to the dead letters with its reason, acknowledged; a correlation rule that fails is
        isolated in the same way (see Correlator.on_ingest_many).

        PostgreSQL runs one transaction per batch instead: the correlation rules take
        advisory locks per indicator, and one transaction taking several batches' locks
        in turn could deadlock against another replica doing the same in another order.
        """
        now = time.time() if received_at is None else received_at
        if self.dialect == "sqlite" and len(batches) + len(heartbeats) > 1:
            try:
                with self.backend.tx() as tx:
                    return self._write(tx, batches, heartbeats, now)
            except Exception as exc:
                if transient(exc):
                    raise
                log.warning("group_failed", size=len(batches), error=type(exc).__name__)
        out = [self._write_one(origin, alerts, now) for origin, alerts in batches]
        for origin, hb in heartbeats:
            try:
                with self.backend.tx() as tx:
                    self._heartbeat(tx, origin, hb, now)
            except Exception as exc:
                if transient(exc):
                    raise
                self.events.add("heartbeat_failed")
                log.error("heartbeat_failed", agent_id=origin.agent_id, error=_why(exc))
        return out

    def _write_one(self, origin: Origin, alerts: Sequence[alert_pb2.Alert], now: float) -> Stored:
        try:
            with self.backend.tx() as tx:
                return self._write(tx, [(origin, alerts)], (), now)[0]
        except Exception as exc:
            if transient(exc):
                raise
            self.events.add("batch_salvaged")
            log.error(
                "batch_failed",
                agent_id=origin.agent_id,
                alerts=len(alerts),
                error=_why(exc),
                then="storing alert by alert",
            )
        with self.backend.tx() as tx:
            return self._salvage(tx, origin, alerts, now)

    def _salvage(
        self, tx: Tx, origin: Origin, alerts: Sequence[alert_pb2.Alert], now: float
    ) -> Stored:
        """A batch that failed whole, alert by alert: each in a savepoint of its own, what
        the store refuses held in the dead letters."""
        stored, dup, dead, facts = 0, 0, 0, []
        for a in alerts:
            try:
                with tx.savepoint():
                    rows, fact = _rows(origin, [a], now)
                    changed = tx.many(UPSERT_ALERT, rows)
            except Exception as exc:
                if transient(exc):
                    raise
                self._dead_letter(tx, DEAD_STORE, "", origin, a, exc, now)
                dead += 1
                continue
            if changed:
                stored += 1
                facts += fact
            else:
                dup += 1
        self._touch_agent(tx, origin, now)
        if facts:
            self._correlate(tx, [(origin, facts)], now)
        return Stored(stored, dup, dead)

    def _dead_letter(
        self,
        tx: Tx,
        kind: str,
        rule: str,
        origin: Origin,
        alert: alert_pb2.Alert,
        exc: BaseException,
        now: float,
    ) -> None:
        why = _why(exc)
        tx.execute(
            DEAD_LETTER,
            (
                kind,
                rule,
                origin.agent_id,
                origin.finess,
                origin.ght,
                origin.region,
                alert.id,
                alert.SerializeToString(),
                why,
                now,
                now,
            ),
        )
        self.events.add("dead_letter", kind)
        log.error(
            "dead_letter",
            kind=kind,
            rule=rule or None,
            agent_id=origin.agent_id,
            alert_id=alert.id,
            reason=why,
        )

    def _correlate(self, tx: Tx, stored_facts: list, now: float) -> None:
        """The rules over what was just stored; a rule that fails on a batch leaves its
        alerts stored, counted, and in the dead letters for a later retry."""
        for failure in self.correlator.on_ingest_many(tx, stored_facts, now):
            origin, facts = stored_facts[failure.batch_index]
            self.events.add("correlation_error", failure.rule)
            log.error(
                "correlation_failed",
                rule=failure.rule,
                agent_id=origin.agent_id,
                alerts=len(facts),
                error=_why(failure.error),
            )
            ids = [f[0] for f in facts]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                for r in tx.fetch(
                    f"SELECT * FROM alerts WHERE agent_id = ? AND alert_id IN "
                    f"({','.join('?' * len(chunk))})",
                    (origin.agent_id, *chunk),
                ):
                    self._dead_letter(
                        tx, DEAD_CORRELATION, failure.rule, origin, _to_alert(r), failure.error, now
                    )

    def _write(self, tx: Tx, batches: Sequence, heartbeats: Sequence, now: float) -> list[Stored]:
        """Batch after batch, each stored then correlated before the next: the rules see
        exactly what they would see had each batch come in a transaction of its own, so a
        group commit changes when the fsync happens, never which incidents open."""
        out = []
        for origin, alerts in batches:
            rows, facts = _rows(origin, alerts, now)
            written = _upsert_alerts(tx, rows)
            if written is None:  # an alert twice in the batch: row by row
                stored = tx.many(UPSERT_ALERT, rows)
                kept = facts
            else:
                kept = [f for r, f in zip(rows, facts, strict=True) if (r[0], r[1]) in written]
                stored = len(kept)
            out.append(Stored(stored, len(rows) - stored))
            self._touch_agent(tx, origin, now)
            if kept:  # rules run in the same transaction: no alert escapes correlation
                self._correlate(tx, [(origin, kept)], now)
        for origin, hb in heartbeats:
            self._heartbeat(tx, origin, hb, now)
        return out

    def _touch_agent(self, tx: Tx, origin: Origin, now: float) -> None:
        tx.execute(
            TOUCH_AGENT, (origin.agent_id, origin.finess, origin.ght, origin.region, now, now)
        )

    def heartbeat(
        self, origin: Origin, hb: ingest_pb2.Heartbeat, received_at: float | None = None
    ) -> None:
        now = time.time() if received_at is None else received_at
        with self.backend.tx() as tx:
            self._heartbeat(tx, origin, hb, now)

    def _heartbeat(self, tx: Tx, origin: Origin, hb: ingest_pb2.Heartbeat, now: float) -> None:
        host = {
            "cpu_percent": hb.host.cpu_percent,
            "memory_percent": hb.host.memory_percent,
            "disk_percent": hb.host.disk_percent,
            "uptime_seconds": hb.host.uptime_seconds,
            "agent_cpu_percent": hb.host.agent_cpu_percent,
            "agent_rss_bytes": hb.host.agent_rss_bytes,
        }
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

    # Incidents ------------------------------------------------------------------------

    def list_incidents(
        self,
        *,
        status: int = 0,
        min_severity: int = 0,
        rule: str = "",
        region: str = "",
        since: float | None = None,
        after_seq: int | None = None,
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
        if region:
            where.append("key IN (SELECT incident_key FROM incident_sites WHERE region = ?)")
            args.append(region)
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
        from collector.correlate.incidents import CHANGE_OF_STATUS, next_seq, record_change

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

    # Dead letters ---------------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest held alerts, without their bodies."""
        with self.backend.tx() as tx:
            return tx.fetch(
                "SELECT n, kind, rule, agent_id, finess, ght, region, alert_id, reason, "
                "received_at, attempts, last_try FROM dead_letters ORDER BY n DESC LIMIT ?",
                (limit,),
            )

    def dead_letter_counts(self) -> dict[str, int]:
        """Held alerts per agent id."""
        with self.backend.tx() as tx:
            return {
                r["agent_id"]: r["c"]
                for r in tx.fetch(
                    "SELECT agent_id, COUNT(*) AS c FROM dead_letters GROUP BY agent_id"
                )
            }

    def retry_dead_letters(self, now: float | None = None) -> tuple[int, int]:
        """Store (or correlate) again every held alert, after a fix; returns (done, still
        held). Each is tried in a savepoint of its own: one that fails again stays, with
        its new reason and one more attempt."""
        now = time.time() if now is None else now
        done = failed = 0
        last = 0
        while True:
            with self.backend.tx() as tx:
                rows = tx.fetch(
                    "SELECT * FROM dead_letters WHERE n > ? ORDER BY n LIMIT 200", (last,)
                )
                if not rows:
                    break
                for r in rows:
                    last = r["n"]
                    origin = Origin(r["agent_id"], r["finess"], r["ght"], r["region"])
                    alert = alert_pb2.Alert.FromString(bytes(r["alert"]))
                    try:
                        with tx.savepoint():
                            if r["kind"] == DEAD_STORE:
                                rows_, facts = _rows(origin, [alert], now)
                                if tx.many(UPSERT_ALERT, rows_):
                                    self._correlate(tx, [(origin, facts)], now)
                            else:
                                _, facts = _rows(origin, [alert], now)
                                self.correlator.run_rule(tx, r["rule"], [(origin, facts)], now)
                    except Exception as exc:
                        if transient(exc):
                            raise
                        failed += 1
                        tx.execute(
                            "UPDATE dead_letters SET reason = ?, attempts = attempts + 1, "
                            "last_try = ? WHERE n = ?",
                            (_why(exc), now, r["n"]),
                        )
                        continue
                    done += 1
                    tx.execute("DELETE FROM dead_letters WHERE n = ?", (r["n"],))
        return done, failed

    def audit(
        self, who: str, role: str, action: str, detail: str, outcome: str, now: float | None = None
    ) -> None:
        with self.backend.tx() as tx:
            tx.execute(
                "INSERT INTO audit (at, who, role, action, detail, outcome) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time() if now is None else now, who, role, action, detail[:2000], outcome),
            )

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.backend.tx() as tx:
            return tx.fetch("SELECT * FROM audit ORDER BY n DESC LIMIT ?", (limit,))

    def last_incident_seq(self) -> int:
        with self.backend.tx() as tx:
            return tx.fetch("SELECT value FROM counters WHERE name = 'incident_seq'")[0]["value"]

    # Periodic jobs, once across replicas --------------------------------------------

    def run_job(self, name: str, interval: float, job, now: float | None = None) -> bool:
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
        if self.dialect == "postgresql":
            key = ADVISORY_LOCK_MIGRATIONS + 1 + sum(name.encode()) % 1000
            if not tx.fetch("SELECT pg_try_advisory_xact_lock(?) AS ok", (key,))[0]["ok"]:
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

    def count_by(
        self, by: str, since: float | None, until: float | None, region: str
    ) -> list[tuple[str, int]]:
        """Counts of alerts grouped by a column chosen from a fixed list (never user SQL)."""
        column = {
            "ght": "ght",
            "detector": "detector",
            "finess": "finess",
            "region": "region",
            "severity": "severity",
            "technique": "technique",
        }.get(by)
        if by == "hour":
            column = (
                "CAST(CAST(last_seen / 3600 AS INTEGER) * 3600 AS TEXT)"
                if self.dialect == "sqlite"
                else "CAST(CAST(FLOOR(last_seen / 3600) AS BIGINT) * 3600 AS TEXT)"
            )
        if column is None:
            raise ValueError(f"cannot count by {by[:40]!r}")
        where, args = [], []
        if since is not None:
            where.append("last_seen >= ?")
            args.append(since)
        if until is not None:
            where.append("last_seen < ?")
            args.append(until)
        if region:
            where.append("region = ?")
            args.append(region)
        sql = f"SELECT {column} AS k, COUNT(*) AS c FROM alerts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " GROUP BY k ORDER BY c DESC, k LIMIT 1000"
        with self.backend.tx() as tx:
            return [(str(r["k"]), r["c"]) for r in tx.fetch(sql, args)]


_ROW_MARKS = "(" + ", ".join("?" * 18) + ")"
_UPSERT_HEAD, _, _UPSERT_TAIL = UPSERT_ALERT.partition("VALUES " + _ROW_MARKS)
_ROWS_PER_STATEMENT = 1000  # 18,000 parameters: under SQLite's 32,766


def _upsert_alerts(tx: Tx, rows: list[tuple]) -> set[tuple[str, str]] | None:
    """Every row of a group commit in a few multi-row statements (one SQLite call, one
    release of the GIL, per thousand alerts instead of one per batch); returns the
    (agent id, alert id) of the rows written, which tells each batch what it stored. None,
    with nothing done, when an alert appears twice: then which batch wrote it is ambiguous
    and the caller stores batch by batch."""
    keys = {(r[0], r[1]) for r in rows}
    if len(keys) != len(rows):
        return None
    written: set[tuple[str, str]] = set()
    for i in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[i : i + _ROWS_PER_STATEMENT]
        sql = (
            _UPSERT_HEAD
            + "VALUES "
            + ", ".join([_ROW_MARKS] * len(chunk))
            + _UPSERT_TAIL
            + " RETURNING agent_id, alert_id"
        )
        written.update(tx.values(sql, [v for r in chunk for v in r]))
    return written


def _rows(origin: Origin, alerts: Sequence[alert_pb2.Alert], now: float) -> tuple[list, list]:
    """A batch as alert rows and correlation facts (each protobuf field read once)."""
    rows, facts = [], []
    for a in alerts:
        ents = [(e.role, e.kind, e.value, e.pseudonymised) for e in a.entities]
        first, last = _ts(a.first_seen), _ts(a.last_seen)
        rows.append(
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
                first,
                last,
                _ts(a.observed_at),
                a.occurrences,
                a.key_epoch,
                _compact(ents),
                _compact(dict(a.metrics)),
                now,
            )
        )
        facts.append((a.id, a.detector, first, last, ents))
    return rows, facts


def _why(exc: BaseException) -> str:
    """An error as the logs and the dead letters keep it: its type and a bounded text."""
    return f"{type(exc).__name__}: {exc}"[:500]


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
