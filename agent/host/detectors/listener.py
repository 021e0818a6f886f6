"""host.listener — a listening socket that was not there while the agent learned.

Technique T1571 (Non-Standard Port). ATT&CK has no technique for "opened a listener";
on a server whose services are fixed, a new listener is a bind shell, a backdoor, a
tunnel endpoint or a C2 channel on a port nothing should use, which is T1571's case.
Keyed by (protocol, port, process): a known service restarting on its usual port is not
new. Ephemeral UDP ports (DNS clients and the like bind them for a moment) are ignored
by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.hooks import HostWants
from agent.host.detectors.base import HostDetector, process_entities
from agent.host.sample import HostSample
from common.config import Option, at_least
from vigie.v1 import alert_pb2


def _ports(value: list) -> str | None:
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool) or not 0 < item < 65536:
            return f"holds {item!r}, which is not a port number"
    return None


def _ephemeral() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_WILDCARD = {"0.0.0.0", "::", ""}


class Listener(HostDetector):
    name = "host.listener"
    technique = "T1571"
    severity = alert_pb2.SEVERITY_MEDIUM
    help = "A new listening TCP/UDP socket (process, port) after a learning period."
    options: ClassVar[dict[str, Option]] = {
        "learning_seconds": Option(
            float, 60.0, "Listeners seen this long after start are the baseline.", at_least(0)
        ),
        "allow_ports": Option(list, [], "Ports never reported.", _ports),
        "ignore_ephemeral_udp": Option(
            bool, True, "Skip UDP sockets bound in the kernel's ephemeral port range."
        ),
    }

    @classmethod
    def sampler_wants(cls, settings: dict[str, Any]) -> HostWants:
        return HostWants(listeners=True)

    def __init__(self, settings: dict, report) -> None:
        super().__init__(settings, report)
        self.started: float | None = None
        self.known: set[tuple[str, int, str]] = set()
        self.allow_ports = set(settings["allow_ports"])
        self.ephemeral = _ephemeral()

    def on_host(self, sample: HostSample) -> None:
        if sample.listeners is None:
            return
        if self.started is None:
            self.started = sample.ts
        learning = sample.ts - self.started < self.settings["learning_seconds"]
        lo, hi = self.ephemeral
        for s in sample.listeners:
            key = (s.proto, s.lport, s.process)
            if key in self.known:
                continue
            self.known.add(key)
            if learning or s.lport in self.allow_ports or self.allowed_process(s.process):
                continue
            if s.proto == "udp" and self.settings["ignore_ephemeral_udp"] and lo <= s.lport <= hi:
                continue
            ents = process_entities(s.process or "unknown", s.username)
            ents.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_PORT, str(s.lport)))
            ents.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL, s.proto))
            if s.laddr not in _WILDCARD:
                ents.append(Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, s.laddr))
            self.report(
                subject=f"{s.proto}|{s.lport}|{s.process}",
                ts=sample.ts,
                summary=f"new {s.proto.upper()} listener on port {s.lport} since the baseline",
                entities=ents,
                metrics={"port": s.lport, "pid": s.pid or 0, "listeners": len(sample.listeners)},
            )
