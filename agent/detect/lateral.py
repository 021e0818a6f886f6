"""net.lateral — one internal host reaching many internal hosts on remote-admin ports.

Fan-out on SMB, RPC, NetBIOS, RDP, WinRM and SSH: a workstation talks to a few servers on
these ports; a host that reaches many peers within a window is spreading (PsExec, WMI,
worms, ransomware operators). Counted per source on connections that were answered, with
the distinct peers in one bounded windowed set.

Protocol part (one pair is enough): remote execution seen in SMB2 and DCE-RPC, the way
PsExec-like tools and ransomware operators spread. From the deep decoders: a service
created or started through svcctl, a task registered through atsvc/ITaskSchedulerService
(`rpc_actions`), and an executable (`exec_extensions`) written to, or created on, an
administrative share (ADMIN$, C$...). Reported per (client, server) pair, with counts.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.deep.smb import admin_share
from agent.decode.packet import TCP, Packet
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.nets import port_list
from agent.detect.window import Distinct, KeyedWindow, Stamped, Suppressor
from agent.flows.table import SUCCESS, Flow
from common.config import Option, positive
from vigie.v1 import alert_pb2


class _Spread(Stamped):
    __slots__ = ("first", "hosts", "ports")

    def __init__(self, now: float) -> None:
        self.first = now
        self.hosts = Distinct(4096)
        self.ports: set[int] = set()


_ACTIONS = ("service_create", "service_start", "service_change", "task_register", "task_run")
_ACTION_TEXT = {
    "service_create": "service(s) created",
    "service_start": "service(s) started",
    "service_change": "service(s) reconfigured",
    "task_register": "task(s) registered",
    "task_run": "task(s) run",
    "exe_write": "executable(s) written to an admin share",
    "exe_create": "executable(s) created on an admin share",
}


def _actions(value: list) -> str | None:
    for a in value:
        if a not in _ACTIONS:
            return f"holds {a!r}; known: {', '.join(_ACTIONS)}"
    return None


class _Exec(Stamped):
    __slots__ = ("counts", "first")

    def __init__(self, now: float) -> None:
        self.first = now
        self.counts: dict[str, int] = {}


class Lateral(Detector):
    name = "net.lateral"
    technique = "T1021"
    severity = alert_pb2.SEVERITY_HIGH
    help = (
        "Lateral movement: an internal host reaching many internal hosts on admin ports; "
        "remote service/task creation and executables dropped on admin shares."
    )
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
        "remote_exec": Option(
            bool, True, "Report remote execution seen in SMB/DCE-RPC (one pair is enough)."
        ),
        "rpc_actions": Option(
            list,
            ["service_create", "service_start", "task_register"],
            "DCE-RPC actions that are remote execution (" + ", ".join(_ACTIONS) + ").",
            _actions,
        ),
        "exec_extensions": Option(
            list,
            [".exe", ".dll", ".sys", ".bat", ".cmd", ".ps1", ".vbs", ".scr"],
            "File name endings that make a file on an admin share an executable.",
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        self.ports = frozenset(settings["ports"])
        # on_outcome only counts TCP to these
        self.wants = Wants(app_kinds=frozenset(("smb", "dcerpc")), outcome_ports=self.ports)
        self.sources: KeyedWindow[_Spread] = KeyedWindow(settings["window_seconds"], _Spread)
        self.rpc_actions = frozenset(settings["rpc_actions"])
        self.exts = tuple(str(e).lower() for e in settings["exec_extensions"])
        self.execs: KeyedWindow[_Exec] = KeyedWindow(settings["window_seconds"], _Exec, 20_000)
        self.admin_flows: KeyedWindow[bool] = KeyedWindow(3600.0, lambda now: True, 20_000)
        self.once = Suppressor(600.0, 50_000)  # one count per (flow, file, action)

    def on_app(self, msg: Any, flow: Any, p: Packet | None) -> None:
        if p is None or flow is None or not self.settings["remote_exec"]:
            return
        if msg.kind == "dcerpc":
            if msg.ptype == "request" and msg.action in self.rpc_actions:
                self._exec(msg.action, p, "dcerpc" if msg.transport == "tcp" else "smb")
            return
        if msg.kind != "smb" or msg.response:
            return
        action = msg.action
        if action == "admin_share_connect":
            self.admin_flows.get(flow.key, p.ts)
            return
        name = msg.filename.lower()
        if not name.endswith(self.exts):
            return
        if action == "admin_share_write":
            what = "exe_write"
        elif msg.command_name == "create" and (
            admin_share(msg.share) or self.admin_flows.peek(flow.key) is not None
        ):
            what = "exe_create"
        else:
            return
        if self.once.allow((flow.key, name, what), p.ts):
            self._exec(what, p, "smb")

    def _exec(self, what: str, p: Packet, proto: str) -> None:
        src, dst, ts = p.src, p.dst, p.ts
        if self.allowed(src):
            return
        st = self.execs.get((src, dst), ts)
        st.counts[what] = st.counts.get(what, 0) + 1
        done = ", ".join(f"{n} {_ACTION_TEXT[a]}" for a, n in sorted(st.counts.items()))
        self.report(
            subject=f"{src.hex()}>{dst.hex()}:exec",
            ts=ts,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(src)),
                Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(dst)),
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(p.dport)),
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL, proto),
            ],
            summary=f"remote execution over SMB/DCE-RPC: {done} in {ts - st.first:.0f} s",
            metrics={a: float(n) for a, n in st.counts.items()}
            | {"seconds": round(ts - st.first, 3)},
        )

    def on_outcome(self, flow: Flow, outcome: str, ts: float) -> None:
        if outcome != SUCCESS or flow.proto != TCP or flow.dport not in self.ports:
            return
        src, dst = flow.src, flow.dst
        inside = self.inside.is_internal
        if src == dst or not inside(src) or not inside(dst) or self.allowed(src):
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
        self.execs.expire(now)
        self.admin_flows.expire(now)
        self.once.expire(now)
