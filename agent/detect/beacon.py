"""net.beacon — command-and-control check-ins: regular connections from one host to one
external service (same destination address and port), scored in the manner of RITA.

The engine follows the bursts of each watched TCP/UDP flow (`on_activity`): a
"connection" is a new flow, or a new burst on a known one after more than
`idle_gap_seconds` of silence (QUIC and other long-lived UDP sessions check in that way),
dated by its first packet; a burst's size is its bytes (both ways) until the next burst
starts or the flow ends. Per (source, destination, port) the agent keeps the last start
times and burst sizes (a series of one connection with no size yet: its time alone), and
scores:
  interval regularity  mean(1 - |Bowley skewness|, 1 - MAD/median) of the intervals
                       (skewness damped when the IQR is under a tenth of the median)
  size regularity      mean(1 - |Bowley skewness|, 1 - MAD/max(32, median/10), smallness)
  score                mean of the two, in [0, 1]; at least `min_connections` needed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.nets import is_internal, is_unicast, port_list
from agent.detect.window import (
    KeyedWindow,
    Series,
    bowley_skewness,
    key_of,
    median_abs_deviation,
)
from agent.engine import Table
from common.config import Option, at_least, between, positive
from vigie.v1 import alert_pb2


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
            at_least(1.0),  # flows are reported once a tick (1 s): no finer gap is seen
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
        self.wants = Wants(
            activity_ignore=self.ignore,
            activity_internal=s["internal_destinations"],
            activity_gap=self.gap,
        )
        cap = s["max_samples"]
        limit = min(KeyedWindow.limit, 100_000)
        # Series by key_of(source, destination, port). Most never get a second connection:
        # until then a series is its one connection's time, a key in `singles` (a Table,
        # agent/engine/table.c: ~40 B where a Series object costs ~300 B).
        self.singles = Table(0, s["series_idle_seconds"], limit)
        self.series: KeyedWindow[Series] = KeyedWindow(
            s["series_idle_seconds"], lambda now: Series(cap), limit
        )

    def on_activity(self, records: list[tuple]) -> None:
        series = self.series
        for ts, src, dst, dport, nbytes in records:
            if nbytes is None:
                if self._watched(src, dst, dport):
                    self._connection(key_of(src, dst, dport), ts, src, dst, dport)
                continue
            key = key_of(src, dst, dport)
            st = series.peek(key) or self._second(key)
            if st is not None:  # else not scored, or forgotten
                st.add_size(nbytes)

    def _watched(self, src: bytes, dst: bytes, dport: int) -> bool:
        # The engine reports only such flows; checked again for callers that do not
        # filter, and for the allow-list.
        if dport in self.ignore or not is_unicast(dst) or self.allowed(src):
            return False
        if not self.settings["internal_destinations"] and is_internal(dst):
            return False
        return is_internal(src)

    def _second(self, key: int) -> Series | None:
        """The Series of a series that was one connection's time, made in its place."""
        single = self.singles.pop(key)
        if single is None:
            return None
        st = self.series.get(key, single[0])
        st.add(single[0])
        return st

    def _connection(self, key: int, ts: float, src: bytes, dst: bytes, port: int) -> None:
        st = self.series.peek(key) or self._second(key)
        if st is None:
            self.singles.get(key, ts)  # one connection: too few to score (4 at least)
            return
        self.series.get(key, ts)
        st.add(ts)
        s = self.settings
        if len(st) < s["min_connections"]:
            return
        m = score(st)
        if m["interval_median_seconds"] < s["min_interval_seconds"]:
            return
        if m["score"] < s["score_threshold"]:
            return
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
        self.singles.expire(now)
        self.series.expire(now)
