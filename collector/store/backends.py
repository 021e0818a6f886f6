"""The two places alerts can live: SQLite (embedded default) and PostgreSQL (replicas).

Only connection handling and the `Dialect` live here: every difference between the two
databases is a field or a method of it, so the rest of the store writes each query once,
with `?` placeholders, and never asks which database it runs on.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class StoreError(Exception):
    pass


def transient(exc: BaseException) -> bool:
    """True when retrying the same write later can succeed: the database is unreachable,
    locked, full, read-only or out of resources. Anything else (a value the store refuses,
    a bug in our code) fails the same way every time, and must not block an agent."""
    if isinstance(exc, StoreError | sqlite3.OperationalError | ConnectionError | TimeoutError):
        return True
    try:
        import psycopg
        from psycopg_pool import PoolTimeout
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(
        exc, psycopg.OperationalError | psycopg.InterfaceError | PoolTimeout
    ) and not isinstance(exc, psycopg.errors.QueryCanceled)


class Tx:
    """What a transaction offers the store: statements, batches, fetches."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None: ...
    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...  # rows changed
    def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
    def values(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]: ...  # rows as tuples

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the transaction that fails alone: on an exception what it wrote is
        undone and the exception goes on, while the rest of the transaction stays usable
        (on PostgreSQL an error otherwise aborts the whole transaction)."""
        self._savepoints = n = getattr(self, "_savepoints", 0) + 1
        name = f"sp{n}"
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        finally:
            self._savepoints = n - 1
        self.execute(f"RELEASE SAVEPOINT {name}")


def in_lists(values: Sequence[Any], size: int = 500) -> Iterator[tuple[Sequence[Any], str]]:
    """`values` in chunks, each with its `?,?,...` marks, for `IN (...)` lists that stay
    under the databases' limits on parameters per statement."""
    for i in range(0, len(values), size):
        chunk = values[i : i + size]
        yield chunk, ",".join("?" * len(chunk))


def lock_key(name: str) -> int:
    """The advisory-lock key of a name (64 bits, as PostgreSQL takes them): every lock the
    store takes, schema, job or correlation subject, is named, and keyed this one way."""
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and PostgreSQL, and nothing else."""

    name: str
    # Column types the migrations name as {ID}, {REAL}, {INT} and {BLOB}.
    types: Mapping[str, str]
    # Several streams' batches in one transaction. Not on PostgreSQL: the correlation
    # rules take advisory locks per subject, and one transaction taking several batches'
    # locks in turn could deadlock against another replica doing the same in another order.
    group_commit: bool
    # One writer at a time (SQLite): the collector writes from a process of its own
    # (collector/ingest/writer.py) through one thread; PostgreSQL takes several writers.
    one_writer: bool
    # Locks across replicas. SQLite has one writer (BEGIN IMMEDIATE) and needs none.
    advisory_locks: bool
    # last_seen rounded down to the hour, as text.
    hour: str

    def lock(self, tx: Tx, *names: str) -> None:
        """Serialise transactions about the same names across replicas, until commit.
        Taken in sorted order, so that two transactions never wait on each other."""
        if not self.advisory_locks:
            return
        for name in sorted(set(names)):
            tx.execute("SELECT pg_advisory_xact_lock(?)", (lock_key(name),))

    def try_lock(self, tx: Tx, name: str) -> bool:
        """Take the lock of `name` until commit, unless another transaction holds it."""
        if not self.advisory_locks:
            return True
        return bool(
            tx.fetch("SELECT pg_try_advisory_xact_lock(?) AS ok", (lock_key(name),))[0]["ok"]
        )


SQLITE = Dialect(
    name="sqlite",
    types={
        "ID": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "REAL": "REAL",
        "INT": "INTEGER",
        "BLOB": "BLOB",
    },
    group_commit=True,
    one_writer=True,
    advisory_locks=False,
    hour="CAST(CAST(last_seen / 3600 AS INTEGER) * 3600 AS TEXT)",
)
POSTGRESQL = Dialect(
    name="postgresql",
    types={
        "ID": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "REAL": "DOUBLE PRECISION",
        "INT": "BIGINT",
        "BLOB": "BYTEA",
    },
    group_commit=False,
    one_writer=False,
    advisory_locks=True,
    hour="CAST(CAST(FLOOR(last_seen / 3600) AS BIGINT) * 3600 AS TEXT)",
)


class SqliteTx(Tx):
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self.db.execute(sql, args)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        before = self.db.total_changes
        self.db.executemany(sql, rows)
        return self.db.total_changes - before

    def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, args)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def values(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        return self.db.execute(sql, args).fetchall()


def _wal(db: sqlite3.Connection, wait: float = 10.0) -> None:
    """Switch to WAL, waiting out other openers: the switch can answer "database is
    locked" at once, without the busy timeout, while another connection of a collector
    starting at the same moment migrates the schema."""
    deadline = time.monotonic() + wait
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Sqlite:
    dialect = SQLITE

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout=10000")
            _wal(self._db)
            self._db.execute(f"PRAGMA synchronous={synchronous}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open the store: {exc}") from None
        self.path = path
        self._lock = threading.Lock()  # one writer; SQLite serialises anyway

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTx(self._db)
            except BaseException:
                # SQLite rolls back by itself on some errors (a full disk): a second
                # ROLLBACK would then raise and hide the first error.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a commit that failed leaves it open
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PgTx(Tx):
    def __init__(self, conn) -> None:
        self.conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self.conn.execute(_pg(sql), args)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)
            return max(cur.rowcount, 0)  # psycopg sums rowcount over the batch

    def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(_pg(sql), args)
            cols = [d.name for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def values(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(_pg(sql), args)
            return cur.fetchall()


def _pg(sql: str) -> str:
    # Our SQL never holds a literal '?' or '%': placeholders convert one to one.
    return sql.replace("?", "%s")


class Postgres:
    dialect = POSTGRESQL

    def __init__(self, url: str, min_size: int = 2, max_size: int = 16) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise StoreError(
                "PostgreSQL storage needs psycopg: pip install 'vigie[postgres]'"
            ) from None
        import psycopg

        self.url = url
        try:
            # Fail fast and clearly when the server is not there, before the pool retries.
            psycopg.connect(url, connect_timeout=5).close()
            self._pool = ConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                open=True,
                timeout=15,
                kwargs={"autocommit": False},
            )
            self._pool.wait(timeout=15)
        except (psycopg.Error, Exception) as exc:  # PoolTimeout is not a psycopg.Error
            raise StoreError(f"cannot reach PostgreSQL: {exc}") from None

    @contextmanager
    def tx(self) -> Iterator[Tx]:
        with self._pool.connection() as conn, conn.transaction():
            yield PgTx(conn)

    def close(self) -> None:
        self._pool.close()
