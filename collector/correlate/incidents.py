"""Incidents in the database: one row per stable key, updated as matching alerts arrive.

Every create or update takes the next value of one counter row (`incident_seq`), inside
the same transaction: the row lock orders commits, so a watcher reading `seq > cursor`
never skips an incident another replica is still writing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from collector.store.backends import Tx

OPEN, ACKNOWLEDGED, CLOSED = 1, 2, 3


@dataclass(frozen=True)
class SiteRef:
    finess: str
    ght: str
    region: str


def lock(tx: Tx, dialect: str, *names: str) -> None:
    """Serialise transactions about the same subject across replicas (no-op on SQLite,
    whose BEGIN IMMEDIATE already serialises writers). Sorted to avoid deadlocks."""
    if dialect != "postgresql":
        return
    for name in sorted(set(names)):
        key = int.from_bytes(
            hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
        )
        tx.execute("SELECT pg_advisory_xact_lock(?)", (key,))


def next_seq(tx: Tx) -> int:
    return tx.fetch(
        "UPDATE counters SET value = value + 1 WHERE name = 'incident_seq' RETURNING value"
    )[0]["value"]


def upsert(
    tx: Tx,
    *,
    rule: str,
    subject: str,
    event_time: float,
    window: float,
    severity: int,
    summary: str,
    sites: Iterable[SiteRef],
    alerts: Iterable[tuple[str, str]],
    now: float,
) -> str:
    """Open an incident, or update the open one for (rule, subject); return its key."""
    rows = tx.fetch(
        "SELECT key, severity FROM incidents WHERE rule = ? AND subject = ? AND status <> ? "
        "AND last_seen >= ? ORDER BY last_seen DESC LIMIT 1",
        (rule, subject, CLOSED, event_time - window),
    )
    if rows:
        key = rows[0]["key"]
        created = False
    else:
        key = f"{rule}:{subject}:{int(event_time // window)}"
        existing = tx.fetch("SELECT status FROM incidents WHERE key = ?", (key,))
        created = not existing
        if existing:  # closed earlier in the same bucket: new evidence reopens it
            tx.execute(
                "UPDATE incidents SET status = ?, status_by = '', status_comment = "
                "'reopened: new matching alerts', status_at = ? WHERE key = ?",
                (OPEN, now, key),
            )
    if created:
        tx.execute(
            """INSERT INTO incidents (key, rule, subject, severity, status, first_seen,
               last_seen, summary, alert_count, seq, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?)
               ON CONFLICT (key) DO NOTHING""",
            (key, rule, subject, severity, OPEN, event_time, event_time, summary, now, now),
        )
    new_links = tx.many(
        "INSERT INTO incident_alerts VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(key, agent, alert) for agent, alert in alerts],
    )
    new_sites = tx.many(
        "INSERT INTO incident_sites VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(key, s.finess, s.ght, s.region) for s in sites],
    )
    if created or new_links or new_sites:
        count = tx.fetch(
            "SELECT COUNT(*) AS n FROM incident_alerts WHERE incident_key = ?", (key,)
        )[0]["n"]
        tx.execute(
            """UPDATE incidents SET severity = CASE WHEN severity > ? THEN severity ELSE ? END,
               first_seen = CASE WHEN first_seen < ? THEN first_seen ELSE ? END,
               last_seen = CASE WHEN last_seen > ? THEN last_seen ELSE ? END,
               summary = ?, alert_count = ?, seq = ?, updated_at = ? WHERE key = ?""",
            (
                severity,
                severity,
                event_time,
                event_time,
                event_time,
                event_time,
                summary,
                count,
                next_seq(tx),
                now,
                key,
            ),
        )
    return key
