"""net.dos — SYN, UDP and ICMP floods towards one target.

Every opening SYN (half-open attempt) pours into a leaky bucket per target, every UDP or
ICMP packet into that target's UDP or ICMP bucket (CrowdSec's leaky bucket: capacity,
leak speed). An overflowing bucket is a flood; the distinct sources feeding it tell a
single flooder from a spoofed (or distributed) one. Reports are suppressed to one per
target and kind every `report_interval_seconds`, with the packets since counted.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import ACK, ICMP, ICMP6, SYN, TCP, UDP, Packet
from agent.detect.base import Detector, ip_text
from agent.detect.nets import is_unicast
from agent.detect.window import Distinct, KeyedWindow, LeakyBucket, Suppressor
from common.config import Option, positive
from vigie.v1 import alert_pb2

KINDS = ("syn", "udp", "icmp")
_LABEL = {"syn": "SYN", "udp": "UDP", "icmp": "ICMP"}
# ICMP error messages answer someone else's traffic: they are not flooding on their own.
_ICMP_ERRORS = frozenset((3, 4, 5, 11, 12))
_ICMP6_ERRORS = frozenset((1, 2, 3, 4))


class _Target(LeakyBucket):
    """A target's bucket for one flood kind, with what the report says about it (one
    object per target rather than a target holding a bucket)."""

    __slots__ = ("first", "since_report", "sources")

    def __init__(self, capacity: float, leak: float, now: float) -> None:
        super().__init__(capacity, leak, now)
        self.sources = Distinct(4096)
        self.first = now
        self.since_report = 0


class Dos(Detector):
    name = "net.dos"
    technique = "T1498"
    severity = alert_pb2.SEVERITY_HIGH
    help = "Floods towards one target: SYN (half-open), UDP, ICMP; spoofed sources told apart."
    packet_protocols = frozenset((TCP, UDP, ICMP, ICMP6))
    options: ClassVar[dict[str, Option]] = {
        "syn_capacity": Option(
            float, 2000.0, "Half-open attempts a target may get in a burst.", positive
        ),
        "syn_leak_per_second": Option(
            float, 200.0, "Half-open attempts per second a target may get sustained.", positive
        ),
        "udp_capacity": Option(float, 20000.0, "UDP packets to a target in a burst.", positive),
        "udp_leak_per_second": Option(
            float, 5000.0, "UDP packets per second to a target, sustained.", positive
        ),
        "icmp_capacity": Option(float, 1000.0, "ICMP packets to a target in a burst.", positive),
        "icmp_leak_per_second": Option(
            float, 100.0, "ICMP packets per second to a target, sustained.", positive
        ),
        "spoofed_sources": Option(
            int, 50, "Distinct sources feeding one flood that make it 'spoofed'.", positive
        ),
        "idle_seconds": Option(
            float, 60.0, "A target's buckets are forgotten after this much quiet.", positive
        ),
        "report_interval_seconds": Option(
            float, 10.0, "At most one report per target and flood kind this often.", positive
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        s = settings
        self.params = {k: (s[f"{k}_capacity"], s[f"{k}_leak_per_second"]) for k in KINDS}
        self.targets: KeyedWindow[_Target] = KeyedWindow(s["idle_seconds"], self._new)
        self.suppress = Suppressor(s["report_interval_seconds"])
        self._kind = ""

    def _new(self, now: float) -> _Target:
        cap, leak = self.params[self._kind]
        return _Target(cap, leak, now)

    def on_packet(self, p: Packet) -> None:
        proto = p.proto
        if proto == TCP:
            if p.flags & (SYN | ACK) != SYN:
                return
            kind = "syn"
        elif proto == UDP:
            kind = "udp"
        elif proto == ICMP:
            if p.sport in _ICMP_ERRORS:
                return
            kind = "icmp"
        elif proto == ICMP6:
            if p.sport in _ICMP6_ERRORS or p.sport >= 133:  # errors, neighbour discovery
                return
            kind = "icmp"
        else:
            return
        dst = p.dst
        if not is_unicast(dst) or self.allowed(p.src):
            return
        self._kind = kind
        st = self.targets.get((dst, kind), p.ts)
        st.sources.add(p.src)
        st.since_report += 1
        if st.pour(p.ts) and self.suppress.allow((dst, kind), p.ts):
            self._emit(p, kind, st)

    def _emit(self, p: Packet, kind: str, st: _Target) -> None:
        nsrc = len(st.sources)
        spoofed = nsrc >= self.settings["spoofed_sources"]
        label = _LABEL[kind]
        entities = [Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(p.dst))]
        if nsrc == 1:
            entities.append(Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(p.src)))
        if kind != "icmp":
            entities.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(p.dport)))
        secs = max(p.ts - st.first, 0.001)
        origin = "spoofed or distributed" if spoofed else f"{nsrc} source(s)"
        what = "half-open attempts" if kind == "syn" else "packets"
        self.report(
            subject=f"{p.dst.hex()}:{kind}",
            ts=p.ts,
            count=st.since_report,
            entities=entities,
            summary=(
                f"{label} flood: {st.poured} {what} in {secs:.1f} s "
                f"({st.poured / secs:.0f}/s) from {origin}"
            ),
            metrics={
                "packets": st.poured,
                "packets_per_second": round(st.poured / secs, 1),
                "bucket_level": round(st.level, 1),
                "distinct_sources": nsrc,
                "spoofed": 1.0 if spoofed else 0.0,
                "seconds": round(secs, 3),
            },
        )
        st.since_report = 0

    def on_tick(self, now: float) -> None:
        self.targets.expire(now)
        self.suppress.expire(now)
