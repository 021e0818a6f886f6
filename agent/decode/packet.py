"""The small record a decoded packet becomes when a detector asks for it.

`Packet` is implemented by the engine (agent/engine): for ICMP/ICMPv6, `sport` holds the
type and `dport` the code; for ARP, `src`/`dst` are the sender/target protocol addresses
and `smac`/`dmac` the hardware addresses. `payload` is the captured L4 payload.
"""

from __future__ import annotations

from agent.engine import P_ARP, Packet

__all__ = ["ACK", "ARP", "CWR", "ECE", "FIN", "ICMP", "ICMP6", "PSH", "RST", "SYN", "TCP",
           "UDP", "URG", "Packet"]  # fmt: skip

# TCP flag bits
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
ARP = P_ARP  # `proto` of an ARP record (0x0806: no IP protocol number applies)
