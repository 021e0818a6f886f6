"""net.lateral — one internal host reaching many internal hosts on remote-admin ports.

Fan-out on SMB, RPC, NetBIOS, RDP, WinRM and SSH: a workstation talks to a few servers on
these ports; a host that reaches many peers within a window is spreading (PsExec, WMI,
worms, ransomware operators). Counted per source on connections that were answered, with
the distinct peers in one bounded windowed set.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import TCP
from agent.detect.base import Detector, ip_text
from agent.detect.nets import is_internal, port_list
from agent.detect.window import Distinct, KeyedWindow
from agent.flows.table import SUCCESS, Flow
from common.config import Option, positive
from vigie.v1 import alert_pb2


class _Spread:
    __slots__ = ("first", "hosts", "ports")

    def __init__(self, now: float) -> None:
        self.first = now
        self.hosts = Distinct(4096)
        self.ports: set[int] = set()


class Lateral(Detector):
    name = "net.lateral"
    technique = "T1021"
    severity = alert_pb2.SEVERITY_HIGH
    help = "Lateral movement: an internal host reaching many internal hosts on admin ports."
    options: ClassVar[dict[str, Option]] = {
        "ports": Option(
            list,
            [22, 135, 139, 445, 3389, 5985, 5986],
            "Remote administration ports watched (SSH, RPC, NetBIOS, SMB, RDP, WinRM).",
            port_list,
        ),
        "fanout_hosts": Option(
            int, 15, "Distinct internal hosts reached by one source that fire.", positive
        ),
        "window_seconds": Option(
            float, 900.0, "A source's peers are forgotten after this much silence.", positive
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        self.ports = frozenset(settings["ports"])
        self.sources: KeyedWindow[_Spread] = KeyedWindow(settings["window_seconds"], _Spread)

    def on_outcome(self, flow: Flow, outcome: str, ts: float) -> None:
        if outcome != SUCCESS or flow.proto != TCP or flow.dport not in self.ports:
            return
        src, dst = flow.src, flow.dst
        if src == dst or not is_internal(src) or not is_internal(dst) or self.allowed(src):
            return
        st = self.sources.get(src, ts)
        st.ports.add(flow.dport)
        if not st.hosts.add(dst):
            return
        n = len(st.hosts)
        if n < self.settings["fanout_hosts"]:
            return
        ports = sorted(st.ports)
        self.report(
            subject=src.hex(),
            ts=ts,
            count=n if n == self.settings["fanout_hosts"] else 1,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src)),
                *(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(p)) for p in ports),
            ],
            summary=(
                f"lateral movement: reached {n} internal hosts on port(s) "
                f"{', '.join(map(str, ports))} in {ts - st.first:.0f} s"
            ),
            metrics={
                "distinct_hosts": n,
                "distinct_ports": len(ports),
                "seconds": round(ts - st.first, 3),
            },
        )

    def on_tick(self, now: float) -> None:
        self.sources.expire(now)
