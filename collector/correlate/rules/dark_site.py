"""Every agent of an establishment silent at once, after being heard from lately: a site
gone dark (network cut, ransomware, agents stopped). Run by a periodic job, not on ingest."""

from __future__ import annotations

from typing import Any, ClassVar

from collector.correlate.incidents import SiteRef, upsert
from collector.correlate.rules.base import HIGH, Rule
from collector.store.backends import Tx
from common.config import Option, positive


class DarkSite(Rule):
    name = "dark_site"
    on_ingest_rule = False
    options: ClassVar[dict[str, Any]] = {
        "enabled": Option(bool, True, "Every agent of an establishment silent at once."),
        "silent_seconds": Option(float, 900.0, "Silence that makes an agent dark.", positive),
        "healthy_within_seconds": Option(
            float, 86400.0, "Only sites heard from within this count.", positive
        ),
        "check_interval_seconds": Option(float, 60.0, "How often the check runs.", positive),
    }

    def check(self, tx: Tx, now: float) -> int:
        """Establishments whose agents all went silent after being healthy. Returns count."""
        cfg = self.cfg
        if not cfg["enabled"]:
            return 0
        rows = tx.fetch(
            "SELECT finess, MAX(ght) AS ght, MAX(region) AS region, MAX(last_seen) AS last "
            "FROM agents GROUP BY finess HAVING MAX(last_seen) < ? AND MAX(last_seen) >= ?",
            (now - cfg["silent_seconds"], now - cfg["healthy_within_seconds"]),
        )
        for r in rows:
            self.dialect.lock(tx, f"site:{r['finess']}")
            silent_for = int(now - r["last"])
            upsert(
                tx,
                rule=self.name,
                subject=r["finess"],
                event_time=r["last"],
                window=cfg["healthy_within_seconds"],
                severity=HIGH,
                summary=f"every agent of the establishment silent for {silent_for} s",
                sites=[SiteRef(r["finess"], r["ght"], r["region"])],
                alerts=[],
                now=now,
            )
        return len(rows)
