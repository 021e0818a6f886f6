"""net.arp_spoof — ARP cache poisoning and gratuitous ARP storms.

Every ARP packet binds its sender IP to its sender MAC. An address bound to one MAC
and then claimed by another within `binding_seconds` is spoofing (or, rarely, a NIC
swap or failover: allow-list those). Gratuitous ARP (sender IP = target IP) pours into
a leaky bucket per sender MAC; an overflow is a storm.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import ARP, Packet
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.window import KeyedWindow, LeakyBucket, Stamped, Suppressor
from common.config import Option, positive
from vigie.v1 import alert_pb2

_ZERO = b"\x00\x00\x00\x00"


def mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


class _Binding(Stamped):
    __slots__ = ("changes", "macs", "since")

    def __init__(self, now: float) -> None:
        self.since = now
        self.macs: list[bytes] = []  # current first, at most a few remembered
        self.changes = 0


class ArpSpoof(Detector):
    name = "net.arp_spoof"
    technique = "T1557.002"
    severity = alert_pb2.SEVERITY_HIGH
    help = "ARP spoofing: an address claimed by a new MAC, and gratuitous ARP storms."
    wants = Wants(packet_protocols=frozenset((ARP,)))
    options: ClassVar[dict[str, Option]] = {
        "binding_seconds": Option(
            float,
            1800.0,
            "An IP-to-MAC binding is forgotten after this much silence.",
            positive,
        ),
        "storm_capacity": Option(
            float, 20.0, "Gratuitous ARPs one MAC may send in a burst.", positive
        ),
        "storm_leak_per_second": Option(
            float, 0.5, "Gratuitous ARPs per second one MAC may send, sustained.", positive
        ),
        "report_interval_seconds": Option(
            float, 60.0, "At most one storm report per MAC this often.", positive
        ),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        s = settings
        self.bindings: KeyedWindow[_Binding] = KeyedWindow(s["binding_seconds"], _Binding)
        cap, leak = s["storm_capacity"], s["storm_leak_per_second"]
        self.storms: KeyedWindow[LeakyBucket] = KeyedWindow(
            max(60.0, cap / leak), lambda now: LeakyBucket(cap, leak, now)
        )
        self.suppress = Suppressor(s["report_interval_seconds"])

    def on_packet(self, p: Packet) -> None:
        if p.proto != ARP or p.ip_version:
            return
        ip, mac, ts = p.src, p.smac, p.ts
        if ip == _ZERO or not mac or mac == b"\x00" * 6 or self.allowed(ip):
            return  # ARP probes (RFC 5227) claim nothing yet
        b = self.bindings.get(ip, ts)
        if not b.macs:
            b.macs.append(mac)
        elif b.macs[0] != mac:
            old = b.macs[0]
            b.macs = [mac, *[m for m in b.macs if m != mac]][:4]
            b.changes += 1
            self._claimed(p, old, b)
        if p.dst == ip:  # gratuitous
            bucket = self.storms.get(mac, ts)
            if bucket.pour(ts) and self.suppress.allow(mac, ts):
                self._storm(p, bucket)

    def _claimed(self, p: Packet, old: bytes, b: _Binding) -> None:
        self.report(
            subject=f"{p.src.hex()}:claim",
            ts=p.ts,
            entities=[
                Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(p.src)),
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_MAC, mac_text(p.smac)),
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_MAC, mac_text(old)),
            ],
            summary=(
                f"ARP spoofing: an address bound to one MAC was claimed by another "
                f"({'reply' if p.op == 2 else 'request'}); {b.changes} change(s), "
                f"{len(b.macs)} MACs seen"
            ),
            metrics={"changes": b.changes, "distinct_macs": len(b.macs), "arp_op": p.op},
        )

    def _storm(self, p: Packet, bucket: LeakyBucket) -> None:
        self.report(
            subject=f"{p.smac.hex()}:storm",
            ts=p.ts,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_MAC, mac_text(p.smac)),
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(p.src)),
            ],
            summary=f"gratuitous ARP storm: {bucket.poured} gratuitous ARPs from one MAC",
            metrics={"gratuitous": bucket.poured, "bucket_level": round(bucket.level, 1)},
        )

    def on_tick(self, now: float) -> None:
        self.bindings.expire(now)
        self.storms.expire(now)
        self.suppress.expire(now)
