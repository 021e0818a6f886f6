"""DICOM association PDUs and HL7/MLLP MSH headers: corpus, hand-built PDUs, no patient data."""

from __future__ import annotations

import struct

import pytest

from agent.decode.deep.common import Malformed, NeedMore
from agent.decode.deep.dicom import DicomAssoc, looks_like_dicom, parse_dicom
from agent.decode.deep.hl7 import Hl7Message, parse_hl7
from tests.conftest import CORPUS
from tests.deep_support import messages, needs_corpus


def item(t: int, body: bytes) -> bytes:
    return struct.pack(">BBH", t, 0, len(body)) + body


def assoc(pdu: int, called: bytes, calling: bytes, items: bytes) -> bytes:
    body = b"\x00\x01\x00\x00" + called.ljust(16) + calling.ljust(16) + b"\x00" * 32 + items
    return struct.pack(">BBI", pdu, 0, len(body)) + body


def test_associate_ac_hand_built() -> None:
    ctx_ok = item(0x21, b"\x01\x00\x00\x00" + item(0x40, b"1.2.840.10008.1.2\x00"))
    ctx_no = item(0x21, b"\x03\x00\x03\x00")
    pdu = assoc(2, b"PACS", b"MODALITY1", item(0x10, b"1.2.840.10008.3.1.1.1") + ctx_ok + ctx_no)
    m = parse_dicom(pdu)
    assert isinstance(m, DicomAssoc)
    assert (m.pdu, m.called_ae, m.calling_ae, m.accepted) == ("ac", "PACS", "MODALITY1", 1)
    assert not looks_like_dicom(pdu)  # only a request opens an association


def test_associate_rj_and_broken() -> None:
    m = parse_dicom(b"\x03\x00\x00\x00\x00\x04\x00\x01\x01\x07")
    assert isinstance(m, DicomAssoc) and (m.reject_result, m.reject_reason) == (1, 7)
    pdu = assoc(1, b"A", b"B", b"")
    assert parse_dicom(pdu[:50]) == NeedMore(len(pdu))
    bad = assoc(1, b"A", b"B", b"\x10\x00\x00\xff")  # item longer than the PDU
    assert parse_dicom(bad) == Malformed("dicom_bad_item")
    assert parse_dicom(b"\x04\x00\x00\x00\x00\x02ab") is None  # P-DATA: never decoded


@needs_corpus
@pytest.mark.parametrize("capture", sorted(p.name for p in (CORPUS / "dicom").glob("*.pcap")))
def test_dicom_corpus(capture: str) -> None:
    msgs, stats = messages(CORPUS / "dicom" / capture)
    (m,) = msgs
    assert (m.pdu, m.calling_ae, m.called_ae) == ("rq", "testclient", "testserver")
    assert m.application_context == "1.2.840.10008.3.1.1.1"
    assert m.abstract_syntaxes and all(s.startswith("1.2.840.10008.") for s in m.abstract_syntaxes)
    assert not stats.malformed


@needs_corpus
def test_large_dicom_request_is_reassembled() -> None:
    (m,) = messages(CORPUS / "dicom/dicom_a_associate_rq_cget_large_testclient.pcap")[0]
    assert len(m.abstract_syntaxes) > 100  # the whole 16.5 KB presentation list


MSG = (
    b"\x0bMSH|^~\\&|LAB|HOSP|EHR|GHT|20240101||ORU^R01^ORU_R01|MSG42|P|2.5.1\r"
    b"PID|1||123456^^^HOSP||DUPONT^JEAN||19700101|M\rOBX|1|NM|WBC||7.5\r\x1c\x0d"
)


def test_hl7_msh_only() -> None:
    m = parse_hl7(MSG)
    assert isinstance(m, Hl7Message)
    assert (m.sending_application, m.sending_facility) == ("LAB", "HOSP")
    assert (m.receiving_application, m.receiving_facility) == ("EHR", "GHT")
    assert (m.message_type, m.control_id, m.version) == ("ORU^R01", "MSG42", "2.5.1")
    assert "DUPONT" not in repr(m) and "123456" not in repr(m)


def test_hl7_ack_and_broken() -> None:
    ack = b"\x0bMSH|^~\\&|EHR|GHT|LAB|HOSP|2024||ACK|9|P|2.5.1\rMSA|AE|MSG42\r\x1c\r"
    m = parse_hl7(ack)
    assert isinstance(m, Hl7Message) and m.ack_code == "AE" and m.message_type == "ACK"
    assert parse_hl7(b"\x0bPID|1") == Malformed("hl7_no_msh")
    assert parse_hl7(b"\x0bMSH|^~\\&|A|B\r") == Malformed("hl7_msh_truncated")
    assert parse_hl7(b"hello") is None


@needs_corpus
@pytest.mark.parametrize("capture", sorted(p.name for p in (CORPUS / "hl7").glob("*.pcap")))
def test_hl7_corpus(capture: str) -> None:
    msgs, stats = messages(CORPUS / "hl7" / capture)
    assert [m.kind for m in msgs] == ["hl7", "hl7"]
    first, ack = msgs
    assert first.version == "2.3" and first.message_type[:3] in ("ADT", "ORM", "ORU")
    assert ack.message_type == "ACK" and ack.ack_code == "AA"
    assert not stats.malformed
