"""host.ioc_connection — a process connected to an address on the intel list (T1071).

The sampler matched the kernel's socket table against the intel snapshot it carries in
the sample and resolved the owning process of each hit; this detector names it. Domains
on the list are matched on the wire by the network IOC detector: a socket has no name.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.detect.hooks import HostWants
from agent.host.detectors.base import HostDetector, process_entities
from agent.host.sample import HostSample
from common.config import Option
from vigie.v1 import alert_pb2


class IocConnection(HostDetector):
    name = "host.ioc_connection"
    technique = "T1071"
    severity = alert_pb2.SEVERITY_HIGH
    help = "A process connected to an address or range on the intel list."
    options: ClassVar[dict[str, Option]] = {}

    @classmethod
    def sampler_wants(cls, settings: dict[str, Any]) -> HostWants:
        return HostWants(ioc=True)

    def on_host(self, sample: HostSample) -> None:
        intel = sample.intel
        if intel is None:
            return
        for c in sample.ioc_connections:
            if not intel.match(c.raddr) or self.allowed_process(c.process):
                continue
            ents = process_entities(c.process or "unknown", c.username)
            ents.append(Entity(alert_pb2.ROLE_INDICATOR, alert_pb2.KIND_IP, c.raddr))
            ents.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(c.rport)))
            ents.append(Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL, c.proto))
            self.report(
                subject=f"{c.raddr}|{c.process}",
                ts=sample.ts,
                summary=f"process connected to an indicator ({c.proto.upper()} port {c.rport})",
                entities=ents,
                metrics={"pid": c.pid or 0, "remote_port": c.rport, "intel_version": intel.version},
            )
