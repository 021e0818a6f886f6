"""Incidents in the database: one row per stable key, updated as matching alerts arrive.

Every create or update takes the next value of one counter row (`incident_seq`), inside
the same transaction: the row lock orders commits, so a watcher reading `seq > cursor`
never skips an incident another replica is still writing.
"""

from __future__ import annotations

import datetime as dt
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


@dataclass(frozen=True)
class Traffic:
    """When the traffic behind an incident happened (the earliest first_seen and latest
    last_seen of its alerts), and whether a retro-hunt found some of it: a retro match's
    traffic may be weeks older than the incident."""

    first: float
    last: float
    retro: bool = False

    def merge(self, other: Traffic | None) -> Traffic:
        if other is None or other == self:
            return self
        return Traffic(
            min(self.first, other.first), max(self.last, other.last), self.retro or other.retro
        )

    def words(self) -> str:
        """As an incident summary says it: dates, or times within a day (UTC)."""
        first, last = _utc(self.first), _utc(self.last)
        if first is None or last is None:
            text = "at unreadable times"
        elif self.last - self.first >= 86400:
            text = f"between {first:%Y-%m-%d} and {last:%Y-%m-%d}"
        elif f"{first:%Y-%m-%d %H:%M}" == f"{last:%Y-%m-%d %H:%M}":
            text = f"on {first:%Y-%m-%d} at {first:%H:%M} UTC"
        elif first.date() == last.date():
            text = f"on {first:%Y-%m-%d} between {first:%H:%M} and {last:%H:%M} UTC"
        else:
            text = f"between {first:%Y-%m-%d %H:%M} and {last:%Y-%m-%d %H:%M} UTC"
        return text + (", found by retro-hunt" if self.retro else "")


def _utc(t: float) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC)
    except (OverflowError, OSError, ValueError):  # an agent's clock far off: said so
        return None


def stored_traffic(row: dict) -> Traffic | None:
    """An incident row's traffic span (None: its rule keeps none, or not yet)."""
    if row.get("traffic_first") is None or row.get("traffic_last") is None:
        return None
    return Traffic(row["traffic_first"], row["traffic_last"], bool(row["traffic_retro"]))


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
        "SELECT key, alert_count, traffic_first, traffic_last, traffic_retro FROM incidents "
        "WHERE rule = ? AND subject = ? AND status <> ? "
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
    traffic: Traffic | None = None,
) -> str:
    """Open an incident, or update the open one for (rule, subject); return its key.

    `existing` is what find_open() returned, when the caller already looked; a summary of
    None keeps the stored one (a site joining changes what it says, and a rule's words
    for its traffic span); `traffic`, the span as it now stands, None to keep it."""
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
            f"""UPDATE incidents SET severity = CASE WHEN severity > ? THEN severity ELSE ? END,
               first_seen = CASE WHEN first_seen < ? THEN first_seen ELSE ? END,
               last_seen = CASE WHEN last_seen > ? THEN last_seen ELSE ? END,
               summary = COALESCE(?, summary), alert_count = alert_count + ?, seq = ?,
               updated_at = ?, {_TRAFFIC} WHERE key = ?""",
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
                *_traffic_args(traffic),
                key,
            ),
        )
        record_change(
            tx, key, seq, "opened" if created else "reopened" if reopened else "updated", now
        )
    elif new_links or summary is not None or traffic is not None:
        # More of the same from a site already in it: counted quietly, without waking
        # every sink once per batch (so is a traffic span that grows, and its wording).
        tx.execute(
            f"""UPDATE incidents SET alert_count = alert_count + ?,
               last_seen = CASE WHEN last_seen > ? THEN last_seen ELSE ? END,
               summary = COALESCE(?, summary), updated_at = ?, {_TRAFFIC} WHERE key = ?""",
            (new_links, event_time, event_time, summary, now, *_traffic_args(traffic), key),
        )
    return key


_TRAFFIC = (
    "traffic_first = COALESCE(?, traffic_first), traffic_last = COALESCE(?, traffic_last), "
    "traffic_retro = COALESCE(?, traffic_retro)"
)


def _traffic_args(traffic: Traffic | None) -> tuple:
    if traffic is None:
        return (None, None, None)
    return (traffic.first, traffic.last, int(traffic.retro))
