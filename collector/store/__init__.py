"""Where alerts, agents and incidents are kept: `open_store(url)` picks the backend."""

from __future__ import annotations

from typing import Any

from collector.store.backends import Postgres, Sqlite, StoreError
from collector.store.sql import AlertFilter, Origin, Store

__all__ = ["AlertFilter", "Origin", "Store", "StoreError", "open_store"]


def open_store(
    url: str, sqlite_synchronous: str = "FULL", correlation: dict[str, Any] | None = None
) -> Store:
    """sqlite:///PATH (embedded default) or postgresql://... (several replicas)."""
    if url.startswith("sqlite:///"):
        return Store(Sqlite(url.removeprefix("sqlite:///"), sqlite_synchronous), correlation)
    if url.startswith(("postgresql://", "postgres://")):
        return Store(Postgres(url), correlation)
    raise StoreError(
        f"storage URL must start with sqlite:/// or postgresql://, got {url.split(':', 1)[0]!r}"
    )
