"""TLS ClientHello: JA3/JA4 against published references, GREASE, reassembly, tshark."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from agent.capture.pcapfile import read_capture
from agent.decode import DecodeStats, make_decoder
from agent.decode.deep import DeepDecoder, DeepStats
from agent.decode.deep.common import Malformed, NeedMore
from agent.decode.deep.tls import TlsClientHello, is_grease, parse_client_hello
from agent.decode.packet import TCP, Packet
from agent.engine import Engine
from tests.conftest import CORPUS
from tests.deep_support import needs_corpus

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


def hellos(path: Path) -> list[TlsClientHello]:
    deep = DeepDecoder()
    dec = make_decoder(DecodeStats())
    flows = Engine()
    out = []
    for rec in read_capture(path):
        p = dec(*rec)
        if p is not None:
            out.extend(m for m in deep(p, flows.packet(p)) if m.kind == "tls_client_hello")
    return out


def ext(t: int, body: bytes) -> bytes:
    return struct.pack(">HH", t, len(body)) + body


def client_hello(
    ciphers: list[int], exts: bytes | None, version: int = 0x0303, record_version: int = 0x0301
) -> bytes:
    cs = b"".join(struct.pack(">H", c) for c in ciphers)
    body = (
        struct.pack(">H", version) + b"\x11" * 32 + b"\x00"
        + struct.pack(">H", len(cs)) + cs + b"\x01\x00"
        + (b"" if exts is None else struct.pack(">H", len(exts)) + exts)
    )  # fmt: skip
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16" + struct.pack(">HH", record_version, len(hs)) + hs


def sample() -> bytes:
    sni = b"\x00\x0e\x00\x00\x0bexample.org"
    alpn = b"\x00\x0c\x02h2\x08http/1.1"
    return client_hello(
        [0x0A0A, 0x1301, 0xC02B, 0x002F],
        ext(0x1A1A, b"")
        + ext(0, sni)
        + ext(16, alpn)
        + ext(43, b"\x06\x2a\x2a\x03\x04\x03\x03")
        + ext(10, b"\x00\x06\x3a\x3a\x00\x1d\x00\x17")
        + ext(11, b"\x01\x00")
        + ext(13, b"\x00\x06\x04\x03\x08\x04\x0a\x0a"),
    )


def test_fields_and_grease_removed() -> None:
    m = parse_client_hello(sample())
    assert isinstance(m, TlsClientHello)
    assert m.sni == "example.org" and m.alpn == ("h2", "http/1.1")
    assert m.versions == (0x0304, 0x0303) and m.ciphers == (0x1301, 0xC02B, 0x002F)
    assert m.extensions == (0, 16, 43, 10, 11, 13)
    assert m.ja3 == "771,4865-49195-47,0-16-43-10-11-13,29-23,0"
    assert m.ja3_hash == hashlib.md5(m.ja3.encode()).hexdigest()
    b = hashlib.sha256(b"002f,1301,c02b").hexdigest()[:12]
    c = hashlib.sha256(b"000a,000b,000d,002b_0403,0804").hexdigest()[:12]
    assert m.ja4 == f"t13d0306h2_{b}_{c}"


def test_grease() -> None:
    assert is_grease(0x0A0A) and is_grease(0xFAFA) and not is_grease(0x0A1A)


def test_no_extensions_ja4() -> None:
    m = parse_client_hello(client_hello([0x002F], None))  # no extensions block at all
    assert isinstance(m, TlsClientHello)
    assert m.ja4.startswith("t12i0100") and m.ja4.endswith("_000000000000")


def test_not_a_client_hello_and_broken() -> None:
    server_hello = b"\x16\x03\x03\x00\x30\x02" + b"\x00" * 47
    assert parse_client_hello(server_hello) is None
    full = sample()
    assert parse_client_hello(full[:40]) == NeedMore(len(full))
    broken = bytearray(full)
    broken[5 + 4 + 2 + 32 + 1] = 0xFF  # cipher list length beyond the hello
    assert isinstance(parse_client_hello(bytes(broken)), Malformed)


def test_hello_split_over_segments_is_reassembled() -> None:
    full = sample()
    deep = DeepDecoder(DeepStats())
    flows = Engine()
    src, dst = bytes([10, 0, 0, 1]), bytes([192, 0, 2, 1])
    got = []
    for i, chunk in enumerate((full[:30], full[30:60], full[30:60], full[60:])):
        # the third chunk is a retransmission and must not corrupt the buffer
        p = Packet(1.0 + i, 60, 4, src, dst, TCP, 40000, 443, 0x18, chunk)
        got += deep(p, flows.packet(p))
    assert len(got) == 1 and got[0].sni == "example.org" and got[0].ts == 4.0


@needs_corpus
def test_ja3_chrome34_reference() -> None:
    (m,) = hellos(CORPUS / "tls/tls12_chrome34_google_de.pcap")
    assert m.sni == "google.de"
    assert m.ja3_hash == "a607f3a5c94c2ee592af1456f36c8367"


@needs_corpus
def test_ja4_suricata_verify_reference() -> None:
    # suricata-verify tests/ja4-tls, computed there with FoxIO's reference implementation
    (m,) = hellos(CORPUS / "tls/tls12_ja4_reference_handshake.pcap")
    assert m.ja4 == "t12i1810s1_27d4652c4487_06a4338d0495"


@needs_corpus
@needs_tshark
@pytest.mark.parametrize(
    "capture",
    [
        "tls/tls12_chrome34_google_de.pcap",
        "tls/tls12_client_hello_extensions_gstatic.pcap",
        "tls/tls13_ech_cloudflare.pcap",
        "tls/tls_curl_www_ntop_org.pcap",
        "tls/tls_firefox_www_ntop_org.pcap",
        "tls/tls_no_sni_expired_certificate.pcap",
        "benign/benign_windows_host_web_tls_ocsp.pcap",
    ],
)
def test_sni_and_ja3_match_tshark(capture: str) -> None:
    path = CORPUS / capture
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-Y", "tls.handshake.type == 1", "-T", "fields",
         "-e", "tls.handshake.extensions_server_name", "-e", "tls.handshake.ja3"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    expected = sorted(tuple(line.split("\t")) for line in out.splitlines() if line.strip())
    got = sorted((m.sni, m.ja3_hash) for m in hellos(path))
    assert got == expected
