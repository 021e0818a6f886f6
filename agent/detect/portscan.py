"""net.portscan — vertical, horizontal and stealth scans.

Scored per source on first contacts with each (host, port), by threshold random walk
(Jung, Paxson, Berger, Balakrishnan, 2004): each failed first contact multiplies the
likelihood ratio by (1-θ1)/(1-θ0), each success by θ1/θ0; crossing η1 = PD/PF flags
a scanner after a handful of failures, while a benign host that mostly succeeds drifts
back under η0 and its walk restarts. Fan-out thresholds catch slow scans that succeed
often (open ports), and FIN/NULL/Xmas probes, which no ordinary stack sends to open a
connection, count on their own. Multicast and broadcast destinations are not scored.

The other probes nmap documents: a lone ACK (-sA, -sW) or FIN/ACK (-sM) opening a flow
counts when the target resets it (a session begun before the capture is answered as a
session, and then is one); such a reset only says no session exists, which a host back
from sleep also hears for its stale ones, so these count towards fan-out, not the walk
or the stealth count. An IP protocol (-sO) or SCTP INIT (-sY, on a kernel without SCTP)
probe counts when its target answers ICMP protocol unreachable; its "port" is the
protocol (SCTP: protocol and port). Host discovery (ARP, ICMP) is net.discovery's.

Once a source is flagged, every further failed probe counts, but the source is reported
to the aggregator at most once per `report_interval_seconds` (default 1 s): the probes
in between are added up and sent as the count of the next report, or on the next tick.

Where the work happens: a scan makes one attempt per probe, too many for a Python call
each, so the scoring runs in the engine (agent/engine/scan.c) on every attempt outcome,
with this detector's settings and allow-list, in a `Scan` state this detector owns (a
detector restarted by new settings starts afresh). Per source it keeps the walk, the
counts, and distinct sets of (host, port) targets, hosts and ports (65,536 each at most,
further ones counted, not remembered; held as 64-bit hashes, see scan.c). A source whose
only first contact so far succeeded — most clients — is held as just that target (32 B,
by a 64-bit hash of its address) until it makes another, which replays the success into
its full state. Sources are forgotten after `window_seconds` of silence, and at most
min(100,000, [flows] max_flows) of each kind are held, the oldest hundredth forgotten (and
counted) when full. The engine queues a
report record when a flagged source is due one; this class turns records into alerts.
"""

from __future__ import annotations

import math
from typing import ClassVar

from agent.anonymise.policy import Entity
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.window import KeyedWindow
from agent.engine import (
    STYLE_ACK,
    STYLE_FIN,
    STYLE_MAIMON,
    STYLE_NULL,
    STYLE_OTHER,
    STYLE_PROTO,
    STYLE_SCTP,
    STYLE_SYN,
    STYLE_UDP,
    STYLE_XMAS,
    Scan,
)
from common.config import Option, between, positive
from vigie.v1 import alert_pb2

# Scan styles: the bits of a record's `styles`, in name order.
_STYLES = {
    "ack": STYLE_ACK,
    "fin": STYLE_FIN,
    "ip-protocol": STYLE_PROTO,
    "maimon": STYLE_MAIMON,
    "null": STYLE_NULL,
    "other": STYLE_OTHER,
    "sctp": STYLE_SCTP,
    "syn": STYLE_SYN,
    "udp": STYLE_UDP,
    "xmas": STYLE_XMAS,
}
MAX_SOURCES = 100_000


class PortScan(Detector):
    name = "net.portscan"
    technique = "T1046"
    severity = alert_pb2.SEVERITY_MEDIUM
    help = (
        "Port and host scans: TCP SYN/connect/FIN/NULL/Xmas/ACK/Window/Maimon, UDP, SCTP, "
        "IP protocols; TRW plus fan-out."
    )
    options: ClassVar[dict[str, Option]] = {
        "window_seconds": Option(
            float, 900.0, "A source's evidence is forgotten after this much silence.", positive
        ),
        "theta_benign": Option(
            float, 0.8, "TRW: chance a benign first contact succeeds.", between(0.01, 0.99)
        ),
        "theta_scanner": Option(
            float, 0.2, "TRW: chance a scanner's first contact succeeds.", between(0.01, 0.99)
        ),
        "detection_probability": Option(
            float, 0.99, "TRW: wanted detection probability PD.", between(0.5, 0.9999)
        ),
        "false_positive_probability": Option(
            float, 0.01, "TRW: tolerated false positive rate PF.", between(0.0001, 0.5)
        ),
        "fanout_ports": Option(
            int, 100, "Distinct ports tried on one host that make a scan.", positive
        ),
        "fanout_hosts": Option(
            int, 50, "Distinct hosts tried on one port that make a sweep.", positive
        ),
        "stealth_probes": Option(
            int, 3, "FIN/NULL/Xmas probes to distinct targets that make a scan.", positive
        ),
        "report_interval_seconds": Option(
            float,
            1.0,
            "A flagged source is reported at most this often; probes in between are summed.",
            positive,
        ),
    }

    def __init__(self, settings: dict, report) -> None:
        s = settings
        pd, pf = s["detection_probability"], s["false_positive_probability"]
        t0, t1 = s["theta_benign"], s["theta_scanner"]
        self.scan = Scan(
            window=s["window_seconds"],
            report_interval=s["report_interval_seconds"],
            ln_upper=math.log(pd / pf),
            ln_lower=math.log((1 - pd) / (1 - pf)),
            ln_fail=math.log((1 - t1) / (1 - t0)),
            ln_success=math.log(t1 / t0),
            fanout_ports=s["fanout_ports"],
            fanout_hosts=s["fanout_hosts"],
            stealth_probes=s["stealth_probes"],
            # as a KeyedWindow would be bounded
            max_sources=max(1, min(MAX_SOURCES, KeyedWindow.limit)),
        )
        # The state the engine scores every attempt outcome into.
        self.wants = Wants(scan=self.scan)
        super().__init__(settings, report)  # after the scan: set_allow applies to it

    def set_allow(self, settings: dict) -> None:
        super().set_allow(settings)
        self.scan.set_allow([(n.network_address.packed, n.prefixlen) for n in self._allow])

    def on_scan(self, record: tuple) -> None:
        """A flagged source's report, queued by the engine at the probe that made it due."""
        self._emit(record)

    def on_tick(self, now: float) -> None:
        for record in self.scan.tick(now):
            self._emit(record)

    def on_finish(self, now: float) -> None:
        """End of input: every probe counted so far is reported."""
        for record in self.scan.finish():
            self._emit(record)

    def _emit(self, record: tuple) -> None:
        src, ts, count, failed, succeeded, hosts, ports, stealth, styles, llr, last_dst = record
        shape = "vertical" if hosts == 1 else "horizontal" if ports == 1 else "mixed"
        # an IP protocol scan's "ports" are the protocols tried (scan.c)
        what = "IP protocol scan" if styles & STYLE_PROTO else "port scan"
        unit = "protocols and ports" if styles & STYLE_PROTO else "ports"
        entities = [Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src))]
        if hosts == 1:
            entities.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(last_dst)))
        self.report(
            subject=src.hex(),
            ts=ts,
            count=count,
            entities=entities,
            summary=(
                f"{shape} {what}: {failed} failed probes, {ports} {unit} on "
                f"{hosts} host(s) ({', '.join(n for n, b in _STYLES.items() if styles & b)})"
            ),
            metrics={
                "failed_probes": failed,
                "succeeded": succeeded,
                "distinct_ports": ports,
                "distinct_hosts": hosts,
                "stealth_probes": stealth,
                "trw_log_ratio": round(llr, 3),
            },
        )
