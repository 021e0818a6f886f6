"""net.beacon — command-and-control check-ins: regular connections from one host to one
external service (same destination address and port), scored in the manner of RITA.

A "connection" is a new TCP/UDP 5-tuple, or a new burst on a known one after
`idle_gap_seconds` of silence (QUIC and other long-lived UDP sessions check in that
way). Per (source, destination, port) the agent keeps the last start times and burst
sizes, and scores:
  interval regularity  mean(1 - |Bowley skewness|, 1 - MAD/median) of the intervals
                       (skewness damped when the IQR is under a tenth of the median)
  size regularity      mean(1 - |Bowley skewness|, 1 - MAD/max(32, median/10), smallness)
  score                mean of the two, in [0, 1]; at least `min_connections` needed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import TCP, UDP, Packet
from agent.detect.base import Detector, ip_text
from agent.detect.nets import is_internal, is_unicast, port_list
from agent.detect.window import (
    KeyedWindow,
    Series,
    Stamped,
    bowley_skewness,
    median_abs_deviation,
)
from common.config import Option, at_least, between, positive
from vigie.v1 import alert_pb2


class _Burst(Stamped):
    """One session; `seen` (kept by the window) is the time of its last packet."""

    __slots__ = ("bytes", "triplet")

    def __init__(self, now: float) -> None:
        self.bytes = 0
        self.triplet: tuple = ()


def score(series: Series) -> dict[str, float]:
    """The RITA-like components and total for one series of connections."""
    iv = series.intervals()
    med, mad = median_abs_deviation(iv)
    ts_skew = 1 - abs(bowley_skewness(iv, med / 10))
    ts_mad = max(0.0, 1 - mad / med) if med > 0 else 0.0
    sizes = list(series.sizes)
    if len(sizes) >= 3:
        smed, smad = median_abs_deviation(sizes)
        ds_skew = 1 - abs(bowley_skewness(sizes, max(32.0, smed / 10)))
        ds_mad = max(0.0, 1 - smad / max(32.0, smed / 10))
        ds_small = max(0.0, 1 - smed / 65535)
        ds = (ds_skew + ds_mad + ds_small) / 3
    else:
        smed = ds_skew = ds_mad = ds_small = 0.0
        ds = 0.5  # unknown yet: neutral
    ts = (ts_skew + ts_mad) / 2
    return {
        "score": round((ts + ds) / 2, 4),
        "interval_score": round(ts, 4),
        "size_score": round(ds, 4),
        "interval_median_seconds": round(med, 3),
        "interval_mad_seconds": round(mad, 3),
        "interval_skew_score": round(ts_skew, 4),
        "size_median_bytes": round(smed, 1),
        "size_mad_score": round(ds_mad, 4),
        "size_skew_score": round(ds_skew, 4),
    }


class Beacon(Detector):
    name = "net.beacon"
    technique = "T1071"
    severity = alert_pb2.SEVERITY_HIGH
    help = "C2 beaconing: regular connections to one external service (RITA-like scoring)."
    packet_protocols = frozenset((TCP, UDP))
    options: ClassVar[dict[str, Option]] = {
        "min_connections": Option(
            int, 6, "Connections to one service needed before scoring.", at_least(4)
        ),
        "score_threshold": Option(
            float, 0.75, "Score (0..1) from which a series is a beacon.", between(0.0, 1.0)
        ),
        "min_interval_seconds": Option(
            float,
            2.0,
            "Median interval below which a series is a burst, not a beacon.",
            positive,
        ),
        "idle_gap_seconds": Option(
            float,
            5.0,
            "Silence after which a packet on a known UDP/TCP session starts a new connection.",
            positive,
        ),
        "max_samples": Option(
            int, 64, "Connections kept per series (the oldest are dropped).", at_least(8)
        ),
        "series_idle_seconds": Option(
            float, 7200.0, "A series with no connection for this long is forgotten.", positive
        ),
        "internal_destinations": Option(
            bool, False, "Also score destinations inside the establishment."
        ),
        "ignore_ports": Option(
            list,
            [53, 123, 5353],
            "Destination ports never scored (DNS, NTP, mDNS).",
            port_list,
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        s = settings
        self.gap = s["idle_gap_seconds"]
        self.ignore = frozenset(s["ignore_ports"])
        self.bursts: KeyedWindow[_Burst] = KeyedWindow(
            max(self.gap, 300.0), _Burst, 200_000, on_forget=self._burst_end
        )
        cap = s["max_samples"]
        self.series: KeyedWindow[Series] = KeyedWindow(
            s["series_idle_seconds"], lambda now: Series(cap), 100_000
        )

    def on_packet(self, p: Packet) -> None:
        if p.proto != TCP and p.proto != UDP:
            return
        bursts = self.bursts
        key = (p.proto, p.src, p.sport, p.dst, p.dport)
        b = bursts.peek(key)
        if b is None:
            rkey = (p.proto, p.dst, p.dport, p.src, p.sport)
            b = bursts.peek(rkey)
            if b is None:
                # a new session: the sender is its originator
                b = bursts.get(key, p.ts)
                if self._watched(p):
                    b.triplet = (p.src, p.dst, p.dport)
                    self._connection(b.triplet, p.ts)
                b.bytes = p.length
                return
            key = rkey
        if p.ts - b.seen > self.gap:
            self._burst_end(key, b)
            if b.triplet:
                self._connection(b.triplet, p.ts)
            b.bytes = 0
        bursts.get(key, p.ts)  # refresh: this packet is the session's last
        b.bytes += p.length

    def _watched(self, p: Packet) -> bool:
        if p.dport in self.ignore or not is_unicast(p.dst) or self.allowed(p.src):
            return False
        if not self.settings["internal_destinations"] and is_internal(p.dst):
            return False
        return is_internal(p.src)

    def _burst_end(self, key: object, b: _Burst) -> None:
        if b.triplet and b.bytes:
            st = self.series.peek(b.triplet)
            if st is not None:
                st.add_size(b.bytes)
        b.bytes = 0

    def _connection(self, triplet: tuple, ts: float) -> None:
        st = self.series.get(triplet, ts)
        st.add(ts)
        s = self.settings
        if len(st) < s["min_connections"]:
            return
        m = score(st)
        if m["interval_median_seconds"] < s["min_interval_seconds"]:
            return
        if m["score"] < s["score_threshold"]:
            return
        src, dst, port = triplet
        m["connections"] = len(st)
        self.report(
            subject=f"{src.hex()}>{dst.hex()}:{port}",
            ts=ts,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src)),
                Entity(alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_IP, ip_text(dst)),
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(port)),
            ],
            summary=(
                f"beaconing: {len(st)} connections to port {port} every "
                f"{m['interval_median_seconds']:.1f} s (score {m['score']:.2f})"
            ),
            metrics=m,
        )

    def on_tick(self, now: float) -> None:
        self.bursts.expire(now)
        self.series.expire(now)
