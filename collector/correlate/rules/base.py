"""What the correlation rules share: a batch as they read it, the rule contract, and the
way a counting rule opens or extends its incident.

Each rule counts in the database, not in this process, after taking an advisory lock on
its subject: two replicas seeing matching alerts at the same moment serialise on the
lock, the second sees the first's rows, and the incident key makes one incident.

The counting reads small per-site summaries (indicator_sites, detector_sites,
site_stages: at most one row per establishment and subject; indicator_ghts: one per GHT),
never the window's alerts, so the cost of a batch does not grow with the alert rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from collector.correlate.incidents import (
    CLOSED,
    MAX_LINKED_ALERTS,
    SiteRef,
    Traffic,
    find_open,
    stored_traffic,
    upsert,
)
from collector.store.backends import Dialect, Tx, in_lists
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

HIGH, CRITICAL = alert_pb2.SEVERITY_HIGH, alert_pb2.SEVERITY_CRITICAL

# One row per (subject, establishment): the newest sighting wins.
SITE_UPSERT = (
    "INSERT INTO {table} VALUES ({marks}) ON CONFLICT ({key}, finess) "
    "DO UPDATE SET last_seen = excluded.last_seen, ght = excluded.ght, "
    "region = excluded.region WHERE excluded.last_seen > {table}.last_seen"
)


class Batch:
    """One batch as the rules read it: its site, and its alerts per indicator and detector
    (each protobuf-derived fact read once, for every rule)."""

    __slots__ = (
        "agent",
        "by_detector",
        "by_indicator",
        "detectors",
        "firsts",
        "indicators",
        "rows",
        "site",
        "traffic",
    )

    def __init__(self, origin: Any, facts: Sequence[tuple]) -> None:
        self.site = SiteRef(origin.finess, origin.ght, origin.region)
        self.agent = agent = origin.agent_id
        finess, ght, region = origin.finess, origin.ght, origin.region
        # Latest last_seen per indicator (kind, value) and per detector, with their alerts.
        self.indicators: dict[tuple[int, str], float] = {}
        self.by_indicator: dict[tuple[int, str], list[str]] = {}
        # Per indicator, when its traffic happened: [earliest first_seen, latest
        # last_seen, any retro-hunt match] (a retro match's traffic may be weeks old).
        self.traffic: dict[tuple[int, str], list] = {}
        self.detectors: dict[str, float] = {}
        self.by_detector: dict[str, list[str]] = {}
        # Earliest and latest first_seen per detector.
        self.firsts: dict[str, tuple[float, float]] = {}
        # alert_indicators rows: (agent, alert, kind, value, finess, ght, region, seen).
        self.rows: list[tuple] = []
        indicators, by_indicator, detectors = self.indicators, self.by_indicator, self.detectors
        firsts, traffic = self.firsts, self.traffic
        kinds = INDICATOR_KINDS
        for aid, detector, first, t, ents, *retro in facts:
            if t > detectors.get(detector, 0.0):
                detectors[detector] = t
            self.by_detector.setdefault(detector, []).append(aid)
            span = firsts.get(detector)
            if span is None:
                firsts[detector] = (first, first)
            elif first < span[0] or first > span[1]:
                firsts[detector] = (min(span[0], first), max(span[1], first))
            # A retro-hunt match (agent/hunt/retro.py) is a sighting when reported: its
            # traffic may be weeks old, and the sites reporting one publication's matches
            # must meet in the window as live sightings do.
            found = bool(retro and retro[0])
            seen = retro[0] if found else t
            for _role, kind, value, pseudo in ents:
                if not pseudo and kind in kinds:
                    k = (kind, value)
                    if seen > indicators.get(k, 0.0):
                        indicators[k] = seen
                    span = traffic.get(k)
                    if span is None:  # (min: an agent's clock may put first after last)
                        traffic[k] = [min(first, t), t, found]
                    else:
                        span[0], span[1] = min(span[0], first, t), max(span[1], t)
                        span[2] = span[2] or found
                    by_indicator.setdefault(k, []).append(aid)
                    self.rows.append((agent, aid, kind, value, finess, ght, region, seen))


class Rule:
    """One correlation rule: its name, its options (the config schema is assembled from
    them), what it locks and how it matches, together in one module."""

    name: ClassVar[str]
    options: ClassVar[dict[str, Any]]  # Option per key (or a table of them)
    # Run on every stored batch; False for a rule a periodic job runs instead.
    on_ingest_rule: ClassVar[bool] = True

    def __init__(self, settings: dict[str, Any], dialect: Dialect) -> None:
        self.settings = settings  # every rule's, as the correlator holds them
        self.dialect = dialect

    @property
    def cfg(self) -> dict[str, Any]:
        """This rule's settings, read at each use: a change made on a live correlator
        (tests do) applies to its next run."""
        return self.settings[self.name]

    def lock_names(self, batches: Sequence[Batch]) -> Iterable[str]:
        """The subjects this rule may write about for these batches: locked for the
        transaction before any rule runs, all at once, in one order."""
        return ()

    def on_ingest(self, tx: Tx, batches: list[Batch], now: float) -> None:
        """Correlate batches just stored, inside their transaction."""


@dataclass(frozen=True)
class Sighting:
    """What one batch says about one subject of a counting rule."""

    subject: str  # as incidents name it (e.g. "ip:198.51.100.4")
    key: tuple  # as the rule's summary table keys it (e.g. (kind, value))
    time: float  # the batch's latest alert of the subject
    site: SiteRef
    alerts: list[tuple[str, str]]  # (agent id, alert id)
    traffic: Traffic | None = None  # when the batch's traffic of the subject happened


class CountingRule(Rule):
    """A rule that opens an incident once enough distinct sites saw one subject within its
    window (`window_seconds`), from a per-site summary table it keeps up to date."""

    severity: ClassVar[int] = HIGH

    def reached(self, tx: Tx, s: Sighting) -> bool:
        """Whether the window now holds enough sites to open an incident."""
        raise NotImplementedError

    def sites(self, tx: Tx, s: Sighting) -> set[SiteRef]:
        """Every site of the window, for a new incident."""
        raise NotImplementedError

    def window_alerts(self, tx: Tx, s: Sighting) -> list[dict[str, Any]]:
        """The window's alerts (agent_id, alert_id), for a new incident."""
        raise NotImplementedError

    def summary(self, s: Sighting, sites: int, ghts: int, traffic: Traffic | None) -> str:
        """The incident's wording for that many establishments and GHTs, and the span of
        its traffic when the rule keeps one (`span`)."""
        raise NotImplementedError

    def span(self, alerts: list[dict[str, Any]]) -> Traffic | None:
        """The traffic span of the window's alerts, for a new incident (None: the rule
        keeps no span)."""
        return None

    def quiet_updates(
        self,
        tx: Tx,
        now: float,
        items: list[tuple[SiteRef, dict[str, tuple]]],
    ) -> list[set[str]]:
        """The common case in bulk: subjects whose incident is open and already counts the
        batch's site only gain alerts. A few statements for all the batch's subjects
        instead of a few per subject. Returns, per batch, the subjects so handled.

        Per subject: (time, alerts) or (time, alerts, Traffic): a traffic span that would
        change the incident's wording is left to raise_incident, which words it again."""
        rule, window = self.name, self.cfg["window_seconds"]
        subjects = list({subj for _, its in items for subj in its})
        latest: dict[str, dict] = {}  # the open incident of each subject, latest first
        for part, marks in in_lists(subjects, 500):
            for r in tx.fetch(
                "SELECT key, subject, alert_count, last_seen, traffic_first, traffic_last, "
                "traffic_retro FROM incidents WHERE rule = ? "
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
        for kpart, kmarks in in_lists(keys, 400):
            for fpart, fmarks in in_lists(finesses, 400):
                joined |= {
                    (r["incident_key"], r["finess"])
                    for r in tx.fetch(
                        f"SELECT incident_key, finess FROM incident_sites WHERE incident_key "
                        f"IN ({kmarks}) AND finess IN ({fmarks})",
                        (*kpart, *fpart),
                    )
                }
        out: list[set[str]] = []
        links: list[tuple[str, str, str]] = []
        counts: dict[str, list] = {}  # incident key -> [alerts added, latest time]
        room = {r["key"]: max(0, MAX_LINKED_ALERTS - r["alert_count"]) for r in latest.values()}
        spans = {r["key"]: stored_traffic(r) for r in latest.values()}
        grown: set[str] = set()  # incidents whose traffic span grew, in the same words
        for site, its in items:
            done = set()
            for subj, (t, refs, *traffic) in its.items():
                r = latest.get(subj)
                # The latest incident of the subject is the one to extend, if it is still
                # in the window for this batch's time and already counts this site.
                if (
                    r is None
                    or r["last_seen"] < t - window
                    or (r["key"], site.finess) not in joined
                ):
                    continue
                key = r["key"]
                if traffic and traffic[0] is not None:
                    old = spans[key]
                    new = traffic[0].merge(old)
                    if new != old:
                        if old is None or new.words() != old.words():
                            continue
                        spans[key] = new
                        grown.add(key)
                done.add(subj)
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
        if grown:
            tx.many(
                "UPDATE incidents SET traffic_first = ?, traffic_last = ?, traffic_retro = ? "
                "WHERE key = ?",
                [
                    (x.first, x.last, int(x.retro), key)
                    for key in sorted(grown)
                    if (x := spans[key]) is not None
                ],
            )
        return out

    def raise_incident(self, tx: Tx, s: Sighting, now: float) -> None:
        """Update the open incident with this batch, or, once the threshold is reached,
        open one with every site and alert of the window. The common case (an incident
        already open) costs a lookup and a few rows, whatever the window holds."""
        window = self.cfg["window_seconds"]
        site = s.site
        existing = find_open(tx, self.name, s.subject, s.time - window)
        if existing is not None:
            joined = not tx.fetch(
                "SELECT 1 AS x FROM incident_sites WHERE incident_key = ? AND finess = ?",
                (existing["key"], site.finess),
            )
            text = None
            old = stored_traffic(existing)
            traffic = s.traffic.merge(old) if s.traffic is not None else old
            # The summary counts sites, and may say when the traffic happened: say it again
            # with a newcomer, or with a span that no longer reads the same.
            if joined or (traffic is not None and (old is None or traffic.words() != old.words())):
                # Counted in the database: an incident may span hundreds of establishments.
                key = existing["key"]
                n = tx.fetch(
                    "SELECT COUNT(*) AS n, COUNT(DISTINCT ght) AS g FROM incident_sites "
                    "WHERE incident_key = ?",
                    (key,),
                )[0]
                new_ght = joined and not tx.fetch(
                    "SELECT 1 AS x FROM incident_sites WHERE incident_key = ? AND ght = ? LIMIT 1",
                    (key, site.ght),
                )
                text = self.summary(s, n["n"] + joined, n["g"] + new_ght, traffic)
            upsert(
                tx,
                rule=self.name,
                subject=s.subject,
                event_time=s.time,
                window=window,
                severity=self.severity,
                summary=text,
                sites=[site] if joined else [],
                alerts=s.alerts,
                now=now,
                existing=existing,
                traffic=traffic if traffic != old else None,
            )
            return
        if not self.reached(tx, s):
            return
        sites = self.sites(tx, s)
        rows = self.window_alerts(tx, s)
        # The span of the alerts the incident opens with; those that join it later add theirs.
        traffic = self.span(rows)
        upsert(
            tx,
            rule=self.name,
            subject=s.subject,
            event_time=s.time,
            window=window,
            severity=self.severity,
            summary=self.summary(s, len(sites), len({x.ght for x in sites}), traffic),
            sites=sites,
            alerts=[(r["agent_id"], r["alert_id"]) for r in rows],
            now=now,
            traffic=traffic,
        )


def site_refs(rows: list[dict]) -> set[SiteRef]:
    return {SiteRef(r["finess"], r["ght"], r["region"]) for r in rows}
