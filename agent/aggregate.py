"""One alert per (detector, subject) per window, with occurrence counts and revisions.

The first occurrence goes out at once (an analyst wants to know now); later ones update
the same alert id with a higher revision, at most every `update_interval`, and once more
when the window closes. A scan of 65,535 ports is one alert that grows, not 65,535.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from agent.anonymise.policy import Entity, Finding


class _Open:
    __slots__ = ("dirty", "finding", "last_emit")

    def __init__(self, finding: Finding, now: float) -> None:
        self.finding = finding
        self.dirty = False
        self.last_emit = now


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
            self.open[key] = _Open(f, ts)
            self.emit(f)
            return
        f = cur.finding
        f.occurrences += count
        f.last_seen = max(f.last_seen, ts)
        f.summary = summary
        f.entities = entities
        f.metrics = dict(metrics)
        f.severity = max(f.severity, severity)
        cur.dirty = True
        if ts - cur.last_emit >= self.update_interval:
            self._send(cur, ts)

    def _send(self, cur: _Open, now: float) -> None:
        cur.finding.revision += 1
        cur.dirty = False
        cur.last_emit = now
        self.emit(cur.finding)

    def _close(self, key: tuple[str, str]) -> None:
        cur = self.open.pop(key)
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
