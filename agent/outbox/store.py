"""The durable outbox: anonymised alerts wait here until the collector acknowledges them.

SQLite in WAL mode survives kill -9 of the agent. It is bounded: when full, the oldest
alerts of the lowest severity are shed first, and every shed alert is counted in a
persistent counter that heartbeats report (never silently).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from vigie.v1 import alert_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    n         INTEGER PRIMARY KEY AUTOINCREMENT,
    id        TEXT NOT NULL UNIQUE,
    revision  INTEGER NOT NULL,
    severity  INTEGER NOT NULL,
    payload   BLOB NOT NULL,
    enqueued  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_shed_order ON outbox (severity, n);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('shed', 0);
"""


class OutboxError(Exception):
    pass


class Outbox:
    def __init__(self, path: str | Path, max_alerts: int = 100_000) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = sqlite3.connect(str(p), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL+NORMAL survives a process crash
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{p}: outbox unusable: {exc}") from None
        self.path = p
        self.max_alerts = max_alerts
        # Re-entrant: the sender waits on `changed` and reads the outbox under it.
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)

    def put(self, alert: alert_pb2.Alert) -> None:
        """Queue an alert, or a newer revision of a queued one."""
        payload = alert.SerializeToString()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    """INSERT INTO outbox (id, revision, severity, payload, enqueued)
                       VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT (id) DO UPDATE SET revision = excluded.revision,
                         severity = excluded.severity, payload = excluded.payload
                       WHERE excluded.revision > outbox.revision""",
                    (alert.id, alert.revision, alert.severity, payload, time.time()),
                )
                excess = self._depth() - self.max_alerts
                if excess > 0:
                    self._db.execute(
                        "DELETE FROM outbox WHERE n IN (SELECT n FROM outbox "
                        "ORDER BY severity ASC, n ASC LIMIT ?)",
                        (excess,),
                    )
                    self._db.execute(
                        "UPDATE meta SET value = value + ? WHERE name = 'shed'", (excess,)
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.changed.notify_all()

    def pending(
        self, limit: int, exclude: set[str] | frozenset = frozenset()
    ) -> list[tuple[str, int, bytes]]:
        """Oldest first: (id, revision, payload) not already in flight."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, revision, payload FROM outbox ORDER BY n LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
        return [r for r in rows if r[0] not in exclude][:limit]

    def ack(self, items: list[tuple[str, int]]) -> None:
        """Forget what the collector stored; a newer revision queued meanwhile stays."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE id = ? AND revision <= ?", items)
            self._db.execute("COMMIT")
            self.changed.notify_all()

    def _depth(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def depth(self) -> int:
        with self._lock:
            return self._depth()

    def shed(self) -> int:
        with self._lock:
            return self._db.execute("SELECT value FROM meta WHERE name = 'shed'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
