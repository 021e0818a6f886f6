"""HL7 v2 over MLLP (0x0B message 0x1C 0x0D): the MSH header segment only.

Who sends what to whom (applications, facilities, message type, version) is what the
medical-protocol detector needs. Every other segment (PID, OBX, ...) is patient data and is
never read: only the bytes up to the end of MSH are looked at, and none of them are kept
beyond the fields below. MSA-1 (the acknowledgement code of an ACK) is read too, as it
says whether the peer accepted the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.decode.deep.common import Malformed

__all__ = ["Hl7Message", "parse_hl7"]

MAX_MSH = 1024  # an MSH longer than this is not one we want to read


@dataclass(slots=True)
class Hl7Message:
    field_separator: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str  # "ADT^A01": event type and trigger only
    control_id: str
    version: str
    ack_code: str = ""  # MSA-1 of an acknowledgement: AA, AE, AR, CA, CE, CR
    kind: str = "hl7"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


def looks_like_hl7(payload: bytes) -> bool:
    return payload[:4] == b"\x0bMSH"


def parse_hl7(payload: bytes) -> Hl7Message | Malformed | None:
    """Decode the MSH of an MLLP-framed message starting at the segment's first byte."""
    if payload[:1] != b"\x0b":
        return None
    if payload[1:4] != b"MSH" or len(payload) < 9:
        return Malformed("hl7_no_msh")
    sep = payload[4:5]
    if sep.isalnum() or sep in (b"\r", b"\n"):
        return Malformed("hl7_bad_separator")
    head = payload[1 : 1 + MAX_MSH]
    end = len(head)
    for stop in (b"\r", b"\n", b"\x1c"):
        i = head.find(stop)
        if 0 <= i < end:
            end = i
    if end == len(head) and len(payload) > MAX_MSH:
        return Malformed("hl7_msh_too_long")
    f = head[:end].decode("latin-1").split(sep.decode("latin-1"))
    if len(f) < 10:
        return Malformed("hl7_msh_truncated")
    f += [""] * (12 - len(f))
    comp = f[1][:1] or "^"  # component separator, first encoding character
    mtype = comp.join(f[8].split(comp)[:2])
    ack = ""
    j = payload.find(b"\rMSA" + sep, 0, 4096)
    if j >= 0:
        ack = payload[j + 5 : j + 7].decode("latin-1")
    return Hl7Message(sep.decode("latin-1"), f[2], f[3], f[4], f[5], mtype, f[9], f[11], ack)
