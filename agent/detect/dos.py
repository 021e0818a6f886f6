"""net.dos — SYN, UDP and ICMP floods towards one target.

The native engine counts packets per (source, destination, class) and hands them over
once per tick (`on_pairs`). Opening SYNs (half-open attempts), UDP packets and ICMP
packets that are not error messages pour into the destination's SYN, UDP or ICMP leaky
bucket (CrowdSec's leaky bucket: capacity, leak speed): a pair's packets pour at once, at
the time of its last packet, pairs in time order. An overflowing bucket is a flood; the
distinct sources feeding it tell a single flooder from a spoofed (or distributed) one, and
packets the engine could only count under "other sources" (its table for one tick is
bounded) make the flood spoofed. Reports are suppressed to one per target and kind every
`report_interval_seconds`, with the packets since counted.

A target gets a bucket only once a delivery (a tick) brings it more than its leak rate,
and a bucket that has leaked empty (by the latest packet delivered) is forgotten at the next
tick: poured into again it overflows exactly as it would have, so what it still held was
only what a report says. A report's packets, rate, duration and sources therefore count
from when the bucket last started filling from empty, and so does the packet count of the
first report after that — most targets only ever get a packet now and then, and their
buckets need not outlive it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import PAIR_ICMP, PAIR_SYN, PAIR_UDP, Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.nets import is_unicast
from agent.detect.window import Distinct, KeyedWindow, LeakyBucket, Suppressor
from common.config import Option, positive
from vigie.v1 import alert_pb2

KINDS = ("syn", "udp", "icmp")
_LABEL = {"syn": "SYN", "udp": "UDP", "icmp": "ICMP"}
# The pair classes that flood, and their bucket; the engine already files ICMP errors
# (answers to someone else's traffic) and neighbour discovery apart, as PAIR_ICMP_ERROR.
_KIND_OF = {PAIR_SYN: "syn", PAIR_UDP: "udp", PAIR_ICMP: "icmp"}


class _Target(LeakyBucket):
    """A target's bucket for one flood kind, with what the report says about it (one
    object per target rather than a target holding a bucket)."""

    __slots__ = ("first", "since_report", "sources", "unnamed")

    def __init__(self, capacity: float, leak: float, now: float) -> None:
        super().__init__(capacity, leak, now)
        self.sources = Distinct(4096)
        self.first = now
        self.since_report = 0
        # fed by packets the engine counted under "other sources": many, none nameable
        self.unnamed = False


class Dos(Detector):
    name = "net.dos"
    technique = "T1498"
    severity = alert_pb2.SEVERITY_HIGH
    help = "Floods towards one target: SYN (half-open), UDP, ICMP; spoofed sources told apart."
    wants = Wants(pairs="floods")  # the engine counts only SYN, UDP, ICMP towards unicast
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
        self._delivered: float | None = None  # `now` of the previous on_pairs
        # the latest packet delivered: later packets pour no earlier than this, so a bucket
        # empty by then stays empty until its next pour (the tick's `now` is the wall clock
        # live, which packets still in the capture buffer may predate)
        self._latest = 0.0

    def _new(self, now: float) -> _Target:
        cap, leak = self.params[self._kind]
        return _Target(cap, leak, now)

    def on_pairs(self, records: Sequence[tuple], now: float) -> None:
        # Every packet of this delivery came after the previous one (a tick is 1 s).
        since = self._delivered if self._delivered is not None else now - 1.0
        self._delivered = now
        # A target with no bucket that gets at most its leak rate (and capacity) in this
        # delivery cannot overflow and would be empty again a second later: no bucket is
        # made for it. At a busy site most targets are such. The records are walked
        # twice rather than kept: at 16k new flows a second they are megabytes of tuples.
        totals: dict[tuple, int] = {}
        for rec in self._floods(records):
            key = (rec[1], _KIND_OF[rec[2]])
            totals[key] = totals.get(key, 0) + rec[3]
        peek, params = self.targets.peek, self.params
        heavy = {k for k, n in totals.items() if n > min(params[k[1]]) or peek(k) is not None}
        del totals
        if not heavy:
            return
        # The engine hands pairs over in the order their last packets arrived: the
        # closest the counters allow to pouring packet by packet (a bucket only leaks
        # when time moves forward).
        targets, suppress = self.targets, self.suppress
        for src, dst, cls, packets, _nbytes, ts, dport in self._floods(records):
            kind = _KIND_OF[cls]
            key = (dst, kind)
            if key not in heavy:
                continue
            self._latest = max(self._latest, ts)
            self._kind = kind
            st = targets.get(key, ts)
            if st.poured == 0 and packets > 1:
                # a new target: its first packet is only known to be since the previous
                # delivery; dating it at the last one would make the rate absurd
                st.first = min(ts, since)
            if src:
                st.sources.add(src)
            else:
                st.unnamed = True
            st.since_report += packets
            if st.pour(ts, packets) and suppress.allow(key, ts):
                self._emit(src, dst, dport, ts, kind, st)

    def _floods(self, records: Sequence[tuple]) -> Iterator[tuple]:
        """The records that pour into a bucket: flood classes, towards unicast targets,
        from sources not allow-listed."""
        allowed = self.allowed
        for rec in records:
            if rec[2] not in _KIND_OF or not is_unicast(rec[1]):
                continue
            if rec[0] and allowed(rec[0]):  # b"" (other sources) is never allowed
                continue
            yield rec

    def _emit(self, src: bytes, dst: bytes, dport: int, ts: float, kind: str, st: _Target) -> None:
        nsrc = len(st.sources)
        spoofed = st.unnamed or nsrc >= self.settings["spoofed_sources"]
        label = _LABEL[kind]
        entities = [Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(dst))]
        if nsrc == 1 and not st.unnamed:
            # the one source fed every pour, so it is this record's
            entities.append(Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src)))
        if kind != "icmp":
            entities.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(dport)))
        secs = max(ts - st.first, 0.001)
        origin = "spoofed or distributed" if spoofed else f"{nsrc} source(s)"
        what = "half-open attempts" if kind == "syn" else "packets"
        self.report(
            subject=f"{dst.hex()}:{kind}",
            ts=ts,
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
        latest = self._latest
        self.targets.expire(now, lambda st: st.empty_at(latest))
        self.suppress.expire(now)
