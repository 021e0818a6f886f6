"""Correlation rules, evaluated inside the transaction that stores a batch.

Each rule counts in the database, not in this process, after taking an advisory lock on
its subject: two replicas seeing matching alerts at the same moment serialise on the
lock, the second sees the first's rows, and the incident key makes one incident.

The counting reads small per-site summaries (indicator_sites, detector_sites,
site_stages: at most one row per establishment and subject; indicator_ghts: one per GHT),
never the window's alerts, so the cost of a batch does not grow with the alert rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector.correlate.incidents import (
    CLOSED,
    MAX_LINKED_ALERTS,
    SiteRef,
    find_open,
    lock,
    upsert,
)
from collector.store.backends import Tx
from common.config import Option, at_least, positive
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

# One row per (subject, establishment): the newest sighting wins.
SITE_UPSERT = (
    "INSERT INTO {table} VALUES ({marks}) ON CONFLICT ({key}, finess) "
    "DO UPDATE SET last_seen = excluded.last_seen, ght = excluded.ght, "
    "region = excluded.region WHERE excluded.last_seen > {table}.last_seen"
)


def site_cols(site: SiteRef) -> tuple[str, str, str]:
    return site.finess, site.ght, site.region


def _sites(rows: list[dict]) -> set[SiteRef]:
    return {SiteRef(r["finess"], r["ght"], r["region"]) for r in rows}


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


def chain_from_spans(spans: dict[int, tuple[float, float]]) -> list[int]:
    """Stages that can be ordered in time knowing, per stage, its earliest and latest
    alert: over every subset of stages, place each at its earliest alert after the
    previous one (the earliest, else the latest when only that one is later)."""
    best: list[int] = []
    stages = sorted(spans)
    for mask in range(1, 1 << len(stages)):
        chosen = [s for i, s in enumerate(stages) if mask >> i & 1]
        if len(chosen) <= len(best):
            continue
        t = float("-inf")
        for s in chosen:
            lo, hi = spans[s]
            if lo > t:
                t = lo
            elif hi > t:
                t = hi
            else:
                break
        else:
            best = chosen
    return best


class Correlator:
    def __init__(self, settings: dict[str, Any], dialect: str) -> None:
        self.s = settings
        self.dialect = dialect
        self.stage_of = _stage_of()

    def on_ingest(self, tx: Tx, origin, facts: Sequence[tuple], now: float) -> None:
        """facts: (alert id, detector, first_seen, last_seen, [(role, kind, value,
        pseudonymised), ...]) for each alert just stored, as Store.ingest read them."""
        site = SiteRef(origin.finess, origin.ght, origin.region)
        indicators: dict[tuple[int, str], float] = {}
        by_indicator: dict[tuple[int, str], list[str]] = {}
        detectors: dict[str, float] = {}
        by_detector: dict[str, list[str]] = {}
        stage_times: dict[int, tuple[float, float]] = {}
        rows = []
        kinds, stage_of = INDICATOR_KINDS, self.stage_of
        agent, finess, ght, region = origin.agent_id, origin.finess, origin.ght, origin.region
        for aid, detector, first, t, ents in facts:
            if t > detectors.get(detector, 0.0):
                detectors[detector] = t
            by_detector.setdefault(detector, []).append(aid)
            stage = stage_of.get(detector)
            if stage is not None:
                lo, hi = stage_times.get(stage, (first, first))
                stage_times[stage] = (min(lo, first), max(hi, first))
            for _role, kind, value, pseudo in ents:
                if not pseudo and kind in kinds:
                    k = (kind, value)
                    if t > indicators.get(k, 0.0):
                        indicators[k] = t
                    by_indicator.setdefault(k, []).append(aid)
                    rows.append((agent, aid, kind, value, finess, ght, region, t))
        names = [f"ind:{k}:{v}" for k, v in indicators] + [f"det:{d}" for d in detectors]
        if stage_times:
            names.append(f"site:{site.finess}")
        lock(tx, self.dialect, *names)
        agent = origin.agent_id
        if self.s["multi_site_indicator"]["enabled"] and indicators:
            tx.many(
                SITE_UPSERT.format(
                    table="indicator_sites", key="kind, value", marks="?, ?, ?, ?, ?, ?"
                ),
                [(k, v, *site_cols(site), t) for (k, v), t in indicators.items()],
            )
            tx.many(
                "INSERT INTO indicator_ghts VALUES (?, ?, ?, ?) ON CONFLICT (kind, value, ght) "
                "DO UPDATE SET last_seen = excluded.last_seen "
                "WHERE excluded.last_seen > indicator_ghts.last_seen",
                [(k, v, site.ght, t) for (k, v), t in indicators.items()],
            )
            window = self.s["multi_site_indicator"]["window_seconds"]
            done = self._quiet_updates(
                tx,
                "multi_site_indicator",
                site,
                now,
                window,
                {
                    f"{INDICATOR_KINDS[k]}:{v}": (t, [(agent, i) for i in by_indicator[(k, v)]])
                    for (k, v), t in indicators.items()
                },
            )
            # Alerts of an indicator already in an open incident were just linked to it; the
            # others are kept per indicator, for the incident that may open later.
            rows = [r for r in rows if f"{INDICATOR_KINDS[r[2]]}:{r[3]}" not in done]
            if rows:
                tx.many(
                    "INSERT INTO alert_indicators VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    rows,
                )
            for (kind, value), t in indicators.items():
                if f"{INDICATOR_KINDS[kind]}:{value}" not in done:
                    self._multi_site(
                        tx,
                        site,
                        kind,
                        value,
                        t,
                        now,
                        [(agent, i) for i in by_indicator[(kind, value)]],
                    )
        if self.s["wave"]["enabled"]:
            waves = {
                d: t for d, t in detectors.items() if d not in self.s["wave"]["ignore_detectors"]
            }
            tx.many(
                SITE_UPSERT.format(table="detector_sites", key="detector", marks="?, ?, ?, ?, ?"),
                [(d, *site_cols(site), t) for d, t in waves.items()],
            )
            done = self._quiet_updates(
                tx,
                "wave",
                site,
                now,
                self.s["wave"]["window_seconds"],
                {d: (t, [(agent, i) for i in by_detector[d]]) for d, t in waves.items()},
            )
            for detector, t in waves.items():
                if detector not in done:
                    self._wave(
                        tx, site, detector, t, now, [(agent, i) for i in by_detector[detector]]
                    )
        if self.s["kill_chain"]["enabled"] and stage_times:
            self._kill_chain(tx, site, stage_times, max(detectors.values()), now)

    def _quiet_updates(
        self,
        tx: Tx,
        rule: str,
        site: SiteRef,
        now: float,
        window: float,
        items: dict[str, tuple[float, list[tuple[str, str]]]],
    ) -> set[str]:
        """The common case in bulk: subjects whose incident is open and already counts this
        site only gain alerts. A few statements per batch instead of a few per subject."""
        subjects = list(items)
        open_by_subject: dict[str, dict] = {}
        for chunk in range(0, len(subjects), 500):
            part = subjects[chunk : chunk + 500]
            marks = ",".join("?" * len(part))
            for r in tx.fetch(
                f"SELECT key, subject, alert_count, last_seen FROM incidents WHERE rule = ? "
                f"AND status <> ? AND subject IN ({marks})",
                (rule, CLOSED, *part),
            ):
                t = items[r["subject"]][0]
                if r["last_seen"] >= t - window:
                    cur = open_by_subject.get(r["subject"])
                    if cur is None or r["last_seen"] > cur["last_seen"]:
                        open_by_subject[r["subject"]] = r
        if not open_by_subject:
            return set()
        keys = [r["key"] for r in open_by_subject.values()]
        joined = set()
        for chunk in range(0, len(keys), 500):
            part = keys[chunk : chunk + 500]
            marks = ",".join("?" * len(part))
            joined |= {
                r["incident_key"]
                for r in tx.fetch(
                    f"SELECT incident_key FROM incident_sites WHERE finess = ? AND incident_key "
                    f"IN ({marks})",
                    (site.finess, *part),
                )
            }
        done = {subj for subj, r in open_by_subject.items() if r["key"] in joined}
        links, counts = [], []
        for subj in done:
            r = open_by_subject[subj]
            t, refs = items[subj]
            room = max(0, MAX_LINKED_ALERTS - r["alert_count"])
            links += [(r["key"], a, i) for a, i in refs[:room]]
            counts.append((len(refs), t, t, now, r["key"]))
        tx.many("INSERT INTO incident_alerts VALUES (?, ?, ?) ON CONFLICT DO NOTHING", links)
        tx.many(
            "UPDATE incidents SET alert_count = alert_count + ?, last_seen = CASE WHEN "
            "last_seen > ? THEN last_seen ELSE ? END, updated_at = ? WHERE key = ?",
            counts,
        )
        return done

    def _multi_site(
        self,
        tx: Tx,
        site: SiteRef,
        kind: int,
        value: str,
        t: float,
        now: float,
        batch: list[tuple[str, str]],
    ) -> None:
        cfg = self.s["multi_site_indicator"]
        window = cfg["window_seconds"]
        label = INDICATOR_KINDS[kind]
        subject = f"{label}:{value}"
        where = "FROM indicator_sites WHERE kind = ? AND value = ? AND last_seen >= ?"
        args = (kind, value, t - window)
        self._raise(
            tx,
            "multi_site_indicator",
            subject,
            t,
            window,
            HIGH,
            site,
            batch,
            now,
            lambda: (
                tx.fetch(
                    "SELECT COUNT(*) AS n FROM indicator_ghts "
                    "WHERE kind = ? AND value = ? AND last_seen >= ?",
                    args,
                )[0]["n"]
                >= cfg["min_ghts"]
            ),
            lambda: _sites(tx.fetch(f"SELECT finess, ght, region {where}", args)),
            lambda: tx.fetch(
                "SELECT agent_id, alert_id FROM alert_indicators WHERE "
                "kind = ? AND value = ? AND seen >= ? LIMIT 1000",
                args,
            ),
            lambda sites, ghts: f"{label} {value} seen by {ghts} GHTs, {sites} establishments",
        )

    def _wave(
        self,
        tx: Tx,
        site: SiteRef,
        detector: str,
        t: float,
        now: float,
        batch: list[tuple[str, str]],
    ) -> None:
        cfg = self.s["wave"]
        window = cfg["window_seconds"]
        where = "FROM detector_sites WHERE detector = ? AND last_seen >= ?"
        args = (detector, t - window)
        self._raise(
            tx,
            "wave",
            detector,
            t,
            window,
            HIGH,
            site,
            batch,
            now,
            lambda: (
                tx.fetch(f"SELECT COUNT(*) AS n {where}", args)[0]["n"] >= cfg["min_establishments"]
            ),
            lambda: _sites(tx.fetch(f"SELECT finess, ght, region {where}", args)),
            lambda: tx.fetch(
                "SELECT agent_id, alert_id FROM alerts WHERE detector = ? "
                "AND last_seen >= ? LIMIT 1000",
                args,
            ),
            lambda sites, ghts: f"{detector} in {sites} establishments, {ghts} GHTs",
        )

    def _raise(
        self,
        tx: Tx,
        rule: str,
        subject: str,
        t: float,
        window: float,
        severity: int,
        site: SiteRef,
        batch: list[tuple[str, str]],
        now: float,
        reached,
        all_sites,
        window_alerts,
        summary,
    ) -> None:
        """Update the open incident with this batch, or, once the threshold is reached,
        open one with every site and alert of the window. The common case (an incident
        already open) costs a lookup and a few rows, whatever the window holds."""
        existing = find_open(tx, rule, subject, t - window)
        if existing is not None:
            joined = not tx.fetch(
                "SELECT 1 AS x FROM incident_sites WHERE incident_key = ? AND finess = ?",
                (existing["key"], site.finess),
            )
            text = None
            if joined:  # the summary counts sites: say it again with the newcomer
                # Counted in the database: an incident may span hundreds of establishments.
                key = existing["key"]
                n = tx.fetch(
                    "SELECT COUNT(*) AS n, COUNT(DISTINCT ght) AS g FROM incident_sites "
                    "WHERE incident_key = ?",
                    (key,),
                )[0]
                new_ght = not tx.fetch(
                    "SELECT 1 AS x FROM incident_sites WHERE incident_key = ? AND ght = ? LIMIT 1",
                    (key, site.ght),
                )
                text = summary(n["n"] + 1, n["g"] + new_ght)
            upsert(
                tx,
                rule=rule,
                subject=subject,
                event_time=t,
                window=window,
                severity=severity,
                summary=text,
                sites=[site] if joined else [],
                alerts=batch,
                now=now,
                existing=existing,
            )
            return
        if not reached():
            return
        sites = all_sites()
        upsert(
            tx,
            rule=rule,
            subject=subject,
            event_time=t,
            window=window,
            severity=severity,
            summary=summary(len(sites), len({s.ght for s in sites})),
            sites=sites,
            alerts=[(r["agent_id"], r["alert_id"]) for r in window_alerts()],
            now=now,
        )

    def _kill_chain(
        self,
        tx: Tx,
        site: SiteRef,
        batch_spans: dict[int, tuple[float, float]],
        t: float,
        now: float,
    ) -> None:
        cfg = self.s["kill_chain"]
        window = cfg["window_seconds"]
        stored = {
            r["stage"]: (r["first_min"], r["first_max"])
            for r in tx.fetch(
                "SELECT stage, first_min, first_max FROM site_stages WHERE finess = ?",
                (site.finess,),
            )
        }
        spans = {}
        for stage in set(stored) | set(batch_spans):
            old = stored.get(stage)
            if old is not None and old[1] < t - window:
                old = None  # that stage's evidence has left the window
            new = batch_spans.get(stage)
            lo = min(x[0] for x in (old, new) if x)
            hi = max(x[1] for x in (old, new) if x)
            spans[stage] = (lo, hi)
        tx.many(
            "INSERT INTO site_stages VALUES (?, ?, ?, ?) ON CONFLICT (finess, stage) "
            "DO UPDATE SET first_min = excluded.first_min, first_max = excluded.first_max",
            [
                (site.finess, st, lo, hi)
                for st, (lo, hi) in spans.items()
                if st in batch_spans or stored.get(st) != (lo, hi)
            ],
        )
        chain = chain_from_spans({s: v for s, v in spans.items() if v[1] >= t - window})
        if len(chain) < cfg["min_stages"]:
            return
        names = [d for d, s in self.stage_of.items() if s in chain]
        marks = ",".join("?" * len(names))
        rows = tx.fetch(
            f"SELECT agent_id, alert_id FROM alerts WHERE finess = ? AND last_seen >= ? "
            f"AND detector IN ({marks}) ORDER BY first_seen LIMIT 200",
            (site.finess, t - window, *names),
        )
        upsert(
            tx,
            rule="kill_chain",
            subject=site.finess,
            event_time=t,
            window=window,
            severity=CRITICAL,
            summary="attack progression: " + " -> ".join(STAGES[i] for i in chain),
            sites=[site],
            alerts=[(r["agent_id"], r["alert_id"]) for r in rows],
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
