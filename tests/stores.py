"""Store factories for tests parametrised over both backends.

PostgreSQL tests use the machine's server (127.0.0.1:5432, trust auth, database `test`),
each in a schema of its own. Without a server they skip, except under CI (CI=true),
where a skip would hide the backend the replicas depend on: there they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN = os.environ.get("VIGIE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN}: {exc}"


def pg_or_skip() -> None:
    reason = pg_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(reason)


def pg_schema_url() -> Iterator[str]:
    """A fresh schema; yields a URL whose connections use it; drops it afterwards."""
    import psycopg

    pg_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_ADMIN else "?"
    try:
        yield f"{PG_ADMIN}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
