"""Incidents in the database: one row per stable key, updated as matching alerts arrive.

Every create or update takes the next value of one counter row (`incident_seq`), inside
the same transaction: the row lock orders commits, so a watcher reading `seq > cursor`
never skips an incident another replica is still writing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # at run time the store imports this module, not the other way round
    from collector.store.backends import Tx

OPEN, ACKNOWLEDGED, CLOSED = 1, 2, 3
# The change an analyst's status update makes, as the change feed names it.
CHANGE_OF_STATUS = {OPEN: "reopened", ACKNOWLEDGED: "acknowledged", CLOSED: "closed"}


@dataclass(frozen=True)
class SiteRef:
    finess: str
    ght: str
    region: str


def next_seq(tx: Tx) -> int:
    return tx.fetch(
        "UPDATE counters SET value = value + 1 WHERE name = 'incident_seq' RETURNING value"
    )[0]["value"]


def record_change(tx: Tx, key: str, seq: int, change: str, now: float) -> None:
    """Keep the incident as it stands after this change, under the change's seq: the sinks
    and watchers read this feed, so that an acknowledgement closely followed by a close
    reaches them as two changes, in order, not merged into the latest state."""
    row = tx.fetch("SELECT * FROM incidents WHERE key = ?", (key,))[0]
    row["sites"] = tx.fetch(
        "SELECT finess, ght, region FROM incident_sites WHERE incident_key = ? "
        "ORDER BY ght, finess",
        (key,),
    )
    tx.execute(
        "INSERT INTO incident_changes (seq, incident_key, change, at, snapshot) "
        "VALUES (?, ?, ?, ?, ?)",
        (seq, key, change, now, json.dumps(row, separators=(",", ":"))),
    )


MAX_LINKED_ALERTS = 5000  # past this an incident only counts its alerts


def find_open(tx: Tx, rule: str, subject: str, since: float) -> dict | None:
    rows = tx.fetch(
        "SELECT key, alert_count FROM incidents WHERE rule = ? AND subject = ? AND status <> ? "
        "AND last_seen >= ? ORDER BY last_seen DESC LIMIT 1",
        (rule, subject, CLOSED, since),
    )
    return rows[0] if rows else None


def upsert(
    tx: Tx,
    *,
    rule: str,
    subject: str,
    event_time: float,
    window: float,
    severity: int,
    summary: str | None,
    sites: Iterable[SiteRef],
    alerts: Iterable[tuple[str, str]],
    now: float,
    existing: dict | None = None,
) -> str:
    """Open an incident, or update the open one for (rule, subject); return its key.

    `existing` is what find_open() returned, when the caller already looked; a summary of
    None keeps the stored one (only a site joining changes what it says)."""
    cur = existing or find_open(tx, rule, subject, event_time - window)
    reopened = False
    if cur:
        key, count = cur["key"], cur["alert_count"]
        created = False
    else:
        key = f"{rule}:{subject}:{int(event_time // window)}"
        rows = tx.fetch("SELECT status, alert_count FROM incidents WHERE key = ?", (key,))
        created = not rows
        count = rows[0]["alert_count"] if rows else 0
        if rows and rows[0]["status"] == CLOSED:
            # Closed earlier in the same bucket: new evidence reopens it. (An incident still
            # open, only found again through an alert older than its window, stays as is.)
            reopened = True
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
            (key, rule, subject, severity, OPEN, event_time, event_time, summary or "", now, now),
        )
    refs = list(alerts)
    if count >= MAX_LINKED_ALERTS:
        new_links = len(refs)  # counted, no longer linked one by one
    else:
        new_links = tx.many(
            "INSERT INTO incident_alerts VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(key, agent, alert) for agent, alert in refs[: MAX_LINKED_ALERTS - count]],
        )
        new_links += max(0, len(refs) - (MAX_LINKED_ALERTS - count))
    new_sites = tx.many(
        "INSERT INTO incident_sites VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(key, s.finess, s.ght, s.region) for s in sites],
    )
    if created or new_sites or reopened:
        # What a watcher or the national service must hear about: a new incident, a site
        # joining one, or a closed one reopened. A new seq puts it in every change feed.
        seq = next_seq(tx)
        tx.execute(
            """UPDATE incidents SET severity = CASE WHEN severity > ? THEN severity ELSE ? END,
               first_seen = CASE WHEN first_seen < ? THEN first_seen ELSE ? END,
               last_seen = CASE WHEN last_seen > ? THEN last_seen ELSE ? END,
               summary = COALESCE(?, summary), alert_count = alert_count + ?, seq = ?,
               updated_at = ? WHERE key = ?""",
            (
                severity,
                severity,
                event_time,
                event_time,
                event_time,
                event_time,
                summary,
                new_links,
                seq,
                now,
                key,
            ),
        )
        record_change(
            tx, key, seq, "opened" if created else "reopened" if reopened else "updated", now
        )
    elif new_links:
        # More of the same from a site already in it: counted quietly, without waking
        # every sink once per batch.
        tx.execute(
            """UPDATE incidents SET alert_count = alert_count + ?,
               last_seen = CASE WHEN last_seen > ? THEN last_seen ELSE ? END,
               updated_at = ? WHERE key = ?""",
            (new_links, event_time, event_time, now, key),
        )
    return key
