"""An attack's progression inside one establishment: scan, then credential attacks, then
lateral movement, then impact, each stage evidenced by its detectors, in time order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from collector.correlate.incidents import upsert
from collector.correlate.rules.base import CRITICAL, Batch, Rule
from collector.store.backends import Tx, in_lists
from common.config import Option, at_least, positive

# Kill-chain stages, in order; detectors map to the stage they evidence.
STAGES = ["scan", "credential", "lateral", "impact"]
DEFAULT_STAGE_DETECTORS = {
    "scan": ["net.portscan"],
    "credential": ["net.bruteforce", "net.cleartext_credentials", "host.login"],
    "lateral": ["net.lateral"],
    "impact": ["net.exfil", "net.dns_tunnel", "host.ransomware_precursor", "host.mass_write"],
}


def _detector_names(value: list) -> str | None:
    bad = [v for v in value if not isinstance(v, str) or not v]
    return f"must list detector names, got {bad[0]!r}" if bad else None


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


class KillChain(Rule):
    name = "kill_chain"
    options: ClassVar[dict[str, Any]] = {
        "enabled": Option(
            bool, True, "scan -> credential -> lateral -> impact inside one establishment."
        ),
        "min_stages": Option(int, 3, "Stages seen in order that make an incident.", at_least(2)),
        "window_seconds": Option(float, 172800.0, "How far back alerts count.", positive),
        "stage_detectors": {
            stage: Option(
                list,
                DEFAULT_STAGE_DETECTORS[stage],
                f"Detectors whose alerts evidence the {stage} stage.",
                _detector_names,
            )
            for stage in STAGES
        },
    }

    def stage_of(self) -> dict[str, int]:
        """Each detector's stage (its index in STAGES), as configured now."""
        stages = self.cfg["stage_detectors"]
        return {d: i for i, stage in enumerate(STAGES) for d in stages[stage]}

    @staticmethod
    def spans(batch: Batch, stage_of: dict[str, int]) -> dict[int, tuple[float, float]]:
        """Per stage the batch evidences, its earliest and latest first_seen."""
        out: dict[int, tuple[float, float]] = {}
        for detector, (lo, hi) in batch.firsts.items():
            stage = stage_of.get(detector)
            if stage is not None:
                old = out.get(stage)
                out[stage] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        return out

    def lock_names(self, batches: Sequence[Batch]) -> Iterable[str]:
        stage_of = self.stage_of()
        return (f"site:{p.site.finess}" for p in batches if self.spans(p, stage_of))

    def on_ingest(self, tx: Tx, batches: list[Batch], now: float) -> None:
        """Each site's stage spans, read and written in one go; only a site whose chain is
        long enough goes on to its incident."""
        stage_of = self.stage_of()
        parts = [(p, s) for p in batches if (s := self.spans(p, stage_of))]
        if not parts:
            return
        window = self.cfg["window_seconds"]
        stored: dict[str, dict[int, tuple[float, float]]] = {}
        for chunk, marks in in_lists(sorted({p.site.finess for p, _ in parts}), 500):
            for finess, stage, lo, hi in tx.values(
                "SELECT finess, stage, first_min, first_max FROM site_stages "
                f"WHERE finess IN ({marks})",
                chunk,
            ):
                stored.setdefault(finess, {})[stage] = (lo, hi)
        writes: dict[tuple[str, int], tuple[float, float]] = {}
        chains = []
        for p, batch_spans in parts:  # a site twice in the list: the second sees the first
            site = p.site
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
            if len(chain) >= self.cfg["min_stages"]:
                chains.append((site, chain, t))
        tx.many(
            "INSERT INTO site_stages VALUES (?, ?, ?, ?) ON CONFLICT (finess, stage) "
            "DO UPDATE SET first_min = excluded.first_min, first_max = excluded.first_max",
            [(finess, st, lo, hi) for (finess, st), (lo, hi) in writes.items()],
        )
        for site, chain, t in chains:
            names = [d for d, s in stage_of.items() if s in chain]
            marks = ",".join("?" * len(names))
            rows = tx.fetch(
                f"SELECT agent_id, alert_id FROM alerts WHERE finess = ? AND last_seen >= ? "
                f"AND detector IN ({marks}) ORDER BY first_seen LIMIT 200",
                (site.finess, t - window, *names),
            )
            upsert(
                tx,
                rule=self.name,
                subject=site.finess,
                event_time=t,
                window=window,
                severity=CRITICAL,
                summary="attack progression: " + " -> ".join(STAGES[i] for i in chain),
                sites=[site],
                alerts=[(r["agent_id"], r["alert_id"]) for r in rows],
                now=now,
            )
