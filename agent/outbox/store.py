"""The durable outbox: anonymised alerts wait here until the collector acknowledges them.

SQLite in WAL mode survives kill -9 of the agent. It is bounded: when full, the oldest
alerts of the lowest severity are shed first, and every shed alert is counted in a
persistent counter that heartbeats report (never silently).

A full state filesystem must not stop the agent nor lose alerts silently. When a write
fails because the disk is full (SQLITE_FULL, an I/O error from SQLite, ENOSPC), alerts are
held in a bounded in-memory queue instead:

- the queue is delivered like the disk: `pending` lists disk rows then memory entries,
  `ack` removes acknowledged entries from memory at once, so alerts reach the collector
  even if the disk never frees; acks the disk cannot record are kept in memory and applied
  at the next successful write (until then `pending` hides those rows);
- past `memory_alerts` the lowest-severity, then oldest, entries are shed (the same order
  as the disk bound: high and critical alerts are the ones an analyst cannot do without)
  and counted apart (`shed_counts()["disk_full"]`, persisted when the disk returns);
- the disk is tried again at most once per second (on put, pending, ack, depth or tick),
  never once per alert; when a write succeeds the queue is written out in one transaction;
- `outbox_disk_full` is logged once when writes start failing, `outbox_disk_back` once when
  they work again, `state_dir_low_space` once each time free space drops under the
  warning threshold.
Alerts still only in memory when the agent stops are lost: that is logged with their
count (`outbox_memory_lost`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import logs
from vigie.v1 import alert_pb2

log = logs.get("agent.outbox")

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
INSERT OR IGNORE INTO meta VALUES ('shed_disk_full', 0);
"""

RETRY_SECONDS = 1.0  # how often a full disk is tried again (and free space looked at)
SQLITE_IOERR, SQLITE_FULL = 10, 13
MB = 1024 * 1024

Row = tuple[str, int, int, bytes]  # id, revision, severity, payload


class OutboxError(Exception):
    pass


def write_failed(exc: BaseException) -> bool:
    """True when `exc` says the disk cannot take the write (full, or failing under us).

    SQLite reports a full filesystem as SQLITE_FULL on writes but as an I/O error when it
    cannot size its WAL index (-shm) at open: both mean "hold the alert in memory", which
    beats exiting. Other errors (locked, corrupt, read-only) keep raising."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in (SQLITE_FULL, SQLITE_IOERR)
        text = str(exc)
        return "disk is full" in text or "disk I/O error" in text
    return False


def free_space(path: Path) -> tuple[int, int]:
    """(free bytes available to this user, total bytes) of the filesystem holding path."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def low_on_space(free: int, total: int, low_space_mb: float, low_space_percent: float) -> bool:
    """The warning line, before the disk is full: under either bound."""
    return free < low_space_mb * MB or free * 100 < total * low_space_percent


def _rollback(db: sqlite3.Connection) -> None:
    # SQLite may already have rolled back on SQLITE_FULL: a second ROLLBACK would raise
    # "cannot rollback - no transaction is active" over the real error.
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


class Outbox:
    def __init__(
        self,
        path: str | Path,
        max_alerts: int = 100_000,
        memory_alerts: int = 5_000,
        low_space_mb: float = 100.0,
        low_space_percent: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = p
        self.max_alerts = max_alerts
        self.memory_alerts = memory_alerts
        self.low_space_mb = low_space_mb
        self.low_space_percent = low_space_percent
        self._clock = clock
        # Re-entrant: the sender waits on `changed` and reads the outbox under it.
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self._db: sqlite3.Connection | None = None
        # id -> (revision, severity, payload); dict order is age (first revision queued).
        self._mem: dict[str, tuple[int, int, bytes]] = {}
        self._mem_shed = 0  # shed from memory, not yet added to the persistent counters
        self._acked: dict[str, int] = {}  # acks of disk rows the disk could not record
        self._shed_disk = (0, 0)  # last read (shed, shed_disk_full): shown while unopened
        self.disk_full = False
        self.low_space = False
        self.free_bytes: int | None = None
        self.total_bytes: int | None = None
        self._next_try = 0.0
        self._open()
        self._check_space()

    # -- disk state ---------------------------------------------------------------------

    def _open(self) -> bool:
        """Open the database; False (and memory mode) when the full disk prevents it."""
        try:
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.path}: outbox unusable: {exc}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL+NORMAL survives a process crash
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            db.close()
            if write_failed(exc):
                self._failed(exc)
                return False
            raise OutboxError(f"{self.path}: outbox unusable: {exc}") from None
        self._db = db
        return True

    def _failed(self, exc: BaseException) -> None:
        """A write did not fit: memory mode from now on, said once."""
        if self._db is not None and isinstance(exc, sqlite3.OperationalError):
            code = getattr(exc, "sqlite_errorcode", SQLITE_FULL) or SQLITE_FULL
            if code & 0xFF == SQLITE_IOERR:
                # After an I/O error SQLite may keep a broken WAL index mapping: open
                # afresh on the next try rather than reuse the connection.
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
        self._next_try = self._clock() + RETRY_SECONDS
        if not self.disk_full:
            self.disk_full = True
            self._check_space(log_it=False)
            log.error(
                "outbox_disk_full",
                path=str(self.path),
                error=str(exc),
                free_bytes=self.free_bytes,
                memory_bound=self.memory_alerts,
                hint="free space in the state directory; alerts are held in memory meanwhile",
            )

    def _check_space(self, log_it: bool = True) -> None:
        try:
            free, total = free_space(self.path.parent)
        except OSError:
            return
        self.free_bytes, self.total_bytes = free, total
        low = low_on_space(free, total, self.low_space_mb, self.low_space_percent)
        if low and not self.low_space and log_it:
            log.warning(
                "state_dir_low_space",
                path=str(self.path.parent),
                free_bytes=free,
                total_bytes=total,
                hint="free space before it fills: alerts are then only held in memory",
            )
        elif not low and self.low_space and log_it:
            log.info("state_dir_space_ok", path=str(self.path.parent), free_bytes=free)
        if log_it:
            self.low_space = low

    def _tick(self) -> None:
        """Cheap unless a second has passed: look at free space, retry a full disk."""
        now = self._clock()
        if now < self._next_try:
            return
        self._next_try = now + RETRY_SECONDS
        self._check_space()
        if self.disk_full or self._db is None:
            self._flush()

    def tick(self) -> None:
        """Retry a full disk and look at free space (at most once per second)."""
        with self._lock:
            self._tick()

    def _flush(self) -> bool:
        """Write the memory queue (and deferred acks) in one transaction; True if it fit."""
        if self._db is None and not self._open():
            return False
        rows = [(i, rev, sev, payload) for i, (rev, sev, payload) in self._mem.items()]
        try:
            self._write(rows, probe=True)
        except (sqlite3.OperationalError, OSError) as exc:
            if not write_failed(exc):
                raise
            self._failed(exc)
            return False
        written, shed = len(rows), self._mem_shed
        self._mem.clear()
        self._mem_shed = 0
        self._acked.clear()
        if self.disk_full:
            self.disk_full = False
            self._check_space()
            log.info(
                "outbox_disk_back",
                path=str(self.path),
                written=written,
                shed=shed,
                free_bytes=self.free_bytes,
            )
        self.changed.notify_all()
        return True

    def _write(self, rows: list[Row], probe: bool = False) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._acked:
                db.executemany(
                    "DELETE FROM outbox WHERE id = ? AND revision <= ?", self._acked.items()
                )
            db.executemany(
                """INSERT INTO outbox (id, revision, severity, payload, enqueued)
                   VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET revision = excluded.revision,
                     severity = excluded.severity, payload = excluded.payload
                   WHERE excluded.revision > outbox.revision""",
                [(i, rev, sev, payload, time.time()) for i, rev, sev, payload in rows],
            )
            excess = self._depth_disk() - self.max_alerts
            if excess > 0:
                db.execute(
                    "DELETE FROM outbox WHERE n IN (SELECT n FROM outbox "
                    "ORDER BY severity ASC, n ASC LIMIT ?)",
                    (excess,),
                )
            shed = max(0, excess) + self._mem_shed
            if shed:
                db.execute("UPDATE meta SET value = value + ? WHERE name = 'shed'", (shed,))
            if self._mem_shed:
                db.execute(
                    "UPDATE meta SET value = value + ? WHERE name = 'shed_disk_full'",
                    (self._mem_shed,),
                )
            if probe:
                # A real page written even when nothing else is: an empty transaction
                # would "succeed" on a disk that is still full.
                db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (int(time.time()),))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    # -- the memory queue ---------------------------------------------------------------

    def _hold(self, row: Row) -> None:
        i, rev, sev, payload = row
        old = self._mem.get(i)
        if old is not None:
            if rev > old[0]:  # a newer revision keeps the first one's place, as on disk
                self._mem[i] = (rev, sev, payload)
            return
        self._mem[i] = (rev, sev, payload)
        if len(self._mem) > self.memory_alerts:
            _, victim = min(enumerate(self._mem), key=lambda e: (self._mem[e[1]][1], e[0]))
            del self._mem[victim]
            if not self._mem_shed:
                log.warning(
                    "outbox_memory_shedding",
                    memory_bound=self.memory_alerts,
                    order="lowest severity, then oldest",
                )
            self._mem_shed += 1

    # -- the outbox interface -----------------------------------------------------------

    def put(self, alert: alert_pb2.Alert) -> None:
        """Queue an alert, or a newer revision of a queued one. Never raises for a full
        disk: the alert is then held in memory."""
        row = (alert.id, alert.revision, alert.severity, alert.SerializeToString())
        with self._lock:
            self._tick()
            if self._db is not None and not self.disk_full:
                try:
                    self._write([row])
                except (sqlite3.OperationalError, OSError) as exc:
                    if not write_failed(exc):
                        raise
                    self._failed(exc)
                    self._hold(row)
            else:
                self._hold(row)
            self.changed.notify_all()

    def pending(
        self, limit: int, exclude: set[str] | frozenset = frozenset()
    ) -> list[tuple[str, int, bytes]]:
        """Oldest first: (id, revision, payload) not already in flight. Disk rows first,
        then alerts held in memory while the disk is full."""
        with self._lock:
            self._tick()
            out: list[tuple[str, int, bytes]] = []
            if self._db is not None:
                hidden = len(exclude) + len(self._acked) + len(self._mem)
                rows = self._db.execute(
                    "SELECT id, revision, payload FROM outbox ORDER BY n LIMIT ?",
                    (limit + hidden,),
                ).fetchall()
                for i, rev, payload in rows:
                    if i in exclude or i in self._mem:  # memory holds a newer revision
                        continue
                    if self._acked.get(i, -1) >= rev:
                        continue
                    out.append((i, rev, payload))
            for i, (rev, _, payload) in self._mem.items():
                if len(out) >= limit:
                    break
                if i not in exclude:
                    out.append((i, rev, payload))
        return out[:limit]

    def ack(self, items: list[tuple[str, int]]) -> None:
        """Forget what the collector stored; a newer revision queued meanwhile stays."""
        with self._lock:
            for i, rev in items:
                held = self._mem.get(i)
                if held is not None and held[0] <= rev:
                    del self._mem[i]
            if self._db is not None and not self.disk_full:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany(
                            "DELETE FROM outbox WHERE id = ? AND revision <= ?", items
                        )
                        self._db.execute("COMMIT")
                    except BaseException:
                        _rollback(self._db)
                        raise
                except (sqlite3.OperationalError, OSError) as exc:
                    if not write_failed(exc):
                        raise
                    self._failed(exc)
                    self._defer_acks(items)
            else:
                self._defer_acks(items)
            self._tick()
            self.changed.notify_all()

    def _defer_acks(self, items: list[tuple[str, int]]) -> None:
        """Remember acks of disk rows the disk cannot delete now (reading still works)."""
        if self._db is None:
            return
        for i, rev in items:
            try:
                row = self._db.execute("SELECT revision FROM outbox WHERE id = ?", (i,)).fetchone()
            except sqlite3.Error:
                return
            if row is not None and row[0] <= rev:
                self._acked[i] = max(rev, self._acked.get(i, 0))

    def _depth_disk(self) -> int:
        assert self._db is not None
        return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def depth(self) -> int:
        """Alerts waiting: on disk (less acks not yet recorded there) plus in memory."""
        with self._lock:
            self._tick()
            disk = self._depth_disk() - len(self._acked) if self._db is not None else 0
            return disk + len(self._mem)

    def memory_queued(self) -> int:
        with self._lock:
            return len(self._mem)

    def shed_counts(self) -> dict[str, int]:
        """Shed alerts by reason: `max_alerts` (the disk bound), `disk_full` (memory bound
        while the disk was full). Persistent across restarts once written."""
        with self._lock:
            if self._db is not None:
                try:
                    rows = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
                    self._shed_disk = (rows.get("shed", 0), rows.get("shed_disk_full", 0))
                except sqlite3.Error:
                    pass
            total, full = self._shed_disk
            return {"max_alerts": total - full, "disk_full": full + self._mem_shed}

    def shed(self) -> int:
        return sum(self.shed_counts().values())

    def close(self) -> None:
        with self._lock:
            if self._mem or self._mem_shed:
                self._flush()  # one last try: the disk may have room again
            if self._mem:
                log.error(
                    "outbox_memory_lost",
                    count=len(self._mem),
                    hint="the state directory was full when the agent stopped",
                )
            if self._db is not None:
                self._db.close()
                self._db = None
