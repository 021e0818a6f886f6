"""What every detector shares: declared tunables, an allow-list, a technique, a reporter.

A detector is one small class in one file (agent/detect/<name>.py). It implements only
the events it needs, each a tiny handler:
    on_packet(packet)             every decoded packet (keep it cheap)
    on_outcome(flow, outcome, ts) how a connection attempt ended (success/rejected/unanswered)
    on_flow_end(flow)             a flow expired or was evicted
    on_tick(now)                  time passed (capture time in replay, wall clock live)
    on_finish(now)                end of input (replay): report what is still held back
    on_app(msg, flow, packet)     a deep-decoded application message (agent/decode/deep)

Two class attributes let the pipeline skip calls a detector would throw away at once:
    packet_protocols  the `Packet.proto` values on_packet wants (None: every packet)
    app_kinds         the message kinds on_app wants ("dns", "tls_client_hello", "smb",
                      "dcerpc", "dicom_assoc", "hl7", "ftp", "telnet", "http"; None: all);
                      the deep decoder only decodes the protocols some detector wants.
A detector that matches against the intel list (state_dir/intel.json) defines
`use_intel(provider)`: the pipeline hands it a callable returning the current snapshot.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from common.config import Option

Report = Callable[..., None]


def _cidrs(value: list) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            return f"holds {item!r}, which is not an address or CIDR range"
    return None


COMMON_OPTIONS: dict[str, Option] = {
    "enabled": Option(bool, True, "Run this detector."),
    "allow": Option(
        list, [], "Addresses or CIDR ranges this detector never reports as source.", _cidrs
    ),
}


def ip_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


class Detector:
    name: ClassVar[str]
    technique: ClassVar[str]
    severity: ClassVar[int]
    help: ClassVar[str]
    options: ClassVar[dict[str, Option]] = {}
    packet_protocols: ClassVar[frozenset[int] | None] = None
    app_kinds: ClassVar[frozenset[str] | None] = None

    def __init__(self, settings: dict[str, Any], report: Report) -> None:
        self.settings = settings
        self._report = report
        self._allow = [ipaddress.ip_network(str(n), strict=False) for n in settings["allow"]]
        self._allow_cache: dict[bytes, bool] = {}

    @classmethod
    def schema(cls) -> dict[str, Option]:
        return COMMON_OPTIONS | cls.options

    def allowed(self, packed: bytes) -> bool:
        if not self._allow:
            return False
        hit = self._allow_cache.get(packed)
        if hit is None:
            ip = ipaddress.ip_address(packed)
            hit = any(ip in n for n in self._allow if n.version == ip.version)
            if len(self._allow_cache) > 65536:
                self._allow_cache.clear()
            self._allow_cache[packed] = hit
        return hit

    def report(
        self,
        subject: str,
        ts: float,
        summary: str,
        entities: list[Entity],
        metrics: dict[str, float],
        count: int = 1,
        severity: int | None = None,
    ) -> None:
        self._report(
            detector=self,
            subject=subject,
            ts=ts,
            summary=summary,
            entities=entities,
            metrics=metrics,
            count=count,
            severity=self.severity if severity is None else severity,
        )
