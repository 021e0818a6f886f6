"""The overview's aggregates: counts over the store, narrowed by the caller's scope (the
region comes from `Scope`, as for every other read)."""

from __future__ import annotations

import threading
import time
from typing import Any

from collector.query.scope import Scope
from collector.store import Store

AGE_BUCKETS = ((3600, "< 1 h"), (86400, "< 24 h"), (7 * 86400, "< 7 d"), (None, "≥ 7 d"))
OPEN_STATUSES = (1, 2)  # open, acknowledged
# The time ranges are closed above (a day past now, for agents whose clock runs ahead):
# given only a lower bound, SQLite guessed it selects most rows and walked a whole other
# index for its GROUP BY (370 ms at a million alerts); closed, it reads the range from the
# covering index (alerts_seen_cover, 40 ms).
FUTURE = 86400.0


def open_incidents(store: Store, scope: Scope, now: float) -> dict[int, list[int]]:
    """severity -> counts per age bucket (AGE_BUCKETS) of the incidents not closed."""
    sql = "SELECT severity, first_seen FROM incidents WHERE status IN (1, 2)"
    args: list[Any] = []
    if scope.region:
        sql += " AND key IN (SELECT incident_key FROM incident_sites WHERE region = ?)"
        args.append(scope.region)
    with store.backend.tx() as tx:
        rows = tx.values(sql, args)
    out: dict[int, list[int]] = {s: [0] * len(AGE_BUCKETS) for s in range(1, 6)}
    for severity, first in rows:
        age = now - first
        for i, (limit, _) in enumerate(AGE_BUCKETS):
            if limit is None or age < limit:
                out.setdefault(severity, [0] * len(AGE_BUCKETS))[i] += 1
                break
    return out


def alerts_by_hour(store: Store, scope: Scope, since: float) -> dict[tuple[int, str], int]:
    """(hour start, detector) -> alerts last seen in that hour, since `since`."""
    hour = store.backend.dialect.hour
    sql = (
        f"SELECT {hour} AS h, detector, COUNT(*) AS c FROM alerts "
        "WHERE last_seen >= ? AND last_seen < ?"
    )
    args: list[Any] = [since, time.time() + FUTURE]
    if scope.region:
        sql += " AND region = ?"
        args.append(scope.region)
    sql += " GROUP BY h, detector"
    with store.backend.tx() as tx:
        return {(int(float(h)), d): c for h, d, c in tx.values(sql, args)}


def active_sites(store: Store, scope: Scope, since: float) -> list[tuple[str, str, int]]:
    """(GHT, region, alerts last seen since `since`), most first."""
    sql = "SELECT ght, region, COUNT(*) AS c FROM alerts WHERE last_seen >= ? AND last_seen < ?"
    args: list[Any] = [since, time.time() + FUTURE]
    if scope.region:
        sql += " AND region = ?"
        args.append(scope.region)
    sql += " GROUP BY ght, region ORDER BY c DESC"
    with store.backend.tx() as tx:
        return [(g, r, c) for g, r, c in tx.values(sql, args)]


class Cached:
    """The overview's week of counts, computed at most every `ttl` seconds per scope: a
    wall screen refreshing every minute, and twenty analysts opening it at nine, read the
    million alerts once. The page says when the numbers were taken."""

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._held: dict[tuple, tuple[float, Any]] = {}

    def get(self, key: tuple, compute):
        now = time.time()
        with self._lock:
            hit = self._held.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit
        value = compute()
        with self._lock:
            self._held[key] = (now, value)
        return now, value
