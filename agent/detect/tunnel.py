"""net.tunnel — traffic tunnelled inside ICMP echo, or a protocol on another's port.

ICMP echo: a ping repeats one payload (size and content constant through a session,
apart from the timestamp some stacks put in the first 16 bytes); ICMP tunnels (ptunnel,
icmptunnel, hans) carry varying data. Per (requester, responder) pair the detector
counts distinct payload sizes, distinct payload contents (hashed, past the first 16
bytes) and payload volume within a window.
Port mismatch (cheap, first bytes only): a TLS ClientHello to port 53, an SSH banner to
53, 80 or 443 — tunnels that ride on ports firewalls leave open (T1572).
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.anonymise.policy import Entity
from agent.decode.packet import ICMP, ICMP6, TCP, UDP, Packet
from agent.detect.base import Detector, ip_text
from agent.detect.hooks import Wants
from agent.detect.window import Distinct, KeyedWindow, Stamped, Suppressor
from common.config import Option, at_least, positive
from vigie.v1 import alert_pb2

_REQUEST = {ICMP: 8, ICMP6: 128}
_REPLY = {ICMP: 0, ICMP6: 129}
_SSH_PORTS = frozenset((53, 80, 443))


def tls_client_hello(b: bytes) -> bool:
    """A TLS record holding a ClientHello whose lengths agree."""
    if len(b) < 9 or b[0] != 0x16 or b[1] != 3 or b[2] > 4 or b[5] != 1:
        return False
    rec = b[3] << 8 | b[4]
    hs = b[6] << 16 | b[7] << 8 | b[8]
    return rec >= 40 and hs + 4 == rec


class _Pair(Stamped):
    __slots__ = ("bytes", "contents", "first", "flagged", "large", "packets", "sizes")

    def __init__(self, now: float) -> None:
        self.first = now
        self.packets = self.bytes = self.large = 0
        self.sizes = Distinct(256)
        self.contents = Distinct(1024)
        self.flagged = False


class Tunnel(Detector):
    name = "net.tunnel"
    technique = "T1095"
    severity = alert_pb2.SEVERITY_HIGH
    help = "ICMP echo tunnels (varying payloads) and protocol/port mismatches."
    options: ClassVar[dict[str, Option]] = {
        "min_packets": Option(
            int, 10, "Echo packets on one pair before it is judged.", at_least(2)
        ),
        "distinct_sizes": Option(
            int, 5, "Distinct echo payload sizes on one pair that make a tunnel.", at_least(2)
        ),
        "distinct_contents": Option(
            int,
            10,
            "Distinct echo payload contents on one pair that make a tunnel.",
            at_least(2),
        ),
        "large_payload_bytes": Option(
            int, 512, "An echo payload this big counts as large.", positive
        ),
        "large_payloads": Option(
            int,
            20,
            "Large echo payloads on one pair, with more than one content, that fire.",
            positive,
        ),
        "window_seconds": Option(
            float, 600.0, "A pair's evidence is forgotten after this much silence.", positive
        ),
        "port_mismatch": Option(bool, True, "Report TLS to port 53 and SSH to ports 53/80/443."),
    }

    def __init__(self, settings: dict[str, Any], report) -> None:
        super().__init__(settings, report)
        self.pairs: KeyedWindow[_Pair] = KeyedWindow(settings["window_seconds"], _Pair)
        self.suppress = Suppressor(settings["window_seconds"])
        # The TCP/UDP payloads the engine hands up for the mismatch checks (it hands up
        # ICMP because packet_protocols asks for it).
        mismatch = (
            (frozenset((TCP, UDP)), frozenset((53,)), b"\x16\x03"),
            (frozenset((TCP,)), _SSH_PORTS, b"SSH-2.0-"),
        )
        self.wants = Wants(
            packet_protocols=frozenset((ICMP, ICMP6, TCP, UDP)),
            packet_payloads=mismatch if settings["port_mismatch"] else (),
        )

    def on_packet(self, p: Packet) -> None:
        proto = p.proto
        if proto in (ICMP, ICMP6):
            if p.sport == _REQUEST[proto]:
                self._echo(p.src, p.dst, p)
            elif p.sport == _REPLY[proto]:
                self._echo(p.dst, p.src, p)
        elif self.settings["port_mismatch"] and p.payload:
            dport = p.dport
            if dport == 53 and tls_client_hello(p.payload):
                self._mismatch(p, "TLS ClientHello")
            elif (
                proto == TCP and dport in _SSH_PORTS and p.payload.startswith(b"SSH-2.0-")
            ) and p.sport not in _SSH_PORTS:
                self._mismatch(p, "SSH")

    def _echo(self, client: bytes, server: bytes, p: Packet) -> None:
        if self.allowed(client):
            return
        st = self.pairs.get((client, server), p.ts)
        payload = p.payload
        n = len(payload)
        st.packets += 1
        st.bytes += n
        st.sizes.add(n)
        st.contents.add(hash(payload[16:]))
        s = self.settings
        if n >= s["large_payload_bytes"]:
            st.large += 1
        if st.packets < s["min_packets"]:
            return
        sizes, contents = len(st.sizes), len(st.contents)
        if not (
            sizes >= s["distinct_sizes"]
            or contents >= s["distinct_contents"]
            or (st.large >= s["large_payloads"] and contents > 1)
        ):
            return
        first = not st.flagged
        st.flagged = True
        if not first and not self.suppress.allow((client, server), p.ts):
            return
        self.report(
            subject=f"{client.hex()}>{server.hex()}:icmp",
            ts=p.ts,
            count=st.packets if first else 1,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(client)),
                Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(server)),
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PROTOCOL, "icmp"),
            ],
            summary=(
                f"ICMP tunnel: {st.packets} echo packets with {sizes} payload sizes and "
                f"{contents} distinct contents ({st.bytes} bytes) in {p.ts - st.first:.0f} s"
            ),
            metrics={
                "echo_packets": st.packets,
                "distinct_sizes": sizes,
                "distinct_contents": contents,
                "large_payloads": st.large,
                "payload_bytes": st.bytes,
                "seconds": round(p.ts - st.first, 3),
            },
        )

    def _mismatch(self, p: Packet, what: str) -> None:
        if self.allowed(p.src) or not self.suppress.allow((p.src, p.dst, p.dport), p.ts):
            return
        proto = "udp" if p.proto == UDP else "tcp"
        self.report(
            subject=f"{p.src.hex()}>{p.dst.hex()}:{p.dport}",
            ts=p.ts,
            entities=[
                Entity(alert_pb2.ROLE_SOURCE, alert_pb2.KIND_IP, ip_text(p.src)),
                Entity(alert_pb2.ROLE_TARGET, alert_pb2.KIND_IP, ip_text(p.dst)),
                Entity(alert_pb2.ROLE_CONTEXT, alert_pb2.KIND_PORT, str(p.dport)),
            ],
            summary=f"protocol/port mismatch: {what} sent to {proto} port {p.dport}",
            metrics={"port": p.dport, "payload_bytes": len(p.payload)},
        )

    def on_tick(self, now: float) -> None:
        self.pairs.expire(now)
        self.suppress.expire(now)
