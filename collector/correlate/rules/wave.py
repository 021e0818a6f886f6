"""The same detector firing in many establishments within the window: a campaign (or a
faulty detector) across the country."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from collector.correlate.incidents import SiteRef, Traffic
from collector.correlate.rules.base import SITE_UPSERT, Batch, CountingRule, Sighting, site_refs
from collector.store.backends import Tx
from common.config import Option, at_least, positive


class Wave(CountingRule):
    name = "wave"
    options: ClassVar[dict[str, Any]] = {
        "enabled": Option(bool, True, "The same detector firing in many establishments."),
        "min_establishments": Option(int, 5, "Distinct FINESS that make a wave.", at_least(2)),
        "window_seconds": Option(float, 43200.0, "How far back alerts count.", positive),
        "ignore_detectors": Option(list, [], "Detectors that never make a wave."),
    }

    def lock_names(self, batches: Sequence[Batch]) -> Iterable[str]:
        return (f"det:{d}" for p in batches for d in p.detectors)

    def on_ingest(self, tx: Tx, batches: list[Batch], now: float) -> None:
        ignore = self.cfg["ignore_detectors"]
        waves = [{d: t for d, t in p.detectors.items() if d not in ignore} for p in batches]
        tx.many(
            SITE_UPSERT.format(table="detector_sites", key="detector", marks="?, ?, ?, ?, ?"),
            [
                (d, p.site.finess, p.site.ght, p.site.region, t)
                for p, w in zip(batches, waves, strict=True)
                for d, t in w.items()
            ],
        )
        done = self.quiet_updates(
            tx,
            now,
            [
                (
                    p.site,
                    {d: (t, [(p.agent, i) for i in p.by_detector[d]]) for d, t in w.items()},
                )
                for p, w in zip(batches, waves, strict=True)
            ],
        )
        for p, w, d in zip(batches, waves, done, strict=True):
            for detector, t in w.items():
                if detector not in d:
                    alerts = [(p.agent, i) for i in p.by_detector[detector]]
                    self.raise_incident(tx, Sighting(detector, (detector,), t, p.site, alerts), now)

    def _args(self, s: Sighting) -> tuple:
        return (*s.key, s.time - self.cfg["window_seconds"])

    def reached(self, tx: Tx, s: Sighting) -> bool:
        n = tx.fetch(
            "SELECT COUNT(*) AS n FROM detector_sites WHERE detector = ? AND last_seen >= ?",
            self._args(s),
        )[0]["n"]
        return n >= self.cfg["min_establishments"]

    def sites(self, tx: Tx, s: Sighting) -> set[SiteRef]:
        return site_refs(
            tx.fetch(
                "SELECT finess, ght, region FROM detector_sites "
                "WHERE detector = ? AND last_seen >= ?",
                self._args(s),
            )
        )

    def window_alerts(self, tx: Tx, s: Sighting) -> list[dict[str, Any]]:
        return tx.fetch(
            "SELECT agent_id, alert_id FROM alerts WHERE detector = ? "
            "AND last_seen >= ? LIMIT 1000",
            self._args(s),
        )

    def summary(self, s: Sighting, sites: int, ghts: int, traffic: Traffic | None) -> str:
        return f"{s.subject} in {sites} establishments, {ghts} GHTs"
