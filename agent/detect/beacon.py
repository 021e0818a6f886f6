"""net.beacon — command-and-control check-ins: one internal host calling one external
service (address and port) again and again on a timer, jittered or not, with small
exchanges that no other host of the establishment shares.

The engine follows the bursts of each watched TCP/UDP flow (`on_activity`): a check-in
is a new flow, or data on a known one after more than `idle_gap_seconds` of silence
(QUIC, HTTP keep-alive; a bare TCP keep-alive probe is none), dated by its first packet;
a burst's bytes each way are known once it ends (a silence, the flow's end). Per
(source, destination, port) pair the detector keeps the last check-in times and sizes,
and calls the pair a beacon when all of these hold:

  timer       the intervals fit one sleep with up to `max_jitter` uniform jitter: at least
              `min_in_band` of them inside the narrowest band [x, x * (1+J)/(1-J)]
              (a sleep of N s +- 50 % spans 0.5N..1.5N, a factor of 3; browsing and
              other human or bursty traffic spreads over far more), and a spread
              (interquartile range over median, the jitter estimate: J for a uniform
              +-J) within what such a sleep shows;
  evidence    more check-ins the more jittered: `min_connections` for a fixed sleep, up
              to `min_jittered_connections` at `max_jitter` (a loose timer is weaker
              evidence: a few random gaps can fit a wide band by chance);
  pace        a median interval of `min_interval_seconds` or more (faster is a burst);
  size        check-ins, not a transfer: the median burst, each way, under
              `transfer_bytes` (a ranged or throttled download, BITS, log shipping move
              large bursts on a timer; a C2 poll is small both ways);
  fan-in      fewer than `shared_service_hosts` internal hosts call that same service on a
              timer (an update server, an NTP or telemetry service is polled by many
              hosts of the establishment; a C2 by the one or few it infected).

One alert per pair, revised while the pair goes on (interval, jitter, check-ins, bytes,
fan-in as evidence grows).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.nets import is_unicast, port_list
from agent.detect.window import KeyedWindow, Stamped, key_of, median_abs_deviation, quartiles
from agent.engine import Table
from common.config import Option, at_least, between, positive
from vigie.v1 import alert_pb2

# The jitter estimate (IQR / median) of a uniform +-J sleep is J on average; over 20
# intervals it stays under 1.4 J in 95 % of series (its sampling noise): the spread allowed.
_SPREAD_NOISE = 1.4
# Timers are measured from first packets: network delay and the request's own time widen
# the band a little.
_BAND_SLACK = 1.1
_MIN_SIZES = 3  # burst sizes needed before the size test speaks
_SIZE_BITS = 26
_SIZE_MAX = (1 << _SIZE_BITS) - 1  # 64 MB: a burst this large is a transfer anyway


def pack_single(new: bool, out: int = 0, inb: int = 0) -> float:
    """A lone check-in in one exact double (53 bits): whether it opened a connection and
    its burst's bytes each way (0 until it ends), each capped at 64 MB."""
    return float((min(out, _SIZE_MAX) << _SIZE_BITS | min(inb, _SIZE_MAX)) << 1 | bool(new))


def unpack_single(v: float) -> tuple[bool, int, int]:
    n = int(v)
    return bool(n & 1), n >> (1 + _SIZE_BITS) & _SIZE_MAX, n >> 1 & _SIZE_MAX


def band_share(intervals: list[float], ratio: float) -> float:
    """The largest share of `intervals` inside one band [x, x * ratio]."""
    v = sorted(intervals)
    n, j, best = len(v), 0, 0
    for i in range(n):
        while j < n and v[j] <= v[i] * ratio:
            j += 1
        best = max(best, j - i)
    return best / n if n else 0.0


class Pair(Stamped):
    """One (source, destination, port) pair's last check-ins: times, and bytes each way
    of the bursts that ended (sizes come later than times, and not in step)."""

    __slots__ = ("cap", "dkey", "ins", "outs", "sessions", "times", "total")

    def __init__(self, cap: int, dkey: int) -> None:
        self.cap = cap
        self.dkey = dkey  # the service, key_of(destination, port): its fan-in
        self.times: tuple[float, ...] = ()
        self.outs: list[int] = []
        self.ins: list[int] = []
        self.sessions = 0  # check-ins that opened a new flow (the rest: bursts on one)
        self.total = 0  # bytes both ways, every burst

    def add(self, ts: float, new: bool) -> None:
        times = (*self.times, ts)
        self.times = times[1:] if len(times) > self.cap else times
        self.sessions += new

    def add_size(self, out: int, inb: int) -> None:
        self.outs.append(out)
        self.ins.append(inb)
        if len(self.outs) > self.cap:
            del self.outs[0], self.ins[0]
        self.total += out + inb

    def intervals(self) -> list[float]:
        t = self.times
        return [t[i] - t[i - 1] for i in range(1, len(t))]


def assess(pair: Pair, max_jitter: float) -> dict[str, float]:
    """What the tests read of one pair: its timer and its sizes."""
    iv = pair.intervals()
    q1, med, q3 = quartiles(iv)
    jitter = (q3 - q1) / med if med > 0 else math.inf
    ratio = (1 + max_jitter) / (1 - max_jitter) * _BAND_SLACK
    m = {
        "check_ins": float(len(pair.times)),
        "new_connections": float(pair.sessions),
        "interval_median_seconds": round(med, 3),
        "jitter": round(jitter, 3),
        "in_band": round(band_share(iv, ratio), 3),
        "bytes_total": float(pair.total),
    }
    if len(pair.outs) >= _MIN_SIZES:
        out_med, out_mad = median_abs_deviation(pair.outs)
        in_med, in_mad = median_abs_deviation(pair.ins)
        m["bytes_out_median"] = out_med
        m["bytes_in_median"] = in_med
        # how alike the check-ins are (1: identical), for the analyst
        m["size_regularity"] = round(
            max(0.0, 1 - (out_mad / max(out_med, 64.0) + in_mad / max(in_med, 64.0)) / 2), 3
        )
        m["largest_share"] = round(
            max(o + i for o, i in zip(pair.outs, pair.ins, strict=True)) / max(1, pair.total), 3
        )
    return m


class Beacon(Detector):
    name = "net.beacon"
    technique = "T1071"
    severity = alert_pb2.SEVERITY_HIGH
    help = "C2 beaconing: check-ins on a timer, jittered or not, to one external service."
    options: ClassVar[dict[str, Option]] = {
        "min_connections": Option(
            int, 6, "Check-ins needed before a fixed (unjittered) timer is scored.", at_least(4)
        ),
        "min_jittered_connections": Option(
            int,
            20,
            "Check-ins needed for a timer as jittered as max_jitter (in between: in proportion).",
            at_least(4),
        ),
        "max_jitter": Option(
            float,
            0.5,
            "Largest uniform jitter (fraction of the sleep) a timer may have: Cobalt Strike "
            "and Sliver allow up to 0.5.",
            between(0.0, 0.8),
        ),
        "min_in_band": Option(
            float,
            0.9,
            "Share (0..1) of intervals that must fit one jittered sleep's band.",
            between(0.5, 1.0),
        ),
        "min_interval_seconds": Option(
            float,
            2.0,
            "Median interval below which check-ins are a burst, not a beacon.",
            positive,
        ),
        "transfer_bytes": Option(
            int,
            65536,
            "Median bytes per burst (either way) from which a pair is a transfer "
            "(download, upload), not check-ins.",
            at_least(1024),
        ),
        "shared_service_hosts": Option(
            int,
            5,
            "Internal hosts calling one service on a timer from which it is a shared "
            "service (updates, time, telemetry), not a C2.",
            at_least(2),
        ),
        "idle_gap_seconds": Option(
            float,
            5.0,
            "Silence after which data on a known UDP/TCP session is a new check-in.",
            at_least(1.0),  # flows are reported once a tick (1 s): no finer gap is seen
        ),
        "max_samples": Option(
            int, 64, "Check-ins kept per pair (the oldest are dropped).", at_least(8)
        ),
        "series_idle_seconds": Option(
            float, 7200.0, "A pair with no check-in for this long is forgotten.", positive
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
        self.wants = Wants(
            activity_ignore=self.ignore,
            activity_internal=s["internal_destinations"],
            activity_gap=self.gap,
        )
        cap = s["max_samples"]
        limit = min(KeyedWindow.limit, 100_000)
        # Most pairs never get a second check-in: until then a pair is its one check-in's
        # time and `pack_single` in `singles`, a Table (agent/engine/table.c: ~32 B a key
        # where a Pair object costs ~400 B).
        self.singles = Table(1, s["series_idle_seconds"], limit)
        # Pairs by key_of(source, destination, port); `fan_in`: per service (destination,
        # port), the internal hosts with a pair to it (kept in step as pairs come and go).
        self.fan_in: dict[int, int] = {}
        self.pairs: KeyedWindow[Pair] = KeyedWindow(
            s["series_idle_seconds"], lambda now: Pair(cap, 0), limit, self._forgot
        )

    def on_activity(self, records: list[tuple]) -> None:
        pairs = self.pairs
        for ts, src, dst, dport, out, inb in records:
            if out is None:  # a burst starts (inb: with a new flow)
                if self._watched(src, dst, dport):
                    self._connection(ts, src, dst, dport, inb)
                continue
            key = key_of(src, dst, dport)
            pair = pairs.peek(key)
            if pair is not None:
                pair.add_size(out, inb)
            elif (single := self.singles.peek(key)) is not None:
                new = unpack_single(single[0])[0]
                self.singles.set(key, (pack_single(new, out, inb),))

    def _watched(self, src: bytes, dst: bytes, dport: int) -> bool:
        # The engine reports only such flows; checked again for callers that do not
        # filter, and for the allow-list.
        if dport in self.ignore or not is_unicast(dst) or self.allowed(src):
            return False
        inside = self.inside.is_internal
        if not self.settings["internal_destinations"] and inside(dst):
            return False
        return inside(src)

    def _forgot(self, key: object, pair: Pair) -> None:
        n = self.fan_in.get(pair.dkey, 0) - 1
        if n > 0:
            self.fan_in[pair.dkey] = n
        else:
            self.fan_in.pop(pair.dkey, None)

    def _pair(self, key: int, ts: float, dst: bytes, port: int) -> Pair | None:
        """The pair's state, made from its single check-in at its second one."""
        pair = self.pairs.peek(key)
        if pair is not None:
            self.pairs.get(key, ts)
            return pair
        single = self.singles.pop(key)
        if single is None:
            return None
        first, (packed,) = single
        new, out, inb = unpack_single(packed)
        pair = self.pairs.get(key, ts)
        pair.dkey = key_of(dst, port)
        self.fan_in[pair.dkey] = self.fan_in.get(pair.dkey, 0) + 1
        pair.add(first, new)
        if out or inb:  # its burst ended (a burst has bytes)
            pair.add_size(out, inb)
        return pair

    def _connection(self, ts: float, src: bytes, dst: bytes, port: int, new: bool) -> None:
        key = key_of(src, dst, port)
        pair = self._pair(key, ts, dst, port)
        if pair is None:  # one check-in: nothing to score yet
            self.singles.get(key, ts)
            self.singles.set(key, (pack_single(new),))
            return
        pair.add(ts, new)
        s = self.settings
        if len(pair.times) < s["min_connections"]:
            return
        m = assess(pair, s["max_jitter"])
        if not self._beacon(m, pair):
            return
        m["fan_in"] = float(self.fan_in.get(pair.dkey, 1))
        self.report(
            subject=f"{src.hex()}>{dst.hex()}:{port}",
            ts=ts,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src)),
                Entity(alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_IP, ip_text(dst)),
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(port)),
            ],
            summary=(
                f"beaconing: {len(pair.times)} check-ins to port {port} every "
                f"{m['interval_median_seconds']:.1f} s, jitter {100 * m['jitter']:.0f} %, "
                f"over {pair.sessions} connection(s), {pair.total} bytes"
            ),
            metrics=m,
        )

    def _beacon(self, m: dict[str, float], pair: Pair) -> bool:
        s = self.settings
        jitter, max_j = m["jitter"], s["max_jitter"]
        if m["interval_median_seconds"] < s["min_interval_seconds"]:
            return False
        if jitter > max_j * _SPREAD_NOISE or m["in_band"] < s["min_in_band"]:
            return False
        lo, hi = s["min_connections"], max(s["min_connections"], s["min_jittered_connections"])
        need = math.ceil(lo + (hi - lo) * min(1.0, jitter / max_j if max_j > 0 else 1.0))
        if m["check_ins"] < need:
            return False
        if "bytes_in_median" not in m:
            return False  # no burst has ended yet: a transfer cannot be told apart
        if max(m["bytes_in_median"], m["bytes_out_median"]) >= s["transfer_bytes"]:
            return False
        return self.fan_in.get(pair.dkey, 1) < s["shared_service_hosts"]

    def on_tick(self, now: float) -> None:
        self.singles.expire(now)
        self.pairs.expire(now)
