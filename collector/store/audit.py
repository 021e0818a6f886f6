"""The audit trail: who did what through the analyst API, and how it went."""

from __future__ import annotations

import time
from typing import Any

from collector.store.backends import Postgres, Sqlite


class Audit:
    backend: Sqlite | Postgres

    def audit(
        self, who: str, role: str, action: str, detail: str, outcome: str, now: float | None = None
    ) -> None:
        with self.backend.tx() as tx:
            tx.execute(
                "INSERT INTO audit (at, who, role, action, detail, outcome) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time() if now is None else now, who, role, action, detail[:2000], outcome),
            )

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.backend.tx() as tx:
            return tx.fetch("SELECT * FROM audit ORDER BY n DESC LIMIT ?", (limit,))
