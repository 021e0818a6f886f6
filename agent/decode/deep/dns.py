"""DNS messages (UDP, or TCP with its 2-byte length prefix): header, first question, answers.

Only what detectors score on: the query name (tunnelling, DGA, IOC), its type, the rcode
(NXDOMAIN rate) and the answer types (TXT/NULL/CNAME ratio), at most 64 of them (ancount
keeps the real count); and, for the journal, what the first 8 A, AAAA and CNAME answers
say, as text: the address (as ipaddress writes it) or the CNAME's target (lower-cased),
in answer order, a malformed one left out. Compression pointers are followed at most 16
times, so that a pointer loop costs a bounded number of steps; a name over 255 bytes is
malformed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.decode.deep.common import Malformed
from agent.engine import parse_dns as _parse

__all__ = ["DnsMessage", "parse_dns"]


@dataclass(slots=True)
class DnsMessage:
    id: int
    qr: bool  # False: query, True: response
    opcode: int
    rcode: int
    qname: str  # lowercased, no trailing dot; "" when there is no question
    qtype: int
    qdcount: int
    ancount: int
    answer_types: tuple[int, ...]
    truncated: bool = False  # answers cut short (snaplen, TC): the question is still good
    answers: tuple[str, ...] = ()  # addresses and CNAME targets
    tcp: bool = False
    kind: str = "dns"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


def parse_dns(payload: bytes, tcp: bool = False) -> DnsMessage | Malformed | None:
    """Decode one DNS message; over TCP the payload starts with the 2-byte length.

    The reading itself is in the engine (agent/engine/_engine.c `parse_dns`): DNS is
    the message detectors see most, a few hundred thousand a minute on a busy resolver."""
    r = _parse(payload, tcp)
    if r is None:
        return None
    if type(r) is str:
        return Malformed(r)
    return DnsMessage(*r, tcp)
