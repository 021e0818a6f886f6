"""net.exfil — outbound volume from an internal host far above its own baseline, or a
large transfer to a destination the host had never sent anything to.

The native engine counts packets per (sender, receiver, class) and hands them over once
per tick (`on_pairs`). Bytes (wire lengths, all IP protocols) an internal host sends to
external unicast addresses are summed per interval, each pair's bytes at the time of its
last packet in the tick, pairs in time order; once a host has `learning_intervals`
intervals behind it, an interval whose volume passes both `factor` × its EWMA baseline
and `min_bytes` is exfiltration. Separately, a destination first contacted after the
learning period that receives `large_transfer_bytes` fires on its own (its first contact
dated by its last packet in the first tick it shows in). The baseline never learns more
than the threshold from an anomalous interval. Packets the engine could only count under
"other sources" (its table for one tick is bounded) name no host and are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.nets import is_unicast
from agent.detect.window import KeyedWindow, Stamped, key_of
from agent.engine import Table
from common.config import Option, at_least, between, positive
from vigie.v1 import alert_pb2


class _Dest(Stamped):
    """A destination first contacted after its host's learning period."""

    __slots__ = ("bytes", "first", "flagged")

    def __init__(self, now: float) -> None:
        self.first = now
        self.bytes = 0
        self.flagged = False


class Exfil(Detector):
    name = "net.exfil"
    technique = "T1048"
    severity = alert_pb2.SEVERITY_HIGH
    help = "Exfiltration: outbound volume far above a host's baseline, or a large upload "
    "to a new destination."
    wants = Wants(pairs="outbound")  # the engine counts only internal -> external unicast
    options: ClassVar[dict[str, Option]] = {
        "interval_seconds": Option(
            float,
            300.0,
            "Outbound bytes are summed per host over intervals this long.",
            positive,
        ),
        "learning_intervals": Option(
            int, 12, "Intervals a host is observed before its baseline is trusted.", at_least(1)
        ),
        "alpha": Option(float, 0.1, "EWMA weight of the newest interval.", between(0.001, 1.0)),
        "factor": Option(
            float, 10.0, "An interval above factor x baseline is anomalous...", at_least(1.0)
        ),
        "min_bytes": Option(
            int,
            50_000_000,
            "...and above this many bytes (no alert on small volumes).",
            positive,
        ),
        "large_transfer_bytes": Option(
            int,
            100_000_000,
            "Bytes sent to one new destination that fire on their own.",
            positive,
        ),
        "memory_seconds": Option(
            float, 86400.0, "Hosts and destinations idle this long are forgotten.", positive
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        s = settings
        # Per host (key_of(host)), in a Table (agent/engine/table.c; one host is 56 B
        # there, ~200 B as an object): interval index + 1 (0: none yet), volume of that
        # interval, EWMA baseline, intervals in the baseline, flagged interval index + 1.
        limit = min(KeyedWindow.limit, 50_000)
        self.hosts = Table(5, s["memory_seconds"], limit)
        # Destinations by key_of(host, destination): one first contacted while its host
        # was learning is never new, so it is only remembered (a key, in `known`); one
        # contacted later counts its bytes (`new`, rare).
        self.known = Table(0, s["memory_seconds"], min(KeyedWindow.limit, 200_000))
        self.new: KeyedWindow[_Dest] = KeyedWindow(s["memory_seconds"], _Dest, 50_000)

    def on_pairs(self, records: Sequence[tuple], now: float) -> None:
        # The engine hands pairs over in the order of their last packets: a host's
        # intervals roll forward only, as they did packet by packet.
        allowed, sent, inside = self.allowed, self._sent, self.inside.is_internal
        for src, dst, _cls, _packets, nbytes, ts, _dport in records:
            # b"": "other sources", no host to count for
            if src and inside(src) and not inside(dst) and is_unicast(dst) and not allowed(src):
                sent(src, dst, nbytes, ts)

    def _sent(self, src: bytes, dst: bytes, nbytes: int, ts: float) -> None:
        s = self.settings
        hkey = key_of(src)
        interval, volume, base, samples, flagged = self.hosts.get(hkey, ts)
        idx = ts // s["interval_seconds"] + 1  # + 1: 0 is "none yet"
        if idx != interval:
            if interval:  # the interval summed so far ends: into the baseline
                cap = max(s["min_bytes"], s["factor"] * base)
                vol = min(volume, cap) if samples else volume
                # idle intervals in between count as empty ones
                for x in (vol, *([0.0] * int(min(idx - interval - 1, 1000)))):
                    base = x if samples == 0 else base + s["alpha"] * (x - base)
                    samples += 1
            interval, volume = idx, 0.0
        volume += nbytes
        learned = samples >= s["learning_intervals"]
        dkey = key_of(src, dst)
        if not self.known.touch(dkey, ts):
            d = self.new.peek(dkey)
            if d is None and not learned:
                self.known.get(dkey, ts)
            else:  # only new destinations' bytes count
                d = self.new.get(dkey, ts)
                d.bytes += nbytes
                if not d.flagged and d.bytes >= s["large_transfer_bytes"]:
                    d.flagged = True
                    self._emit_large(src, dst, d, ts)
        if learned and flagged != idx and volume >= s["min_bytes"] and volume > s["factor"] * base:
            flagged = idx
            self._emit_volume(src, dst, volume, base, ts)
        self.hosts.set(hkey, (interval, volume, base, samples, flagged))

    def _emit_volume(self, src: bytes, dst: bytes, volume: float, base: float, ts: float) -> None:
        mb = volume / 1e6
        self.report(
            subject=f"{src.hex()}:volume",
            ts=ts,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src)),
                Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(dst)),
            ],
            summary=(
                f"outbound volume {mb:.1f} MB in one {self.settings['interval_seconds']:.0f} s "
                f"interval, {volume / max(base, 1.0):.0f}x the host's baseline"
            ),
            metrics={
                "interval_bytes": volume,
                "baseline_bytes": round(base, 1),
                "ratio": round(volume / max(base, 1.0), 2),
            },
        )

    def _emit_large(self, src: bytes, dst: bytes, d: _Dest, ts: float) -> None:
        self.report(
            subject=f"{src.hex()}>{dst.hex()}",
            ts=ts,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src)),
                Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(dst)),
            ],
            summary=(
                f"large transfer to a new external destination: {d.bytes / 1e6:.1f} MB "
                f"in {ts - d.first:.0f} s"
            ),
            metrics={"bytes": d.bytes, "seconds": round(ts - d.first, 3)},
        )

    def on_tick(self, now: float) -> None:
        self.hosts.expire(now)
        self.known.expire(now)
        self.new.expire(now)
