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
from agent.decode.packet import TCP, UDP
from agent.detect.base import Detector, ip_text
from agent.detect.window import Distinct, KeyedWindow, Stamped
from agent.flows.table import SUCCESS, Flow
from common.config import Option, between, positive
from vigie.v1 import alert_pb2

# Scan styles, as bits of one small int rather than a set of names per source.
_STYLES = {"fin": 1, "null": 2, "other": 4, "syn": 8, "udp": 16, "xmas": 32}  # sorted
_NEVER = float("-inf")


class _Source(Stamped):
    __slots__ = (
        "failed", "hosts", "last_dst", "last_probe", "last_report", "llr", "pending", "ports",
        "stealth", "styles", "succeeded", "targets",
    )  # fmt: skip

    def __init__(self, now: float) -> None:
        self.targets = Distinct(65536)  # (host, port) first contacts: a TCP port as is,
        # other protocols above 65535 (see on_outcome)
        # Made at the second target: until then the one target is the one host and port
        # (most sources only ever contact one service).
        self.hosts: Distinct | None = None
        self.ports: Distinct | None = None
        self.llr = 0.0
        self.failed = 0
        self.succeeded = 0
        self.stealth = 0
        self.styles = 0  # _STYLES bits
        self.pending = 0  # failed probes not reported yet (flagged sources only)
        self.last_report = _NEVER
        self.last_probe = now
        self.last_dst = b""

    def contact(self, dst: bytes, port: int) -> bool:
        """Count a contact with (dst, port); True when it is the first one."""
        target = (dst, port)
        if not self.targets.add(target):
            return False
        hosts, ports = self.hosts, self.ports
        if hosts is None or ports is None:
            if len(self.targets) == 1:
                return True
            d0, p0 = next(t for t in self.targets.items if t != target)
            hosts, ports = self.hosts, self.ports = Distinct(65536), Distinct(65536)
            hosts.add(d0)
            ports.add(p0)
        hosts.add(dst)
        ports.add(port)
        return True

    def distinct(self) -> tuple[int, int]:
        """(distinct hosts, distinct ports) contacted."""
        if self.hosts is None or self.ports is None:
            return len(self.targets), len(self.targets)
        return len(self.hosts), len(self.ports)


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
        self.fanout_ports, self.fanout_hosts = s["fanout_ports"], s["fanout_hosts"]
        self.stealth_probes = s["stealth_probes"]
        self.report_interval = s["report_interval_seconds"]

    def on_outcome(self, flow: Flow, outcome: str, ts: float) -> None:
        # Called for every attempt (a scan makes one per probe): settings are read once
        # in __init__, helpers inlined.
        dst = flow.dst
        if len(dst) == 4:
            if dst[0] >= 224 or dst == b"\xff\xff\xff\xff":
                return
        elif dst[0] == 0xFF:
            return
        src = flow.src
        if self._allow and self.allowed(src):
            return
        st = self.sources.get(src, ts)
        proto = flow.proto
        if not st.contact(dst, flow.dport if proto == TCP else proto << 16 | flow.dport):
            return  # only first contacts count
        if outcome == SUCCESS:
            st.succeeded += 1
            st.llr += self.ln_success
            if st.llr <= self.ln_lower and src not in self.flagged:
                st.llr = 0.0  # declared benign: start a fresh walk
            return
        st.failed += 1
        st.llr += self.ln_fail
        stealth = flow.stealth
        st.styles |= _STYLES[stealth or ("udp" if proto == UDP else "syn")]
        if stealth:
            st.stealth += 1
        flagged = src in self.flagged
        if not flagged:
            hosts, ports = st.distinct()
            if not (
                st.llr >= self.ln_upper
                or ports >= self.fanout_ports
                or hosts >= self.fanout_hosts
                or st.stealth >= self.stealth_probes
            ):
                return
            self.flagged.add(src)
        st.pending += 1 if flagged else st.failed
        st.last_probe, st.last_dst = ts, dst
        if ts - st.last_report >= self.report_interval:
            self._emit(src, st, ts)

    def _emit(self, src: bytes, st: _Source, ts: float) -> None:
        count, st.pending, st.last_report = st.pending, 0, ts
        hosts, ports = st.distinct()
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
                f"{hosts} host(s) ({', '.join(n for n, b in _STYLES.items() if st.styles & b)})"
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
