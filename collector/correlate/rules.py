"""Correlation rules, evaluated inside the transaction that stores a batch.

Each rule counts in the database, not in this process, after taking an advisory lock on
its subject: two replicas seeing matching alerts at the same moment serialise on the
lock, the second sees the first's rows, and the incident key makes one incident.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector.correlate.incidents import SiteRef, lock, upsert
from collector.store.backends import Tx
from common.config import Option, at_least, positive
from common.pbtime import seconds
from vigie.v1 import alert_pb2

# Entity kinds that identify an attacker across sites (sent in clear by agents).
INDICATOR_KINDS = {
    alert_pb2.KIND_IP: "ip",
    alert_pb2.KIND_DOMAIN: "domain",
    alert_pb2.KIND_TLS_SNI: "sni",
    alert_pb2.KIND_JA3: "ja3",
    alert_pb2.KIND_JA4: "ja4",
    alert_pb2.KIND_HASH: "hash",
}

# Kill-chain stages, in order; detectors map to the stage they evidence.
STAGES = ["scan", "credential", "lateral", "impact"]
DEFAULT_STAGE_DETECTORS = {
    "scan": ["net.portscan"],
    "credential": ["net.bruteforce", "net.cleartext_credentials", "host.login"],
    "lateral": ["net.lateral"],
    "impact": ["net.exfil", "net.dns_tunnel", "host.ransomware_precursor", "host.mass_write"],
}

OPTIONS: dict[str, Any] = {
    "multi_site_indicator": {
        "enabled": Option(bool, True, "The same external indicator seen in several GHTs."),
        "min_ghts": Option(int, 2, "Distinct GHTs that make an incident.", at_least(2)),
        "window_seconds": Option(float, 86400.0, "How far back alerts count.", positive),
    },
    "wave": {
        "enabled": Option(bool, True, "The same detector firing in many establishments."),
        "min_establishments": Option(int, 5, "Distinct FINESS that make a wave.", at_least(2)),
        "window_seconds": Option(float, 43200.0, "How far back alerts count.", positive),
        "ignore_detectors": Option(list, [], "Detectors that never make a wave."),
    },
    "kill_chain": {
        "enabled": Option(
            bool, True, "scan -> credential -> lateral -> impact inside one establishment."
        ),
        "min_stages": Option(int, 3, "Stages seen in order that make an incident.", at_least(2)),
        "window_seconds": Option(float, 172800.0, "How far back alerts count.", positive),
    },
    "dark_site": {
        "enabled": Option(bool, True, "Every agent of an establishment silent at once."),
        "silent_seconds": Option(float, 900.0, "Silence that makes an agent dark.", positive),
        "healthy_within_seconds": Option(
            float, 86400.0, "Only sites heard from within this count.", positive
        ),
        "check_interval_seconds": Option(float, 60.0, "How often the check runs.", positive),
    },
}

HIGH, CRITICAL = alert_pb2.SEVERITY_HIGH, alert_pb2.SEVERITY_CRITICAL


def _stage_of() -> dict[str, int]:
    return {d: i for i, stage in enumerate(STAGES) for d in DEFAULT_STAGE_DETECTORS[stage]}


def longest_ordered_stages(events: Sequence[tuple[float, int]]) -> list[int]:
    """The longest run of strictly increasing stages in time order (scan before lateral...)."""
    best: dict[int, list[int]] = {}
    for _, stage in sorted(events):
        prev = max((best[s] for s in best if s < stage), key=len, default=[])
        cand = [*prev, stage]
        if len(cand) > len(best.get(stage, [])):
            best[stage] = cand
    return max(best.values(), key=len, default=[])


class Correlator:
    def __init__(self, settings: dict[str, Any], dialect: str) -> None:
        self.s = settings
        self.dialect = dialect
        self.stage_of = _stage_of()

    def on_ingest(self, tx: Tx, origin, alerts: Sequence[alert_pb2.Alert], now: float) -> None:
        site = SiteRef(origin.finess, origin.ght, origin.region)
        indicators = {}
        for a in alerts:
            t = seconds(a.last_seen)
            for e in a.entities:
                if not e.pseudonymised and e.kind in INDICATOR_KINDS:
                    indicators[(e.kind, e.value)] = max(t, indicators.get((e.kind, e.value), 0))
        if indicators:
            tx.many(
                "INSERT INTO alert_indicators VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [
                    (
                        origin.agent_id,
                        a.id,
                        e.kind,
                        e.value,
                        origin.finess,
                        origin.ght,
                        origin.region,
                        seconds(a.last_seen),
                    )
                    for a in alerts
                    for e in a.entities
                    if not e.pseudonymised and e.kind in INDICATOR_KINDS
                ],
            )
        detectors = {}
        for a in alerts:
            detectors[a.detector] = max(seconds(a.last_seen), detectors.get(a.detector, 0))
        names = [f"ind:{k}:{v}" for k, v in indicators] + [f"det:{d}" for d in detectors]
        if any(d in self.stage_of for d in detectors):
            names.append(f"site:{site.finess}")
        lock(tx, self.dialect, *names)
        if self.s["multi_site_indicator"]["enabled"]:
            for (kind, value), t in indicators.items():
                self._multi_site(tx, kind, value, t, now)
        if self.s["wave"]["enabled"]:
            for detector, t in detectors.items():
                if detector not in self.s["wave"]["ignore_detectors"]:
                    self._wave(tx, detector, t, now)
        if self.s["kill_chain"]["enabled"] and any(d in self.stage_of for d in detectors):
            self._kill_chain(tx, site, max(detectors.values()), now)

    def _multi_site(self, tx: Tx, kind: int, value: str, t: float, now: float) -> None:
        cfg = self.s["multi_site_indicator"]
        rows = tx.fetch(
            "SELECT agent_id, alert_id, finess, ght, region FROM alert_indicators "
            "WHERE kind = ? AND value = ? AND seen >= ? LIMIT 5000",
            (kind, value, t - cfg["window_seconds"]),
        )
        ghts = {r["ght"] for r in rows}
        if len(ghts) < cfg["min_ghts"]:
            return
        label = INDICATOR_KINDS[kind]
        upsert(
            tx,
            rule="multi_site_indicator",
            subject=f"{label}:{value}",
            event_time=t,
            window=cfg["window_seconds"],
            severity=HIGH,
            summary=f"{label} {value} seen by {len(ghts)} GHTs, "
            f"{len({r['finess'] for r in rows})} establishments",
            sites={SiteRef(r["finess"], r["ght"], r["region"]) for r in rows},
            alerts=[(r["agent_id"], r["alert_id"]) for r in rows[:1000]],
            now=now,
        )

    def _wave(self, tx: Tx, detector: str, t: float, now: float) -> None:
        cfg = self.s["wave"]
        rows = tx.fetch(
            "SELECT agent_id, alert_id, finess, ght, region FROM alerts "
            "WHERE detector = ? AND last_seen >= ? LIMIT 5000",
            (detector, t - cfg["window_seconds"]),
        )
        sites = {SiteRef(r["finess"], r["ght"], r["region"]) for r in rows}
        if len({s.finess for s in sites}) < cfg["min_establishments"]:
            return
        upsert(
            tx,
            rule="wave",
            subject=detector,
            event_time=t,
            window=cfg["window_seconds"],
            severity=HIGH,
            summary=f"{detector} in {len({s.finess for s in sites})} establishments, "
            f"{len({s.ght for s in sites})} GHTs",
            sites=sites,
            alerts=[(r["agent_id"], r["alert_id"]) for r in rows[:1000]],
            now=now,
        )

    def _kill_chain(self, tx: Tx, site: SiteRef, t: float, now: float) -> None:
        cfg = self.s["kill_chain"]
        names = list(self.stage_of)
        marks = ",".join("?" * len(names))
        rows = tx.fetch(
            f"SELECT agent_id, alert_id, detector, first_seen FROM alerts WHERE finess = ? "
            f"AND last_seen >= ? AND detector IN ({marks}) LIMIT 5000",
            (site.finess, t - cfg["window_seconds"], *names),
        )
        chain = longest_ordered_stages(
            [(r["first_seen"], self.stage_of[r["detector"]]) for r in rows]
        )
        if len(chain) < cfg["min_stages"]:
            return
        in_chain = {i for i in chain}
        upsert(
            tx,
            rule="kill_chain",
            subject=site.finess,
            event_time=t,
            window=cfg["window_seconds"],
            severity=CRITICAL,
            summary="attack progression: " + " -> ".join(STAGES[i] for i in chain),
            sites=[site],
            alerts=[
                (r["agent_id"], r["alert_id"])
                for r in rows
                if self.stage_of[r["detector"]] in in_chain
            ][:1000],
            now=now,
        )

    def dark_sites(self, tx: Tx, now: float) -> int:
        """Establishments whose agents all went silent after being healthy. Returns count."""
        cfg = self.s["dark_site"]
        if not cfg["enabled"]:
            return 0
        rows = tx.fetch(
            "SELECT finess, MAX(ght) AS ght, MAX(region) AS region, MAX(last_seen) AS last "
            "FROM agents GROUP BY finess HAVING MAX(last_seen) < ? AND MAX(last_seen) >= ?",
            (now - cfg["silent_seconds"], now - cfg["healthy_within_seconds"]),
        )
        for r in rows:
            lock(tx, self.dialect, f"site:{r['finess']}")
            silent_for = int(now - r["last"])
            upsert(
                tx,
                rule="dark_site",
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
