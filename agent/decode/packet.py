"""The small record every packet is decoded into, before flows and detectors see it."""

from __future__ import annotations

# TCP flag bits
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
ARP = 0x0806  # `proto` of an ARP record (no IP protocol number applies)


class Packet:
    """One decoded frame. Addresses stay packed (4 or 16 bytes) on the hot path.

    For ICMP/ICMPv6, `sport` holds the type and `dport` the code. For ARP, `src`/`dst`
    are the sender/target protocol addresses and `smac`/`dmac` the hardware addresses.
    `payload` is the captured L4 payload (may be shorter than on the wire).
    """

    __slots__ = (
        "dmac",
        "dport",
        "dst",
        "flags",
        "frag",
        "ip_version",
        "length",
        "op",
        "payload",
        "proto",
        "smac",
        "sport",
        "src",
        "ts",
        "ttl",
        "vlan",
    )

    def __init__(
        self,
        ts: float,
        length: int,
        ip_version: int,
        src: bytes,
        dst: bytes,
        proto: int,
        sport: int = 0,
        dport: int = 0,
        flags: int = 0,
        payload: bytes = b"",
        vlan: int = 0,
        frag: int = 0,
        ttl: int = 0,
        smac: bytes = b"",
        dmac: bytes = b"",
        op: int = 0,
    ) -> None:
        self.ts = ts
        self.length = length  # bytes on the wire (original frame length)
        self.ip_version = ip_version  # 4, 6, or 0 for ARP
        self.src = src
        self.dst = dst
        self.proto = proto
        self.sport = sport
        self.dport = dport
        self.flags = flags  # TCP flags
        self.payload = payload
        self.vlan = vlan  # outermost 802.1Q VLAN id, 0 if untagged
        # 0: not a fragment; 1: first fragment (L4 header present); 2: later fragment (no L4)
        self.frag = frag
        self.ttl = ttl  # IPv4 TTL / IPv6 hop limit
        self.smac = smac
        self.dmac = dmac
        self.op = op  # ARP opcode (1 request, 2 reply)

    def __repr__(self) -> str:
        return (
            f"Packet(ts={self.ts}, v{self.ip_version}, proto={self.proto}, "
            f"{self.src.hex()}:{self.sport} > {self.dst.hex()}:{self.dport}, flags={self.flags:#x})"
        )
