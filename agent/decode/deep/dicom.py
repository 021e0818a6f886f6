"""DICOM upper-layer association PDUs: A-ASSOCIATE-RQ (1), -AC (2), -RJ (3).

AE titles name the imaging devices and applications talking (an unknown calling AE, or an
association with the outside, is what the medical-protocol detector reports); the abstract
syntaxes say what was asked (C-FIND, C-GET, C-STORE of which SOP class). Data PDUs
(P-DATA-TF, type 4) carry images and patient data: never decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import error as StructError
from typing import Any

from agent.decode.deep.common import Bad, Malformed, NeedMore

__all__ = ["MAX_PDU", "DicomAssoc", "looks_like_dicom", "parse_dicom"]

MAX_PDU = 65536  # association PDUs are a few KB; large presentation lists reach ~20 KB
_PDU_NAMES = {1: "rq", 2: "ac", 3: "rj"}
MAX_CONTEXTS = 128


@dataclass(slots=True)
class DicomAssoc:
    pdu: str  # "rq", "ac" or "rj"
    called_ae: str = ""
    calling_ae: str = ""
    application_context: str = ""
    abstract_syntaxes: tuple[str, ...] = ()  # rq: proposed SOP classes
    accepted: int = 0  # ac: presentation contexts accepted
    implementation_uid: str = ""
    implementation_version: str = ""
    reject_result: int = 0  # rj: 1 permanent, 2 transient
    reject_source: int = 0
    reject_reason: int = 0
    kind: str = "dicom_assoc"
    ts: float = 0.0
    flow: Any = field(default=None, repr=False, compare=False)


def looks_like_dicom(payload: bytes) -> bool:
    """A-ASSOCIATE-RQ signature on any port: type 1, sane length, protocol version 1."""
    if len(payload) < 10 or payload[0] != 1 or payload[1] != 0:
        return False
    ln = int.from_bytes(payload[2:6], "big")
    return 68 <= ln <= MAX_PDU and payload[6] == 0 and payload[7] == 1


def _uid(b: bytes) -> str:
    # UIDs are padded with NUL to an even length
    return b.rstrip(b"\x00 ").decode("latin-1")


def _parse(buf: bytes) -> DicomAssoc | None:
    ptype = buf[0]
    name = _PDU_NAMES.get(ptype)
    if name is None:
        return None  # data, release, abort: nothing for detectors here
    ln = int.from_bytes(buf[2:6], "big")
    end = 6 + ln
    if ptype == 3:
        if ln < 4 or len(buf) < 10:
            raise Bad("dicom_truncated")
        return DicomAssoc("rj", reject_result=buf[7], reject_source=buf[8], reject_reason=buf[9])
    if ln < 68:
        raise Bad("dicom_bad_length")
    if len(buf) < 74:
        raise Bad("dicom_truncated")
    msg = DicomAssoc(
        name,
        buf[10:26].decode("latin-1").strip(" \x00"),
        buf[26:42].decode("latin-1").strip(" \x00"),
    )
    syntaxes: list[str] = []
    p = 74
    end = min(end, len(buf))
    while p + 4 <= end:
        it = buf[p]
        il = buf[p + 2] << 8 | buf[p + 3]
        body = buf[p + 4 : p + 4 + il]
        if p + 4 + il > end:
            raise Bad("dicom_bad_item")
        if it == 0x10:
            msg.application_context = _uid(body)
        elif it == 0x20 and len(syntaxes) < MAX_CONTEXTS:
            q = 4
            while q + 4 <= len(body):
                st, sl = body[q], body[q + 2] << 8 | body[q + 3]
                if st == 0x30:
                    syntaxes.append(_uid(body[q + 4 : q + 4 + sl]))
                q += 4 + sl
        elif it == 0x21 and len(body) >= 3 and body[2] == 0:
            msg.accepted += 1
        elif it == 0x50:
            q = 0
            while q + 4 <= len(body):
                st, sl = body[q], body[q + 2] << 8 | body[q + 3]
                if st == 0x52:
                    msg.implementation_uid = _uid(body[q + 4 : q + 4 + sl])
                elif st == 0x55:
                    msg.implementation_version = body[q + 4 : q + 4 + sl].decode("latin-1").strip()
                q += 4 + sl
        p += 4 + il
    msg.abstract_syntaxes = tuple(syntaxes)
    return msg


def parse_dicom(payload: bytes) -> DicomAssoc | Malformed | NeedMore | None:
    """Decode an association PDU starting at the segment's first byte."""
    try:
        if len(payload) < 6:
            return None
        if payload[0] not in _PDU_NAMES:
            return None
        total = 6 + int.from_bytes(payload[2:6], "big")
        if total > MAX_PDU + 6:
            return Malformed("dicom_too_large")
        if len(payload) < total:
            return NeedMore(total)
        return _parse(payload)
    except Bad as e:
        return Malformed(e.reason)
    except (IndexError, ValueError, StructError):
        return Malformed("dicom_truncated")
