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
from dataclasses import dataclass
from typing import Any

from collector.correlate.incidents import (
    CLOSED,
    MAX_LINKED_ALERTS,
    SiteRef,
    find_open,
    lock,
    upsert,
)
from collector.store.backends import Tx, transient
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


@dataclass(frozen=True)
class RuleFailure:
    """A rule that failed on one batch of a transaction (its alerts are stored)."""

    rule: str
    batch_index: int
    error: Exception


class _Part:
    """One batch as the rules read it: its site, and its alerts per indicator, detector and
    attack stage (each protobuf-derived fact read once)."""

    __slots__ = (
        "agent",
        "batch_index",
        "by_detector",
        "by_indicator",
        "detectors",
        "indicators",
        "rows",
        "site",
        "stage_times",
    )

    def __init__(
        self, origin, facts: Sequence[tuple], stage_of: dict[str, int], batch_index: int = 0
    ) -> None:
        self.batch_index = batch_index
        self.site = SiteRef(origin.finess, origin.ght, origin.region)
        self.agent = agent = origin.agent_id
        finess, ght, region = origin.finess, origin.ght, origin.region
        self.indicators: dict[tuple[int, str], float] = {}
        self.by_indicator: dict[tuple[int, str], list[str]] = {}
        self.detectors: dict[str, float] = {}
        self.by_detector: dict[str, list[str]] = {}
        self.stage_times: dict[int, tuple[float, float]] = {}
        self.rows: list[tuple] = []
        indicators, by_indicator, detectors = self.indicators, self.by_indicator, self.detectors
        kinds = INDICATOR_KINDS
        for aid, detector, first, t, ents in facts:
            if t > detectors.get(detector, 0.0):
                detectors[detector] = t
            self.by_detector.setdefault(detector, []).append(aid)
            stage = stage_of.get(detector)
            if stage is not None:
                lo, hi = self.stage_times.get(stage, (first, first))
                self.stage_times[stage] = (min(lo, first), max(hi, first))
            for _role, kind, value, pseudo in ents:
                if not pseudo and kind in kinds:
                    k = (kind, value)
                    if t > indicators.get(k, 0.0):
                        indicators[k] = t
                    by_indicator.setdefault(k, []).append(aid)
                    self.rows.append((agent, aid, kind, value, finess, ght, region, t))


class Correlator:
    def __init__(self, settings: dict[str, Any], dialect: str) -> None:
        self.s = settings
        self.dialect = dialect
        self.stage_of = _stage_of()

    def on_ingest_many(
        self, tx: Tx, batches: Sequence[tuple[Any, Sequence[tuple]]], now: float
    ) -> list[RuleFailure]:
        """The rules over every batch one transaction stores (group commit). Each batch is
        (origin, facts), facts being (alert id, detector, first_seen, last_seen, [(role,
        kind, value, pseudonymised), ...]) per alert just stored. What is bulk
        (per-site summaries; alerts joining incidents already open for their site, the
        steady state of a wave seen by hundreds of sites) is a few statements for the whole
        group; only what opens an incident or adds a site to one is done site by site.

        Each rule runs in a savepoint of its own: a rule that fails (a bug, a value the
        database refuses) undoes only its own writes, is tried again batch by batch, and
        what still fails is returned, never raised, so that the alerts are stored and the
        other rules run. Only a transient failure (the database itself) is raised."""
        parts = [
            _Part(origin, facts, self.stage_of, i) for i, (origin, facts) in enumerate(batches)
        ]
        names: set[str] = set()
        for p in parts:
            names.update(f"ind:{k}:{v}" for k, v in p.indicators)
            names.update(f"det:{d}" for d in p.detectors)
            if p.stage_times:
                names.add(f"site:{p.site.finess}")
        lock(tx, self.dialect, *names)
        failures: list[RuleFailure] = []
        for rule, run in (
            ("multi_site_indicator", self._multi_site_rule),
            ("wave", self._wave_rule),
            ("kill_chain", self._kill_chain_rule),
        ):
            if not self.s[rule]["enabled"]:
                continue
            try:
                with tx.savepoint():
                    run(tx, parts, now)
                continue
            except Exception as exc:
                if transient(exc):
                    raise
                if len(parts) == 1:
                    failures.append(RuleFailure(rule, parts[0].batch_index, exc))
                    continue
            for p in parts:  # the group failed: find the batch it fails on
                try:
                    with tx.savepoint():
                        run(tx, [p], now)
                except Exception as exc:
                    if transient(exc):
                        raise
                    failures.append(RuleFailure(rule, p.batch_index, exc))
        return failures

    def run_rule(self, tx: Tx, rule: str, batches: Sequence[tuple[Any, Sequence[tuple]]], now):
        """One rule over stored alerts again (a dead letter's retry); raises on failure."""
        parts = [_Part(origin, facts, self.stage_of) for origin, facts in batches]
        run = {
            "multi_site_indicator": self._multi_site_rule,
            "wave": self._wave_rule,
            "kill_chain": self._kill_chain_rule,
        }[rule]
        if self.s[rule]["enabled"]:
            with tx.savepoint():
                run(tx, parts, now)

    def _multi_site_rule(self, tx: Tx, parts: list[_Part], now: float) -> None:
        if not any(p.indicators for p in parts):
            return
        tx.many(
            SITE_UPSERT.format(
                table="indicator_sites", key="kind, value", marks="?, ?, ?, ?, ?, ?"
            ),
            [(k, v, *site_cols(p.site), t) for p in parts for (k, v), t in p.indicators.items()],
        )
        tx.many(
            "INSERT INTO indicator_ghts VALUES (?, ?, ?, ?) ON CONFLICT (kind, value, ght) "
            "DO UPDATE SET last_seen = excluded.last_seen "
            "WHERE excluded.last_seen > indicator_ghts.last_seen",
            [(k, v, p.site.ght, t) for p in parts for (k, v), t in p.indicators.items()],
        )
        window = self.s["multi_site_indicator"]["window_seconds"]
        done = self._quiet_updates(
            tx,
            "multi_site_indicator",
            now,
            window,
            [
                (
                    p.site,
                    {
                        f"{INDICATOR_KINDS[k]}:{v}": (t, [(p.agent, i) for i in ids])
                        for ((k, v), t), ids in zip(
                            p.indicators.items(), p.by_indicator.values(), strict=True
                        )
                    },
                )
                for p in parts
            ],
        )
        # Alerts of an indicator already in an open incident were just linked to it; the
        # others are kept per indicator, for the incident that may open later.
        rows = [
            r
            for p, d in zip(parts, done, strict=True)
            for r in p.rows
            if f"{INDICATOR_KINDS[r[2]]}:{r[3]}" not in d
        ]
        if rows:
            tx.many(
                "INSERT INTO alert_indicators VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                rows,
            )
        for p, d in zip(parts, done, strict=True):
            for (kind, value), t in p.indicators.items():
                if f"{INDICATOR_KINDS[kind]}:{value}" not in d:
                    self._multi_site(
                        tx,
                        p.site,
                        kind,
                        value,
                        t,
                        now,
                        [(p.agent, i) for i in p.by_indicator[(kind, value)]],
                    )

    def _wave_rule(self, tx: Tx, parts: list[_Part], now: float) -> None:
        ignore = self.s["wave"]["ignore_detectors"]
        waves = [{d: t for d, t in p.detectors.items() if d not in ignore} for p in parts]
        tx.many(
            SITE_UPSERT.format(table="detector_sites", key="detector", marks="?, ?, ?, ?, ?"),
            [
                (d, *site_cols(p.site), t)
                for p, w in zip(parts, waves, strict=True)
                for d, t in w.items()
            ],
        )
        done = self._quiet_updates(
            tx,
            "wave",
            now,
            self.s["wave"]["window_seconds"],
            [
                (
                    p.site,
                    {d: (t, [(p.agent, i) for i in p.by_detector[d]]) for d, t in w.items()},
                )
                for p, w in zip(parts, waves, strict=True)
            ],
        )
        for p, w, d in zip(parts, waves, done, strict=True):
            for detector, t in w.items():
                if detector not in d:
                    self._wave(
                        tx,
                        p.site,
                        detector,
                        t,
                        now,
                        [(p.agent, i) for i in p.by_detector[detector]],
                    )

    def _kill_chain_rule(self, tx: Tx, parts: list[_Part], now: float) -> None:
        self._kill_chain(tx, [p for p in parts if p.stage_times], now)

    def _quiet_updates(
        self,
        tx: Tx,
        rule: str,
        now: float,
        window: float,
        items: list[tuple[SiteRef, dict[str, tuple[float, list[tuple[str, str]]]]]],
    ) -> list[set[str]]:
        """The common case in bulk: subjects whose incident is open and already counts the
        batch's site only gain alerts. A few statements for the whole group instead of a
        few per batch and subject. Returns, per batch, the subjects so handled."""
        subjects = list({subj for _, its in items for subj in its})
        latest: dict[str, dict] = {}  # the open incident of each subject, latest first
        for chunk in range(0, len(subjects), 500):
            part = subjects[chunk : chunk + 500]
            marks = ",".join("?" * len(part))
            for r in tx.fetch(
                f"SELECT key, subject, alert_count, last_seen FROM incidents WHERE rule = ? "
                f"AND status <> ? AND subject IN ({marks})",
                (rule, CLOSED, *part),
            ):
                cur = latest.get(r["subject"])
                if cur is None or r["last_seen"] > cur["last_seen"]:
                    latest[r["subject"]] = r
        if not latest:
            return [set() for _ in items]
        keys = sorted({r["key"] for r in latest.values()})
        finesses = sorted({site.finess for site, _ in items})
        joined: set[tuple[str, str]] = set()
        for kc in range(0, len(keys), 400):
            kpart = keys[kc : kc + 400]
            for fc in range(0, len(finesses), 400):
                fpart = finesses[fc : fc + 400]
                joined |= {
                    (r["incident_key"], r["finess"])
                    for r in tx.fetch(
                        f"SELECT incident_key, finess FROM incident_sites WHERE incident_key "
                        f"IN ({','.join('?' * len(kpart))}) AND finess IN "
                        f"({','.join('?' * len(fpart))})",
                        (*kpart, *fpart),
                    )
                }
        out: list[set[str]] = []
        links: list[tuple[str, str, str]] = []
        counts: dict[str, list] = {}  # incident key -> [alerts added, latest time]
        room = {r["key"]: max(0, MAX_LINKED_ALERTS - r["alert_count"]) for r in latest.values()}
        for site, its in items:
            done = set()
            for subj, (t, refs) in its.items():
                r = latest.get(subj)
                # The latest incident of the subject is the one to extend, if it is still
                # in the window for this batch's time and already counts this site.
                if (
                    r is None
                    or r["last_seen"] < t - window
                    or (r["key"], site.finess) not in joined
                ):
                    continue
                done.add(subj)
                key = r["key"]
                take = refs[: room[key]]
                room[key] -= len(take)
                links += [(key, a, i) for a, i in take]
                c = counts.setdefault(key, [0, t])
                c[0] += len(refs)
                c[1] = max(c[1], t)
            out.append(done)
        tx.many("INSERT INTO incident_alerts VALUES (?, ?, ?) ON CONFLICT DO NOTHING", links)
        tx.many(
            "UPDATE incidents SET alert_count = alert_count + ?, last_seen = CASE WHEN "
            "last_seen > ? THEN last_seen ELSE ? END, updated_at = ? WHERE key = ?",
            [(n, t, t, now, key) for key, (n, t) in counts.items()],
        )
        return out

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

    def _kill_chain(self, tx: Tx, parts: list[_Part], now: float) -> None:
        """Each site's stage spans, read and written for the whole group at once; only a
        site whose chain is long enough goes on to its incident."""
        if not parts:
            return
        cfg = self.s["kill_chain"]
        window = cfg["window_seconds"]
        stored: dict[str, dict[int, tuple[float, float]]] = {}
        finesses = sorted({p.site.finess for p in parts})
        for i in range(0, len(finesses), 500):
            chunk = finesses[i : i + 500]
            for finess, stage, lo, hi in tx.values(
                "SELECT finess, stage, first_min, first_max FROM site_stages WHERE finess IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            ):
                stored.setdefault(finess, {})[stage] = (lo, hi)
        writes: dict[tuple[str, int], tuple[float, float]] = {}
        chains = []
        for p in parts:  # a site may come twice in a group: the second sees the first
            site, batch_spans = p.site, p.stage_times
            t = max(p.detectors.values())
            known = stored.setdefault(site.finess, {})
            spans = {}
            for stage in set(known) | set(batch_spans):
                old = known.get(stage)
                if old is not None and old[1] < t - window:
                    old = None  # that stage's evidence has left the window
                new = batch_spans.get(stage)
                if old is None and new is None:
                    continue  # stored evidence that has left the window, nothing new
                lo = min(x[0] for x in (old, new) if x)
                hi = max(x[1] for x in (old, new) if x)
                spans[stage] = (lo, hi)
            for st, span in spans.items():
                if st in batch_spans or known.get(st) != span:
                    writes[(site.finess, st)] = span
                    known[st] = span
            chain = chain_from_spans({s: v for s, v in spans.items() if v[1] >= t - window})
            if len(chain) >= cfg["min_stages"]:
                chains.append((site, chain, t))
        tx.many(
            "INSERT INTO site_stages VALUES (?, ?, ?, ?) ON CONFLICT (finess, stage) "
            "DO UPDATE SET first_min = excluded.first_min, first_max = excluded.first_max",
            [(finess, st, lo, hi) for (finess, st), (lo, hi) in writes.items()],
        )
        for site, chain, t in chains:
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
