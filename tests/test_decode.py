"""Fast-path decoder: hand-built frames, arbitrary bytes, the corpus, and tcpdump as oracle."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP as ScapyARP
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether

from agent.capture.pcapfile import ReadStats, read_capture
from agent.decode import DecodeStats, make_decoder
from agent.decode.packet import ACK, ARP, FIN, ICMP6, PSH, RST, SYN, URG, Packet
from tests.conftest import CORPUS
from tests.deep_support import needs_corpus

TCPDUMP = shutil.which("tcpdump")
needs_tcpdump = pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed")

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
A4, B4 = "192.0.2.1", "198.51.100.7"
A6, B6 = "2001:db8::1", "2001:db8::2"


def ip4(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, s)


def ip6(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, s)


def eth(payload: object, etype: int | None = None) -> bytes:
    """Ethernet frame; raw bytes are IPv4 unless `etype` says otherwise."""
    if etype is None and isinstance(payload, bytes):
        etype = 0x0800
    e = Ether(src=MAC_A, dst=MAC_B) if etype is None else Ether(src=MAC_A, dst=MAC_B, type=etype)
    return bytes(e / payload)  # type: ignore[operator]


def decode(frame: bytes, linktype: int = 1, wirelen: int | None = None) -> tuple:
    stats = DecodeStats()
    p = make_decoder(stats)(1.5, linktype, len(frame) if wirelen is None else wirelen, frame)
    assert_balanced(stats)
    return p, stats


def assert_balanced(stats: DecodeStats) -> None:
    assert stats.packets == (
        stats.decoded + sum(stats.malformed.values()) + sum(stats.skipped.values())
    )
    assert "decoder_error" not in stats.malformed


def only(stats: DecodeStats) -> dict[str, int]:
    return {**stats.malformed, **stats.skipped}


def fields(p: Packet) -> tuple:
    return (p.ip_version, p.src, p.dst, p.proto, p.sport, p.dport, p.flags, p.payload, p.frag)


# ---------------------------------------------------------------- Ethernet and VLANs


def test_ethernet_ipv4_tcp_fast_path() -> None:
    pkt = IP(src=A4, dst=B4, ttl=33) / TCP(sport=40000, dport=443, flags="PA") / b"hello"
    p, stats = decode(eth(pkt), wirelen=1000)
    assert stats.decoded == 1
    assert fields(p) == (4, ip4(A4), ip4(B4), 6, 40000, 443, PSH | ACK, b"hello", 0)
    assert (p.ts, p.length, p.ttl, p.vlan, p.smac, p.dmac, p.op) == (
        1.5, 1000, 33, 0, MAC_A, MAC_B, 0
    )  # fmt: skip


def test_tcp_options_are_not_payload() -> None:
    pkt = IP(src=A4, dst=B4) / TCP(flags="S", options=[("MSS", 1460), ("NOP", None)]) / b"d"
    p, _ = decode(eth(pkt))
    assert (p.flags, p.payload) == (SYN, b"d")


def test_ethernet_padding_is_not_payload() -> None:
    frame = eth(IP(src=A4, dst=B4) / TCP(flags="A")) + b"\x00" * 6  # 60-byte minimum frame
    p, _ = decode(frame)
    assert (p.flags, p.payload) == (ACK, b"")
    frame = eth(IP(src=A4, dst=B4) / UDP(sport=1, dport=2) / b"ab") + b"\xee" * 16
    p, _ = decode(frame)
    assert p.payload == b"ab"


def test_qinq_double_tag_records_the_outer_vlan() -> None:
    frame = eth(Dot1AD(vlan=100) / Dot1Q(vlan=200) / IP(src=A4, dst=B4) / UDP(dport=53) / b"q")
    p, _ = decode(frame)
    assert (p.vlan, p.proto, p.dport, p.payload, p.smac) == (100, 17, 53, b"q", MAC_A)
    # Old-style QinQ TPID 0x9100 and a third tag.
    inner = Dot1Q(vlan=7, type=0x8100) / Dot1Q(vlan=8) / IP(src=A4, dst=B4) / TCP(dport=22)
    p, _ = decode(eth(inner, etype=0x9100))
    assert (p.vlan, p.dport) == (7, 22)


def test_priority_tag_does_not_hide_the_vlan() -> None:
    frame = eth(Dot1Q(vlan=0) / Dot1Q(vlan=42) / IP(src=A4, dst=B4) / TCP())
    assert decode(frame)[0].vlan == 42


def test_vlan_truncated() -> None:
    p, stats = decode(eth(b"\x00\x64", etype=0x8100))
    assert p is None and only(stats) == {"vlan_truncated": 1}


def test_ether_truncated_and_other_ethertypes() -> None:
    p, stats = decode(MAC_B + MAC_A + b"\x08")
    assert p is None and only(stats) == {"ether_truncated": 1}
    p, stats = decode(MAC_B + MAC_A + b"\x88\xcc" + b"\x00" * 40)  # LLDP
    assert p is None and only(stats) == {"ethertype_other": 1}
    p, stats = decode(MAC_B + MAC_A + b"\x00\x26" + b"\x42\x42\x03" + b"\x00" * 40)  # 802.3/STP
    assert p is None and only(stats) == {"ethertype_other": 1}


def test_unsupported_linktype_is_skipped() -> None:
    p, stats = decode(b"\x00" * 64, linktype=127)  # radiotap
    assert p is None and only(stats) == {"linktype_unsupported": 1}


# ---------------------------------------------------------------- IPv4


def test_ipv4_first_and_later_fragments() -> None:
    pkt = IP(src=A4, dst=B4, id=7) / UDP(sport=53, dport=5353) / (b"z" * 300)
    frags = fragment(pkt, fragsize=120)
    assert len(frags) == 3
    decoded = [decode(eth(f))[0] for f in frags]
    first, *later = decoded
    assert (first.frag, first.proto, first.sport, first.dport) == (1, 17, 53, 5353)
    assert first.payload == b"z" * (120 - 8)  # UDP length (whole datagram) exceeds this piece
    for p, f in zip(later, frags[1:], strict=True):
        assert (p.frag, p.proto, p.sport, p.dport, p.src) == (2, 17, 0, 0, ip4(A4))
        assert p.payload == bytes(f[IP].payload)


def test_ipv4_options_header() -> None:
    pkt = IP(src=A4, dst=B4, options=b"\x94\x04\x00\x00") / TCP(sport=5, dport=6) / b"x"
    p, _ = decode(eth(pkt))
    assert (p.sport, p.dport, p.payload) == (5, 6, b"x")


def _ip4_raw(vhl: int = 0x45, tlen: int = 40, proto: int = 6, body: bytes = b"") -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", vhl, 0, tlen, 1, 0, 64, proto, 0, ip4(A4), ip4(B4))
    return hdr + b"\x00" * ((vhl & 15) * 4 - 20) + body


def test_ipv4_ihl_below_5_is_malformed() -> None:
    p, stats = decode(eth(_ip4_raw(vhl=0x44, body=b"\x00" * 40)))
    assert p is None and only(stats) == {"ipv4_bad_header_length": 1}


@pytest.mark.parametrize(
    ("frame_ip", "reason"),
    [
        (_ip4_raw()[:19], "ipv4_truncated"),
        (_ip4_raw(vhl=0x4F)[:40], "ipv4_truncated"),  # options cut by the capture
        (_ip4_raw(vhl=0x65, body=b"\x00" * 20), "ipv4_bad_version"),
        (_ip4_raw(tlen=12, body=b"\x00" * 20), "ipv4_bad_total_length"),
    ],
    ids=["short", "options_cut", "version", "total_length"],
)
def test_ipv4_malformed(frame_ip: bytes, reason: str) -> None:
    p, stats = decode(eth(frame_ip))
    assert p is None and only(stats) == {reason: 1}


def test_ipv4_total_length_zero_is_segmentation_offload() -> None:
    tcp = bytes(TCP(sport=1, dport=2, flags="A")) + b"big"
    p, _ = decode(eth(_ip4_raw(tlen=0, body=tcp)))
    assert (p.sport, p.dport, p.payload) == (1, 2, b"big")


def test_ipv4_total_length_beyond_capture_decodes_what_is_there() -> None:
    full = eth(IP(src=A4, dst=B4) / UDP(sport=9, dport=10) / (b"p" * 500))
    p, stats = decode(full[:60], wirelen=len(full))
    assert stats.decoded == 1
    assert (p.sport, p.dport, p.payload, p.length) == (9, 10, b"p" * 18, len(full))


def test_other_ip_protocol_keeps_the_ip_payload() -> None:
    p, _ = decode(eth(IP(src=A4, dst=B4, proto=47) / b"\x00\x00\x08\x00gre"))
    assert (p.proto, p.sport, p.dport, p.payload) == (47, 0, 0, b"\x00\x00\x08\x00gre")


# ---------------------------------------------------------------- TCP / UDP / ICMP


def test_truncated_tcp_header_10_bytes() -> None:
    tcp = bytes(TCP(sport=1234, dport=80, flags="S"))
    p, stats = decode(eth(_ip4_raw(tlen=40, body=tcp[:10])))
    assert p is None and only(stats) == {"tcp_truncated": 1}


def test_tcp_header_cut_by_snaplen_keeps_ports_and_flags() -> None:
    tcp = bytes(TCP(sport=1234, dport=80, flags="FPU", options=[("MSS", 1)])) + b"data"
    p, stats = decode(eth(_ip4_raw(tlen=20 + len(tcp), body=tcp[:14])))
    assert (p.sport, p.dport, p.flags, p.payload) == (1234, 80, FIN | PSH | URG, b"")
    assert stats.decoded == 1


@pytest.mark.parametrize("offset", [0, 4])
def test_tcp_data_offset_below_5(offset: int) -> None:
    tcp = bytearray(bytes(TCP(sport=1, dport=2)))
    tcp[12] = offset << 4
    p, stats = decode(eth(_ip4_raw(tlen=40, body=bytes(tcp))))
    assert p is None and only(stats) == {"tcp_bad_offset": 1}


def test_tcp_data_offset_beyond_datagram() -> None:
    tcp = bytearray(bytes(TCP(sport=1, dport=2)))
    tcp[12] = 15 << 4  # 60-byte header in a 20-byte segment that was fully captured
    p, stats = decode(eth(_ip4_raw(tlen=40, body=bytes(tcp))))
    assert p is None and only(stats) == {"tcp_bad_offset": 1}


def test_udp_length_bounds_the_payload() -> None:
    udp = struct.pack("!HHHH", 53, 4000, 8 + 3, 0) + b"abcXYZ"  # 3 bytes by UDP length
    p, _ = decode(eth(_ip4_raw(proto=17, tlen=20 + len(udp), body=udp)))
    assert (p.sport, p.dport, p.payload) == (53, 4000, b"abc")
    udp = struct.pack("!HHHH", 53, 4000, 999, 0) + b"abcXYZ"  # inconsistent: use IP length
    p, _ = decode(eth(_ip4_raw(proto=17, tlen=20 + len(udp), body=udp)))
    assert p.payload == b"abcXYZ"
    p, stats = decode(eth(_ip4_raw(proto=17, tlen=26, body=udp[:6])))
    assert p is None and only(stats) == {"udp_truncated": 1}


def test_icmp_echo_and_error_payloads() -> None:
    p, _ = decode(eth(IP(src=A4, dst=B4) / ICMP(type=8, id=1, seq=2) / b"tunnel?"))
    assert (p.proto, p.sport, p.dport, p.payload) == (1, 8, 0, b"tunnel?")
    quoted = bytes(IP(src=B4, dst=A4) / UDP(sport=1, dport=53))
    p, _ = decode(eth(IP(src=A4, dst=B4) / ICMP(type=3, code=3) / quoted))
    assert (p.sport, p.dport, p.payload) == (3, 3, b"\x00" * 4 + quoted)
    p, stats = decode(eth(_ip4_raw(proto=1, tlen=23, body=b"\x08\x00\x00")))
    assert p is None and only(stats) == {"icmp_truncated": 1}


def test_icmpv6_echo_and_error_payloads() -> None:
    p, _ = decode(eth(IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=3, data=b"ping")))
    assert (p.ip_version, p.proto, p.sport, p.payload) == (6, ICMP6, 128, b"ping")
    p, _ = decode(eth(IPv6(src=A6, dst=B6) / ICMPv6EchoReply(data=b"pong")))
    assert (p.sport, p.payload) == (129, b"pong")
    p, _ = decode(eth(IPv6(src=A6, dst=B6) / ICMPv6DestUnreach(code=4) / b"orig"))
    assert (p.sport, p.dport, p.payload) == (1, 4, b"\x00" * 4 + b"orig")


# ---------------------------------------------------------------- IPv6


def test_ipv6_tcp() -> None:
    p, _ = decode(eth(IPv6(src=A6, dst=B6, hlim=9) / TCP(sport=7, dport=8, flags="R") / b"x"))
    assert fields(p) == (6, ip6(A6), ip6(B6), 6, 7, 8, RST, b"x", 0)
    assert p.ttl == 9


def test_ipv6_hop_by_hop_and_fragment_headers() -> None:
    base = IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop()
    first = base / IPv6ExtHdrFragment(m=1, offset=0, nh=17) / UDP(sport=5, dport=6) / b"one"
    p, _ = decode(eth(first))
    assert (p.frag, p.proto, p.sport, p.dport, p.payload) == (1, 17, 5, 6, b"one")
    later = base / IPv6ExtHdrFragment(m=0, offset=3, nh=17) / b"continued"
    p, _ = decode(eth(later))
    assert (p.frag, p.proto, p.sport, p.dport, p.payload) == (2, 17, 0, 0, b"continued")
    atomic = base / IPv6ExtHdrFragment(m=0, offset=0) / TCP(sport=1, dport=2)
    p, _ = decode(eth(atomic))
    assert (p.frag, p.proto, p.sport) == (0, 6, 1)


def test_ipv6_extension_chain_with_ah() -> None:
    pkt = (
        IPv6(src=A6, dst=B6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrDestOpt()
        / AH(nh=6, payloadlen=4, icv=b"\x00" * 12)
        / TCP(sport=1000, dport=22)
        / b"ssh"
    )
    p, _ = decode(eth(pkt))
    assert (p.proto, p.sport, p.dport, p.payload) == (6, 1000, 22, b"ssh")


@pytest.mark.parametrize(("nh", "body"), [(50, b"\x00\x00\x01\x00encrypted"), (59, b"junk")])
def test_ipv6_esp_and_no_next_header_stop_the_walk(nh: int, body: bytes) -> None:
    p, _ = decode(eth(IPv6(src=A6, dst=B6, nh=nh) / body))
    assert (p.proto, p.sport, p.dport, p.payload) == (nh, 0, 0, body)


def test_ipv6_malformed() -> None:
    v6 = bytes(IPv6(src=A6, dst=B6, nh=0) / IPv6ExtHdrHopByHop(nh=6))
    p, stats = decode(eth(v6[:44], etype=0x86DD))
    assert p is None and only(stats) == {"ipv6_ext_truncated": 1}
    hbh = bytearray(v6)
    hbh[41] = 200  # header length far beyond the datagram
    p, stats = decode(eth(bytes(hbh) + b"\x00" * 16, etype=0x86DD))
    assert p is None and only(stats) == {"ipv6_ext_truncated": 1}
    p, stats = decode(eth(v6[:39], etype=0x86DD))
    assert p is None and only(stats) == {"ipv6_truncated": 1}
    p, stats = decode(eth(b"\x40" + v6[1:], etype=0x86DD))
    assert p is None and only(stats) == {"ipv6_bad_version": 1}


# ---------------------------------------------------------------- other link types


def test_linux_cooked_sll() -> None:
    sll = CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=MAC_A + b"\x00\x00")
    frame = bytes(sll / IP(src=A4, dst=B4) / TCP(dport=8080))
    p, _ = decode(frame, linktype=113)
    assert (p.ip_version, p.src, p.dport, p.smac, p.dmac) == (4, ip4(A4), 8080, MAC_A, b"")
    p, stats = decode(frame[:15], linktype=113)
    assert p is None and only(stats) == {"sll_truncated": 1}


def test_linux_cooked_sll2() -> None:
    frame = bytes(
        CookedLinuxV2(proto=0x86DD, lladdrtype=1, lladdrlen=6, src=MAC_A + b"\x00\x00")
        / IPv6(src=A6, dst=B6)
        / UDP(sport=1, dport=2)
    )
    p, _ = decode(frame, linktype=276)
    assert (p.ip_version, p.dst, p.dport, p.smac) == (6, ip6(B6), 2, MAC_A)
    p, stats = decode(frame[:19], linktype=276)
    assert p is None and only(stats) == {"sll2_truncated": 1}


@pytest.mark.parametrize(
    ("linktype", "family", "layer"),
    [
        (0, struct.pack("<I", 2), IP(src=A4, dst=B4)),  # written on a little-endian host
        (0, struct.pack(">I", 2), IP(src=A4, dst=B4)),  # written on a big-endian host
        (108, struct.pack(">I", 2), IP(src=A4, dst=B4)),  # OpenBSD DLT_LOOP
        (0, struct.pack("<I", 24), IPv6(src=A6, dst=B6)),
        (0, struct.pack("<I", 28), IPv6(src=A6, dst=B6)),
        (0, struct.pack("<I", 30), IPv6(src=A6, dst=B6)),
        (108, struct.pack(">I", 30), IPv6(src=A6, dst=B6)),
    ],
)
def test_bsd_null_loopback(linktype: int, family: bytes, layer: object) -> None:
    frame = family + bytes(layer / TCP(sport=50000, dport=104) / b"A-ASSOCIATE")  # type: ignore[operator]
    p, _ = decode(frame, linktype=linktype)
    assert (p.sport, p.dport, p.payload, p.smac) == (50000, 104, b"A-ASSOCIATE", b"")
    assert p.ip_version == (4 if isinstance(layer, IP) else 6)


def test_bsd_null_loopback_unknown_family_and_truncation() -> None:
    p, stats = decode(struct.pack("<I", 7) + b"\x00" * 40, linktype=0)
    assert p is None and only(stats) == {"loopback_family_other": 1}
    p, stats = decode(b"\x02\x00", linktype=0)
    assert p is None and only(stats) == {"loopback_truncated": 1}


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_by_version_nibble(linktype: int) -> None:
    p, _ = decode(bytes(IP(src=A4, dst=B4) / UDP(dport=123)), linktype=linktype)
    assert (p.ip_version, p.dport, p.smac) == (4, 123, b"")
    p, _ = decode(bytes(IPv6(src=A6, dst=B6) / UDP(dport=547)), linktype=linktype)
    assert (p.ip_version, p.dport) == (6, 547)
    p, stats = decode(b"\x50" + b"\x00" * 30, linktype=linktype)
    assert p is None and only(stats) == {"raw_bad_version": 1}
    p, stats = decode(b"", linktype=linktype)
    assert p is None and only(stats) == {"raw_truncated": 1}


def test_raw_ipv4_and_ipv6_linktypes() -> None:
    assert decode(bytes(IP() / TCP(dport=1)), linktype=228)[0].dport == 1
    assert decode(bytes(IPv6() / TCP(dport=2)), linktype=229)[0].dport == 2


# ---------------------------------------------------------------- ARP


def test_arp_request_and_reply() -> None:
    req = ScapyARP(op=1, hwsrc=MAC_A, psrc="10.0.0.2", pdst="10.0.0.1")
    p, _ = decode(bytes(Ether(src=MAC_A, dst=b"\xff" * 6) / req))
    assert (p.ip_version, p.proto, p.op) == (0, ARP, 1)
    assert (p.src, p.dst, p.smac, p.dmac) == (ip4("10.0.0.2"), ip4("10.0.0.1"), MAC_A, b"\x00" * 6)
    rep = ScapyARP(op=2, hwsrc=MAC_B, psrc="10.0.0.1", hwdst=MAC_A, pdst="10.0.0.2")
    p, _ = decode(bytes(Ether(src=MAC_B, dst=MAC_A) / Dot1Q(vlan=5) / rep))
    assert (p.op, p.src, p.smac, p.dmac, p.vlan) == (2, ip4("10.0.0.1"), MAC_B, MAC_A, 5)


def test_arp_malformed_and_other() -> None:
    body = bytes(ScapyARP(op=1, psrc="10.0.0.2", pdst="10.0.0.1"))
    p, stats = decode(eth(body[:20], etype=0x0806))
    assert p is None and only(stats) == {"arp_truncated": 1}
    p, stats = decode(eth(body[:4] + b"\xff\x04" + body[6:], etype=0x0806))
    assert p is None and only(stats) == {"arp_bad_lengths": 1}
    p, stats = decode(eth(b"\x00\x06" + body[2:], etype=0x0806))  # IEEE 802 hardware type
    assert p is None and only(stats) == {"arp_other": 1}


# ---------------------------------------------------------------- properties

_LINKTYPES = [1, 0, 108, 101, 12, 14, 113, 276, 228, 229, 127]
_PREFIXES = [
    b"",
    MAC_B + MAC_A + b"\x08\x00",
    MAC_B + MAC_A + b"\x86\xdd",
    MAC_B + MAC_A + b"\x81\x00\x00\x05\x08\x00",
    MAC_B + MAC_A + b"\x88\xa8\x00\x05\x81\x00\x00\x06\x86\xdd",
    MAC_B + MAC_A + b"\x08\x06",
    MAC_B + MAC_A + b"\x08\x00\x45\x00",
    MAC_B + MAC_A + b"\x86\xdd\x60\x00\x00\x00\x00\x20\x00\x40",
]


@settings(max_examples=1500, deadline=None)
@given(
    linktype=st.sampled_from(_LINKTYPES),
    prefix=st.sampled_from(_PREFIXES),
    body=st.binary(max_size=120),
)
def test_decode_never_raises_on_arbitrary_bytes(linktype: int, prefix: bytes, body: bytes) -> None:
    stats = DecodeStats()
    dec = make_decoder(stats)
    p = dec(0.0, linktype, 0, prefix + body)
    assert p is None or isinstance(p, Packet)
    assert_balanced(stats)
    if p is not None:
        assert len(p.src) == len(p.dst) == {0: 4, 4: 4, 6: 16}[p.ip_version]
        assert isinstance(p.payload, bytes)


@settings(max_examples=400, deadline=None)
@given(
    proto=st.sampled_from([6, 17, 1, 47]),
    ihl=st.integers(5, 15),
    tlen_delta=st.integers(-30, 30),
    fragw=st.sampled_from([0, 0x4000, 0x2000, 0x0010, 0x2010]),
    l4=st.binary(min_size=0, max_size=80),
    cut=st.integers(0, 40),
)
def test_fast_path_agrees_with_general_path(
    proto: int, ihl: int, tlen_delta: int, fragw: int, l4: bytes, cut: int
) -> None:
    """The inline Ethernet/IPv4 path must decode exactly like the raw-IP (general) path."""
    opts = b"\x01" * ((ihl - 5) * 4)
    tlen = max(0, 20 + len(opts) + len(l4) + tlen_delta)
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, tlen, 1, fragw, 64, proto, 0, ip4(A4), ip4(B4)
    )
    ip = hdr + opts + l4
    ip = ip[: max(0, len(ip) - cut)]
    s1, s2 = DecodeStats(), DecodeStats()
    p1 = make_decoder(s1)(2.0, 1, 99, MAC_B + MAC_A + b"\x08\x00" + ip)
    p2 = make_decoder(s2)(2.0, 228, 99, ip)
    assert (s1.malformed, s1.skipped) == (s2.malformed, s2.skipped)
    assert (p1 is None) == (p2 is None)
    if p1 is not None:
        assert fields(p1) == fields(p2)
        assert (p1.ttl, p1.length, p1.smac, p1.dmac) == (p2.ttl, 99, MAC_A, MAC_B)


# ---------------------------------------------------------------- corpus


def corpus_params() -> list:
    if not CORPUS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no corpus at {CORPUS}"))]
    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    return [pytest.param(p, id=str(p.relative_to(CORPUS))) for p in files]


def decode_file(path: Path) -> tuple[list[Packet | None], DecodeStats, ReadStats]:
    stats, rstats = DecodeStats(), ReadStats()
    dec = make_decoder(stats)
    out = [dec(*rec) for rec in read_capture(path, rstats)]
    return out, stats, rstats


@pytest.mark.parametrize("path", corpus_params())
def test_corpus_capture_decodes(path: Path) -> None:
    pkts, stats, rstats = decode_file(path)
    assert stats.packets == rstats.records == len(pkts) > 0
    assert_balanced(stats)
    if "malformed" not in path.parts:
        assert not stats.malformed, stats.malformed
        assert stats.decoded >= 0.9 * stats.packets


# Per malformed capture: (decoded, malformed, skipped, reader errors)
MALFORMED_EXPECT: dict[str, tuple[int, dict, dict, dict]] = {
    "truncated_snaplen1_single_frame.pcap": (0, {"ether_truncated": 1}, {}, {}),
    "truncated_snaplen68_tcp.pcap": (24, {}, {}, {}),
    "ipv4_total_length_exceeds_capture.pcap": (1, {}, {}, {}),
    "truncated_ip_fragments_dns.pcap": (93, {}, {}, {}),
    "arp_oversized_bogus_lengths.pcap": (0, {"arp_bad_lengths": 6}, {}, {}),
    "damaged_file_bad_record_length.pcap": (
        0, {"tcp_bad_offset": 1}, {}, {"record_bad_length": 1}
    ),
    "damaged_file_truncated_record.pcap": (
        0, {}, {"loopback_family_other": 1}, {"record_truncated": 1}
    ),
    "dns_bad_udp_checksums.pcap": (2, {}, {}, {}),
    "icmp_invalid_type_165.pcap": (1, {}, {}, {}),
    "wireshark_fuzz_malformed_dns_nbns.pcap": (
        643,
        {"ipv4_bad_version": 6, "ipv4_bad_header_length": 1, "tcp_truncated": 1,
         "arp_bad_lengths": 2},
        {"ethertype_other": 35, "arp_other": 3},
        {},
    ),
}  # fmt: skip


@needs_corpus
@pytest.mark.parametrize("name", sorted(MALFORMED_EXPECT))
def test_corpus_malformed_counters(name: str) -> None:
    _, stats, rstats = decode_file(CORPUS / "malformed" / name)
    decoded, malformed, skipped, errors = MALFORMED_EXPECT[name]
    assert (stats.decoded, stats.malformed, stats.skipped, rstats.errors) == (
        decoded, malformed, skipped, errors
    )  # fmt: skip


@needs_corpus
def test_corpus_malformed_list_is_complete() -> None:
    assert {p.name for p in (CORPUS / "malformed").glob("*.pcap*")} == set(MALFORMED_EXPECT)


@needs_corpus
def test_corpus_truncated_captures_keep_what_was_captured() -> None:
    [p], _, _ = decode_file(CORPUS / "malformed" / "ipv4_total_length_exceeds_capture.pcap")
    assert (p.sport, p.dport, p.proto) == (2539, 5333, 17)
    assert p.length > len(p.payload) > 0  # UDP length 65000, only the captured part kept
    pkts, _, _ = decode_file(CORPUS / "malformed" / "truncated_snaplen68_tcp.pcap")
    assert {(p.sport, p.dport) for p in pkts} == {(60827, 25), (25, 60827)}
    assert pkts[0].flags == SYN | 0x40 | 0x80 and pkts[0].payload == b""  # [SEW], options cut
    frags, _, _ = decode_file(CORPUS / "malformed" / "truncated_ip_fragments_dns.pcap")
    assert {(p.frag, p.sport) for p in frags} == {(1, 53)}


@needs_corpus
def test_corpus_loopback_and_sll_links() -> None:
    pkts, _, _ = decode_file(CORPUS / "dicom" / "dicom_a_associate_rq_cfind_testclient.pcap")
    assert [(p.dport, p.src, p.payload[:1]) for p in pkts] == [(104, ip4("127.0.0.1"), b"\x01")]
    pkts, stats, _ = decode_file(CORPUS / "http" / "http_log4shell_jndi_exploit.pcap")
    assert stats.decoded == stats.packets and all(len(p.smac) == 6 for p in pkts)


# ---------------------------------------------------------------- tcpdump as oracle

# IPv6 addresses hold colons but never ": ", which ends the destination.
_TD_IP = re.compile(r"^(?P<ts>\d+\.\d+) (?P<fam>IP6?) (?P<src>\S+) > (?P<dst>\S+?): (?P<rest>.*)$")
_TD_ARP_REQ = re.compile(
    r"^(?P<ts>\d+\.\d+) ARP, Request who-has (?P<tpa>\S+) tell (?P<spa>[^,\s]+)"
)
_TD_ARP_REP = re.compile(r"^(?P<ts>\d+\.\d+) ARP, Reply (?P<spa>\S+) is-at (?P<sha>[^,\s]+)")
_TD_FLAGS = re.compile(r"Flags \[(?P<flags>[^\]]+)\]")
_TD_TCP_LEN = re.compile(r", length (?P<n>\d+)(?::|$)")
_TD_UDP_DNS_LEN = re.compile(r"\((?P<n>\d+)\)$")
_TD_ECHO = re.compile(r"ICMP6?,? echo (?P<kind>request|reply), id \d+, seq \d+, length (?P<n>\d+)")
_FLAG_LETTERS = {"F": FIN, "S": SYN, "R": RST, "P": PSH, ".": ACK, "U": URG, "E": 0x40, "W": 0x80}


def tcpdump_lines(path: Path) -> list[str]:
    assert TCPDUMP is not None
    out = subprocess.run(
        [TCPDUMP, "-tt", "-nn", "-r", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def _split_port(addr: str, v6: bool) -> tuple[str, int]:
    """tcpdump prints `addr.port`; addresses without a port (fragments, ICMP) stay whole."""
    if v6:
        return (addr.rsplit(".", 1)[0], int(addr.rsplit(".", 1)[1])) if "." in addr else (addr, 0)
    parts = addr.split(".")
    return (".".join(parts[:4]), int(parts[4])) if len(parts) == 5 else (addr, 0)


def _ntop(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(b) == 16 else socket.AF_INET, b)


def check_against_tcpdump(path: Path, limit: int | None = None) -> int:
    lines = tcpdump_lines(path)
    pkts, _, _ = decode_file(path)
    recs = list(read_capture(path))
    assert len(lines) == len(pkts)
    checked = 0
    for line, p, rec in list(zip(lines, pkts, recs, strict=True))[:limit]:
        assert p is not None, line
        if m := _TD_ARP_REQ.match(line):
            assert (p.proto, p.op, _ntop(p.src), _ntop(p.dst)) == (ARP, 1, m["spa"], m["tpa"])
        elif m := _TD_ARP_REP.match(line):
            assert (p.proto, p.op, _ntop(p.src)) == (ARP, 2, m["spa"])
            assert p.smac.hex(":") == m["sha"]
        else:
            m = _TD_IP.match(line)
            assert m, line
            v6 = m["fam"] == "IP6"
            src, sport = _split_port(m["src"], v6)
            dst, dport = _split_port(m["dst"], v6)
            assert p.ip_version == (6 if v6 else 4), line
            assert (_ntop(p.src), _ntop(p.dst)) == (src, dst), line
            rest = m["rest"]
            if p.proto in (6, 17):
                assert (p.sport, p.dport) == (sport, dport), line
            if fm := _TD_FLAGS.search(rest):
                expect = 0
                for ch in fm["flags"].replace("none", ""):
                    expect |= _FLAG_LETTERS[ch]
                assert (p.proto, p.flags) == (6, expect), line
                if (lm := _TD_TCP_LEN.search(rest)) and len(rec[3]) == rec[2]:
                    assert len(p.payload) == int(lm["n"]), line
            elif p.proto == 17 and p.frag == 0 and (lm := _TD_UDP_DNS_LEN.search(rest)):
                assert len(p.payload) == int(lm["n"]), line
            if em := _TD_ECHO.search(rest):
                kinds = (
                    {"request": 8, "reply": 0} if p.proto == 1 else {"request": 128, "reply": 129}
                )
                assert (p.sport, p.dport) == (kinds[em["kind"]], 0), line
                assert len(p.payload) == int(em["n"]) - 8, line
        assert p.ts == pytest.approx(float(line.split(" ", 1)[0]), abs=1e-6), line
        checked += 1
    return checked


@needs_corpus
@needs_tcpdump
@pytest.mark.parametrize(
    ("name", "limit", "expect_min"),
    [
        ("scan/nmap_syn_scan_1000ports.pcap", 200, 200),
        ("dns/dns_edns_ecs_v4_v6_udp_tcp.pcap", None, 89),
        ("icmp/icmpv6_echo.pcap", None, 8),
        ("icmp/icmp_echo_5_pings.pcap", None, 10),
        ("arp/arp_who_has_reply.pcap", None, 2),
        ("arp/arp_request_reply_with_ping.pcap", None, 6),
    ],
)
def test_fields_match_tcpdump(name: str, limit: int | None, expect_min: int) -> None:
    assert check_against_tcpdump(CORPUS / name, limit) >= expect_min
