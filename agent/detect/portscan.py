"""net.portscan — vertical, horizontal and stealth scans.

Scored per source on first contacts with each (host, port), by threshold random walk
(Jung, Paxson, Berger, Balakrishnan, 2004): each failed first contact multiplies the
likelihood ratio by (1-θ1)/(1-θ0), each success by θ1/θ0; crossing η1 = PD/PF flags
a scanner after a handful of failures, while a benign host that mostly succeeds drifts
back under η0 and its walk restarts. Fan-out thresholds catch slow scans that succeed
often (open ports), and FIN/NULL/Xmas probes, which no ordinary stack sends to open a
connection, count on their own.

Once a source is flagged, every further failed probe counts, but the source is reported
to the aggregator at most once per `report_interval_seconds` (default 1 s): the probes
in between are added up and sent as the count of the next report, or on the next tick.
"""

from __future__ import annotations

import math
from typing import ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import UDP
from agent.detect.base import Detector, ip_text
from agent.detect.window import Distinct, KeyedWindow
from agent.flows.table import SUCCESS, Flow
from common.config import Option, between, positive
from vigie.v1 import alert_pb2


class _Source:
    __slots__ = (
        "failed", "hosts", "last_dst", "last_probe", "last_report", "llr", "pending", "ports",
        "stealth", "styles", "succeeded", "targets",
    )  # fmt: skip

    def __init__(self, now: float) -> None:
        self.targets = Distinct(65536)
        self.ports = Distinct(65536)
        self.hosts = Distinct(65536)
        self.llr = 0.0
        self.failed = 0
        self.succeeded = 0
        self.stealth = 0
        self.styles: set[str] = set()
        self.pending = 0  # failed probes not reported yet (flagged sources only)
        self.last_report = float("-inf")
        self.last_probe = now
        self.last_dst = b""


def _unicast(packed: bytes) -> bool:
    if len(packed) == 4:
        return packed[0] < 224 and packed != b"\xff\xff\xff\xff"
    return packed[0] != 0xFF


class PortScan(Detector):
    name = "net.portscan"
    technique = "T1046"
    severity = alert_pb2.SEVERITY_MEDIUM
    help = "Port and host scans: TCP SYN/connect/FIN/NULL/Xmas, UDP; TRW plus fan-out."
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
        super().__init__(settings, report)
        s = settings
        pd, pf = s["detection_probability"], s["false_positive_probability"]
        t0, t1 = s["theta_benign"], s["theta_scanner"]
        self.ln_upper = math.log(pd / pf)
        self.ln_lower = math.log((1 - pd) / (1 - pf))
        self.ln_fail = math.log((1 - t1) / (1 - t0))
        self.ln_success = math.log(t1 / t0)
        self.sources: KeyedWindow[_Source] = KeyedWindow(s["window_seconds"], _Source)
        self.flagged: set[bytes] = set()

    def on_outcome(self, flow: Flow, outcome: str, ts: float) -> None:
        src = flow.src
        if not _unicast(flow.dst) or self.allowed(src):
            return
        st = self.sources.get(src, ts)
        if not st.targets.add((flow.dst, flow.dport, flow.proto)):
            return  # only first contacts count
        st.hosts.add(flow.dst)
        st.ports.add((flow.dport, flow.proto))
        if outcome == SUCCESS:
            st.succeeded += 1
            st.llr += self.ln_success
            if st.llr <= self.ln_lower and src not in self.flagged:
                st.llr = 0.0  # declared benign: start a fresh walk
            return
        st.failed += 1
        st.llr += self.ln_fail
        st.styles.add(flow.stealth or ("udp" if flow.proto == UDP else "syn"))
        if flow.stealth:
            st.stealth += 1
        s = self.settings
        if src in self.flagged or (
            st.llr >= self.ln_upper
            or len(st.ports) >= s["fanout_ports"]
            or len(st.hosts) >= s["fanout_hosts"]
            or st.stealth >= s["stealth_probes"]
        ):
            first = src not in self.flagged
            self.flagged.add(src)
            st.pending += st.failed if first else 1
            st.last_probe, st.last_dst = ts, flow.dst
            if ts - st.last_report >= s["report_interval_seconds"]:
                self._emit(src, st, ts)

    def _emit(self, src: bytes, st: _Source, ts: float) -> None:
        count, st.pending, st.last_report = st.pending, 0, ts
        hosts, ports = len(st.hosts), len(st.ports)
        shape = "vertical" if hosts == 1 else "horizontal" if ports == 1 else "mixed"
        entities = [Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src))]
        if hosts == 1:
            entities.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(st.last_dst)))
        self.report(
            subject=src.hex(),
            ts=ts,
            count=count,
            entities=entities,
            summary=(
                f"{shape} port scan: {st.failed} failed probes, {ports} ports on "
                f"{hosts} host(s) ({', '.join(sorted(st.styles))})"
            ),
            metrics={
                "failed_probes": st.failed,
                "succeeded": st.succeeded,
                "distinct_ports": ports,
                "distinct_hosts": hosts,
                "stealth_probes": st.stealth,
                "trw_log_ratio": round(st.llr, 3),
            },
        )

    def on_tick(self, now: float) -> None:
        self._flush(now - self.settings["report_interval_seconds"])
        self.sources.expire(now)
        self.flagged.intersection_update(k for k in self.flagged if self.sources.peek(k))

    def on_finish(self, now: float) -> None:
        """End of input: every probe counted so far is reported."""
        self._flush(float("inf"))

    def _flush(self, reported_before: float) -> None:
        for src in self.flagged:
            st = self.sources.peek(src)
            if st is not None and st.pending and st.last_report <= reported_before:
                self._emit(src, st, st.last_probe)
