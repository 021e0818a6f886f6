"""One alert per (detector, subject) per window, with occurrence counts and revisions.

The first occurrence goes out at once (an analyst wants to know now); later ones update
the same alert id with a higher revision, at most every `update_interval`, and once more
when the window closes. A scan of 65,535 ports is one alert that grows, not 65,535.

Network and host evidence of one attack meet here: an open alert of a detector in LINKED
and an open alert of its partner with the same source address name each other (their
summaries end with the other's detector and id, `related_alerts` counts them), the one
already out revised at once, so the analyst reads one story, not two.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable

from agent.anonymise.policy import Entity, Finding
from vigie.v1 import alert_pb2

# Detectors whose alerts on one source are one story: the same guessing seen on the wire
# (net.bruteforce) and in the host's logs (host.auth_guessing).
LINKED = {"host.auth_guessing": "net.bruteforce", "net.bruteforce": "host.auth_guessing"}


class _Open:
    __slots__ = ("dirty", "finding", "last_emit", "related", "source", "summary")

    def __init__(self, finding: Finding, now: float) -> None:
        self.finding = finding
        self.dirty = False
        self.last_emit = now
        self.related: list[tuple[str, str]] = []  # (detector, alert id) of linked alerts
        self.source = ""  # the source address, for LINKED detectors only
        self.summary = finding.summary  # the detector's own words, before the links

    def describe(self) -> None:
        f = self.finding
        if self.related:
            names = ", ".join(f"{d} alert {i}" for d, i in self.related)
            f.summary = f"{self.summary} (same source: {names})"
            f.metrics["related_alerts"] = len(self.related)


def _source(entities: list[Entity]) -> str:
    for e in entities:
        if e.role == alert_pb2.ROLE_SOURCE and e.kind == alert_pb2.KIND_IP:
            try:
                ip = ipaddress.ip_address(e.value.split("%")[0])
            except ValueError:
                return e.value
            if ip.version == 6 and ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ip)
    return ""


class Aggregator:
    def __init__(
        self,
        emit: Callable[[Finding], None],
        window: float = 3600.0,
        update_interval: float = 60.0,
        max_open: int = 50_000,
    ) -> None:
        self.emit = emit
        self.window = window
        self.update_interval = update_interval
        self.max_open = max_open
        self.open: dict[tuple[str, str], _Open] = {}
        self.reports = 0
        self.dropped = 0
        self.by_source: dict[tuple[str, str], tuple[str, str]] = {}  # LINKED detectors only

    def report(
        self,
        *,
        detector,
        subject: str,
        ts: float,
        summary: str,
        entities: list[Entity],
        metrics: dict[str, float],
        count: int,
        severity: int,
    ) -> None:
        self.reports += 1
        key = (detector.name, subject)
        cur = self.open.get(key)
        if cur is not None and ts - cur.finding.first_seen > self.window:
            self._close(key)
            cur = None
        if cur is None:
            if len(self.open) >= self.max_open:
                self.dropped += 1  # bounded: counted, reported in stats and heartbeats
                return
            f = Finding(
                id=uuid.uuid4().hex,
                revision=1,
                detector=detector.name,
                severity=severity,
                technique=detector.technique,
                summary=summary,
                first_seen=ts,
                last_seen=ts,
                occurrences=count,
                entities=entities,
                metrics=dict(metrics),
            )
            cur = self.open[key] = _Open(f, ts)
            if detector.name in LINKED:
                self._link(key, cur, ts)
            self.emit(f)
            return
        f = cur.finding
        f.occurrences += count
        f.last_seen = max(f.last_seen, ts)
        f.summary = cur.summary = summary
        f.entities = entities
        f.metrics = dict(metrics)
        cur.describe()
        f.severity = max(f.severity, severity)
        cur.dirty = True
        if ts - cur.last_emit >= self.update_interval:
            self._send(cur, ts)

    def _link(self, key: tuple[str, str], cur: _Open, ts: float) -> None:
        """A new alert of a LINKED detector: name, and be named by, its partner's open
        alert on the same source."""
        src = _source(cur.finding.entities)
        if not src:
            return
        cur.source = src
        name = key[0]
        self.by_source[(name, src)] = key
        other_key = self.by_source.get((LINKED[name], src))
        other = self.open.get(other_key) if other_key is not None else None
        if other is None:
            return
        cur.related.append((other.finding.detector, other.finding.id))
        other.related.append((name, cur.finding.id))
        cur.describe()
        other.describe()
        self._send(other, ts)  # the other story's alert learns of this one now

    def _send(self, cur: _Open, now: float) -> None:
        cur.finding.revision += 1
        cur.dirty = False
        cur.last_emit = now
        self.emit(cur.finding)

    def _close(self, key: tuple[str, str]) -> None:
        cur = self.open.pop(key)
        if cur.source and self.by_source.get((key[0], cur.source)) == key:
            del self.by_source[(key[0], cur.source)]
        if cur.dirty:
            self._send(cur, cur.finding.last_seen)

    def tick(self, now: float) -> None:
        for key, cur in list(self.open.items()):
            if now - cur.finding.first_seen > self.window:
                self._close(key)
            elif cur.dirty and now - cur.last_emit >= self.update_interval:
                self._send(cur, now)

    def flush(self) -> None:
        for key in list(self.open):
            self._close(key)
