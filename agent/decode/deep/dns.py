"""DNS messages (UDP, or TCP with its 2-byte length prefix): header, first question, answers.

Only what detectors score on: the query name (tunnelling, DGA, IOC), its type, the rcode
(NXDOMAIN rate) and the answer types (TXT/NULL/CNAME ratio). Names are read with our own
loop over the label bytes; compression pointers are followed with a jump limit so that a
pointer loop costs a bounded number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import Struct
from struct import error as StructError
from typing import Any

from agent.decode.deep.common import Bad, Malformed

__all__ = ["DnsMessage", "parse_dns"]

_HDR = Struct(">HHHHHH").unpack_from
_QTAIL = Struct(">HH").unpack_from
_RR = Struct(">HHIH").unpack_from  # type, class, ttl, rdlength

MAX_JUMPS = 16  # a real name needs a handful; more is a loop or an attack
MAX_NAME = 255  # RFC 1035 limit on the wire form
MAX_ANSWERS = 64  # enough for the ratio; a huge count is itself a signal (ancount keeps it)


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
    tcp: bool = False
    kind: str = "dns"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


def _name(buf: bytes, off: int) -> tuple[str, int]:
    """Read a name at `off`; return it and the offset just after it in the original place."""
    labels: list[bytes] = []
    end = -1  # where the name ends in place, set at the first pointer
    jumps = 0
    total = 0
    n = len(buf)
    while True:
        if off >= n:
            raise Bad("dns_truncated")
        ln = buf[off]
        if ln == 0:
            off += 1
            break
        if ln >= 0xC0:
            # Forward or self pointers are allowed through: the jump limit ends any loop.
            if off + 1 >= n:
                raise Bad("dns_truncated")
            jumps += 1
            if jumps > MAX_JUMPS:
                raise Bad("dns_pointer_loop")
            if end < 0:
                end = off + 2
            off = ((ln & 0x3F) << 8) | buf[off + 1]
            continue
        if ln > 63:
            raise Bad("dns_bad_label")
        total += ln + 1
        if total > MAX_NAME:
            raise Bad("dns_name_too_long")
        if off + 1 + ln > n:
            raise Bad("dns_truncated")
        labels.append(buf[off + 1 : off + 1 + ln])
        off += 1 + ln
    name = b".".join(labels).decode("latin-1").lower()
    return name, (end if end >= 0 else off)


def _skip_name(buf: bytes, off: int) -> int:
    n = len(buf)
    for _ in range(128):
        if off >= n:
            raise Bad("dns_truncated")
        ln = buf[off]
        if ln == 0:
            return off + 1
        if ln >= 0xC0:
            return off + 2
        if ln > 63:
            raise Bad("dns_bad_label")
        off += 1 + ln
    raise Bad("dns_bad_label")


def _parse(buf: bytes, tcp: bool) -> DnsMessage:
    if len(buf) < 12:
        raise Bad("dns_truncated")
    ident, flags, qd, an, _ns, _ar = _HDR(buf)
    qname = ""
    qtype = 0
    off = 12
    if qd:
        qname, off = _name(buf, off)
        if off + 4 > len(buf):
            raise Bad("dns_truncated")
        qtype = _QTAIL(buf, off)[0]
        off += 4
        # Further questions (almost never more than one) are skipped, not kept.
        for _ in range(min(qd, 16) - 1):
            off = _skip_name(buf, off) + 4
    types: list[int] = []
    truncated = False
    if an:
        try:
            for _ in range(min(an, MAX_ANSWERS)):
                off = _skip_name(buf, off)
                if off + 10 > len(buf):
                    raise Bad("dns_truncated")
                rtype, _cls, _ttl, rdlen = _RR(buf, off)
                types.append(rtype)
                off += 10 + rdlen
        except Bad:
            truncated = True
        if off > len(buf):
            truncated = True
    return DnsMessage(
        ident,
        bool(flags & 0x8000),
        (flags >> 11) & 0xF,
        flags & 0xF,
        qname,
        qtype,
        qd,
        an,
        tuple(types),
        truncated,
        tcp,
    )


def parse_dns(payload: bytes, tcp: bool = False) -> DnsMessage | Malformed | None:
    """Decode one DNS message; over TCP the payload starts with the 2-byte length."""
    try:
        if tcp:
            if len(payload) < 14:
                return None  # a bare length or a continuation segment: nothing to read
            ln = payload[0] << 8 | payload[1]
            if ln < 12:
                return Malformed("dns_bad_length")
            payload = payload[2 : 2 + ln]
        return _parse(payload, tcp)
    except Bad as e:
        return Malformed(e.reason)
    except (IndexError, ValueError, StructError):
        return Malformed("dns_truncated")
