"""The same external indicator (address, domain, SNI, JA3/JA4, hash) seen by several GHTs
within the window: one attacker working across hospital groups.

The incident says when the traffic behind it happened (the earliest first_seen and latest
last_seen of its alerts): a retro-hunt publication makes sites report, within minutes,
traffic of days or weeks ago, and "4 GHTs between the 3rd and the 17th" is what the
analyst acts on."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from collector.correlate.incidents import SiteRef, Traffic
from collector.correlate.rules.base import (
    INDICATOR_KINDS,
    SITE_UPSERT,
    Batch,
    CountingRule,
    Sighting,
    site_refs,
)
from collector.store.backends import Tx
from common.config import Option, at_least, positive


class MultiSiteIndicator(CountingRule):
    name = "multi_site_indicator"
    options: ClassVar[dict[str, Any]] = {
        "enabled": Option(bool, True, "The same external indicator seen in several GHTs."),
        "min_ghts": Option(int, 2, "Distinct GHTs that make an incident.", at_least(2)),
        "window_seconds": Option(float, 86400.0, "How far back alerts count.", positive),
    }

    def lock_names(self, batches: Sequence[Batch]) -> Iterable[str]:
        return (f"ind:{k}:{v}" for p in batches for k, v in p.indicators)

    def on_ingest(self, tx: Tx, batches: list[Batch], now: float) -> None:
        if not any(p.indicators for p in batches):
            return
        tx.many(
            SITE_UPSERT.format(
                table="indicator_sites", key="kind, value", marks="?, ?, ?, ?, ?, ?"
            ),
            [
                (k, v, p.site.finess, p.site.ght, p.site.region, t)
                for p in batches
                for (k, v), t in p.indicators.items()
            ],
        )
        tx.many(
            "INSERT INTO indicator_ghts VALUES (?, ?, ?, ?) ON CONFLICT (kind, value, ght) "
            "DO UPDATE SET last_seen = excluded.last_seen "
            "WHERE excluded.last_seen > indicator_ghts.last_seen",
            [(k, v, p.site.ght, t) for p in batches for (k, v), t in p.indicators.items()],
        )
        done = self.quiet_updates(
            tx,
            now,
            [
                (
                    p.site,
                    {
                        f"{INDICATOR_KINDS[k]}:{v}": (
                            t,
                            [(p.agent, i) for i in ids],
                            Traffic(*p.traffic[(k, v)]),
                        )
                        for ((k, v), t), ids in zip(
                            p.indicators.items(), p.by_indicator.values(), strict=True
                        )
                    },
                )
                for p in batches
            ],
        )
        # Alerts of an indicator already in an open incident were just linked to it; the
        # others are kept per indicator, for the incident that may open later.
        rows = [
            r
            for p, d in zip(batches, done, strict=True)
            for r in p.rows
            if f"{INDICATOR_KINDS[r[2]]}:{r[3]}" not in d
        ]
        if rows:
            tx.many(
                "INSERT INTO alert_indicators VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                rows,
            )
        for p, d in zip(batches, done, strict=True):
            for (kind, value), t in p.indicators.items():
                subject = f"{INDICATOR_KINDS[kind]}:{value}"
                if subject not in d:
                    alerts = [(p.agent, i) for i in p.by_indicator[(kind, value)]]
                    traffic = Traffic(*p.traffic[(kind, value)])
                    self.raise_incident(
                        tx, Sighting(subject, (kind, value), t, p.site, alerts, traffic), now
                    )

    def _args(self, s: Sighting) -> tuple:
        return (*s.key, s.time - self.cfg["window_seconds"])

    def reached(self, tx: Tx, s: Sighting) -> bool:
        n = tx.fetch(
            "SELECT COUNT(*) AS n FROM indicator_ghts "
            "WHERE kind = ? AND value = ? AND last_seen >= ?",
            self._args(s),
        )[0]["n"]
        return n >= self.cfg["min_ghts"]

    def sites(self, tx: Tx, s: Sighting) -> set[SiteRef]:
        return site_refs(
            tx.fetch(
                "SELECT finess, ght, region FROM indicator_sites "
                "WHERE kind = ? AND value = ? AND last_seen >= ?",
                self._args(s),
            )
        )

    def window_alerts(self, tx: Tx, s: Sighting) -> list[dict[str, Any]]:
        # With each alert's times and metrics, for the span of the traffic (span()).
        return tx.fetch(
            "SELECT i.agent_id, i.alert_id, a.first_seen, a.last_seen, a.metrics "
            "FROM alert_indicators i JOIN alerts a ON a.agent_id = i.agent_id "
            "AND a.alert_id = i.alert_id "
            "WHERE i.kind = ? AND i.value = ? AND i.seen >= ? LIMIT 1000",
            self._args(s),
        )

    def span(self, alerts: list[dict[str, Any]]) -> Traffic | None:
        if not alerts:
            return None
        return Traffic(
            min(min(r["first_seen"], r["last_seen"]) for r in alerts),
            max(r["last_seen"] for r in alerts),
            any(json.loads(r["metrics"]).get("retro") for r in alerts),
        )

    def summary(self, s: Sighting, sites: int, ghts: int, traffic: Traffic | None) -> str:
        kind, value = s.key
        name = INDICATOR_KINDS[kind]
        verb = "contacted from" if name in CONTACTED else "seen in"
        text = f"{name} {value} {verb} {ghts} GHTs ({sites} establishments)"
        return f"{text} {traffic.words()}" if traffic is not None else text


# Indicators the hospital's hosts reach (the others, fingerprints and hashes, are seen).
CONTACTED = {"ip", "domain", "sni"}
