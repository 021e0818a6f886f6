"""The embedded default: a Store on one SQLite file (WAL)."""

from __future__ import annotations

from pathlib import Path

from collector.store.backends import Sqlite
from collector.store.sql import AlertFilter, Origin, Store

__all__ = ["AlertFilter", "Origin", "SqliteStore"]


def SqliteStore(path: str | Path, synchronous: str = "FULL") -> Store:
    return Store(Sqlite(str(path), synchronous))
