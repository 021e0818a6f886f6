"""Alerts: storing them (group commit, salvage, correlation in the same transaction), the
dead letters for what could not be stored or correlated, and reading them back.

Correctness with several collector replicas comes from the database, not from this
process: unique keys and conditional upserts make ingestion idempotent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from collector.store.backends import Postgres, Sqlite, Tx, transient
from common import logs
from common.pbtime import seconds as _ts
from common.pbtime import set_seconds as _set_ts
from vigie.v1 import alert_pb2, ingest_pb2

if TYPE_CHECKING:
    from collector.correlate.rules import Correlator

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
    # (kind names as the correlation rules write them: ip, domain, sni, ja3, ja4, hash)
    # and a value: the alerts that carried this external indicator.
    indicator: tuple[tuple[str, ...], str] | None = None


_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Alerts:
    backend: Sqlite | Postgres
    events: Events
    correlator: Correlator

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
        isolated in the same way (see Correlator.on_batch).

        A dialect without group commit (PostgreSQL, see Dialect.group_commit) runs one
        transaction per batch instead.
        """
        now = time.time() if received_at is None else received_at
        if self.backend.dialect.group_commit and len(batches) + len(heartbeats) > 1:
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
        stored, dup, dead, kept = 0, 0, 0, []
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
                kept.append((a, fact[0]))
            else:
                dup += 1
        self._touch_agent(tx, origin, now)
        if kept:
            self._correlate(tx, origin, kept, now)
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

    def _correlate(
        self, tx: Tx, origin: Origin, kept: Sequence[tuple[alert_pb2.Alert, tuple]], now: float
    ) -> None:
        """The rules over one batch's stored alerts, (alert, fact) each; a rule that fails
        leaves them stored, counted, and in the dead letters for a later retry."""
        facts = [f for _, f in kept]
        for rule, error in self.correlator.on_batch(tx, origin, facts, now):
            self.events.add("correlation_error", rule)
            log.error(
                "correlation_failed",
                rule=rule,
                agent_id=origin.agent_id,
                alerts=len(facts),
                error=_why(error),
            )
            for alert, _ in kept:
                self._dead_letter(tx, DEAD_CORRELATION, rule, origin, alert, error, now)

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
                kept = list(zip(alerts, facts, strict=True))
            else:
                kept = [
                    (a, f)
                    for a, r, f in zip(alerts, rows, facts, strict=True)
                    if (r[0], r[1]) in written
                ]
                stored = len(kept)
            out.append(Stored(stored, len(rows) - stored))
            self._touch_agent(tx, origin, now)
            if kept:  # rules run in the same transaction: no alert escapes correlation
                self._correlate(tx, origin, kept, now)
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
            "label": hb.host_label,
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
        if hb.retro:
            tx.many(
                "INSERT INTO retro_progress VALUES (?, ?, ?, ?, ?) ON CONFLICT (agent_id, "
                "version) DO UPDATE SET state = excluded.state, matches = excluded.matches, "
                "updated_at = excluded.updated_at",
                [(origin.agent_id, r.version, r.state[:16], r.matches, now) for r in hb.retro],
            )

    def retro_status(self, version: int) -> list[dict[str, Any]]:
        """Every agent with its progress on that retro-hunt (state None: not reported)."""
        with self.backend.tx() as tx:
            return tx.fetch(
                "SELECT a.agent_id, a.finess, a.ght, a.region, a.last_seen, p.state, "
                "p.matches FROM agents a LEFT JOIN retro_progress p ON p.agent_id = "
                "a.agent_id AND p.version = ? ORDER BY a.ght, a.finess, a.agent_id",
                (version,),
            )

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
                                    self._correlate(tx, origin, [(alert, facts[0])], now)
                            else:
                                _, facts = _rows(origin, [alert], now)
                                self.correlator.run_rule(tx, r["rule"], origin, facts, now)
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
        if flt.indicator is not None:
            where.append(_INDICATOR_SQL.format(marks=",".join("?" * len(flt.indicator[0]))))
            kinds, value = flt.indicator
            args += [*(INDICATOR_CODES[k] for k in kinds), value]
            args += [f"{k}:{value}" for k in kinds]
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
            column = self.backend.dialect.hour
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


# An external indicator's alerts: those the multi-site rule keeps per indicator, and those
# it linked to an incident on that indicator (it keeps no other copy of them). Selected by
# row number: written as a test on (agent_id, alert_id), SQLite scanned every alert.
_INDICATOR_SQL = (
    "n IN (SELECT a.n FROM (SELECT agent_id, alert_id FROM alert_indicators "
    "WHERE kind IN ({marks}) AND value = ? UNION SELECT l.agent_id, l.alert_id "
    "FROM incident_alerts l JOIN incidents i ON i.key = l.incident_key "
    "WHERE i.rule = 'multi_site_indicator' AND i.subject IN ({marks})) s "
    "JOIN alerts a ON a.agent_id = s.agent_id AND a.alert_id = s.alert_id)"
)
INDICATOR_CODES = {
    "ip": alert_pb2.KIND_IP,
    "domain": alert_pb2.KIND_DOMAIN,
    "sni": alert_pb2.KIND_TLS_SNI,
    "ja3": alert_pb2.KIND_JA3,
    "ja4": alert_pb2.KIND_JA4,
    "hash": alert_pb2.KIND_HASH,
}
_ROW_MARKS = "(" + ", ".join("?" * 18) + ")"
_UPSERT_HEAD, _, _UPSERT_TAIL = UPSERT_ALERT.partition("VALUES " + _ROW_MARKS)
_ROWS_PER_STATEMENT = 1000  # 18,000 parameters: under SQLite's 32,766


def _upsert_alerts(tx: Tx, rows: list[tuple]) -> set[tuple[str, str]] | None:
    """A batch's rows in a few multi-row statements (one SQLite call, one release of the
    GIL, per thousand alerts instead of one per row); returns the (agent id, alert id) of
    the rows written. None, with nothing done, when an alert appears twice: then which row
    wrote it is ambiguous and the caller stores row by row."""
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
        # 6th: when a retro-hunt match was reported (0.0: a live alert), base.Batch
        facts.append((a.id, a.detector, first, last, ents, now if a.metrics.get("retro") else 0.0))
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
