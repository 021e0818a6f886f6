"""Every deep decoder, on arbitrary bytes and on damaged real payloads, never raises."""

from __future__ import annotations

from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.capture.pcapfile import read_capture
from agent.decode import DecodeStats, make_decoder
from agent.decode.deep import DeepDecoder, DeepStats
from agent.decode.deep.auth import FtpState, TelnetState, parse_ftp, parse_http, parse_telnet
from agent.decode.deep.common import Malformed, NeedMore
from agent.decode.deep.dcerpc import parse_dcerpc
from agent.decode.deep.dicom import parse_dicom
from agent.decode.deep.dns import parse_dns
from agent.decode.deep.hl7 import parse_hl7
from agent.decode.deep.smb import SmbState, parse_smb
from agent.decode.deep.tls import parse_client_hello
from agent.decode.packet import TCP, UDP, Packet
from agent.engine import Engine
from tests.conftest import CORPUS
from tests.deep_support import needs_corpus

DECODERS = [
    lambda b: parse_dns(b),
    lambda b: parse_dns(b, tcp=True),
    lambda b: parse_client_hello(b),
    lambda b: parse_dcerpc(b, {}),
    lambda b: parse_smb(b, SmbState(), True),
    lambda b: parse_smb(b, SmbState(), False),
    lambda b: parse_dicom(b),
    lambda b: parse_hl7(b),
    lambda b: parse_ftp(b, True, FtpState()),
    lambda b: parse_ftp(b, False),
    lambda b: parse_telnet(b, True, TelnetState()),
    lambda b: parse_http(b),
]
# Prefixes that reach each decoder's inner code rather than its signature check.
PREFIXES = [
    b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\x00\x00\x00\x40\xfeSMB\x40\x00",
    b"\x00\x00\x00\x40\xffSMB", b"\x05\x00\x0b\x03\x10\x00\x00\x00", b"\x05\x00\x00\x03\x10\x00",
    b"\x01\x00\x00\x00\x00\x44\x00\x01", b"\x0bMSH|", b"GET / HTTP/1.1\r\n", b"USER ",
    b"\x00\x00\x01\x00\x00\x01", b"\x02\x00\x00\x00\x00\x44\x00\x01",
]  # fmt: skip


def check(result: object) -> None:
    items = result if isinstance(result, list) else [result]
    for r in items:
        assert r is None or isinstance(r, (Malformed, NeedMore)) or isinstance(r.kind, str)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(PREFIXES), data=st.binary(max_size=600))
def test_decoders_never_raise_on_arbitrary_bytes(prefix: bytes, data: bytes) -> None:
    for decode in DECODERS:
        check(decode(prefix + data))


def _packet(payload: bytes, proto: int, sport: int, dport: int) -> Packet:
    return Packet(1.0, 100, 4, b"\x0a\0\0\x01", b"\x0a\0\0\x02", proto, sport, dport, 0x18, payload)


PORTS = [53, 445, 139, 135, 104, 21, 23, 80, 443, 5353, 6661, 49155]


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=300), st.booleans()),
        min_size=1, max_size=6,
    ),
    port=st.sampled_from(PORTS),
    udp=st.booleans(),
)  # fmt: skip
def test_dispatcher_never_raises_nor_errors(chunks: list, port: int, udp: bool) -> None:
    stats = DeepStats()
    deep = DeepDecoder(stats)
    flows = Engine()
    for prefix, data, reply in chunks:
        sport, dport = (port, 40000) if reply else (40000, port)
        p = _packet(prefix + data, UDP if udp else TCP, sport, dport)
        for m in deep(p, flows.packet(p)):
            assert m.ts == 1.0 and m.flow is not None
    assert "decoder_error" not in stats.malformed


@cache
def corpus_payloads() -> list[tuple[int, int, int, bytes]]:
    out = []
    for path in sorted(CORPUS.glob("*/*.pcap*")):
        dec = make_decoder(DecodeStats())
        for rec in read_capture(path):
            p = dec(*rec)
            if p is not None and p.payload and p.proto in (TCP, UDP):
                out.append((p.proto, p.sport, p.dport, bytes(p.payload[:2048])))
    # keep those a deep decoder would look at
    deep = DeepDecoder()
    keep = []
    for proto, sport, dport, payload in out:
        bad = sum(deep.stats.malformed.values())
        got = deep(_packet(payload, proto, sport, dport), None)
        if got or sum(deep.stats.malformed.values()) != bad:
            keep.append((proto, sport, dport, payload))
    return keep[:3000]


@needs_corpus
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_truncated_and_bitflipped_real_payloads(data: st.DataObject) -> None:
    payloads = corpus_payloads()
    proto, sport, dport, payload = data.draw(st.sampled_from(payloads))
    cut = data.draw(st.integers(0, len(payload)))
    damaged = bytearray(payload[:cut])
    for _ in range(data.draw(st.integers(0, 4))):
        if damaged:
            i = data.draw(st.integers(0, len(damaged) - 1))
            damaged[i] ^= 1 << data.draw(st.integers(0, 7))
    stats = DeepStats()
    deep = DeepDecoder(stats)
    deep(_packet(bytes(damaged), proto, sport, dport), None)
    for decode in DECODERS:
        check(decode(bytes(damaged)))
    assert "decoder_error" not in stats.malformed
