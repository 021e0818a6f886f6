"""net.tunnel: a generated ICMP tunnel and TLS-on-53; the corpus's pings stay quiet."""

from __future__ import annotations

import os
import random
import struct

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

from agent.detect.tunnel import tls_client_hello
from tests.detect_support import data, entity, latest, pseudonym, replay, write
from vigie.v1 import alert_pb2

E = Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:01")
CLIENT, SERVER = "10.40.0.5", "198.51.100.20"


def test_icmp_tunnel_fires(tmp_path):
    rnd = random.Random(3)
    pkts = []
    for i in range(40):  # ptunnel-like: varying sizes, varying content, both ways
        n = rnd.randint(40, 1200)
        req = E / IP(src=CLIENT, dst=SERVER) / ICMP(type=8, id=0x4242, seq=i) / os.urandom(n)
        rep = (
            E
            / IP(src=SERVER, dst=CLIENT)
            / ICMP(type=0, id=0x4242, seq=i)
            / os.urandom(rnd.randint(40, 1200))
        )
        req.time, rep.time = 10.0 + i * 0.2, 10.05 + i * 0.2
        pkts += [req, rep]
    found = latest(replay(write(tmp_path, pkts)), "net.tunnel")
    assert len(found) == 1
    a = found[0]
    assert a.technique == "T1095"
    assert entity(a, alert_pb2.ROLE_SOURCE) == [pseudonym(CLIENT)]
    assert entity(a, alert_pb2.ROLE_TARGET) == [SERVER]
    assert a.metrics["distinct_sizes"] >= 5
    assert SERVER not in a.summary


def test_linux_style_ping_with_timestamps_is_quiet(tmp_path):
    pkts = []
    for i in range(100):
        stamp = struct.pack("<QQ", 1_700_000_000 + i, i * 1000)  # the varying 16 bytes
        body = stamp + bytes(range(16, 56))
        req = E / IP(src=CLIENT, dst=SERVER) / ICMP(type=8, id=9, seq=i) / body
        rep = E / IP(src=SERVER, dst=CLIENT) / ICMP(type=0, id=9, seq=i) / body
        req.time, rep.time = 10.0 + i, 10.01 + i
        pkts += [req, rep]
    assert not latest(replay(write(tmp_path, pkts)), "net.tunnel")


@pytest.mark.parametrize(
    "name",
    [
        "icmp_echo_5_pings.pcap",
        "icmp_echo_75_pings.pcap",
        "icmpv6_echo.pcap",
        "icmp_dest_unreachable_udp.pcap",
    ],
)
def test_corpus_pings_are_quiet(name):
    assert not latest(replay(data(name)), "net.tunnel")


def _client_hello() -> bytes:
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += b"\x00\x00"  # no extensions
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def test_tls_to_dns_port_fires(tmp_path):
    hello = _client_hello()
    assert tls_client_hello(hello)
    dns_like = (
        bytes.fromhex("160301000001000000000000") + b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
    )
    assert not tls_client_hello(dns_like)
    p = E / IP(src=CLIENT, dst=SERVER) / UDP(sport=40000, dport=53) / hello
    q = E / IP(src=CLIENT, dst=SERVER) / UDP(sport=40001, dport=53) / dns_like
    p.time, q.time = 5.0, 6.0
    found = latest(replay(write(tmp_path, [q, p])), "net.tunnel")
    assert len(found) == 1
    assert "TLS ClientHello sent to udp port 53" in found[0].summary
    assert entity(found[0], alert_pb2.ROLE_SOURCE) == [pseudonym(CLIENT)]
