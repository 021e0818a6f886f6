"""DNS deep decoder: hand-built messages, hostile names, the corpus, tshark as oracle."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from agent.decode.deep.common import Malformed
from agent.decode.deep.dns import DnsMessage, parse_dns
from tests.conftest import CORPUS
from tests.deep_support import messages, needs_corpus

TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


def name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(lb)]) + lb for lb in labels) + b"\x00"


def query(qname: bytes, qtype: int = 1, ident: int = 0x1234, flags: int = 0x0100) -> bytes:
    return struct.pack(">HHHHHH", ident, flags, 1, 0, 0, 0) + qname + struct.pack(">HH", qtype, 1)


def test_query_fields() -> None:
    m = parse_dns(query(name(b"WWW", b"Example", b"ORG"), qtype=28))
    assert isinstance(m, DnsMessage)
    assert (m.id, m.qr, m.opcode, m.rcode) == (0x1234, False, 0, 0)
    assert (m.qname, m.qtype, m.ancount, m.kind) == ("www.example.org", 28, 0, "dns")


def test_response_with_compressed_answers() -> None:
    hdr = struct.pack(">HHHHHH", 7, 0x8183, 1, 2, 0, 0)  # NXDOMAIN, 2 answers
    q = name(b"a", b"example", b"com") + struct.pack(">HH", 16, 1)
    rr_txt = b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 60, 4) + b"\x03abc"
    rr_null = b"\xc0\x0c" + struct.pack(">HHIH", 10, 1, 60, 2) + b"\x00\x00"
    m = parse_dns(hdr + q + rr_txt + rr_null)
    assert isinstance(m, DnsMessage)
    assert m.qr and m.rcode == 3 and m.answer_types == (16, 10) and not m.truncated


def test_answers_as_text_cname_then_addresses_over_udp_and_tcp() -> None:
    q = name(b"www", b"example", b"com") + struct.pack(">HH", 1, 1)
    target = name(b"CDN", b"Example", b"NET")
    v6 = bytes.fromhex("20010db8" + "0" * 23 + "1")
    rrs = [
        b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 60, len(target)) + target,
        b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 60, 4) + b"\x03txt",  # not kept
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1]),
        b"\xc0\x0c" + struct.pack(">HHIH", 28, 1, 60, 16) + v6,
    ]
    msg = struct.pack(">HHHHHH", 9, 0x8180, 1, len(rrs), 0, 0) + q + b"".join(rrs)
    for m in (parse_dns(msg), parse_dns(struct.pack(">H", len(msg)) + msg, tcp=True)):
        assert isinstance(m, DnsMessage)
        assert m.answers == ("cdn.example.net", "192.0.2.1", "2001:db8::1")
        assert m.answer_types == (5, 16, 1, 28)


def test_malformed_answer_data_is_left_out() -> None:
    q = name(b"x", b"example", b"com") + struct.pack(">HH", 1, 1)
    rdata_at = 12 + len(q) + 12
    rrs = [
        b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 60, 2) + struct.pack(">H", 0xC000 | rdata_at),
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 3) + b"\x01\x02\x03",  # A of 3 bytes
        b"\xc0\x0c" + struct.pack(">HHIH", 5, 1, 60, 1) + b"\x00",  # the root: no target
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + b"\x01\x02",  # cut short
    ]
    msg = struct.pack(">HHHHHH", 1, 0x8180, 1, len(rrs), 0, 0) + q + b"".join(rrs)
    m = parse_dns(msg)
    assert isinstance(m, DnsMessage) and m.answers == () and m.qname == "x.example.com"
    assert m.truncated  # the last answer's data runs past the message


def test_qname_through_pointer() -> None:
    # The question's name is a pointer to a name placed after it (legal, if odd).
    hdr = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0)
    msg = hdr + b"\xc0\x12" + struct.pack(">HH", 1, 1) + name(b"x", b"y")
    m = parse_dns(msg)
    assert isinstance(m, DnsMessage) and m.qname == "x.y"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xc0\x0c", "dns_pointer_loop"),  # pointer to itself
        (b"\x01a\xc0\x0c", "dns_pointer_loop"),  # a label then back to the start
        (b"\x05ab", "dns_truncated"),
        (b"\x41" + b"a" * 65 + b"\x00", "dns_bad_label"),
        ((b"\x3f" + b"a" * 63) * 5 + b"\x00", "dns_name_too_long"),
    ],
)
def test_hostile_names(body: bytes, reason: str) -> None:
    m = parse_dns(struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + body + b"\x00\x01\x00\x01")
    assert m == Malformed(reason)


def test_tcp_length_prefix() -> None:
    q = query(name(b"tcp", b"example"))
    m = parse_dns(struct.pack(">H", len(q)) + q, tcp=True)
    assert isinstance(m, DnsMessage) and m.tcp and m.qname == "tcp.example"
    assert parse_dns(b"\x00\x05abcdefghijklmnop", tcp=True) == Malformed("dns_bad_length")
    assert parse_dns(b"\x00", tcp=True) is None


def test_truncated_answers_keep_the_question() -> None:
    hdr = struct.pack(">HHHHHH", 7, 0x8180, 1, 3, 0, 0)
    q = name(b"a", b"b") + struct.pack(">HH", 1, 1)
    m = parse_dns(hdr + q + b"\xc0\x0c\x00")
    assert isinstance(m, DnsMessage) and m.qname == "a.b" and m.truncated


@needs_corpus
def test_iodine_null_queries() -> None:
    msgs, stats = messages(CORPUS / "dns-tunnel/iodine_dns_tunnel_pirate_sea.pcap")
    assert stats.decoded["dns"] == len(msgs) > 400
    assert all(m.qname.endswith("pirate.sea") for m in msgs)
    nulls = [m for m in msgs if m.qtype == 10]
    assert len(nulls) > 300
    assert any(10 in m.answer_types for m in msgs if m.qr)


@needs_corpus
def test_dnscat2_answer_types() -> None:
    msgs, _ = messages(CORPUS / "dns-tunnel/dnscat2_dns_tunnel_cname_mx.pcap")
    types = {t for m in msgs for t in m.answer_types}
    assert {5, 15, 16} & types
    assert all("dnscat" in m.qname for m in msgs)


@needs_corpus
def test_fuzzed_capture_is_counted_not_raised() -> None:
    msgs, stats = messages(CORPUS / "malformed/wireshark_fuzz_malformed_dns_nbns.pcap")
    assert msgs and sum(stats.malformed.values()) > 0
    assert "decoder_error" not in stats.malformed


@needs_corpus
@needs_tshark
@pytest.mark.parametrize(
    "capture",
    [
        "dns/dns_mixed_ad_srv_queries.pcap",
        "dns/dns_edns_ecs_v4_v6_udp_tcp.pcap",
        "dns-tunnel/dnscat2_dns_tunnel_cname_mx.pcap",
        "benign/benign_windows_host_web_tls_ocsp.pcap",
    ],
)
def test_qnames_match_tshark(capture: str) -> None:
    path = CORPUS / capture
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-Y", "(dns || llmnr || mdns) && !icmp",
         "-T", "fields", "-e", "dns.qry.name"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    expected = sorted(line.lower() for line in out.splitlines() if line)
    got = sorted(m.qname for m in messages(path)[0] if m.kind == "dns" and m.qdcount)
    assert got == expected
